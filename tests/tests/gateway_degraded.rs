//! A gateway whose Postgres is down (the harness stops the server), with
//! the real ingestor and gateway binaries: `/readyz` stays 200 and says
//! `degraded: postgres unavailable` (Redis is fine, so the replica is not
//! pulled out of rotation); an open stream stays open, gets heartbeats and
//! events published to Redis; a client resuming with `Last-Event-ID` whose
//! membership is cached gets its replay from Redis history; a new
//! `EventSource` request that needs a membership query gets the transient
//! answer of ARCHITECTURE.md §3 (200 `text/event-stream`, jittered `retry:`, a
//! `: <reason>` comment, end), and so does one authenticated by a database
//! session; another caller gets a 503 with `Retry-After`; a bad token stays
//! a final 401. When Postgres is back, the
//! body says ready again and the refused user gets in.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::http_get;
use crate::support::sse::{Message, SseClient};
use realtime_ingestor::publish::{Outgoing, Publisher};
use realtime_shared::envelope::Envelope;
use realtime_shared::event::{Event, EventId};
use realtime_shared::keys::Keys;
use realtime_tests::{
    ChildProcess, PostgresServer, TestContext, binary_path, free_port, wait_until,
};

const WAIT: Duration = Duration::from_secs(30);
/// `REALTIME_RETRY` of the gateway under test.
const RETRY_MS: u64 = 2000;

const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
     INSERT INTO users (id) VALUES ('ua'), ('uc');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES
       ('m1', 'ua', 'orgA'), ('m2', 'uc', 'orgA');
     INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires)
       VALUES ('s1', 'sess-uc', 'uc', now() + interval '1 hour');";

