//! Revocation never depends on where a stream stands (ARCHITECTURE.md §7, invariant
//! 1), with the real ingestor and gateway binaries on real Postgres and
//! Redis: a member removed while her stream lags past the history, while it
//! is caught up page by page, in the window between the membership check and
//! the stream's start, or while the hub writes to her parked socket, gets
//! nothing committed after the removal and her stream ends; the same under
//! randomized leaves, re-joins and stalls. Also: a deleted database session
//! ends its streams within the re-check interval, and a session row with a
//! NULL user or expiry is refused.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::http_get;
use crate::support::sse::SseClient;
use crate::support::start_ready;
use rand::Rng as _;
use rand::seq::IndexedRandom as _;
use realtime_tests::{ChildProcess, TestContext, free_port, wait_until};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme'), ('orgB', 'Bolt');
     INSERT INTO users (id) VALUES ('ua'), ('uc'), ('ub');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES
       ('m1', 'ua', 'orgA'), ('m2', 'uc', 'orgA'), ('m3', 'ub', 'orgB');";

/// Both binaries as child processes on a fresh context.
struct Binaries {
    ctx: TestContext,
    ingestor: ChildProcess,
    gateway: ChildProcess,
    addr: SocketAddr,
}

async fn binaries(history_len: &str, gateway_extra: &[(&str, &str)]) -> Binaries {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let ingestor = start_ready(
        "realtime-ingestor",
        &[
            ctx.ingestor_env(),
            vec![("REALTIME_HISTORY_LEN", history_len.to_owned())],
        ]
        .concat(),
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = ctx.gateway_env(addr, JWT_SECRET);
    env.push(("REALTIME_CONNECT_RATE", "0".to_owned()));
    env.push(("REALTIME_MAX_CONNECTIONS_PER_USER", "1000".to_owned()));
    env.extend(gateway_extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let gateway = start_ready("realtime-gateway", &env).await;
    Binaries {
        ctx,
        ingestor,
        gateway,
        addr,
    }
}

/// `count` system.alert events of ~1 KB to `org`, numbered from `first`,
/// in transactions of at most 500.
async fn emit(ctx: &TestContext, org: &str, first: i64, count: i64) {
    let mut from = first;
    while from < first + count {
        let to = (from + 499).min(first + count - 1);
        ctx.execute(
            "SELECT pg_logical_emit_message(true, 'realtime', json_build_object(
                 'type', 'system.alert', 'organizationId', $3::text,
                 'payload', json_build_object('n', g, 'pad', repeat('x', 1000)))::text)
             FROM generate_series($1::bigint, $2::bigint) g",
            &[&from, &to, &org],
        )
        .await;
        from = to + 1;
    }
}

/// One message read off a raw stream.
#[derive(Debug, Clone)]
struct Seen {
    kind: String,
    /// `payload.n` of the test's system.alert events.
    n: Option<i64>,
    org: Value,
}

/// A stream read off a raw socket with a 4 KB receive window, only when the
/// test reads: a client that stalls.
struct RawStream {
    socket: TcpStream,
    text: Vec<u8>,
    parsed: usize,
    seen: Vec<Seen>,
    status: Option<u16>,
    ended: bool,
    /// The last `id:` line read.
    last_id: Option<String>,
}

impl RawStream {
    async fn open(addr: SocketAddr, query: &str, tok: &str) -> RawStream {
        RawStream::open_with(addr, query, tok, "").await
    }

