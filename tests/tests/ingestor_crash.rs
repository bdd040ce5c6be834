//! Postgres crashes under load (`pg_ctl stop -m immediate`, then crash
//! recovery), with the real ingestor and gateway binaries and an SSE client
//! that resumes with `Last-Event-ID` whenever its stream ends (and by itself
//! every few hundred events, so resumes overlap the replays): every row
//! whose insert returned OK reaches the client exactly once, in commit
//! order; a row whose insert failed in the crash (its commit may or may not
//! have happened) arrives at most once, and only if it is in the table
//! after recovery. Nothing reaches the client twice (ARCHITECTURE.md §7, invariant 2).

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use crate::support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::http_get;
use crate::support::sse::SseClient;
use crate::support::start_ready;
use realtime_tests::{PostgresServer, TestContext, free_port, wait_until};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);
/// Rows inserted, one transaction each.
const ROWS: usize = 1500;
/// Events the reader takes per connection before it resumes on a new one.
const RECONNECT_EVERY: usize = 400;

const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('org1', 'Acme');
     INSERT INTO users (id) VALUES ('u1');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'u1', 'org1');";

/// What became of one insert, as its writer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The insert returned OK: it is committed and must arrive once.
    Committed,
    /// The insert failed (the connection died with the server): it may or
    /// may not have committed.
    Uncertain,
}

/// Inserts `p0..p<ROWS>` one per transaction, on one connection,
/// reconnecting after a failure, and reports each outcome in order.
async fn write_rows(ctx: TestContext, done: mpsc::UnboundedSender<Outcome>) {
    let mut pg = None;
    for i in 0..ROWS {
        if pg.is_none() {
            let ctx = ctx.clone();
            pg = Some(
                wait_until("Postgres accepts the writer again", WAIT * 2, || {
                    let ctx = ctx.clone();
                    async move { ctx.try_pg().await.ok() }
                })
                .await,
            );
        }
        let client = pg.as_ref().unwrap();
        let outcome = match client
            .execute(
                "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'org1', 'u1', 1)",
                &[&format!("p{i}")],
            )
            .await
        {
            Ok(_) => Outcome::Committed,
            Err(_) => {
                pg = None;
                Outcome::Uncertain
            }
        };
        if done.send(outcome).is_err() {
            return;
        }
    }
}

