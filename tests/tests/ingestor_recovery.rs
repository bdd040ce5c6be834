//! The ingestor under failure, with the real binary where a crash is tested:
//! kill -9 and restart, Redis restarted, Postgres restarted, and an idle
//! publication next to busy unrouted tables. Invariants: every committed
//! change lands in the history exactly once; the slot never pins WAL.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{RunningIngestor, config_for, history, http_get, metric_value};
use realtime_tests::{
    ChildProcess, PostgresServer, RedisServer, TestContext, binary_path, wait_until,
};

/// Inserts properties `p<from>`..`p<to>` of org `org1`, one transaction each.
async fn insert_properties(ctx: &TestContext, from: usize, to: usize) {
    let pg = ctx.pg().await;
    for i in from..to {
        pg.execute(
            "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'org1', 'u1', 1)",
            &[&format!("p{i}")],
        )
        .await
        .expect("insert");
    }
}

async fn seed(ctx: &TestContext) {
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('org1', 'Acme');
         INSERT INTO users (id, name) VALUES ('u1', 'Ann');",
    )
    .await;
}

/// Asserts the org1 history holds exactly the properties `p0..p<n>`, each
/// once, with distinct ids.
async fn assert_exactly_once(ctx: &TestContext, n: usize) {
    let entries = history(ctx, Some("org1")).await;
    let ids: BTreeSet<(u64, u64)> = entries.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), entries.len(), "ids are distinct");
    let mut seen: Vec<String> = entries
        .iter()
        .map(|e| {
            e.event["payload"]["propertyId"]
                .as_str()
                .expect("propertyId")
                .to_owned()
        })
        .collect();
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "no property was delivered twice");
    let want: BTreeSet<String> = (0..n).map(|i| format!("p{i}")).collect();
    let got: BTreeSet<String> = seen.into_iter().collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    assert!(missing.is_empty(), "missing events, e.g. {missing:?}");
    assert_eq!(total, n, "exactly one event per committed change");
}

async fn wait_for_count(ctx: &TestContext, n: usize, deadline: Duration) {
    wait_until(
        &format!("{n} events in org1's history"),
        deadline,
        || async move { (history(ctx, Some("org1")).await.len() >= n).then_some(()) },
    )
    .await;
}