    /// As [`open`](Self::open), with `extra` (whole `Name: value\r\n`
    /// lines) in the request head.
    async fn open_with(addr: SocketAddr, query: &str, tok: &str, extra: &str) -> RawStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut socket = socket.connect(addr).await.unwrap();
        let req = format!(
            "GET /api/realtime/stream?{query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nAccept: text/event-stream\r\n{extra}\r\n"
        );
        socket.write_all(req.as_bytes()).await.unwrap();
        RawStream {
            socket,
            text: Vec::new(),
            parsed: 0,
            seen: Vec::new(),
            status: None,
            ended: false,
            last_id: None,
        }
    }

    fn parse(&mut self) {
        while let Some(end) = self.text[self.parsed..].iter().position(|b| *b == b'\n') {
            let line = &self.text[self.parsed..self.parsed + end];
            self.parsed += end + 1;
            if self.status.is_none()
                && let Some(rest) = line.strip_prefix(b"HTTP/1.1 ")
            {
                self.status = std::str::from_utf8(&rest[..3.min(rest.len())])
                    .ok()
                    .and_then(|s| s.parse().ok());
            }
            if let Some(id) = line.strip_prefix(b"id: ") {
                self.last_id = Some(String::from_utf8_lossy(id).into_owned());
            }
            if let Some(data) = line.strip_prefix(b"data: ")
                && let Ok(j) = serde_json::from_slice::<Value>(data)
            {
                self.seen.push(Seen {
                    kind: j["type"].as_str().unwrap_or_default().to_owned(),
                    n: j["payload"]["n"].as_i64(),
                    org: j["organizationId"].clone(),
                });
            }
        }
    }

    /// Reads until `done` holds, the stream ends, or `within` passes.
    /// Returns whether `done` holds.
    async fn read_until(&mut self, within: Duration, done: impl Fn(&RawStream) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = vec![0u8; 16 * 1024];
        while !done(self) && !self.ended {
            match tokio::time::timeout_at(deadline, self.socket.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => self.ended = true,
                Ok(Ok(n)) => {
                    self.text.extend_from_slice(&buf[..n]);
                    self.parse();
                }
            }
        }
        done(self)
    }

    /// Reads for at most `within`: whether the stream ended.
    async fn ends_within(&mut self, within: Duration) -> bool {
        self.read_until(within, |s| s.ended).await
    }

    fn connected(&self) -> bool {
        self.seen.iter().any(|s| s.kind == "connection")
    }

    /// Numbers of the test's events received, above `floor`.
    fn received_above(&self, floor: i64) -> Vec<i64> {
        self.seen
            .iter()
            .filter_map(|s| s.n)
            .filter(|n| *n > floor)
            .collect()
    }

    /// Anything not of `org` (connection and data.sync messages aside).
    fn foreign(&self, org: &str) -> Vec<Seen> {
        self.seen
            .iter()
            .filter(|s| s.kind == "system.alert" && s.org != org)
            .cloned()
            .collect()
    }
}

async fn remove_member(ctx: &TestContext, user: &str, org: &str) {
    ctx.execute(
        "DELETE FROM organization_members WHERE \"userId\" = $1 AND \"organizationId\" = $2",
        &[&user, &org],
    )
    .await;
}

/// Events committed after a revocation took effect are numbered from here.
const LATER: i64 = 5_000_000;

