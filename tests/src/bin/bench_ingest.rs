//! `make bench-ingest`: how fast the ingestor drains a backlog, next to
//! `pg_recvlogical` reading the same backlog, and its commit→publish
//! latency at a steady rate. Starts its own Postgres and Redis (as the tests
//! do) and the real ingestor binary; prints a report.
//!
//! Three backlogs of `BENCH_ROWS` (default 200000) rows, each in its own
//! database with its own slots: `BENCH_TXN_ROWS` (default 100) rows per
//! transaction, then 1,000 (the default bulk threshold: still one event per
//! row), then 1 (`BENCH_SINGLE_ROWS`, default 50000, rows: writing 200,000
//! single-row transactions takes long). Each is read by pg_recvlogical, then
//! by the ingestor, in the same run. Then the steady phase: `BENCH_RATE`
//! (default 1000) rows/s for `BENCH_SECONDS` (default 10).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use realtime_tests::bench::{cpu_seconds, env_or, quantile, redis_cpu_seconds};
use realtime_tests::{ChildProcess, PostgresServer, RedisServer, binary_path, connect};

async fn history_len(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(redis)
        .await
        .unwrap_or(0)
}

/// One backlog drained by pg_recvlogical, then by the ingestor.
struct Drain {
    backlog: u64,
    txns: u64,
    txn_rows: u64,
    recvlogical: Duration,
    ingestor: Duration,
    /// From the ingestor's spawn to its first event in Redis: its start-up.
    first_event: Duration,
    ingestor_cpu: f64,
    redis_cpu: f64,
}

