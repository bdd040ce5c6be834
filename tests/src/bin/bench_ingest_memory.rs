//! `make bench-ingest-memory`: the ingestor's peak memory (RSS) through a
//! 1,000,000-row transaction and through rows with 100 MB TOASTed values,
//! next to its RSS when idle. Starts its own Postgres and Redis (as the
//! tests do) and the real ingestor binary; prints a report.
//!
//! Phases, each measured from a reset of the kernel's peak-RSS counter
//! (`/proc/<pid>/clear_refs`, 5) to the moment its last event is in Redis:
//! 1. one transaction inserting `BENCH_MEMORY_ROWS` (default 1,000,000)
//!    properties spread over 2,000 organizations (500 each, under the bulk
//!    threshold: every row becomes an event, the most the ingestor holds
//!    and publishes);
//! 2. the same number of rows inserted in one transaction into ONE
//!    organization (coalesced into one data.sync bulk);
//! 3. rows with `BENCH_MEMORY_TOAST_MB` (default 100) MB TOASTed values
//!    (stored uncompressed, out of line): an insert, an update of another
//!    column (the old row carries the value whole: REPLICA IDENTITY FULL),
//!    an update of the value itself (old and new, twice the size).

use std::time::{Duration, Instant};

use realtime_tests::bench::{env_or, status_kib};
use realtime_tests::{ChildProcess, PostgresServer, RedisServer, binary_path, connect};

/// Resets the process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

/// One raw XREVRANGE entry: its id and field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Waits until a marker row `id` of organization `marker` is in Redis:
/// everything committed before it was processed. The marker is written
/// again every 2 s (as `<id>-<n>`): one written before the ingestor made
/// its slot (the first, "ready") is never decoded.
async fn wait_marker(
    db: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    id: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let wanted = format!("\"{id}-");
    let mut written = 0u32;
    let mut next_write = Instant::now();
    loop {
        if Instant::now() >= next_write {
            db.execute(
                "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'marker', 'u1', 1)",
                &[&format!("{id}-{written}")],
            )
            .await?;
            written += 1;
            next_write = Instant::now() + Duration::from_secs(2);
        }
        let entries: Vec<StreamEntry> = redis::cmd("XREVRANGE")
            .arg("rt:{org:marker}:history")
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(redis)
            .await
            .unwrap_or_default();
        let found = entries.first().is_some_and(|(_, fields)| {
            fields
                .iter()
                .any(|(_, v)| String::from_utf8_lossy(v).contains(&wanted))
        });
        if found {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "marker {id} not published in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Phase {
    name: String,
    seconds: f64,
    peak_kb: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = env_or("BENCH_MEMORY_ROWS", 1_000_000);
    let toast_mb = env_or("BENCH_MEMORY_TOAST_MB", 100);

    eprintln!("starting Postgres and Redis…");
    let pg = PostgresServer::start()?;
    let redis_server = RedisServer::start()?;
    let admin = connect(&pg.url("postgres"))
        .await
        .expect("connect to the bench database");
    admin.batch_execute("CREATE DATABASE bench").await?;
    let url = pg.url("bench");
    let db = connect(&url).await.expect("connect to the bench database");
    db.batch_execute(include_str!("../../fixtures/oikion-schema.sql"))
        .await?;
    db.batch_execute(
        "INSERT INTO organizations (id, name) SELECT 'o' || g, 'Org' FROM generate_series(1, 2000) g;
         INSERT INTO organizations (id, name) VALUES ('one', 'One'), ('marker', 'Marker');
         INSERT INTO users (id) VALUES ('u1');
         ALTER TABLE properties ALTER COLUMN description SET STORAGE EXTERNAL;",
    )
    .await?;

    let mut redis = redis::Client::open(redis_server.url())?
        .get_multiplexed_async_connection()
        .await?;
    let env = vec![
        ("DATABASE_URL", url.clone()),
        ("REDIS_URL", redis_server.url()),
        ("REALTIME_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
        ("REALTIME_MANAGE_REPLICA_IDENTITY", "true".to_owned()),
        // Redis keeps little: this measures the ingestor, not Redis.
        ("REALTIME_HISTORY_LEN", "100".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let ingestor = ChildProcess::spawn(&binary_path("realtime-ingestor"), &env);
    let pid = ingestor.pid();
    wait_marker(&db, &mut redis, "ready").await?;
    let idle_kb = status_kib(pid, "VmRSS").unwrap_or(0);

    let size = toast_mb * 1024 * 1024;
    let plan = [
        (
            format!("{rows} rows inserted in one transaction, over 2,000 organizations"),
            format!(
                "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price, bedrooms, description)
                   SELECT 'r' || g, 'o' || (1 + g % 2000), 'u1', 100000 + g, g % 5, 'row ' || g
                   FROM generate_series(1, {rows}) g;"
            ),
        ),
        (
            format!("{rows} rows inserted in one transaction into one organization (coalesced)"),
            format!(
                "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price, bedrooms, description)
                   SELECT 's' || g, 'one', 'u1', 100000 + g, g % 5, 'row ' || g
                   FROM generate_series(1, {rows}) g;"
            ),
        ),
        (
            format!(
                "a {toast_mb} MB TOASTed value: inserted, another column updated, the value updated"
            ),
            format!(
                "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price, description)
                   VALUES ('toast', 'o1', 'u1', 1,
                     (SELECT string_agg(md5(g::text), '') FROM generate_series(1, {n}) g));
                 UPDATE properties SET price = 2 WHERE id = 'toast';
                 UPDATE properties SET description = upper(description) WHERE id = 'toast';",
                n = size / 32
            ),
        ),
    ];
    // Each phase: the peak reset, the SQL (its transactions), then the time
    // from the last COMMIT's return (protocol v1: the walsender sends a
    // transaction once it committed) until a marker committed after it is
    // in Redis.
    let mut phases = Vec::new();
    for (i, (name, sql)) in plan.into_iter().enumerate() {
        eprintln!("{name}…");
        reset_peak(pid)?;
        db.batch_execute(&sql).await?;
        let started = Instant::now();
        wait_marker(&db, &mut redis, &format!("m{i}")).await?;
        phases.push(Phase {
            name,
            seconds: started.elapsed().as_secs_f64(),
            peak_kb: status_kib(pid, "VmHWM").unwrap_or(0),
        });
    }
    let final_rss = status_kib(pid, "VmRSS").unwrap_or(0);
    // The allocator gives freed pages back after its decay time (jemalloc's
    // background threads, 10 s by default): RSS once that has passed.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let settled_rss = status_kib(pid, "VmRSS").unwrap_or(0);
    drop(ingestor);

    println!(
        "## bench-ingest-memory ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "ingestor RSS when idle (streaming, nothing pending): {:.1} MiB",
        mib(idle_kb)
    );
    for p in &phases {
        println!(
            "{}: peak RSS {:.1} MiB, {:.1} s until its last event was in Redis",
            p.name,
            mib(p.peak_kb),
            p.seconds
        );
    }
    println!("ingestor RSS at the end: {:.1} MiB", mib(final_rss));
    println!(
        "ingestor RSS 15 s later (freed pages given back): {:.1} MiB",
        mib(settled_rss)
    );
    Ok(())
}