/// After `user`'s removal from orgA took effect on `revoked` (her stream):
/// events keep being committed to orgA for two seconds, and while they are,
/// she tries to come back (a new stream; a resume with her last id, as the
/// `Last-Event-ID` header and as the `lastEventId` parameter). The member who
/// stays (`watcher`) receives them, so they were published and served; none
/// reaches her: her revoked stream has ended with nothing of them, and every
/// attempt is refused (403) with no event.
async fn nothing_reaches_her_later(
    ctx: &TestContext,
    addr: SocketAddr,
    watcher: &mut SseClient,
    user: &str,
    revoked: &mut RawStream,
) {
    const BATCHES: i64 = 10;
    const PER_BATCH: i64 = 20;
    let committer = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            for k in 0..BATCHES {
                emit(&ctx, "orgA", LATER + k * PER_BATCH, PER_BATCH).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let tok = token(user, 600);
    let last = revoked.last_id.clone().unwrap_or_else(|| "0-0".to_owned());
    let mut attempts = Vec::new();
    for (what, query, extra) in [
        (
            "a new stream",
            "organizationId=orgA".to_owned(),
            String::new(),
        ),
        (
            "a resume (Last-Event-ID)",
            "organizationId=orgA".to_owned(),
            format!("Last-Event-ID: {last}\r\n"),
        ),
        (
            "a resume (lastEventId)",
            format!("organizationId=orgA&lastEventId={last}"),
            String::new(),
        ),
    ] {
        let mut a = RawStream::open_with(addr, &query, &tok, &extra).await;
        let ended = a.ends_within(WAIT).await;
        attempts.push((what, a, ended));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    committer.await.unwrap();
    let last_n = LATER + BATCHES * PER_BATCH - 1;
    let mut served = false;
    while let Some(m) = watcher.next_event(WAIT).await {
        if m.json()["payload"]["n"].as_i64() >= Some(last_n) {
            served = true;
            break;
        }
    }
    assert!(
        served,
        "the member who stays gets the events committed later"
    );
    let ended = revoked.ends_within(WAIT).await;
    let later = revoked.received_above(LATER - 1);
    assert!(
        later.is_empty(),
        "her revoked stream gets nothing committed later; got {} (first {:?})",
        later.len(),
        later.first()
    );
    assert!(ended, "her revoked stream has ended");
    for (what, a, ended) in attempts {
        assert_eq!(a.status, Some(403), "{what}: refused");
        let events: Vec<&Seen> = a.seen.iter().filter(|m| m.kind != "connection").collect();
        assert!(
            events.is_empty() && !a.connected(),
            "{what}: no stream, no event: {events:?}"
        );
        assert!(ended, "{what}: the refusal ends");
    }
}

/// How a lagging member is removed, and how her stream must take it.
async fn removed_while_lagging(history_len: &str, stall: bool) {
    let b = binaries(history_len, &[]).await;
    let ctx = &b.ctx;
    let q = "organizationId=orgA";
    // A member who stays, reading as events come, to know they were served.
    let mut watcher = SseClient::connect(
        &format!("http://{}/api/realtime/stream?{q}", b.addr),
        Some(&token("ua", 600)),
        &[],
    )
    .await;
    assert_eq!(watcher.status, 200);
    let mut carol = RawStream::open(b.addr, q, &token("uc", 600)).await;
    assert!(carol.read_until(WAIT, RawStream::connected).await);
    assert_eq!(carol.status, Some(200));
    let (mut carol, reader) = if stall {
        (Some(carol), None)
    } else {
        let task = tokio::spawn(async move {
            carol.read_until(WAIT * 4, |s| s.ended).await;
            carol
        });
        (None, Some(task))
    };

    // 3,000 events while she stalls (or reads), then her removal, then
    // 3,000 more and a last one: all of those after the removal are hers to
    // never see.
    emit(ctx, "orgA", 1, 3_000).await;
    remove_member(ctx, "uc", "orgA").await;
    emit(ctx, "orgA", 3_001, 3_000).await;
    emit(ctx, "orgA", 1_000_000, 1).await;
    // Everything was published and served: the watcher gets a sentinel
    // committed after it all. (A watcher that lagged past the history got a
    // gap and skipped to the newest event; it sees the next sentinel.)
    let mut served = false;
    for sentinel in 2_000_000..2_000_010 {
        emit(ctx, "orgA", sentinel, 1).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Some(m) = watcher
            .next_event(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if m.json()["payload"]["n"].as_i64() >= Some(2_000_000) {
                served = true;
                break;
            }
        }
        if served {
            break;
        }
    }
    assert!(served, "the watcher is served to the end");

    let mut carol = match reader {
        Some(task) => task.await.unwrap(),
        None => carol.take().unwrap(),
    };
    let ended = carol.ends_within(WAIT).await;
    let after = carol.received_above(3_000);
    assert!(
        after.is_empty(),
        "nothing committed after her removal reaches her; got {} such events (first {:?})",
        after.len(),
        after.first()
    );
    assert!(ended, "her stream ends");
    assert!(carol.foreign("orgA").is_empty(), "nothing of another org");
    // And she cannot come back, while events go on.
    nothing_reaches_her_later(ctx, b.addr, &mut watcher, "uc", &mut carol).await;
}

/// The review's scenario: history of 100, her stream stalled far past it,
/// so the leave falls in a gap (she gets a `data.sync` gap, and before the
/// fix her stream went on, live, as a non-member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_her_stream_lags_past_the_history_gets_nothing_after() {
    removed_while_lagging("100", true).await;
}

/// A long history: the stalled stream catches up page by page and meets
/// the leave inside a page; nothing of the page after the leave is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_her_stream_catches_up_gets_nothing_after() {
    removed_while_lagging("50000", true).await;
}

