//! The gateway when Redis fails under connected and resuming clients, with
//! the database as the oracle: every client gets every event of its
//! organization exactly once, in id order, and never a `data.sync` while
//! the history still covers its `Last-Event-ID`.
//!
//! - A Redis restart (AOF on, so the history survives it) with rows
//!   committed before, during (Redis down: the ingestor holds them and
//!   publishes after) and after, under clients connected throughout and
//!   clients hopping between two replicas with `Last-Event-ID`.
//! - Redis refusing `XINFO` (an ACL `NOPERM`, standing for `-LOADING` or a
//!   connection being re-established): a resume at connect gets the
//!   transient refusal, a connected stream's catch-up waits, and neither
//!   gets a `data.sync`; once Redis answers, exactly the events after the
//!   client's id follow.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use crate::support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::gateway::{RunningGateway, gateway_config, token};
use crate::support::sse::SseClient;
use crate::support::{RunningIngestor, config_for};
use realtime_tests::{RedisServer, TestContext, wait_until};

/// An event id as numbers, to check order.
type Id = (u64, u64);

fn parse_id(id: &str) -> Id {
    let (a, b) = id.split_once('-').expect("an id is <lsn>-<index>");
    (a.parse().expect("lsn"), b.parse().expect("index"))
}

/// What one client saw over all its streams.
#[derive(Debug, Default)]
struct Seen {
    /// Every event, in arrival order: id, propertyId, organizationId.
    events: Vec<(Id, String, String)>,
    /// `data.sync` messages.
    syncs: Vec<String>,
    /// Streams opened (a `connection` message).
    streams: usize,
    /// Refused connection attempts (any status but 200).
    refused: usize,
}

/// A client of one organization that reads until `stop`, reconnecting
/// with `Last-Event-ID` whenever its stream ends (same replica) or, when
/// `hop` is set, also every `hop` to the other replica of `urls`.
async fn client(
    urls: [String; 2],
    first: usize,
    tok: String,
    hop: Option<Duration>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let mut at = first;
    let mut last: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let headers: Vec<(&str, &str)> = last
            .as_deref()
            .map(|l| vec![("last-event-id", l)])
            .unwrap_or_default();
        let mut stream = SseClient::connect(&urls[at % 2], Some(&tok), &headers).await;
        if stream.status != 200 {
            seen.lock().unwrap().refused += 1;
            if hop.is_some() {
                at += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut hop_at = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let now = tokio::time::Instant::now();
            // Hops only once it has an id to resume from: a reconnection
            // without one is a fresh live stream (as for an EventSource)
            // and would rightly miss what is committed in between.
            if hop_at.is_none() && last.is_some() {
                hop_at = hop.map(|h| now + h);
            }
            let left = hop_at.map_or(Duration::from_millis(200), |h| {
                h.saturating_duration_since(now)
                    .min(Duration::from_millis(200))
            });
            if left.is_zero() {
                at += 1;
                break; // hop: drop this stream, resume on the other replica
            }
            match stream.next(left).await {
                Ok(Some(m)) => {
                    let Some(data) = m.data.as_deref() else {
                        continue;
                    };
                    let json = m.json();
                    let mut s = seen.lock().unwrap();
                    match json["type"].as_str() {
                        Some("connection") => s.streams += 1,
                        Some("data.sync") => s.syncs.push(data.to_owned()),
                        _ => {}
                    }
                    if let Some(id) = &m.id {
                        s.events.push((
                            parse_id(id),
                            json["payload"]["propertyId"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            json["organizationId"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        ));
                        last = Some(id.clone());
                    }
                }
                Ok(None) => break, // ended: resume with Last-Event-ID
                Err(()) => {}      // nothing within `left`
            }
        }
    }
}

async fn insert(ctx: &TestContext, org: &str, id: &str) {
    ctx.execute(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, $2, 'u', 1)",
        &[&id, &org],
    )
    .await;
}

/// `count` rows in each organization, alternating.
async fn commit(ctx: &TestContext, n: &mut usize, count: usize) {
    for _ in 0..count {
        for org in ["orgA", "orgB"] {
            insert(ctx, org, &format!("{org}-p{n}")).await;
        }
        *n += 1;
    }
}

/// The oracle: the properties of `org` in Postgres.
async fn rows_of(ctx: &TestContext, org: &str) -> BTreeSet<String> {
    ctx.query(
        "SELECT id FROM properties WHERE \"organizationId\" = $1",
        &[&org],
    )
    .await
    .iter()
    .map(|row| row.get::<_, String>(0))
    .collect()
}

/// `ACL SETUSER gw <rules>`.
async fn acl(admin: &mut redis::aio::MultiplexedConnection, rules: &[&str]) {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("gw")
        .arg(rules)
        .query_async::<()>(admin)
        .await
        .expect("ACL SETUSER");
}

/// Per client: no `data.sync`; ids strictly increasing (exactly once, in
/// id order); nothing of another organization; every row of its
/// organization.
fn check(name: &str, org: &str, seen: &Seen, want: &BTreeSet<String>) {
    assert!(
        seen.syncs.is_empty(),
        "{name}: data.sync while the history covered its Last-Event-ID: {:?}",
        seen.syncs
    );
    for pair in seen.events.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "{name}: {:?} then {:?}: an event twice or out of id order",
            pair[0],
            pair[1]
        );
    }
    for (id, property, event_org) in &seen.events {
        assert_eq!(
            event_org, org,
            "{name}: event {id:?} ({property}) of another organization"
        );
    }
    let got: Vec<&String> = seen.events.iter().map(|(_, p, _)| p).collect();
    let distinct: BTreeSet<String> = got.iter().map(|p| (*p).clone()).collect();
    assert_eq!(got.len(), distinct.len(), "{name}: a row twice");
    let missing: Vec<&String> = want.difference(&distinct).collect();
    let extra: Vec<&String> = distinct.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: missing {missing:?}, not in Postgres {extra:?}"
    );
}