/// Reads the org1 stream for `u1`, resuming with `Last-Event-ID` after any
/// end, and forwards each event as (event id, property id). It also leaves
/// by itself after every [`RECONNECT_EVERY`] events, so resumes happen
/// while the crashes' replays are under way.
async fn read_with_resume(url: String, seen: mpsc::UnboundedSender<(String, String)>) {
    let tok = token("u1", 3600);
    let mut last: Option<String> = None;
    loop {
        // A transient refusal is retried until the deadline.
        let mut client = wait_until("the stream (re)opens", WAIT, || {
            let (url, tok, last) = (url.clone(), tok.clone(), last.clone());
            async move {
                let headers: Vec<(&str, &str)> = last
                    .as_deref()
                    .map(|id| vec![("last-event-id", id)])
                    .unwrap_or_default();
                let client = SseClient::connect(&url, Some(&tok), &headers).await;
                (client.status == 200).then_some(client)
            }
        })
        .await;
        let mut taken = 0;
        while let Ok(Some(message)) = client.next(Duration::from_secs(3600)).await {
            let Some(id) = message.id.clone() else {
                continue;
            };
            let event = message.json();
            let property = event["payload"]["propertyId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            last = Some(id.clone());
            if seen.send((id, property)).is_err() {
                return;
            }
            taken += 1;
            if taken == RECONNECT_EVERY {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_under_load_loses_and_duplicates_nothing_at_the_client() {
    let pg = PostgresServer::start().expect("postgres");
    let ctx = TestContext::on(&pg).await;
    ctx.batch(SEED).await;
    // A slow status interval leaves published-but-unacknowledged
    // transactions behind each crash: the restarted stream re-sends them.
    let ingestor = start_ready(
        "realtime-ingestor",
        &[
            ctx.ingestor_env(),
            vec![
                ("REALTIME_STATUS_INTERVAL", "30s".to_owned()),
                ("REALTIME_RECONNECT_MAX", "1s".to_owned()),
            ],
        ]
        .concat(),
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = ctx.gateway_env(addr, JWT_SECRET);
    env.push(("REALTIME_CONNECT_RATE", "0".to_owned()));
    let gateway = start_ready("realtime-gateway", &env).await;

    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_with_resume(
        format!("http://{addr}/api/realtime/stream?organizationId=org1"),
        seen_tx,
    ));
    let mut seen: Vec<(String, String)> = Vec::new();
    // The reader is subscribed once a first event arrives; before the load,
    // so nothing of it is missed by the live-only first connection.
    ctx.execute(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('warm', 'org1', 'u1', 1)",
        &[],
    )
    .await;
    let first = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .expect("the first event within 30 s")
        .unwrap();
    assert_eq!(first.1, "warm");
    seen.push(first);

    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_rows(ctx.clone(), done_tx));
    let mut outcomes: Vec<Outcome> = Vec::new();

    // Two crashes, each once the client has seen a third more of the rows.
    for crash in 1..=2 {
        let target = ROWS * crash / 3;
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        while seen.len() < target {
            tokio::select! {
                Some(e) = seen_rx.recv() => seen.push(e),
                Some(o) = done_rx.recv() => outcomes.push(o),
                _ = tokio::time::sleep_until(deadline) => panic!("only {} of {target} events before crash {crash}", seen.len()),
            }
        }
        tokio::task::block_in_place(|| pg.crash_restart()).expect("postgres crash-restarts");
    }
    writer.await.unwrap();
    while let Ok(o) = done_rx.try_recv() {
        outcomes.push(o);
    }
    assert_eq!(outcomes.len(), ROWS);
    let uncertain = outcomes
        .iter()
        .filter(|o| **o == Outcome::Uncertain)
        .count();

    // What is in the table after recovery is what committed.
    let in_table: BTreeSet<String> = ctx
        .query("SELECT id FROM properties WHERE id <> 'warm'", &[])
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (i, outcome) in outcomes.iter().enumerate() {
        if *outcome == Outcome::Committed {
            assert!(
                in_table.contains(&format!("p{i}")),
                "p{i} returned OK but is not in the table"
            );
        }
    }
    let want = in_table.len() + 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < want {
        match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
            Ok(Some(e)) => seen.push(e),
            _ => break,
        }
    }
    // A duplicate would come after the last row: give it the chance to
    // show by waiting for one more marker event.
    ctx.execute(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('end', 'org1', 'u1', 1)",
        &[],
    )
    .await;
    loop {
        match tokio::time::timeout(WAIT, seen_rx.recv()).await {
            Ok(Some(e)) => {
                let end = e.1 == "end";
                seen.push(e);
                if end {
                    break;
                }
            }
            _ => panic!("the end marker within 30 s; seen {} events", seen.len()),
        }
    }
    reader.abort();

    let ids: Vec<&String> = seen.iter().map(|(id, _)| id).collect();
    let distinct: BTreeSet<&String> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "an event id reached the client twice"
    );
    let properties: Vec<&str> = seen.iter().map(|(_, p)| p.as_str()).collect();
    let mut want_order: Vec<String> = vec!["warm".to_owned()];
    let mut rows: Vec<usize> = in_table.iter().map(|p| p[1..].parse().unwrap()).collect();
    rows.sort_unstable();
    want_order.extend(rows.iter().map(|i| format!("p{i}")));
    want_order.push("end".to_owned());
    let got_set: BTreeSet<&str> = properties.iter().copied().collect();
    let missing: Vec<&String> = want_order
        .iter()
        .filter(|p| !got_set.contains(p.as_str()))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "committed rows never reached the client, e.g. {missing:?}"
    );
    assert_eq!(
        properties.len(),
        want_order.len(),
        "every committed row exactly once ({uncertain} inserts were uncertain)"
    );
    assert_eq!(properties, want_order, "in commit order");

    // The crashes really happened under load: the ingestor reconnected, and
    // re-read transactions it had published but not acknowledged.
    let admin = ingestor.admin_addr(WAIT).await;
    let metrics = http_get(&format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .1;
    assert!(
        support::metric_value(&metrics, "realtime_ingestor_reconnects_total") >= 2.0,
        "{metrics}"
    );
    assert!(
        support::metric_value(&metrics, "realtime_ingestor_duplicates_skipped_total") > 0.0,
        "the restarted streams re-sent published transactions:\n{metrics}"
    );
    drop(gateway);
    drop(ingestor);
}