/// A stream that reads as events come: parked with its feed, written to by
/// the hub directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_her_stream_is_parked_gets_nothing_after() {
    removed_while_lagging("50000", false).await;
}

/// The connect window: her membership is read (by a query made slow for
/// her) before the removal commits, and the stream's starting position is
/// taken after the leave was published. The leave is at or below that
/// position; it must still end the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_her_stream_is_being_opened_gets_nothing_after() {
    let query = "SELECT o.name FROM organization_members m \
                 JOIN organizations o ON o.id = m.\"organizationId\" \
                 CROSS JOIN LATERAL (SELECT pg_sleep(CASE WHEN $1 = 'uc' THEN 2 ELSE 0 END)) AS slow \
                 WHERE m.\"userId\" = $1 AND m.\"organizationId\" = $2";
    let b = binaries("50000", &[("REALTIME_MEMBERSHIP_QUERY", query)]).await;
    let ctx = b.ctx.clone();
    emit(&ctx, "orgA", 1, 10).await;
    let addr = b.addr;
    let opening = tokio::spawn(async move {
        let mut carol = RawStream::open(addr, "organizationId=orgA", &token("uc", 600)).await;
        carol
            .read_until(WAIT, |s| {
                s.connected() || s.status.is_some_and(|c| c != 200)
            })
            .await;
        carol
    });
    // The gateway reads her membership twice (before and after subscribing);
    // remove her while the second read sleeps on its snapshot.
    let sleeping = || {
        let ctx = ctx.clone();
        async move {
            ctx.query(
                "SELECT query_start::text FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .first()
            .map(|r| r.get::<_, String>(0))
        }
    };
    let first = wait_until("the first membership read", WAIT, sleeping).await;
    wait_until("the second membership read", WAIT, || async {
        sleeping().await.filter(|start| *start != first)
    })
    .await;
    remove_member(&ctx, "uc", "orgA").await;
    let mut redis = ctx.redis().await;
    let key = format!("{}:{{org:orgA}}:history", ctx.key_prefix());
    wait_until("the leave is published", WAIT, || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut redis)
                .await
                .ok()?;
            entries
                .first()
                .filter(|(_, fields)| fields.iter().any(|(_, v)| v.contains("member.leave")))
                .map(|_| ())
        }
    })
    .await;
    let _ = &mut redis;
    let mut carol = opening.await.unwrap();
    // Before the fix the stream opened (200) and then went on serving.
    emit(&ctx, "orgA", 1_000, 50).await;
    let ended = carol.ends_within(WAIT).await;
    assert!(
        carol.received_above(10).is_empty(),
        "nothing committed after her removal reaches her: {:?}",
        carol.received_above(10)
    );
    assert!(ended, "her stream ends (status {:?})", carol.status);
    // A member who stays, connected only now: an earlier stream would
    // change how her stream opens (the organization already subscribed).
    let mut watcher = SseClient::connect(
        &format!("http://{addr}/api/realtime/stream?organizationId=orgA"),
        Some(&token("ua", 600)),
        &[],
    )
    .await;
    assert_eq!(watcher.status, 200);
    nothing_reaches_her_later(&ctx, addr, &mut watcher, "uc", &mut carol).await;
}

