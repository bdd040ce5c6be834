//! The ORIGINAL app's hook, unchanged, in headless Chromium against two real
//! gateway processes (issue 14): does a bare `EventSource` with a no-op
//! `onerror`, the way the app uses it, keep receiving live events through
//! every disruption the gateway answers with a transient refusal?
//!
//! The page (`tests/fixtures/app-hook.html`) holds the app's hook as
//! the app (steveapo/Oikion-MVP f5c8194, ARCHITECTURE.md §6) has it: `new EventSource('/api/realtime/
//! stream?organizationId=…&channel=property', { withCredentials: true })`, a
//! message handler that acts on `property.update` only, a no-op `onerror`.
//! Its URL is relative, so the page is served by a test-side front origin
//! ([`realtime_tests::Front`]) that forwards `/api/realtime/` to the two
//! gateways, round robin per request, skipping a replica that refuses
//! connections, streaming without buffering, as the app's load balancer
//! would. The browser sends the app's Auth.js session cookie
//! (`authjs.session-token`, a database session). Rows are inserted into
//! `properties` and travel through the real ingestor, Redis and gateways.
//!
//! After each disruption the page must receive rows inserted after it, with
//! no reload, no second `EventSource` and no `close()` by the page (a probe
//! in the browser counts constructions and closes; the browser counts
//! navigations), and the `EventSource` must never reach `CLOSED` (a browser
//! gives up for good on a non-200 answer: that is the failure mode):
//!
//! 1. connected: live rows arrive;
//! 2. Redis is stopped for 5 s, then started again (empty: no persistence);
//!    meanwhile the front drops the page's connection, so that the page's
//!    reconnects meet replicas without Redis (an open stream outlives the
//!    outage by itself);
//! 3. the replica the page is on is drained (SIGTERM, `REALTIME_DRAIN`): the
//!    page moves to the other replica by itself;
//! 4. with the drained replica back, the per-user cap (2) is filled by two
//!    streams of the same user opened by the test while the page reconnects
//!    (the replica it is on is drained again): the page is refused
//!    transiently again and again, then the test closes its streams and the
//!    page gets in and receives the rows, including the one written while it
//!    was refused.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::sse::SseClient;
use crate::support::start_ready;
use realtime_tests::front::Forwarded;
use realtime_tests::{Browser, ChildProcess, Front, RedisServer, TestContext, free_port};
use serde_json::Value;

/// The longest any one step may take to recover.
const WAIT: Duration = Duration::from_secs(20);
/// How long Redis stays down in step 2.
const REDIS_OUTAGE: Duration = Duration::from_secs(5);
/// `REALTIME_MAX_CONNECTIONS_PER_USER` of both replicas.
const CAP: usize = 2;

const PAGE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/app-hook.html"
));

/// What the page has: the property ids the hook acted on, in order, and the
/// state of its one `EventSource`.
#[derive(Debug)]
struct PageState {
    ids: Vec<String>,
    /// `es.readyState`: 0 connecting, 1 open, 2 closed (given up).
    ready_state: i64,
    constructed: i64,
    closed: i64,
    navigations: u64,
    raw: Value,
}

async fn page_state(browser: &mut Browser) -> PageState {
    let got = browser
        .eval(
            "({ ids: received.map((d) => String(d.payload && d.payload.propertyId)), \
               readyState: es.readyState, eventSources: window.__eventSources })",
        )
        .await;
    let v = got.value;
    PageState {
        ids: v["ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        ready_state: v["readyState"].as_i64().unwrap_or(-1),
        constructed: v["eventSources"]["constructed"].as_i64().unwrap_or(-1),
        closed: v["eventSources"]["closed"].as_i64().unwrap_or(-1),
        navigations: got.navigations,
        raw: v,
    }
}

/// The test's view of everything, for failure messages.
fn report(state: &PageState, front: &Front, browser: &Browser) -> String {
    let log = browser.log_text();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "page: {state:?}\nforwarded by the front:\n{}\nbrowser log tail:\n{}",
        front
            .forwarded()
            .iter()
            .map(|f| format!("  {f:?}"))
            .collect::<Vec<_>>()
            .join("\n"),
        tail.join("\n")
    )
}

