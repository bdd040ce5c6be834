//! The writers: transactions of one or more `properties` rows across the
//! organizations, at a set pace, through every Postgres crash. A row's id
//! carries its sequence number (`p<seq>`), so the table itself says what
//! was committed: a commit that failed is never retried (it may have
//! happened), the table decides after the run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio_postgres::Client;

use crate::TestContext;

/// How long a writer keeps trying to reconnect before the run fails.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between two connection attempts while Postgres is down (pacing).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// The user every row is created by (a foreign key of `properties`).
pub const WRITER_USER: &str = "oracle-writer";

/// What the writers did, shared between them and the run.
#[derive(Debug, Default)]
pub struct WriteLog {
    /// Rows whose transaction was started (sequence numbers handed out).
    pub attempted: AtomicUsize,
    /// Transactions committed / failed (outcome unknown).
    pub committed_txns: AtomicUsize,
    pub uncertain_txns: AtomicUsize,
    /// Ids of the rows whose commit returned OK: each must be in the table.
    pub acked: Mutex<Vec<String>>,
}

/// One writer: takes sequence numbers from `log.attempted` until `total`,
/// one transaction per tick of its pace (`per_second` transactions).
pub async fn run(
    index: usize,
    ctx: TestContext,
    orgs: Arc<Vec<String>>,
    total: usize,
    per_second: f64,
    seed: u64,
    log: Arc<WriteLog>,
) {
    let mut rng =
        StdRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pg: Option<Client> = None;
    loop {
        pace.tick().await;
        // Mostly single rows; one transaction in eight has 2 to 5.
        let size = if rng.random_ratio(1, 8) {
            rng.random_range(2..=5)
        } else {
            1
        };
        let first = log.attempted.fetch_add(size, Ordering::SeqCst);
        if first >= total {
            return;
        }
        let rows: Vec<(String, &str)> = (first..(first + size).min(total))
            .map(|seq| {
                (
                    format!("p{seq}"),
                    orgs[rng.random_range(0..orgs.len())].as_str(),
                )
            })
            .collect();
        let client = match pg.take() {
            Some(client) if !client.is_closed() => client,
            _ => connect(&ctx).await,
        };
        match insert(&client, &rows).await {
            Ok(()) => {
                log.committed_txns.fetch_add(1, Ordering::Relaxed);
                log.acked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(rows.into_iter().map(|(id, _)| id));
                pg = Some(client);
            }
            Err(_) => {
                // Committed or not: the table says, after the run.
                log.uncertain_txns.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn insert(client: &Client, rows: &[(String, &str)]) -> Result<(), tokio_postgres::Error> {
    const SQL: &str = "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, $2, $3, 1)";
    if let [(id, org)] = rows {
        client.execute(SQL, &[id, org, &WRITER_USER]).await?;
        return Ok(());
    }
    client.batch_execute("BEGIN").await?;
    for (id, org) in rows {
        client.execute(SQL, &[id, org, &WRITER_USER]).await?;
    }
    client.batch_execute("COMMIT").await
}

/// A connection, retried while Postgres is down.
pub async fn connect(ctx: &TestContext) -> Client {
    let started = tokio::time::Instant::now();
    loop {
        match ctx.try_pg().await {
            Ok(client) => return client,
            Err(e) if started.elapsed() < RECONNECT_DEADLINE => {
                tracing::debug!(error = %e, "writer reconnecting");
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
            Err(e) => panic!("Postgres did not accept a writer for {RECONNECT_DEADLINE:?}: {e}"),
        }
    }
}