/// Randomized: members leave and re-join orgA while events flow; some of
/// their streams read as events come, some stall for random spans, some
/// stall to the end. Every event a stream gets was committed while its
/// user was a member *in the membership spell the stream was opened in*,
/// and every stream of a spell that ended, ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_and_rejoins_with_stalls_never_leak_an_event() {
    const ROUNDS: usize = 14;
    // Heartbeats every second: live readers look at `last` at least that often.
    let b = binaries("600", &[("REALTIME_HEARTBEAT", "1s")]).await;
    let ctx = &b.ctx;
    let users = ["r1", "r2", "r3", "r4"];
    let mut sql = String::new();
    for u in users {
        sql.push_str(&format!(
            "INSERT INTO users (id) VALUES ('{u}');
             INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('{u}-0', '{u}', 'orgA');"
        ));
    }
    ctx.batch(&sql).await;
    let mut rng = rand::rng();
    // Per user: the current spell (None: not a member) and a counter.
    let mut spell: HashMap<&str, Option<usize>> = users.iter().map(|u| (*u, Some(0))).collect();
    let mut spells_of_user: HashMap<&str, usize> = users.iter().map(|u| (*u, 0)).collect();
    // Which spell each event number was committed in, per user.
    let mut spell_at: Vec<(i64, HashMap<&str, Option<usize>>)> = Vec::new();
    // Streams: (user, spell, reader task or stalled stream).
    enum Reader {
        Live(tokio::task::JoinHandle<RawStream>),
        Stalled(RawStream),
    }
    let mut streams: Vec<(&str, usize, Reader)> = Vec::new();
    let addr = b.addr;
    let open = |user: &'static str| async move {
        let mut s = RawStream::open(addr, "organizationId=orgA", &token(user, 600)).await;
        assert!(
            s.read_until(WAIT, RawStream::connected).await,
            "{user} connects"
        );
        s
    };
    let mut next_n = 1i64;
    // The number of the last event, once every event is emitted: a live
    // reader stops when it has it (or its stream ended).
    let last = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let served_to = |s: &RawStream, last: &std::sync::atomic::AtomicI64| {
        let last = last.load(std::sync::atomic::Ordering::Acquire);
        s.seen.iter().any(|m| m.n.is_some_and(|n| n >= last))
    };
    for round in 0..ROUNDS {
        // Streams for every current member.
        for u in users {
            if let Some(k) = spell[u] {
                let s = open(u).await;
                let reader = match rng.random_range(0..3) {
                    0 => Reader::Stalled(s),
                    1 => {
                        let last = last.clone();
                        Reader::Live(tokio::spawn(async move {
                            let mut s = s;
                            s.read_until(WAIT * 6, |s| served_to(s, &last)).await;
                            s
                        }))
                    }
                    _ => {
                        let pause = Duration::from_millis(rng.random_range(50..800));
                        let last = last.clone();
                        Reader::Live(tokio::spawn(async move {
                            let mut s = s;
                            // Read a little, stall, read on.
                            s.read_until(Duration::from_millis(100), |_| false).await;
                            tokio::time::sleep(pause).await;
                            s.read_until(WAIT * 6, |s| served_to(s, &last)).await;
                            s
                        }))
                    }
                };
                streams.push((u, k, reader));
            }
        }
        // Events, then a leave or a re-join, then events again.
        let count = rng.random_range(50..400);
        spell_at.push((next_n, spell.clone()));
        emit(ctx, "orgA", next_n, count).await;
        next_n += count;
        let u = *users.choose(&mut rng).unwrap();
        match spell[u] {
            Some(_) => {
                remove_member(ctx, u, "orgA").await;
                spell.insert(u, None);
            }
            None => {
                let k = spells_of_user[u] + 1;
                spells_of_user.insert(u, k);
                ctx.execute(
                    "INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ($1, $2, 'orgA')",
                    &[&format!("{u}-{k}-{round}"), &u],
                )
                .await;
                spell.insert(u, Some(k));
            }
        }
        let count = rng.random_range(50..300);
        spell_at.push((next_n, spell.clone()));
        emit(ctx, "orgA", next_n, count).await;
        next_n += count;
    }
    spell_at.push((next_n, spell.clone()));
    last.store(next_n - 1, std::sync::atomic::Ordering::Release);
    let spell_of = |user: &str, n: i64| -> Option<usize> {
        let i = spell_at.partition_point(|(from, _)| *from <= n) - 1;
        spell_at[i].1[user]
    };
    let mut checked = 0;
    for (user, k, reader) in streams {
        let mut s = match reader {
            Reader::Live(task) => task.await.unwrap(),
            Reader::Stalled(s) => s,
        };
        let still_member = spell[user] == Some(k);
        if still_member {
            // Served to the last event.
            s.read_until(WAIT, |s| s.received_above(next_n - 2).len() == 1)
                .await;
        } else {
            assert!(
                s.ends_within(WAIT).await,
                "a stream of {user}'s spell {k} ends once the spell ended"
            );
        }
        for n in s.received_above(0) {
            assert_eq!(
                spell_of(user, n),
                Some(k),
                "event {n} reached {user}'s stream of spell {k}"
            );
        }
        assert!(s.foreign("orgA").is_empty(), "nothing of another org");
        checked += 1;
    }
    eprintln!(
        "{checked} streams checked over {ROUNDS} rounds, {} events",
        next_n - 1
    );
}

