//! Replays every committed fuzz input (`fuzz/corpus/<target>/`, the seeds,
//! and `fuzz/regressions/<target>/`, each input that once crashed a target)
//! through the target's check, so `cargo test` catches a regression without
//! a fuzzer. Cheap: a few hundred small inputs.

use std::path::{Path, PathBuf};

use realtime_fuzz_checks::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, check) in TARGETS {
        let seeds = inputs(&fuzz.join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        let regressions = inputs(&fuzz.join("regressions").join(name));
        for file in seeds.iter().chain(&regressions) {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
        }
    }
}

/// A cheap, blind (not coverage-guided) pass for `cargo test`: every seed
/// mutated a few hundred times (bytes flipped, inserted, removed, spliced
/// from another seed) with a fixed PRNG, through its target. `make fuzz`
/// is the real search; this only keeps the obvious from slipping in
/// between two `make fuzz` runs.
#[test]
fn mutated_seeds_pass_their_target() {
    const PER_SEED: usize = 200;
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for (name, check) in TARGETS {
        let seeds: Vec<Vec<u8>> = inputs(&fuzz.join("corpus").join(name))
            .iter()
            .filter_map(|f| std::fs::read(f).ok())
            .collect();
        for seed in &seeds {
            for _ in 0..PER_SEED {
                let mut data = seed.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % (data.len() + 1);
                    let byte = next() as u8;
                    match next() % 5 {
                        0 if at < data.len() => data[at] ^= 1 << (byte % 8),
                        1 => data.insert(at, byte),
                        2 if at < data.len() => {
                            data.remove(at);
                        }
                        3 => {
                            let other = &seeds[(next() as usize) % seeds.len()];
                            let from = (next() as usize) % (other.len() + 1);
                            data.truncate(at);
                            data.extend_from_slice(&other[from..]);
                        }
                        _ if at < data.len() => {
                            data[at] = b"\r\n.;=\"{}[]0\x00\xff"[usize::from(byte) % 13]
                        }
                        _ => data.push(byte),
                    }
                }
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(
                    outcome.is_ok(),
                    "{name}: a mutated seed fails: {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
        }
    }
}
