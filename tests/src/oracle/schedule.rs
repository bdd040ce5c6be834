//! The fault schedule: which faults a run applies, in which order, to
//! which process, and how long each one lasts, all drawn from the seed so
//! `ORACLE_SEED=<n>` replays the same schedule (timing still varies).

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// One fault the harness applies to the real processes of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the ingestor, then a new one after `down`.
    IngestorKill,
    /// `kill -9` of gateway replica `n`, then a new one (on a new port)
    /// after `down`.
    GatewayKill(usize),
    /// SIGTERM of gateway replica `n`: it drains its streams and exits; a
    /// new one starts after it exited and `down` passed.
    GatewayDrain(usize),
    /// Redis killed and started again on the same port and append-only
    /// file, after `down`.
    RedisRestart,
    /// Postgres stopped in immediate mode (a crash: no checkpoint), started
    /// again after `down` (crash recovery).
    PostgresCrash,
    /// Churn user `n` (one per organization) loses its membership, and gets
    /// it back after `down`.
    MemberChurn(usize),
}

impl Fault {
    /// The kind, for figures ("faults by kind").
    pub fn kind(self) -> &'static str {
        match self {
            Fault::IngestorKill => "ingestor kill -9",
            Fault::GatewayKill(_) => "gateway kill -9",
            Fault::GatewayDrain(_) => "gateway SIGTERM drain",
            Fault::RedisRestart => "redis restart (AOF)",
            Fault::PostgresCrash => "postgres immediate stop/start",
            Fault::MemberChurn(_) => "membership remove/re-add",
        }
    }

    /// Every kind, in the order figures list them.
    pub const KINDS: [&'static str; 6] = [
        "ingestor kill -9",
        "gateway kill -9",
        "gateway SIGTERM drain",
        "redis restart (AOF)",
        "postgres immediate stop/start",
        "membership remove/re-add",
    ];
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::GatewayKill(n) | Fault::GatewayDrain(n) => write!(f, "{} #{n}", self.kind()),
            Fault::MemberChurn(n) => write!(f, "{} of churn user #{n}", self.kind()),
            _ => f.write_str(self.kind()),
        }
    }
}

/// A fault and when it fires: once the writers have attempted `at_event`
/// rows (and the previous fault is over).
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub at_event: usize,
    pub fault: Fault,
    /// How long the process stays down (or the member stays out).
    pub down: Duration,
}

/// Draws `faults` steps spread evenly over `events` rows. Every kind
/// appears at least once when `faults` ≥ 6 (the first six steps are one of
/// each kind, shuffled); the rest are drawn at random.
pub fn generate(
    seed: u64,
    events: usize,
    faults: usize,
    gateways: usize,
    orgs: usize,
) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let draw = |rng: &mut StdRng, kind: usize| match kind {
        0 => Fault::IngestorKill,
        1 => Fault::GatewayKill(rng.random_range(0..gateways)),
        2 => Fault::GatewayDrain(rng.random_range(0..gateways)),
        3 => Fault::RedisRestart,
        4 => Fault::PostgresCrash,
        _ => Fault::MemberChurn(rng.random_range(0..orgs)),
    };
    let mut kinds: Vec<usize> = (0..Fault::KINDS.len()).collect();
    // Fisher–Yates with the seeded generator.
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.random_range(0..=i));
    }
    (0..faults)
        .map(|i| {
            let kind = kinds
                .get(i)
                .copied()
                .unwrap_or_else(|| rng.random_range(0..Fault::KINDS.len()));
            let fault = draw(&mut rng, kind);
            let down = Duration::from_millis(rng.random_range(50..1200));
            Step {
                at_event: events * (i + 1) / (faults + 1),
                fault,
                down,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule() {
        let a = generate(7, 1000, 9, 3, 3);
        let b = generate(7, 1000, 9, 3, 3);
        let show = |s: &[Step]| format!("{s:?}");
        assert_eq!(show(&a), show(&b));
        let kinds: std::collections::BTreeSet<_> = a.iter().map(|s| s.fault.kind()).collect();
        assert_eq!(kinds.len(), Fault::KINDS.len(), "every kind at least once");
        assert!(a.windows(2).all(|w| w[0].at_event < w[1].at_event));
    }
}