fn has_all(seen: &Seen, want: &BTreeSet<String>) -> bool {
    let got: BTreeSet<&String> = seen.events.iter().map(|(_, p, _)| p).collect();
    want.iter().all(|w| got.contains(w))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_aof_under_connected_and_resuming_clients_loses_and_repeats_nothing() {
    let redis = RedisServer::start_with_aof().expect("redis");
    let ctx = TestContext::new().await.with_redis(&redis);
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme'), ('orgB', 'Bravo');
         INSERT INTO users (id) VALUES ('u'), ('ua'), ('ub');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES
           ('m1', 'ua', 'orgA'), ('m2', 'ub', 'orgB');",
    )
    .await;
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let gws = [
        RunningGateway::start(gateway_config(&ctx)).await,
        RunningGateway::start(gateway_config(&ctx)).await,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    // Per organization: one client on each replica connected throughout,
    // and two hopping between the replicas (every 0.4 s and 0.7 s), so
    // resumes land before, during and right after the outage.
    let mut clients = Vec::new();
    for (org, user) in [("orgA", "ua"), ("orgB", "ub")] {
        let query = format!("organizationId={org}");
        let urls = [gws[0].stream_url(&query), gws[1].stream_url(&query)];
        for (kind, first, hop) in [
            ("steady", 0, None),
            ("steady", 1, None),
            ("hopper", 0, Some(Duration::from_millis(400))),
            ("hopper", 1, Some(Duration::from_millis(700))),
        ] {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let task = tokio::spawn(client(
                urls.clone(),
                first,
                token(user, 3600),
                hop,
                seen.clone(),
                stop.clone(),
            ));
            clients.push((format!("{kind}-{org}-{first}"), org, seen, task));
        }
    }
    wait_until("every client has a stream", Duration::from_secs(30), || {
        let ready = clients
            .iter()
            .all(|(_, _, s, _)| s.lock().unwrap().streams > 0);
        async move { ready.then_some(()) }
    })
    .await;
    let mut n = 0;

    // Before.
    commit(&ctx, &mut n, 20).await;
    let before = [rows_of(&ctx, "orgA").await, rows_of(&ctx, "orgB").await];
    wait_until(
        "every client got the rows committed before the outage",
        Duration::from_secs(30),
        || {
            let done = clients.iter().all(|(_, org, s, _)| {
                has_all(&s.lock().unwrap(), &before[usize::from(*org == "orgB")])
            });
            async move { done.then_some(()) }
        },
    )
    .await;

    // During: Redis is down; the ingestor must hold these rows.
    let refused_before: usize = clients
        .iter()
        .map(|(_, _, s, _)| s.lock().unwrap().refused)
        .sum();
    tokio::task::block_in_place(|| redis.stop()).expect("redis stops");
    commit(&ctx, &mut n, 20).await;
    // Hoppers try to resume while Redis is down (and are refused).
    wait_until(
        "hoppers were refused while Redis was down",
        Duration::from_secs(30),
        || {
            let refused: usize = clients
                .iter()
                .map(|(_, _, s, _)| s.lock().unwrap().refused)
                .sum();
            async move { (refused >= refused_before + 4).then_some(()) }
        },
    )
    .await;
    tokio::task::block_in_place(|| redis.start_again()).expect("redis starts again");

    // After: right after the restart, and once more a little later.
    commit(&ctx, &mut n, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // let hoppers hop once more
    commit(&ctx, &mut n, 20).await;

    let want = [rows_of(&ctx, "orgA").await, rows_of(&ctx, "orgB").await];
    assert_eq!(want[0].len(), 80);
    wait_until(
        "every client got every row of its organization",
        Duration::from_secs(90),
        || {
            let done = clients.iter().all(|(_, org, s, _)| {
                has_all(&s.lock().unwrap(), &want[usize::from(*org == "orgB")])
            });
            async move { done.then_some(()) }
        },
    )
    .await;
    // A moment for anything that would arrive twice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for (name, org, seen, task) in clients {
        task.abort();
        let seen = seen.lock().unwrap();
        check(&name, org, &seen, &want[usize::from(org == "orgB")]);
        if name.starts_with("hopper") {
            assert!(
                seen.streams >= 4,
                "{name} resumed only {} times",
                seen.streams
            );
        }
    }
    drop(ing);
}

/// Redis refuses `XINFO` to the gateway's user (an ACL `NOPERM`: a
/// deterministic stand-in for `-LOADING` while Redis loads its AOF, or a
/// command failing while the connection is re-established). Read as "no
/// such stream", both histories looked empty and a covered `Last-Event-ID`
/// looked above them: a false `data.sync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_error_during_resume_or_catch_up_is_never_a_gap() {
    let redis = RedisServer::start().expect("redis");
    let ctx = TestContext::new().await.with_redis(&redis);
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('u'), ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;
    let mut admin = ctx.redis().await;
    acl(&mut admin, &["on", ">gw-password", "~*", "&*", "+@all"]).await;
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let mut config = gateway_config(&ctx);
    config.redis_url = format!("redis://gw:gw-password@127.0.0.1:{}", redis.port());
    let gw = RunningGateway::start(config).await;
    let url = gw.stream_url("organizationId=orgA");
    let tok = token("ua", 3600);

    let mut live = SseClient::connect(&url, Some(&tok), &[]).await;
    assert_eq!(live.status, 200);
    live.next(Duration::from_secs(10))
        .await
        .expect("connection message");
    for i in 0..5 {
        insert(&ctx, "orgA", &format!("p{i}")).await;
    }
    let first = live.events(5, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 5, "the first events, live");
    let covered = first[1].id.clone().unwrap();
    let covered_id = parse_id(&covered);

    // 1. A resume at connect while XINFO fails: the transient refusal,
    //    never a stream that starts with data.sync.
    acl(&mut admin, &["-xinfo"]).await;
    let refused = SseClient::connect(&url, Some(&tok), &[("last-event-id", &covered)]).await;
    assert_eq!(
        (
            refused.status,
            refused.body_text.contains("history unavailable")
        ),
        (503, true),
        "a resume while Redis fails is refused transiently: {} {}",
        refused.status,
        refused.body_text
    );
    let mut as_event_source = SseClient::connect(
        &url,
        Some(&tok),
        &[("last-event-id", &covered), ("accept", "text/event-stream")],
    )
    .await;
    assert_eq!(as_event_source.status, 200);
    let mut answer = Vec::new();
    while let Ok(Some(m)) = as_event_source.next(Duration::from_secs(10)).await {
        answer.push(m);
        assert!(
            answer.len() < 10,
            "an EventSource gets only a retry hint: {answer:?}"
        );
    }
    assert!(
        answer.iter().any(|m| m.retry.is_some()) && answer.iter().all(|m| m.data.is_none()),
        "an EventSource gets only a retry hint: {answer:?}"
    );

    // 2. A connected stream's catch-up while XINFO fails (its replica's
    //    subscription is cut, so it must catch up from history): it waits,
    //    heartbeats still flow, and no data.sync comes.
    redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async::<i64>(&mut admin)
        .await
        .unwrap();
    for i in 5..8 {
        insert(&ctx, "orgA", &format!("p{i}")).await;
    }
    wait_until(
        "the catch-up's XINFO was refused twice (a retry)",
        Duration::from_secs(30),
        || {
            let mut admin = admin.clone();
            async move {
                let log: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
                    .arg("LOG")
                    .query_async(&mut admin)
                    .await
                    .ok()?;
                // Identical refusals are one entry with a count.
                let refusals: i64 = log
                    .iter()
                    .filter(|entry| {
                        let text = |k: &str| {
                            entry
                                .get(k)
                                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                                .unwrap_or_default()
                        };
                        text("username") == "gw" && text("object").contains("xinfo")
                    })
                    .filter_map(|entry| {
                        entry
                            .get("count")
                            .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
                    })
                    .sum();
                (refusals >= 2).then_some(())
            }
        },
    )
    .await;
    let mut waited = Vec::new();
    while waited
        .iter()
        .filter(|m: &&support::sse::Message| m.comment.is_some())
        .count()
        < 2
    {
        match live.next(Duration::from_secs(10)).await {
            Ok(Some(m)) => waited.push(m),
            other => panic!("the stream ended or went silent while waiting: {other:?}"),
        }
    }
    assert!(
        waited.iter().all(|m| m.data.is_none()),
        "only heartbeats while Redis refuses: {waited:?}"
    );

    // 3. Redis answers again: exactly the events after each client's id.
    acl(&mut admin, &["+xinfo"]).await;
    let rest = live.events(3, Duration::from_secs(30)).await;
    let got = crate::support::sse::property_ids(&rest);
    assert_eq!(got, ["p5", "p6", "p7"], "the connected stream catches up");
    let mut resumed = SseClient::connect(&url, Some(&tok), &[("last-event-id", &covered)]).await;
    assert_eq!(resumed.status, 200);
    // Read until 2 s after the sixth event (or 30 s): heartbeats come
    // every second, so silence is not the end.
    let mut after = Vec::new();
    let mut until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match resumed.next(left).await {
            Ok(Some(m)) => {
                assert!(
                    !m.data.as_deref().is_some_and(|d| d.contains("data.sync")),
                    "a resume within the history never gets data.sync: {m:?}"
                );
                if m.id.is_some() {
                    after.push(m);
                    if after.len() == 6 {
                        until = tokio::time::Instant::now() + Duration::from_secs(2);
                    }
                }
            }
            Ok(None) => panic!("the resumed stream ended"),
            Err(()) => break,
        }
    }
    let got = crate::support::sse::property_ids(&after);
    assert_eq!(
        got,
        ["p2", "p3", "p4", "p5", "p6", "p7"],
        "exactly the events after {covered}"
    );
    assert!(
        after
            .iter()
            .all(|m| parse_id(m.id.as_deref().unwrap()) > covered_id)
    );
    // And the live stream got nothing twice meanwhile.
    assert!(
        live.next_event(Duration::from_secs(2)).await.is_none(),
        "the live stream repeats nothing"
    );
    drop(ing);
}