/// Writes a backlog of `rows` rows, `txn_rows` per transaction, into a new
/// database `name`, and times pg_recvlogical and the ingestor (a child
/// process, left running for the steady phase) draining it.
async fn drain(
    pg: &PostgresServer,
    redis_url: &str,
    name: &str,
    rows: u64,
    txn_rows: u64,
    history_cap: u64,
) -> anyhow::Result<(Drain, tokio_postgres::Client, ChildProcess)> {
    let admin = connect(&pg.url("postgres"))
        .await
        .expect("connect to the bench database");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let url = pg.url(name);
    let db = connect(&url).await.expect("connect to the bench database");
    db.batch_execute(include_str!("../../fixtures/oikion-schema.sql"))
        .await?;
    db.batch_execute(
        "INSERT INTO organizations (id, name) VALUES ('bench', 'Bench');
         INSERT INTO users (id) VALUES ('u1');
         ALTER TABLE properties REPLICA IDENTITY FULL;
         ALTER TABLE organization_members REPLICA IDENTITY FULL;
         ALTER TABLE organizations REPLICA IDENTITY FULL;
         ALTER TABLE activities REPLICA IDENTITY FULL;
         CREATE PUBLICATION realtime FOR TABLE properties, organization_members, organizations, activities;",
    )
    .await?;
    // Both slots start at the same point, before the backlog. Slots are
    // per server, not per database: each backlog names its own.
    let (slot, floor_slot) = (format!("{name}_realtime"), format!("{name}_recvlogical"));
    for slot in [&slot, &floor_slot] {
        db.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await?;
    }

    eprintln!("{name}: writing a backlog of {rows} rows, {txn_rows} per transaction…");
    let txns = rows.div_ceil(txn_rows);
    db.batch_execute(&format!(
        "DO $$ BEGIN FOR t IN 0..{last} LOOP
           INSERT INTO properties (id, \"organizationId\", \"createdBy\", price, bedrooms, description)
             SELECT 'b' || (t * {txn_rows} + g), 'bench', 'u1', 100000 + g, g % 5, 'backlog row'
             FROM generate_series(1, {txn_rows}) g;
           COMMIT;
         END LOOP; END $$;",
        last = txns - 1
    ))
    .await?;
    let backlog = txns * txn_rows;
    let end_lsn: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);

    // pg_recvlogical: the floor, reading the same backlog and discarding it.
    let bindir = String::from_utf8(Command::new("pg_config").arg("--bindir").output()?.stdout)?;
    let started = Instant::now();
    let status = Command::new(format!("{}/pg_recvlogical", bindir.trim()))
        .args(["-d", &url, "--slot", &floor_slot, "--start", "--no-loop"])
        .args([
            "--endpos",
            &end_lsn,
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=realtime",
        ])
        .args(["-f", "/dev/null"])
        .env("PGPASSWORD", "postgres")
        .status()?;
    anyhow::ensure!(status.success(), "pg_recvlogical failed");
    let recvlogical = started.elapsed();

    // The ingestor, draining the same backlog into Redis.
    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let key = format!("{name}:{{org:bench}}:history");
    let env = vec![
        ("DATABASE_URL", url.clone()),
        ("REDIS_URL", redis_url.to_owned()),
        ("REALTIME_KEY_PREFIX", name.to_owned()),
        ("REALTIME_SLOT", slot.clone()),
        ("REALTIME_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
        ("REALTIME_HISTORY_LEN", history_cap.to_string()),
        // The schema's other routed tables (listings, …) are not set up
        // here: the ingestor sets their replica identity at start-up.
        ("REALTIME_MANAGE_REPLICA_IDENTITY", "true".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let redis_cpu_before = redis_cpu_seconds(std::slice::from_mut(&mut redis)).await;
    let started = Instant::now();
    let mut ingestor = ChildProcess::spawn(&binary_path("realtime-ingestor"), &env);
    let deadline = started + Duration::from_secs(600);
    let mut first_event = None;
    loop {
        let len = history_len(&mut redis, &key).await;
        if len > 0 && first_event.is_none() {
            first_event = Some(started.elapsed());
        }
        if len >= backlog {
            break;
        }
        if let Some(status) = ingestor.try_status() {
            anyhow::bail!(
                "the ingestor exited ({status}) before draining the backlog:\n{}",
                ingestor.output_text()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the ingestor did not drain the backlog in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = started.elapsed();
    let ingestor_cpu = cpu_seconds(ingestor.pid());
    let redis_cpu = redis_cpu_seconds(std::slice::from_mut(&mut redis)).await - redis_cpu_before;
    Ok((
        Drain {
            backlog,
            txns,
            txn_rows,
            recvlogical,
            ingestor: drained,
            first_event: first_event.unwrap_or(drained),
            ingestor_cpu,
            redis_cpu,
        },
        db,
        ingestor,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = env_or("BENCH_ROWS", 200_000);
    let txn_rows = env_or("BENCH_TXN_ROWS", 100).max(1);
    let single_rows = env_or("BENCH_SINGLE_ROWS", 50_000).max(1);
    let rate = env_or("BENCH_RATE", 1000).max(1);
    let seconds = env_or("BENCH_SECONDS", 10).max(1);

    eprintln!("starting Postgres and Redis…");
    let pg = PostgresServer::start()?;
    let redis_server = RedisServer::start()?;
    let history = rows.max(single_rows) + rate * seconds + 1000;
    // The main backlog first, on a fresh cluster as before; its ingestor
    // stays (idle) for the steady phase while the other two are drained.
    let (main_drain, db, ingestor) =
        drain(&pg, &redis_server.url(), "bench", rows, txn_rows, history).await?;
    let mut drains = vec![main_drain];
    for (name, n, per_txn) in [("bench1000", rows, 1000), ("bench1", single_rows, 1)] {
        let (d, _db, other) = drain(&pg, &redis_server.url(), name, n, per_txn, history).await?;
        drop(other);
        drains.push(d);
    }

    // Steady phase: one row per transaction at `rate`, timed from the
    // COMMIT's return to the event's arrival on the live channel.
    let mut pubsub = redis::Client::open(redis_server.url())?
        .get_async_pubsub()
        .await?;
    pubsub.subscribe("bench:{org:bench}").await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let listener = tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let at = Instant::now();
            let payload: Vec<u8> = msg.get_payload().unwrap_or_default();
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload) else {
                continue;
            };
            if let Some(id) = v["event"]["payload"]["propertyId"].as_str() {
                let _ = tx.send((id.to_owned(), at));
            }
        }
    });
    let total = rate * seconds;
    let mut committed: HashMap<String, Instant> = HashMap::with_capacity(total as usize);
    let insert = db
        .prepare("INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'bench', 'u1', 1)")
        .await?;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let phase = Instant::now();
    for i in 0..total {
        let due = phase + period * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let id = format!("s{i}");
        db.execute(&insert, &[&id]).await?;
        committed.insert(id, Instant::now());
    }
    let achieved = total as f64 / phase.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < total as usize && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some((id, at))) => {
                if let Some(c) = committed.get(&id) {
                    latencies.push(at.saturating_duration_since(*c));
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    listener.abort();
    drop(ingestor);
    latencies.sort();

    println!(
        "## bench-ingest ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for d in &drains {
        println!(
            "backlog: {} rows in {} transactions of {}",
            d.backlog, d.txns, d.txn_rows
        );
        println!(
            "  pg_recvlogical read it in {:.2} s ({:.0} rows/s)",
            d.recvlogical.as_secs_f64(),
            d.backlog as f64 / d.recvlogical.as_secs_f64()
        );
        println!(
            "  ingestor published it in {:.2} s ({:.0} events/s), including process start",
            d.ingestor.as_secs_f64(),
            d.backlog as f64 / d.ingestor.as_secs_f64()
        );
        println!(
            "  of which start-up (spawn to first event in Redis): {:.2} s",
            d.first_event.as_secs_f64()
        );
        println!(
            "  CPU during the drain: ingestor {:.2} s, Redis {:.2} s",
            d.ingestor_cpu, d.redis_cpu
        );
        println!(
            "  ratio ingestor / pg_recvlogical time: {:.2}x",
            d.ingestor.as_secs_f64() / d.recvlogical.as_secs_f64()
        );
    }
    println!(
        "steady: {total} single-row transactions at {achieved:.0}/s (target {rate}/s); {} events timed",
        latencies.len()
    );
    println!(
        "commit→publish latency (COMMIT returned → event on the Redis channel): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        quantile(&latencies, 0.50).unwrap_or_default().as_secs_f64() * 1e3,
        quantile(&latencies, 0.99).unwrap_or_default().as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    Ok(())
}