/// Polls the page (and the front) until `done` holds; panics after `WAIT`,
/// or at once when the page's `EventSource` has given up (`CLOSED`), or the
/// page reloaded, or made or closed an `EventSource` itself.
async fn until(
    what: &str,
    browser: &mut Browser,
    front: &Front,
    mut done: impl FnMut(&PageState, &[Forwarded]) -> bool,
) -> PageState {
    let started = tokio::time::Instant::now();
    loop {
        let state = page_state(browser).await;
        assert!(
            state.ready_state != 2,
            "the hook's EventSource gave up (readyState CLOSED) while waiting until {what}: \
             a bare EventSource does not recover from this\n{}",
            report(&state, front, browser)
        );
        assert!(
            state.constructed == 1 && state.closed == 0 && state.navigations == 1,
            "the page must recover by itself: one EventSource, never closed, no reload\n{}",
            report(&state, front, browser)
        );
        if done(&state, &front.forwarded()) {
            return state;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting until {what}\n{}",
            report(&state, front, browser)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The replica the page's stream is open on, if any.
fn open_on(forwarded: &[Forwarded]) -> Option<usize> {
    forwarded
        .iter()
        .rev()
        .find(|f| f.is_open_stream())
        .and_then(|f| f.backend)
}

async fn insert(ctx: &TestContext, id: &str) {
    ctx.execute(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'orgA', 'ua', 1)",
        &[&id],
    )
    .await;
}

/// Inserts `{step}-1` and `{step}-2` and waits until the hook got both (and
/// every id in `also`).
async fn rows_arrive(
    step: &str,
    also: &[&str],
    ctx: &TestContext,
    browser: &mut Browser,
    front: &Front,
) {
    let ids = [format!("{step}-1"), format!("{step}-2")];
    for id in &ids {
        insert(ctx, id).await;
    }
    let what = format!("the hook receives the rows written after {step} ({ids:?}, {also:?})");
    until(&what, browser, front, |s, _| {
        ids.iter()
            .map(String::as_str)
            .chain(also.iter().copied())
            .all(|id| s.ids.iter().any(|seen| seen == id))
    })
    .await;
}

fn gateway_env(ctx: &TestContext, listen: SocketAddr, origin: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", ctx.database_url()),
        ("REDIS_URL", ctx.redis_url()),
        ("REALTIME_KEY_PREFIX", ctx.key_prefix().to_owned()),
        (
            "AUTH_SECRET",
            "e2e-auth-secret-at-least-32-bytes-long".to_owned(),
        ),
        ("REALTIME_LISTEN", listen.to_string()),
        ("REALTIME_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
        ("REALTIME_CORS_ORIGINS", origin.to_owned()),
        // The delay a browser waits before asking again: from a drain and
        // from a transient refusal alike, jittered over [1 s, 3 s).
        ("REALTIME_RETRY", "2s".to_owned()),
        ("REALTIME_HEARTBEAT", "1s".to_owned()),
        ("REALTIME_DRAIN", "1s".to_owned()),
        ("REALTIME_MAX_CONNECTIONS_PER_USER", CAP.to_string()),
        // Short leases: the cap's Retry-After is a third of it (1 s), so a
        // refused browser is told to come back within seconds, not 10 s.
        ("REALTIME_CONNECTION_LEASE", "3s".to_owned()),
        // How long a new stream waits for the event feed (Redis) before its
        // transient refusal (default 5 s, as long as the whole outage of
        // step 2): short, so the page meets refusals while Redis is down.
        ("REALTIME_IO_TIMEOUT", "1s".to_owned()),
    ]
}

/// Opens a stream of user `ua` (the page's user, same session cookie)
/// straight on a replica, as a second tab would; its status says whether
/// the cap let it in.
async fn holder(addr: SocketAddr, cookie: &str) -> SseClient {
    SseClient::connect(
        &format!("http://{addr}/api/realtime/stream?organizationId=orgA&channel=property"),
        None,
        &[("Cookie", cookie)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_hook_recovers_from_redis_restart_drain_and_user_cap() {
    let started = std::time::Instant::now();
    let redis = RedisServer::start().expect("redis");
    let ctx = TestContext::new().await.with_redis(&redis);
    let session = format!("sess-{}", rand::random::<u64>());
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;
    ctx.execute(
        "INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires) VALUES ('s1', $1, 'ua', now() + interval '1 hour')",
        &[&session],
    )
    .await;
    let cookie = format!("authjs.session-token={session}");

    let _ingestor = start_ready(
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
    .await;

    let addrs: [SocketAddr; 2] =
        [free_port(), free_port()].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    let front = Front::start(PAGE.to_owned(), addrs.to_vec()).await;
    let origin = front.origin();
    let env = |i: usize| gateway_env(&ctx, addrs[i], &origin);
    let mut gateways: [ChildProcess; 2] = [
        start_ready("realtime-gateway", &env(0)).await,
        start_ready("realtime-gateway", &env(1)).await,
    ];

    let mut browser = Browser::start(
        &format!("{origin}/?organizationId=orgA"),
        &cookie,
        ctx.temp_dir(),
    )
    .await;
    browser.open().await;

    // 1. Connected: live rows arrive.
    until("the hook's stream is open", &mut browser, &front, |_, f| {
        open_on(f).is_some()
    })
    .await;
    rows_arrive("connected", &[], &ctx, &mut browser, &front).await;
    eprintln!("step 1 done at {:?}", started.elapsed());

    // 2. Redis down for 5 s, then back (empty). A row written meanwhile
    //    waits in the ingestor. An open stream outlives the outage, so the
    //    front also drops the page's connection meanwhile (a load balancer
    //    restart): the page's reconnects meet a replica without Redis.
    tokio::task::block_in_place(|| redis.stop()).expect("redis stops");
    let down = tokio::time::Instant::now();
    insert(&ctx, "redis-down").await;
    let mark = front.forwarded().len();
    front.cut();
    until(
        "a replica without Redis refuses the hook (transiently)",
        &mut browser,
        &front,
        |_, f| {
            assert!(
                down.elapsed() < REDIS_OUTAGE,
                "the hook asked nothing while Redis was down: {f:#?}"
            );
            f[mark.min(f.len())..]
                .iter()
                .any(Forwarded::is_transient_refusal)
        },
    )
    .await;
    // The outage's length is the scenario, not a wait for a condition.
    tokio::time::sleep(REDIS_OUTAGE.saturating_sub(down.elapsed())).await;
    tokio::task::block_in_place(|| redis.start_again()).expect("redis starts again");
    rows_arrive("redis-back", &["redis-down"], &ctx, &mut browser, &front).await;
    eprintln!("step 2 done at {:?}", started.elapsed());

    // 3. The replica the page is on drains; the page moves to the other.
    let state = page_state(&mut browser).await;
    let on = open_on(&front.forwarded()).unwrap_or_else(|| {
        panic!(
            "the hook is connected\n{}",
            report(&state, &front, &browser)
        )
    });
    let other = 1 - on;
    gateways[on].terminate();
    until(
        "the hook's stream is open on the other replica",
        &mut browser,
        &front,
        |_, f| open_on(f) == Some(other),
    )
    .await;
    rows_arrive("drained", &[], &ctx, &mut browser, &front).await;
    let status = gateways[on].wait_exit(WAIT).await;
    assert!(status.success(), "a drained replica exits 0: {status}");
    gateways[on] = start_ready("realtime-gateway", &env(on)).await;
    eprintln!("step 3 done at {:?}", started.elapsed());

    // 4. The cap: the page (on `other`) holds one of the user's two places,
    //    the test takes the other on the restarted replica.
    let first = holder(addrs[on], &cookie).await;
    assert_eq!(first.status, 200, "{}", first.body_text);
    let mark = front.forwarded().len();
    gateways[other].terminate();
    until(
        "the drain ended the hook's stream",
        &mut browser,
        &front,
        |_, f| open_on(f).is_none(),
    )
    .await;
    // The drain told the page to wait at least 1 s (half of REALTIME_RETRY)
    // before asking again: the test takes the freed place in that window.
    let second = {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
        loop {
            let client = holder(addrs[on], &cookie).await;
            if client.status == 200 {
                break client;
            }
            let state = page_state(&mut browser).await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "the test's second stream did not get the place the drained page freed \
                 ({} {}) before the page asked again\n{}",
                client.status,
                client.body_text,
                report(&state, &front, &browser)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The page asks again and again (it may hit the draining replica too)
    // and is refused by the cap each time, without giving up.
    until(
        "the cap refused the hook twice",
        &mut browser,
        &front,
        |_, f| {
            let after = &f[mark.min(f.len())..];
            after.iter().all(|f| !f.connected)
                && after
                    .iter()
                    .filter(|f| f.backend == Some(on) && f.is_transient_refusal())
                    .count()
                    >= 2
        },
    )
    .await;
    insert(&ctx, "capped").await;
    let status = gateways[other].wait_exit(WAIT).await;
    assert!(status.success(), "a drained replica exits 0: {status}");
    // Another tab of the user closes: the page gets in and catches up.
    drop(first);
    drop(second);
    until(
        "the hook's stream is open again once a place is free",
        &mut browser,
        &front,
        |_, f| open_on(f) == Some(on),
    )
    .await;
    rows_arrive("freed", &["capped"], &ctx, &mut browser, &front).await;
    eprintln!("step 4 done at {:?}", started.elapsed());

    let state = page_state(&mut browser).await;
    assert_eq!(state.constructed, 1, "{:?}", state.raw);
    assert_eq!(state.closed, 0, "{:?}", state.raw);
    assert_eq!(state.navigations, 1, "no reload");
    // What the page's requests met, for the record (`--nocapture`).
    for f in front.forwarded() {
        eprintln!(
            "forwarded to replica {:?}: status {:?}, {}",
            f.backend,
            f.status,
            if f.connected { "a stream" } else { "a refusal" }
        );
    }
    browser.quit().await;
}