async fn start_ready(name: &str, env: &[(&str, String)]) -> (ChildProcess, SocketAddr) {
    let child = ChildProcess::spawn(&binary_path(name), env);
    let admin = child.admin_addr(WAIT).await;
    wait_until(&format!("{name} is ready"), WAIT, || async move {
        http_get(&format!("http://{admin}/readyz"))
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    (child, admin)
}

async fn insert_property(ctx: &TestContext, id: &str) {
    ctx.execute(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'orgA', 'ua', 1)",
        &[&id],
    )
    .await;
}

/// The next message that is an event or a comment (heartbeat), skipping
/// nothing else; `None` when the stream ended or nothing came within `within`.
async fn next_message(client: &mut SseClient, within: Duration) -> Option<Message> {
    client.next(within).await.ok().flatten()
}

/// Publishes a `system.alert` for orgA straight into Redis, as the ingestor
/// would, with an id above every id so far.
async fn publish_to_redis(ctx: &TestContext, id: EventId, n: u64) {
    let event: Event = serde_json::from_value(serde_json::json!({
        "id": id.to_string(),
        "type": "system.alert",
        "timestamp": 0,
        "source": "api",
        "version": "1.0",
        "organizationId": "orgA",
        "payload": {"n": n},
    }))
    .unwrap();
    let target = realtime_shared::redis_target::RedisTarget::parse(&ctx.redis_url(), None).unwrap();
    let mut publisher = Publisher::connect(
        &target,
        None,
        Keys::new(ctx.key_prefix()),
        10_000,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let new = publisher
        .publish(&[Outgoing {
            id,
            scope: event.scope(),
            bytes: Envelope::new(event).to_bytes(),
        }])
        .await
        .unwrap();
    assert_eq!(new, vec![true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgres_open_streams_go_on_cached_members_resume_and_new_ones_retry() {
    let pg = PostgresServer::start().expect("postgres");
    let ctx = TestContext::on(&pg).await;
    ctx.batch(SEED).await;
    let (ingestor, _) = start_ready(
        "realtime-ingestor",
        &[
            ctx.ingestor_env(),
            vec![("REALTIME_RECONNECT_MAX", "1s".to_owned())],
        ]
        .concat(),
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = ctx.gateway_env(addr, JWT_SECRET);
    env.extend([
        ("REALTIME_CONNECT_RATE", "0".to_owned()),
        ("REALTIME_MEMBERSHIP_TTL", "10m".to_owned()),
        ("REALTIME_HEARTBEAT", "1s".to_owned()),
        ("REALTIME_RETRY", format!("{RETRY_MS}ms")),
        ("REALTIME_IO_TIMEOUT", "2s".to_owned()),
    ]);
    let (gateway, admin) = start_ready("realtime-gateway", &env).await;
    let url = format!("http://{addr}/api/realtime/stream?organizationId=orgA");
    let ua = token("ua", 3600);

    // An open stream of ua, which also caches ua's membership.
    let mut open = SseClient::connect(&url, Some(&ua), &[]).await;
    assert_eq!(open.status, 200, "{}", open.body_text);
    insert_property(&ctx, "p1").await;
    insert_property(&ctx, "p2").await;
    let before = open.events(2, WAIT).await;
    assert_eq!(before.len(), 2);
    let first_id = before[0].id.clone().unwrap();
    let second_id: EventId = before[1].id.as_deref().unwrap().parse().unwrap();

    pg.stop().expect("postgres stops");

    // Ready, and degraded, as documented.
    let body = wait_until("/readyz says postgres is degraded", WAIT, || async move {
        http_get(&format!("http://{admin}/readyz"))
            .await
            .filter(|(_, body)| body.contains("degraded: postgres unavailable"))
    })
    .await;
    assert_eq!(
        body.0, 200,
        "readyz stays 200 while Redis answers: {}",
        body.1
    );
    let metrics = http_get(&format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .1;
    assert_eq!(
        support::metric_value(&metrics, "realtime_gateway_postgres_up"),
        0.0,
        "{metrics}"
    );

    // The open stream stays open: heartbeats, and events published to Redis.
    let heartbeat = next_message(&mut open, WAIT).await.expect("stream open");
    assert!(
        heartbeat
            .comment
            .as_deref()
            .is_some_and(|c| c.starts_with("heartbeat")),
        "{heartbeat:?}"
    );
    let live_id = EventId::new(second_id.lsn + 1, 0);
    publish_to_redis(&ctx, live_id, 1).await;
    let live = open
        .next_event(WAIT)
        .await
        .expect("a live event without Postgres");
    assert_eq!(live.id.as_deref(), Some(live_id.to_string().as_str()));
    assert_eq!(live.json()["payload"]["n"], 1);

    // ua resumes from p1 (cached membership): p2 and the alert, from history.
    let mut resumed = SseClient::connect(&url, Some(&ua), &[("last-event-id", &first_id)]).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body_text);
    let hello = resumed.next(WAIT).await.unwrap().unwrap();
    assert_eq!(hello.json()["type"], "connection");
    let replay = resumed.events(2, WAIT).await;
    let replayed: Vec<String> = replay.iter().filter_map(|m| m.id.clone()).collect();
    assert_eq!(
        replayed,
        vec![second_id.to_string(), live_id.to_string()],
        "the replay from Redis history"
    );

    // uc's membership is not cached: an EventSource gets a retryable answer.
    let uc = token("uc", 3600);
    let mut refused = SseClient::connect(&url, Some(&uc), &[("accept", "text/event-stream")]).await;
    assert_eq!(refused.status, 200, "{}", refused.body_text);
    assert_eq!(
        refused
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let hint = refused.next(WAIT).await.unwrap().expect("a retry hint");
    let retry = hint.retry.expect("a retry: field");
    assert!(
        (RETRY_MS / 2..RETRY_MS * 3 / 2).contains(&retry),
        "jittered around REALTIME_RETRY: {retry}"
    );
    assert!(
        hint.comment
            .as_deref()
            .is_some_and(|c| c.contains("unavailable")),
        "{hint:?}"
    );
    assert!(refused.ends_within(WAIT).await, "then the stream ends");
    // A database session cannot be looked up either: the same answer.
    let mut by_session = SseClient::connect(
        &url,
        None,
        &[
            ("accept", "text/event-stream"),
            ("cookie", "authjs.session-token=sess-uc"),
        ],
    )
    .await;
    assert_eq!(by_session.status, 200, "{}", by_session.body_text);
    let hint = by_session.next(WAIT).await.unwrap().expect("a retry hint");
    assert!(hint.retry.is_some(), "{hint:?}");
    assert!(
        hint.comment
            .as_deref()
            .is_some_and(|c| c.contains("session")),
        "{hint:?}"
    );
    assert!(by_session.ends_within(WAIT).await);
    // Any other caller: 503 with Retry-After.
    let plain = SseClient::connect(&url, Some(&uc), &[]).await;
    assert_eq!(plain.status, 503, "{}", plain.body_text);
    assert!(plain.headers.contains_key("retry-after"));
    // A final refusal stays final for an EventSource too.
    let unauthenticated = SseClient::connect(
        &url,
        Some("not-a-token"),
        &[("accept", "text/event-stream")],
    )
    .await;
    assert_eq!(unauthenticated.status, 401);

    // Postgres back: ready, not degraded, and uc gets in.
    pg.start_again().expect("postgres starts again");
    wait_until("/readyz is no longer degraded", WAIT, || async move {
        http_get(&format!("http://{admin}/readyz"))
            .await
            .filter(|(status, body)| *status == 200 && !body.contains("degraded"))
    })
    .await;
    let metrics = http_get(&format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .1;
    assert_eq!(
        support::metric_value(&metrics, "realtime_gateway_postgres_up"),
        1.0
    );
    let url2 = url.clone();
    let uc2 = uc.clone();
    let back = wait_until("uc is admitted again", WAIT, || {
        let url = url2.clone();
        let uc = uc2.clone();
        async move {
            let client =
                SseClient::connect(&url, Some(&uc), &[("accept", "text/event-stream")]).await;
            let mut client = client;
            let hello = client.next(Duration::from_secs(5)).await.ok().flatten()?;
            (hello.data.is_some()).then_some(client)
        }
    })
    .await;
    drop(back);
    drop(open);
    drop(resumed);
    drop(gateway);
    drop(ingestor);
}

/// The connect limiter's 429 is transient too: an `EventSource` over the
/// rate gets a 200 `text/event-stream` whose `retry:` is not far below the
/// limiter's `Retry-After`; another caller keeps the 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_source_over_the_connect_rate_gets_a_retry_hint() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = ctx.gateway_env(addr, JWT_SECRET);
    env.extend([
        // One new stream per 10 s per address.
        ("REALTIME_CONNECT_RATE", "0.1".to_owned()),
        ("REALTIME_CONNECT_BURST", "1".to_owned()),
        ("REALTIME_RETRY", format!("{RETRY_MS}ms")),
    ]);
    let (gateway, _) = start_ready("realtime-gateway", &env).await;
    let url = format!("http://{addr}/api/realtime/stream?organizationId=orgA");
    let ua = token("ua", 3600);
    let accept = [("accept", "text/event-stream")];

    let mut first = SseClient::connect(&url, Some(&ua), &accept).await;
    assert_eq!(first.status, 200, "{}", first.body_text);
    let hello = first.next(WAIT).await.unwrap().unwrap();
    assert_eq!(hello.json()["type"], "connection");

    let mut limited = SseClient::connect(&url, Some(&ua), &accept).await;
    assert_eq!(limited.status, 200, "{}", limited.body_text);
    let hint = limited.next(WAIT).await.unwrap().expect("a retry hint");
    let retry = hint.retry.expect("a retry: field");
    assert!(
        retry >= 2_500,
        "the hint is not far below the limiter's Retry-After (~10 s): {retry}"
    );
    assert!(
        hint.comment
            .as_deref()
            .is_some_and(|c| c.contains("slow down")),
        "{hint:?}"
    );
    assert!(limited.ends_within(WAIT).await);

    let plain = SseClient::connect(&url, Some(&ua), &[]).await;
    assert_eq!(plain.status, 429, "{}", plain.body_text);
    assert!(plain.headers.contains_key("retry-after"));
    drop(first);
    drop(gateway);
}
