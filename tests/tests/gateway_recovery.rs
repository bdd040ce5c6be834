//! The gateway when Redis restarts under connected clients: streams keep
//! going or end, and a client that resumes with Last-Event-ID misses nothing
//! the ingestor published after the restart, and never gets an event twice.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use realtime_tests::{RedisServer, TestContext, wait_until};
use support::gateway::{RunningGateway, gateway_config, token};
use support::sse::SseClient;
use support::{RunningIngestor, config_for};
use tokio::sync::mpsc;

/// A client that reconnects (with Last-Event-ID) whenever its stream ends,
/// reporting every property id it receives, for `for_how_long`.
/// What [`resilient_client`] reports for each stream it opens.
const CONNECTED: &str = "connected";

async fn resilient_client(
    url: String,
    tok: String,
    out: mpsc::UnboundedSender<(String, String)>,
    for_how_long: Duration,
) {
    let end = tokio::time::Instant::now() + for_how_long;
    let mut last: Option<String> = None;
    while tokio::time::Instant::now() < end {
        let headers: Vec<(&str, &str)> = last
            .as_deref()
            .map(|l| vec![("last-event-id", l)])
            .unwrap_or_default();
        let mut client = SseClient::connect(&url, Some(&tok), &headers).await;
        if client.status != 200 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match client.next(left).await {
                Ok(Some(m)) => {
                    if m.data
                        .as_deref()
                        .is_some_and(|d| d.contains("\"type\":\"connection\""))
                    {
                        // The test waits for every client's first stream
                        // before it commits anything: a live stream opened
                        // after an event does not get it.
                        let _ = out.send((String::new(), CONNECTED.to_owned()));
                    }
                    if let Some(id) = m.id.clone() {
                        let j = m.json();
                        if let Some(p) = j["payload"]["propertyId"].as_str() {
                            let _ = out.send((id.clone(), p.to_owned()));
                        }
                        last = Some(id);
                    }
                }
                Ok(None) => break, // ended: reconnect with Last-Event-ID
                Err(()) => return, // time is up
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_connected_clients_loses_nothing_published_after_it() {
    let redis = RedisServer::start().expect("redis");
    let ctx = TestContext::new().await.with_redis(&redis);
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let gws = [
        RunningGateway::start(gateway_config(&ctx)).await,
        RunningGateway::start(gateway_config(&ctx)).await,
    ];
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for gw in &gws {
        clients.push(tokio::spawn(resilient_client(
            gw.stream_url("organizationId=orgA"),
            token("ua", 3600),
            tx.clone(),
            Duration::from_secs(40),
        )));
    }
    drop(tx);
    let insert = |i: usize| {
        let ctx = ctx.clone();
        async move {
            ctx.execute(
                "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'orgA', 'ua', 1)",
                &[&format!("p{i}")],
            )
            .await;
        }
    };
    let mut seen = Vec::new();
    wait_until(
        "both clients are connected",
        Duration::from_secs(20),
        || {
            while let Ok(item) = rx.try_recv() {
                seen.push(item);
            }
            let n = seen.iter().filter(|(_, p)| p == CONNECTED).count();
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    seen.clear();
    // Before: both clients see the first events live.
    for i in 0..20 {
        insert(i).await;
    }
    wait_until(
        "both clients got the events before the restart",
        Duration::from_secs(20),
        || {
            while let Ok(item) = rx.try_recv() {
                seen.push(item);
            }
            let n = seen.iter().filter(|(_, p)| p != CONNECTED).count();
            async move { (n >= 40).then_some(()) }
        },
    )
    .await;

    redis.restart().expect("redis restarts");
    // Everything committed from here on must reach both clients.
    for i in 20..120 {
        insert(i).await;
    }
    let want: BTreeSet<String> = (20..120).map(|i| format!("p{i}")).collect();
    wait_until(
        "both clients got every event committed after the restart",
        Duration::from_secs(40),
        || {
            while let Ok(item) = rx.try_recv() {
                seen.push(item);
            }
            let props: Vec<&String> = seen.iter().map(|(_, p)| p).collect();
            let count = want
                .iter()
                .filter(|w| props.iter().filter(|p| **p == *w).count() >= 2)
                .count();
            let done = count == want.len();
            async move { done.then_some(()) }
        },
    )
    .await;
    for c in clients {
        c.abort();
    }
    // No client got an event id twice.
    let ids: Vec<&String> = seen
        .iter()
        .filter(|(_, p)| p != CONNECTED)
        .map(|(id, _)| id)
        .collect();
    let distinct: BTreeSet<&&String> = ids.iter().collect();
    assert_eq!(
        ids.len(),
        distinct.len() * 2,
        "each event exactly once per client (2 clients)"
    );
    drop(ing);
}