fn spawn_ingestor_binary(ctx: &TestContext, status_interval: &str) -> ChildProcess {
    ChildProcess::spawn(
        &binary_path("realtime-ingestor"),
        &[
            ctx.ingestor_env(),
            vec![
                ("REALTIME_STATUS_INTERVAL", status_interval.to_owned()),
                ("REALTIME_RECONNECT_MAX", "1s".to_owned()),
            ],
        ]
        .concat(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_delivers_every_change_exactly_once() {
    const N: usize = 3000;
    let ctx = TestContext::new().await;
    seed(&ctx).await;
    // A slow status interval leaves many published-but-unacknowledged
    // transactions behind the crash, so the restart must refuse replays.
    let mut first = spawn_ingestor_binary(&ctx, "30s");
    wait_until(
        "the first ingestor streams",
        Duration::from_secs(30),
        || async {
            ctx.pg()
                .await
                .query_one(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&ctx.slot()],
                )
                .await
                .ok()
                .and_then(|r| r.get::<_, bool>(0).then_some(()))
        },
    )
    .await;

    let writer = {
        let ctx = ctx.clone();
        tokio::spawn(async move { insert_properties(&ctx, 0, N).await })
    };
    wait_for_count(&ctx, N / 3, Duration::from_secs(60)).await;
    first.kill9();
    let published_before_crash = history(&ctx, Some("org1")).await.len();
    assert!(published_before_crash < N, "the crash happened mid-stream");
    writer.await.expect("writer");

    let second = spawn_ingestor_binary(&ctx, "1s");
    wait_for_count(&ctx, N, Duration::from_secs(120)).await;
    assert_exactly_once(&ctx, N).await;

    let admin = second.admin_addr(Duration::from_secs(30)).await;
    let text = http_get(&format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .1;
    let refused = metric_value(&text, "realtime_ingestor_duplicates_skipped_total");
    assert!(
        refused > 0.0,
        "the restart re-read unacknowledged transactions and Redis refused them:\n{text}"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_loses_nothing_committed_after_it() {
    let redis = RedisServer::start().expect("redis");
    let ctx = TestContext::new().await.with_redis(&redis);
    seed(&ctx).await;
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;

    insert_properties(&ctx, 0, 300).await;
    let writer = {
        let ctx = ctx.clone();
        tokio::spawn(async move { insert_properties(&ctx, 300, 1200).await })
    };
    wait_for_count(&ctx, 100, Duration::from_secs(30)).await;
    redis.restart().expect("redis restarts");
    // Everything committed from here on must arrive.
    let after = ctx
        .pg()
        .await
        .query_one("SELECT count(*) FROM properties", &[])
        .await
        .expect("count")
        .get::<_, i64>(0) as usize;
    writer.await.expect("writer");
    insert_properties(&ctx, 1200, 1300).await;

    let want: BTreeSet<String> = (after..1300).map(|i| format!("p{i}")).collect();
    wait_until(
        "every property committed after the restart",
        Duration::from_secs(60),
        || {
            let want = want.clone();
            let ctx = ctx.clone();
            async move {
                let got: BTreeSet<String> = history(&ctx, Some("org1"))
                    .await
                    .iter()
                    .filter_map(|e| e.event["payload"]["propertyId"].as_str().map(str::to_owned))
                    .collect();
                want.is_subset(&got).then_some(())
            }
        },
    )
    .await;
    let entries = history(&ctx, Some("org1")).await;
    let ids: BTreeSet<_> = entries.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), entries.len(), "no duplicate after the restart");
    let text = ing.metrics().await;
    assert!(
        metric_value(&text, "realtime_ingestor_reconnects_total") >= 1.0,
        "{text}"
    );
    ing.stop().await;
}

/// `confirmed_flush_lsn` of the context's slot, as a number.
pub(crate) async fn confirmed_flush(pg: &tokio_postgres::Client, slot: &str) -> Option<f64> {
    pg.query_one(
        "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .ok()?
    .get::<_, Option<String>>(0)?
    .parse()
    .ok()
}

/// A batch sent to Redis and not answered yet holds the acknowledgement
/// back: heartbeats and keepalives that arrive while it is in flight are
/// not acknowledged (their positions are past its commit), or a crash then
/// would lose the commit. Redis is paused for writes (`CLIENT PAUSE WRITE`
/// holds the publish call) while one row is in flight and heartbeat messages
/// follow it; the slot must stay before the row until Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_flight_holds_the_acknowledgement_back() {
    let redis = RedisServer::start().expect("redis");
    let ctx = TestContext::new().await.with_redis(&redis);
    seed(&ctx).await;
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let pg = ctx.pg().await;
    let slot = ctx.slot().to_owned();
    insert_properties(&ctx, 0, 5).await;
    wait_for_count(&ctx, 5, Duration::from_secs(30)).await;
    let lsn_now = || async {
        pg.query_one("SELECT (pg_current_wal_lsn() - '0/0')::text", &[])
            .await
            .expect("lsn")
            .get::<_, String>(0)
            .parse::<f64>()
            .expect("number")
    };
    wait_until(
        "the first rows are acknowledged",
        Duration::from_secs(30),
        || {
            let (pg, slot) = (&pg, &slot);
            let end = lsn_now();
            async move { (confirmed_flush(pg, slot).await? >= end.await).then_some(()) }
        },
    )
    .await;

    let mut admin = redis::Client::open(redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // Long enough for the checks below, well short of the publish timeout
    // (REALTIME_IO_TIMEOUT, 10 s): the batch stays in flight throughout.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(6000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .expect("pause");
    insert_properties(&ctx, 5, 6).await;
    // The row's commit ends here: acknowledging it, or anything after it,
    // reaches this position; everything before the row is below it.
    let row_end = lsn_now().await;
    // Heartbeats after the row (the ingestor writes its own every second
    // in tests too): each reaches the session while the row is in flight.
    for _ in 0..5 {
        pg.execute(
            "SELECT pg_logical_emit_message(false, 'realtime-heartbeat', '')",
            &[],
        )
        .await
        .expect("heartbeat");
    }
    let after_heartbeats = lsn_now().await;
    // Many status intervals (200 ms here): an acknowledgement would show.
    let window = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < window {
        let confirmed = confirmed_flush(&pg, &slot).await.expect("slot");
        assert!(
            confirmed < row_end,
            "acknowledged {confirmed}, the row (ending at {row_end}) or past it, while Redis had not taken it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        history(&ctx, Some("org1")).await.len(),
        5,
        "Redis was paused"
    );

    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .expect("unpause");
    wait_for_count(&ctx, 6, Duration::from_secs(30)).await;
    wait_until(
        "the row and the heartbeats after it are acknowledged",
        Duration::from_secs(30),
        || {
            let (pg, slot) = (&pg, &slot);
            async move { (confirmed_flush(pg, slot).await? >= after_heartbeats).then_some(()) }
        },
    )
    .await;
    assert_exactly_once(&ctx, 6).await;
    ing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_loses_nothing() {
    let pg = PostgresServer::start().expect("postgres");
    let ctx = TestContext::on(&pg).await;
    seed(&ctx).await;
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;

    insert_properties(&ctx, 0, 500).await;
    wait_for_count(&ctx, 100, Duration::from_secs(30)).await;
    pg.restart().expect("postgres restarts");
    insert_properties(&ctx, 500, 1000).await;

    wait_for_count(&ctx, 1000, Duration::from_secs(60)).await;
    assert_exactly_once(&ctx, 1000).await;
    ing.wait_ready().await;
    ing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_unrouted_tables_do_not_pin_wal() {
    let ing = RunningIngestor::start_default().await;
    let ctx = &ing.ctx;
    let pg = ctx.pg().await;
    let lsn_of = |sql: &'static str| {
        let pg = &pg;
        async move {
            pg.query_one(sql, &[])
                .await
                .expect("lsn query")
                .get::<_, Option<String>>(0)
        }
    };
    let start = lsn_of("SELECT (pg_current_wal_lsn() - '0/0')::text").await;
    // Only unrouted tables change: no event is published, yet the slot
    // must follow the WAL.
    for i in 0..2000 {
        pg.execute("INSERT INTO users (id) VALUES ($1)", &[&format!("busy{i}")])
            .await
            .expect("insert");
    }
    let end: f64 = lsn_of("SELECT (pg_current_wal_lsn() - '0/0')::text")
        .await
        .expect("lsn")
        .parse()
        .expect("number");
    let start: f64 = start.expect("lsn").parse().expect("number");
    assert!(end > start);
    let slot = ctx.slot().to_owned();
    wait_until("confirmed_flush_lsn passes the unrouted writes", Duration::from_secs(30), || {
        let pg = &pg;
        let slot = slot.clone();
        async move {
            let row = pg
                .query_one(
                    "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .ok()?;
            let confirmed: f64 = row.get::<_, Option<String>>(0)?.parse().ok()?;
            (confirmed >= end).then_some(())
        }
    })
    .await;
    assert!(history(ctx, Some("org1")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ingestor_stands_by_and_takes_over_the_slot() {
    let ctx = TestContext::new().await;
    seed(&ctx).await;
    let mut first = spawn_ingestor_binary(&ctx, "1s");
    let first_admin = first.admin_addr(Duration::from_secs(30)).await;
    let ready = |addr: std::net::SocketAddr| async move {
        http_get(&format!("http://{addr}/readyz"))
            .await
            .map(|(s, _)| s)
    };
    wait_until(
        "the first ingestor is ready",
        Duration::from_secs(30),
        || async { (ready(first_admin).await == Some(200)).then_some(()) },
    )
    .await;
    insert_properties(&ctx, 0, 50).await;
    wait_for_count(&ctx, 50, Duration::from_secs(30)).await;

    let second = spawn_ingestor_binary(&ctx, "1s");
    let second_admin = second.admin_addr(Duration::from_secs(30)).await;
    second
        .wait_for_line("standing by", Duration::from_secs(30))
        .await;
    assert_eq!(
        ready(second_admin).await,
        Some(503),
        "a standby is not ready"
    );

    first.terminate();
    let status = first.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "SIGTERM ends the ingestor cleanly:\n{}",
        first.output_text()
    );
    insert_properties(&ctx, 50, 100).await;
    wait_for_count(&ctx, 100, Duration::from_secs(60)).await;
    assert_exactly_once(&ctx, 100).await;
    assert_eq!(
        ready(second_admin).await,
        Some(200),
        "the standby took over"
    );
}
