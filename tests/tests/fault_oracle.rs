//! The fault oracle's small run (one seed, a few thousand rows, every kind
//! of fault at least once): see `realtime_tests::oracle` for what it does
//! and checks. `ORACLE_SEED=<n>` replays a seed; the other `ORACLE_*` knobs
//! resize it. `make soak` runs many seeds of the same engine.

use realtime_tests::oracle::{self, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_duplicate_and_misroute_nothing_the_database_committed() {
    let plan = Plan::small().with_env();
    let report = oracle::run(&plan).await;
    println!("{}\n  faults:{}", report.summary(), report.timeline_text());
    assert!(report.passed(), "{}", report.diff());
}