/// A stream opened with an Auth.js database session (an opaque cookie)
/// ends within the re-check interval once the session row is deleted
/// (sign-out, ban); a stream of another session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_row_ends_its_streams_within_the_recheck_interval() {
    let b = binaries("1000", &[("REALTIME_SESSION_RECHECK", "1s")]).await;
    let ctx = &b.ctx;
    for (id, token, user) in [("s1", "sess-gone", "ua"), ("s2", "sess-kept", "uc")] {
        ctx.execute(
            "INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires) VALUES ($1, $2, $3, now() + interval '1 hour')",
            &[&id, &token, &user],
        )
        .await;
    }
    let url = format!("http://{}/api/realtime/stream?organizationId=orgA", b.addr);
    let mut gone =
        SseClient::connect(&url, None, &[("cookie", "authjs.session-token=sess-gone")]).await;
    let mut kept =
        SseClient::connect(&url, None, &[("cookie", "authjs.session-token=sess-kept")]).await;
    assert_eq!((gone.status, kept.status), (200, 200));
    ctx.execute("DELETE FROM sessions WHERE id = 's1'", &[])
        .await;
    let deleted = std::time::Instant::now();
    // Within the interval (1 s) and a margin for a loaded machine.
    assert!(
        gone.ends_within(Duration::from_secs(6)).await,
        "the deleted session's stream ends"
    );
    eprintln!("closed {:?} after the DELETE", deleted.elapsed());
    emit(ctx, "orgA", 1, 1).await;
    let m = kept
        .next_event(WAIT)
        .await
        .expect("the other session's stream goes on");
    assert_eq!(m.json()["payload"]["n"], 1);
    let again =
        SseClient::connect(&url, None, &[("cookie", "authjs.session-token=sess-gone")]).await;
    assert_eq!(again.status, 401);
    let metrics = http_get(&format!(
        "http://{}/metrics",
        b.gateway.admin_addr(WAIT).await
    ))
    .await
    .unwrap()
    .1;
    assert!(
        metrics.contains("realtime_gateway_revoked_total{reason=\"session\"} 1"),
        "counted: {metrics}"
    );
}

/// A session row whose user or expiry is NULL is no session: 401, not a
/// panic or a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_row_with_null_fields_gets_401() {
    let b = binaries("1000", &[]).await;
    let ctx = &b.ctx;
    // The app's schema declares both NOT NULL; a hand-made table may not.
    ctx.batch(
        "ALTER TABLE sessions ALTER COLUMN \"userId\" DROP NOT NULL, ALTER COLUMN expires DROP NOT NULL;
         INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires) VALUES
           ('n1', 'sess-null-user', NULL, now() + interval '1 hour'),
           ('n2', 'sess-null-expiry', 'ua', NULL);",
    )
    .await;
    let url = format!("http://{}/api/realtime/stream?organizationId=orgA", b.addr);
    for cookie in ["sess-null-user", "sess-null-expiry"] {
        let c = SseClient::connect(
            &url,
            None,
            &[("cookie", &format!("authjs.session-token={cookie}"))],
        )
        .await;
        assert_eq!(c.status, 401, "{cookie}: {}", c.body_text);
    }
    // The gateway is still up and serving.
    let ok = SseClient::connect(&url, Some(&token("ua", 600)), &[]).await;
    assert_eq!(ok.status, 200);
}

