//! A lost replication slot is never silent (issue 12), with the real
//! ingestor and gateway binaries on real Postgres and Redis: a slot dropped
//! while the ingestor was stopped, or invalidated by
//! `max_slot_wal_keep_size`, is recreated on restart and every client of
//! every organization gets one `data.sync` `{"reason":"slot_lost"}` before
//! the live events, also when it resumes with an old `Last-Event-ID`. A first
//! start, and a restart with the slot intact, send none.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::sse::{Message, SseClient};
use crate::support::start_ready;
use crate::support::{history, http_get, metric_value, wait_for_history};
use realtime_tests::{ChildProcess, PostgresServer, TestContext, free_port, wait_until};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme'), ('orgB', 'Bolt');
     INSERT INTO users (id) VALUES ('ua'), ('ub');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES
       ('m1', 'ua', 'orgA'), ('m2', 'ub', 'orgB');";

async fn start_ingestor(ctx: &TestContext) -> ChildProcess {
    start_ready(
        "realtime-ingestor",
        &[
            ctx.ingestor_env(),
            vec![
                ("REALTIME_STATUS_INTERVAL", "200ms".to_owned()),
                ("REALTIME_RECONNECT_MAX", "1s".to_owned()),
            ],
        ]
        .concat(),
    )
    .await
}

async fn stop(mut child: ChildProcess) -> String {
    child.terminate();
    child.wait_exit(WAIT).await;
    child.output_text()
}

async fn start_gateway(ctx: &TestContext) -> (ChildProcess, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = ctx.gateway_env(addr, JWT_SECRET);
    env.push(("REALTIME_CONNECT_RATE", "0".to_owned()));
    (start_ready("realtime-gateway", &env).await, addr)
}

/// An open stream of `org` for `user`, past its connection message.
async fn open(addr: SocketAddr, org: &str, user: &str, last_event_id: Option<&str>) -> SseClient {
    let headers: Vec<(&str, &str)> = last_event_id
        .map(|id| vec![("Last-Event-ID", id)])
        .unwrap_or_default();
    let mut client = SseClient::connect(
        &format!("http://{addr}/api/realtime/stream?organizationId={org}"),
        Some(&token(user, 600)),
        &headers,
    )
    .await;
    assert_eq!(client.status, 200, "{}", client.body_text);
    let first = loop {
        let m = client
            .next(WAIT)
            .await
            .unwrap()
            .expect("connection message");
        if m.data.is_some() {
            break m;
        }
    };
    assert_eq!(first.json()["type"], "connection");
    client
}

async fn insert_property(ctx: &TestContext, id: &str, org: &str, user: &str) {
    ctx.execute(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, $2, $3, 1)",
        &[&id, &org, &user],
    )
    .await;
}

async fn next_event(client: &mut SseClient, what: &str) -> (Message, Value) {
    let m = client
        .next_event(WAIT)
        .await
        .unwrap_or_else(|| panic!("{what}: no event within {WAIT:?}"));
    let json = m.json();
    (m, json)
}

fn is_slot_lost(event: &Value) -> bool {
    event["type"] == "data.sync" && event["payload"] == serde_json::json!({"reason": "slot_lost"})
}

