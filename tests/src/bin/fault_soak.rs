//! `make soak`: the fault oracle (`realtime_tests::oracle`) over many seeds,
//! one after another, then the figures: events, faults by kind, the result
//! of each seed, wall time. Exits 1 if any seed failed (its diff is
//! printed when it fails).
//!
//! Knobs: `ORACLE_SEEDS` (default 20), `ORACLE_SEED` (the first seed; the
//! others follow it; default from the clock), `ORACLE_EVENTS` (rows per
//! seed, default 5,200), and the rest of `Plan::with_env`.

use std::collections::BTreeMap;
use std::time::Instant;

use realtime_tests::oracle::{self, Plan, schedule::Fault};

fn main() -> anyhow::Result<()> {
    let seeds: usize = std::env::var("ORACLE_SEEDS")
        .ok()
        .map(|v| v.trim().parse())
        .transpose()?
        .unwrap_or(20);
    let mut base = Plan::small();
    base.events = 5200;
    base.faults = 10;
    base.rate = 600.0;
    let base = base.with_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut results = Vec::with_capacity(seeds);
    for n in 0..seeds {
        let mut plan = base.clone();
        plan.seed = base.seed.wrapping_add(n as u64);
        let report = runtime.block_on(oracle::run(&plan));
        println!("[{}/{seeds}] {}", n + 1, report.summary());
        if !report.passed() {
            println!("{}", report.diff());
        }
        results.push(report);
    }
    let mut by_kind: BTreeMap<&str, usize> = Fault::KINDS.iter().map(|k| (*k, 0)).collect();
    for report in &results {
        for (kind, n) in report.faults_by_kind() {
            *by_kind.entry(kind).or_default() += n;
        }
    }
    let failed: Vec<u64> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.plan.seed)
        .collect();
    println!(
        "\nfault soak: {seeds} seeds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  events committed: {} ({} rows, {} membership changes); deliveries checked: {}",
        results.iter().map(oracle::Report::events).sum::<usize>(),
        results.iter().map(|r| r.rows).sum::<usize>(),
        results.iter().map(|r| r.member_events).sum::<usize>(),
        results.iter().map(|r| r.deliveries).sum::<usize>()
    );
    println!(
        "  faults: {}",
        results.iter().map(|r| r.timeline.len()).sum::<usize>()
    );
    for (kind, n) in &by_kind {
        println!("    {kind}: {n}");
    }
    for report in &results {
        println!("  {}", report.summary());
    }
    if failed.is_empty() {
        println!("  result: PASS (0 lost, 0 duplicated, 0 misrouted, 0 false data.sync)");
        Ok(())
    } else {
        println!("  result: FAIL, seeds {failed:?}");
        std::process::exit(1);
    }
}