/// A full history page of entries that are not events (written by hand,
/// or by another tool sharing the prefix) is stepped over: the resumed
/// stream gets the event after them instead of reading the same page
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_steps_over_a_page_of_unreadable_history_entries() {
    let b = binaries("50000", &[]).await;
    let ctx = &b.ctx;
    emit(ctx, "orgA", 1, 1).await;
    let key = format!("{}:{{org:orgA}}:history", ctx.key_prefix());
    let mut redis = ctx.redis().await;
    let first = wait_until("the first event is in history", WAIT, || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(&mut redis)
                .await
                .ok()?;
            entries.first().map(|(id, _)| id.clone())
        }
    })
    .await;
    let lsn = first.split('-').next().unwrap().to_owned();
    // 300 entries after it (more than a page of 256), none an event.
    for i in 0..300 {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg(format!("{lsn}-{}", 1_000 + i))
            .arg("e")
            .arg(if i % 2 == 0 {
                "not json"
            } else {
                "{\"event\":{}}"
            })
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    emit(ctx, "orgA", 2, 1).await;
    let mut client = SseClient::connect(
        &format!("http://{}/api/realtime/stream?organizationId=orgA", b.addr),
        Some(&token("ua", 600)),
        &[("last-event-id", &first)],
    )
    .await;
    assert_eq!(client.status, 200);
    let m = client
        .next_event(WAIT)
        .await
        .expect("the event after the unreadable entries arrives");
    assert_eq!(m.json()["payload"]["n"], 2);
}

/// A migration resets `organization_members` to REPLICA IDENTITY DEFAULT
/// on a live system (the ingestor not managing it): a member's removal
/// then carries no user or organization, the ingestor publishes a leave
/// naming nobody, and every stream re-checks its membership before it
/// sends anything after it. The removed member's streams end (stalled or
/// parked) and get nothing committed after; the other member's stream
/// goes on and never sees that internal leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_identity_reset_never_lets_a_removed_member_keep_a_stream() {
    let mut b = binaries("50000", &[]).await;
    // The same ingestor, told not to manage replica identity: restart it.
    b.ingestor.terminate();
    let ctx = &b.ctx;
    let _ingestor = start_ready(
        "realtime-ingestor",
        &[
            ctx.ingestor_env(),
            vec![("REALTIME_MANAGE_REPLICA_IDENTITY", "false".to_owned())],
        ]
        .concat(),
    )
    .await;
    let q = "organizationId=orgA";
    let mut watcher = SseClient::connect(
        &format!("http://{}/api/realtime/stream?{q}", b.addr),
        Some(&token("ua", 600)),
        &[],
    )
    .await;
    assert_eq!(watcher.status, 200);
    let mut stalled = RawStream::open(b.addr, q, &token("uc", 600)).await;
    assert!(stalled.read_until(WAIT, RawStream::connected).await);
    let mut parked = RawStream::open(b.addr, q, &token("uc", 600)).await;
    assert!(parked.read_until(WAIT, RawStream::connected).await);
    let parked = tokio::spawn(async move {
        parked.read_until(WAIT * 4, |s| s.ended).await;
        parked
    });
    ctx.batch("ALTER TABLE organization_members REPLICA IDENTITY DEFAULT")
        .await;
    emit(ctx, "orgA", 1, 600).await;
    remove_member(ctx, "uc", "orgA").await;
    emit(ctx, "orgA", 1_001, 600).await;
    let mut revoked = Vec::new();
    for (name, mut s) in [("stalled", stalled), ("parked", parked.await.unwrap())] {
        let ended = s.ends_within(WAIT).await;
        let after = s.received_above(1_000);
        assert!(
            after.is_empty(),
            "{name}: nothing after her removal; got {} (first {:?})",
            after.len(),
            after.first()
        );
        assert!(ended, "{name}: her stream ends");
        assert!(
            !s.seen.iter().any(|m| m.kind == "member.leave"),
            "{name}: the leave naming nobody is not forwarded"
        );
        revoked.push(s);
    }
    // The member who stays gets everything after, and no internal leave.
    let mut last = 0;
    while last < 1_600 {
        let m = watcher.next_event(WAIT).await.expect("the watcher goes on");
        let j = m.json();
        assert_ne!(
            j["type"], "member.leave",
            "the leave naming nobody is never forwarded"
        );
        last = j["payload"]["n"].as_i64().unwrap_or(last);
    }
    for mut s in revoked {
        nothing_reaches_her_later(ctx, b.addr, &mut watcher, "uc", &mut s).await;
    }
}