async fn slot_metric(ingestor: &ChildProcess) -> f64 {
    let admin = ingestor.admin_addr(WAIT).await;
    let text = http_get(&format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .1;
    metric_value(&text, "realtime_ingestor_slot_recreated_total")
}

async fn slot_exists(ctx: &TestContext) -> bool {
    !ctx.query(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
        &[&ctx.slot()],
    )
    .await
    .is_empty()
}

/// Streams two organizations with history, stops the ingestor, runs `lose`
/// (which loses the slot while rows are committed), restarts it and checks
/// what every client sees.
async fn slot_lost_while_stopped<F, Fut>(ctx: TestContext, lose: F)
where
    F: FnOnce(TestContext) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    ctx.batch(SEED).await;
    let ingestor = start_ingestor(&ctx).await;
    let (_gateway, addr) = start_gateway(&ctx).await;
    insert_property(&ctx, "a1", "orgA", "ua").await;
    insert_property(&ctx, "b1", "orgB", "ub").await;
    let a1 = wait_for_history(&ctx, Some("orgA"), 1, WAIT).await[0].id;
    wait_for_history(&ctx, Some("orgB"), 1, WAIT).await;
    assert_eq!(slot_metric(&ingestor).await, 0.0, "exported at 0");

    let mut live_a = open(addr, "orgA", "ua", None).await;
    let mut live_b = open(addr, "orgB", "ub", None).await;
    let output = stop(ingestor).await;
    assert!(!output.contains("was lost"), "{output}");

    lose(ctx.clone()).await;
    // Committed while the slot is gone: these can never be delivered.
    insert_property(&ctx, "a2", "orgA", "ua").await;
    insert_property(&ctx, "b2", "orgB", "ub").await;

    let ingestor = start_ingestor(&ctx).await;
    let mut sync_ids = Vec::new();
    for (client, org) in [(&mut live_a, "orgA"), (&mut live_b, "orgB")] {
        let (m, event) = next_event(client, org).await;
        assert!(
            is_slot_lost(&event),
            "{org} first gets data.sync slot_lost: {event}"
        );
        sync_ids.push(m.id.unwrap());
    }
    assert_eq!(
        sync_ids[0], sync_ids[1],
        "one id for the data.sync everywhere"
    );
    assert_eq!(slot_metric(&ingestor).await, 1.0);

    // Then live events, and no second data.sync.
    insert_property(&ctx, "a3", "orgA", "ua").await;
    insert_property(&ctx, "b3", "orgB", "ub").await;
    for (client, org, id) in [(&mut live_a, "orgA", "a3"), (&mut live_b, "orgB", "b3")] {
        let (m, event) = next_event(client, org).await;
        assert_eq!(event["type"], "property.update", "{org}: {event}");
        assert_eq!(event["payload"]["propertyId"], id, "{org}: {event}");
        assert!(m.id.unwrap() > sync_ids[0]);
    }

    // A client resuming from before the loss gets the same data.sync.
    let old = format!("{}-{}", a1.0, a1.1);
    let mut resumed = open(addr, "orgA", "ua", Some(&old)).await;
    let (m, event) = next_event(&mut resumed, "resumed orgA").await;
    assert!(
        is_slot_lost(&event),
        "the resumed stream replays data.sync: {event}"
    );
    assert_eq!(m.id.as_deref(), Some(sync_ids[0].as_str()));
    let (_, event) = next_event(&mut resumed, "resumed orgA").await;
    assert_eq!(event["payload"]["propertyId"], "a3", "{event}");

    // Exactly one data.sync per history, the broadcast included, and one
    // clear error line.
    for org in [Some("orgA"), Some("orgB"), None] {
        let syncs = history(&ctx, org)
            .await
            .into_iter()
            .filter(|e| is_slot_lost(&e.event))
            .count();
        assert_eq!(syncs, 1, "one data.sync in the history of {org:?}");
    }
    let output = stop(ingestor).await;
    assert_eq!(output.matches("was lost").count(), 1, "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_while_stopped_sends_data_sync_to_every_organization() {
    let ctx = TestContext::new().await;
    slot_lost_while_stopped(ctx, |ctx| async move {
        // The walsender of the stopped ingestor may linger a moment.
        wait_until("the slot is dropped", WAIT, || async {
            ctx.pg()
                .await
                .execute("SELECT pg_drop_replication_slot($1)", &[&ctx.slot()])
                .await
                .ok()
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_by_max_slot_wal_keep_size_sends_data_sync() {
    let pg = PostgresServer::start().expect("postgres");
    let ctx = TestContext::on(&pg).await;
    // ALTER SYSTEM cannot run in the implicit transaction of a batch.
    ctx.batch("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await;
    ctx.batch("SELECT pg_reload_conf()").await;
    slot_lost_while_stopped(ctx, |ctx| async move {
        // Write and switch WAL segments until a checkpoint invalidates the
        // slot, which nobody reads.
        wait_until("the slot is invalidated", Duration::from_secs(60), || async {
            ctx.batch(
                "INSERT INTO users (id) SELECT 'filler-' || g || '-' || random() FROM generate_series(1, 2000) g",
            )
            .await;
            ctx.batch("SELECT pg_switch_wal()").await;
            ctx.batch("CHECKPOINT").await;
            let status: Option<String> = ctx
                .query(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                    &[&ctx.slot()],
                )
                .await
                .first()
                .and_then(|r| r.get(0));
            (status.as_deref() == Some("lost")).then_some(())
        })
        .await;
    })
    .await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_and_a_plain_restart_send_no_data_sync() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    assert!(!slot_exists(&ctx).await, "a fresh database");
    let ingestor = start_ingestor(&ctx).await;
    assert!(slot_exists(&ctx).await, "the first start creates the slot");
    let (_gateway, addr) = start_gateway(&ctx).await;
    let mut live = open(addr, "orgA", "ua", None).await;
    insert_property(&ctx, "a1", "orgA", "ua").await;
    let (_, event) = next_event(&mut live, "orgA").await;
    assert_eq!(event["payload"]["propertyId"], "a1", "{event}");
    assert_eq!(slot_metric(&ingestor).await, 0.0);
    stop(ingestor).await;

    // A restart with the slot intact: the change committed meanwhile
    // arrives, and nothing else.
    insert_property(&ctx, "a2", "orgA", "ua").await;
    let ingestor = start_ingestor(&ctx).await;
    let (_, event) = next_event(&mut live, "orgA").await;
    assert_eq!(event["payload"]["propertyId"], "a2", "{event}");
    assert_eq!(slot_metric(&ingestor).await, 0.0);
    let output = stop(ingestor).await;
    assert!(!output.contains("was lost"), "{output}");
    for org in [Some("orgA"), None] {
        let syncs: Vec<Value> = history(&ctx, org)
            .await
            .into_iter()
            .map(|e| e.event)
            .filter(|e| e["type"] == "data.sync")
            .collect();
        assert!(syncs.is_empty(), "no data.sync in {org:?}: {syncs:?}");
    }
}
