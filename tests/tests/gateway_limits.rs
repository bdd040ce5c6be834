//! Per-IP limits on every method, and the smaller protections of security
//! issue 11 (ARCHITECTURE.md §3), against real Postgres and Redis and the gateway
//! in-process (or its real binary for start-up refusals):
//!
//! - `HEAD`, `POST`, `PUT`, `DELETE` floods from one address get 429 after
//!   the burst, and the database work they cause is counted (a sequence
//!   bumped by the sessions view and the membership query the gateway is
//!   configured with) and bounded by the burst;
//! - `DELETE ?organizationId=` broadcasts `closeAll` only for a caller who
//!   holds a stream there;
//! - a cookie-authenticated change needs an allowed `Origin`;
//! - wrong publish keys lock the sending address out;
//! - an `ip:port` or unparseable `X-Forwarded-For` hop from a trusted proxy
//!   does not let the client choose its rate-limit key;
//! - secrets are refused as flags and when shorter than 32 bytes.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, RunningGateway, gateway_config, token};
use crate::support::sse::SseClient;
use futures_util::StreamExt;
use realtime_tests::{ChildProcess, TestContext, binary_path, free_port};
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(30);
const PUBLISH_KEY: &str = "test-publish-key-at-least-32-bytes-long";
const APP_ORIGIN: &str = "http://app.test";

const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme'), ('orgB', 'Bolt');
     INSERT INTO users (id) VALUES ('ua'), ('ub');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES
       ('m1', 'ua', 'orgA'), ('m2', 'ub', 'orgB');";

/// Every session lookup and membership query the gateway makes bumps the
/// sequence `db_lookups`: the gateway reads sessions through a view over a
/// counting function and is given a membership query that counts. A
/// sequence is not transactional and is read at once (no statistics delay).
const COUNTING: &str = r#"
CREATE SEQUENCE db_lookups;
CREATE FUNCTION counted_sessions() RETURNS SETOF sessions LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM nextval('db_lookups');
  RETURN QUERY SELECT * FROM sessions;
END $$;
CREATE VIEW counted_sessions_view AS SELECT * FROM counted_sessions();
CREATE FUNCTION counted_membership(u text, o text) RETURNS SETOF text LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM nextval('db_lookups');
  RETURN QUERY SELECT org.name::text FROM organization_members m
    JOIN organizations org ON org.id = m."organizationId"
    WHERE m."userId" = u AND m."organizationId" = o;
END $$;
"#;

async fn db_lookups(ctx: &TestContext) -> i64 {
    let row = ctx
        .pg()
        .await
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM db_lookups",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Sends one request; its status.
async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let mut req = http().request(method, url).body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

fn random_token() -> String {
    format!("not-a-jwe-{:032x}", rand::random::<u128>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_is_limited_per_ip_and_the_database_work_is_bounded() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    ctx.batch(COUNTING).await;
    let mut config = gateway_config(&ctx);
    config.sessions_table = "counted_sessions_view".into();
    config.membership_query = "SELECT * FROM counted_membership($1, $2)".into();
    config.cors_origins = vec![APP_ORIGIN.into()];
    // One per 10 s after the burst: no refill worth counting in the test.
    const CONNECT_BURST: u32 = 3;
    const REQUEST_BURST: u32 = 5;
    config.connect_rate = 0.1;
    config.connect_burst = CONNECT_BURST;
    config.request_rate = 0.1;
    config.request_burst = REQUEST_BURST;
    let gw = RunningGateway::start(config).await;
    let url = gw.stream_url("organizationId=orgA");
    const FLOOD: usize = 30;

    // HEAD from a member: counted as a stream connect, and answered without
    // the stream handler's membership queries.
    let before = db_lookups(&ctx).await;
    let bearer = format!("Bearer {}", token("ua", 600));
    let mut head = Vec::new();
    for _ in 0..FLOOD {
        head.push(send(Method::HEAD, &url, &[("authorization", &bearer)], "").await);
    }
    assert_eq!(
        db_lookups(&ctx).await - before,
        0,
        "HEAD costs no database query"
    );
    let limited = head.iter().filter(|s| **s == 429).count();
    assert_eq!(
        limited,
        FLOOD - CONNECT_BURST as usize,
        "HEAD is limited with GET: {head:?}"
    );
    assert!(
        head.iter().all(|s| *s == 405 || *s == 429),
        "HEAD never runs the stream: {head:?}"
    );

    // POST, PUT, DELETE with made-up session cookies (each a sessions lookup
    // if it got through), from a page of an allowed origin.
    let before = db_lookups(&ctx).await;
    let put_url = gw.stream_url("connectionId=00000000-0000-4000-8000-000000000000");
    let mut passed = 0;
    for (method, url, body) in [
        (
            Method::POST,
            url.as_str(),
            r#"{"type":"user.activity","payload":{"action":"a","resource":"r"}}"#,
        ),
        (Method::PUT, put_url.as_str(), r#"{"channels":["all"]}"#),
        (Method::DELETE, url.as_str(), ""),
    ] {
        let mut statuses = Vec::new();
        for _ in 0..FLOOD {
            let cookie = format!("authjs.session-token={}", random_token());
            statuses.push(
                send(
                    method.clone(),
                    url,
                    &[("cookie", &cookie), ("origin", APP_ORIGIN)],
                    body,
                )
                .await,
            );
        }
        let ok = statuses.iter().filter(|s| **s != 429).count();
        passed += ok;
        let lookups = db_lookups(&ctx).await - before;
        assert!(
            lookups <= i64::from(REQUEST_BURST) + 1,
            "after the {method} flood: {lookups} database lookups, more than the burst"
        );
        assert_eq!(
            lookups, passed as i64,
            "one sessions lookup per request let through, none for the refused"
        );
        assert!(
            statuses.iter().filter(|s| **s != 429).all(|s| *s == 401),
            "{method}: made-up sessions are refused: {statuses:?}"
        );
        assert!(
            ok <= REQUEST_BURST as usize + 1,
            "{method} is limited: {statuses:?}"
        );
    }
    // One shared budget per address for every state-changing call.
    assert!(
        (REQUEST_BURST as usize..=REQUEST_BURST as usize + 1).contains(&passed),
        "{passed} got through"
    );

    // The publish API shares the budget (here: already spent).
    let status = send(
        Method::POST,
        &format!("http://{}/api/realtime/publish", gw.addr),
        &[("authorization", "Bearer whatever")],
        "{}",
    )
    .await;
    assert_eq!(status, 429);

    // Preflight stays unlimited (no I/O): the CORS layer answers it.
    for _ in 0..10 {
        let status = send(
            Method::OPTIONS,
            &url,
            &[
                ("origin", APP_ORIGIN),
                ("access-control-request-method", "POST"),
            ],
            "",
        )
        .await;
        assert_eq!(status, 200);
    }
    gw.stop().await;
}

/// The control channel's messages, as they are published.
async fn control_messages(ctx: &TestContext) -> impl futures_util::Stream<Item = String> {
    let client = redis::Client::open(ctx.redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    let channel = realtime_shared::keys::Keys::new(ctx.key_prefix()).control();
    pubsub.subscribe(channel).await.unwrap();
    pubsub
        .into_on_message()
        .map(|m| m.get_payload::<String>().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_organization_broadcasts_only_for_the_callers_own_streams() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let gw = RunningGateway::start(gateway_config(&ctx)).await;
    let mut control = Box::pin(control_messages(&ctx).await);
    let ua = token("ua", 600);
    let delete = |org: &str| {
        let url = gw.stream_url(&format!("organizationId={org}"));
        let auth = format!("Bearer {ua}");
        async move { send(Method::DELETE, &url, &[("authorization", &auth)], "").await }
    };
    // No stream of ua's in orgB (not a member) nor, yet, in orgA: nothing
    // to close, nothing broadcast.
    for org in ["orgB", "made-up", "orgA"] {
        assert_eq!(delete(org).await, 204, "{org}");
    }
    // ub's stream in orgB is not ua's to close.
    let mut other = SseClient::connect(
        &gw.stream_url("organizationId=orgB"),
        Some(&token("ub", 600)),
        &[],
    )
    .await;
    assert_eq!(other.status, 200);
    other.next(WAIT).await.unwrap().unwrap();
    assert_eq!(delete("orgB").await, 204);

    // With a stream in orgA, the DELETE closes it through the broadcast.
    let mut mine = SseClient::connect(&gw.stream_url("organizationId=orgA"), Some(&ua), &[]).await;
    assert_eq!(mine.status, 200);
    mine.next(WAIT).await.unwrap().unwrap();
    assert_eq!(delete("orgA").await, 204);
    let first = tokio::time::timeout(WAIT, control.next())
        .await
        .expect("a control message")
        .unwrap();
    assert!(
        first.contains("orgA") && first.contains("ua"),
        "the first broadcast is ua's closeAll for orgA, none before it: {first}"
    );
    assert!(mine.ends_within(WAIT).await, "ua's stream is closed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_authenticated_changes_need_an_allowed_origin() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    ctx.batch(
        "INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires) VALUES
           ('s1', 'ua-session-token', 'ua', now() + interval '1 day')",
    )
    .await;
    let mut config = gateway_config(&ctx);
    config.cors_origins = vec![APP_ORIGIN.into()];
    let gw = RunningGateway::start(config).await;
    let url = gw.stream_url("organizationId=orgA");
    let own_origin = format!("http://{}", gw.addr);
    let cookie = ("cookie", "authjs.session-token=ua-session-token");
    let body = r#"{"type":"user.activity","payload":{"action":"viewed","resource":"r"}}"#;
    let post = |headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(Method::POST, &url, &headers, body).await
        }
    };
    let c = || (cookie.0, cookie.1.to_owned());
    // Refused: a sibling's page, an opaque origin, no origin at all.
    for (case, headers) in [
        (
            "sibling origin",
            vec![c(), ("origin", "http://evil.test".into())],
        ),
        (
            "sibling referer",
            vec![c(), ("referer", "http://evil.test/page".into())],
        ),
        ("null origin", vec![c(), ("origin", "null".into())]),
        ("no origin", vec![c()]),
    ] {
        assert_eq!(post(headers).await, 403, "{case}");
    }
    for method in [Method::PUT, Method::DELETE] {
        let status = send(
            method.clone(),
            &gw.stream_url("organizationId=orgA&connectionId=00000000-0000-4000-8000-000000000000"),
            &[cookie, ("origin", "http://evil.test")],
            r#"{"channels":["all"]}"#,
        )
        .await;
        assert_eq!(status, 403, "{method}");
    }
    // Accepted: a listed origin, the gateway's own, a listed referer, and
    // a bearer token from anywhere.
    for (case, headers) in [
        ("listed origin", vec![c(), ("origin", APP_ORIGIN.into())]),
        ("own origin", vec![c(), ("origin", own_origin.clone())]),
        (
            "listed referer",
            vec![c(), ("referer", format!("{APP_ORIGIN}/dashboard"))],
        ),
        (
            "bearer",
            vec![
                ("authorization", format!("Bearer {}", token("ua", 600))),
                ("origin", "http://evil.test".into()),
            ],
        ),
    ] {
        assert_eq!(post(headers).await, 202, "{case}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_publish_keys_lock_the_address_out() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let mut config = gateway_config(&ctx);
    config.publish_key = Some(PUBLISH_KEY.into());
    config.publish_key_failures = 3;
    config.publish_key_lockout = Duration::from_secs(600);
    config.trusted_proxies = vec!["127.0.0.0/8".into()];
    config.request_rate = 0.0;
    let gw = RunningGateway::start(config).await;
    let url = format!("http://{}/api/realtime/publish", gw.addr);
    let alert = r#"{"type":"system.alert","payload":{"level":"info","message":"m"}}"#;
    let publish = |key: &'static str, client: &'static str| {
        let url = url.clone();
        async move {
            let auth = format!("Bearer {key}");
            send(
                Method::POST,
                &url,
                &[("authorization", &auth), ("x-forwarded-for", client)],
                alert,
            )
            .await
        }
    };
    assert_eq!(publish(PUBLISH_KEY, "198.51.100.1").await, 202);
    for _ in 0..3 {
        assert_eq!(publish("wrong-key", "198.51.100.1").await, 401);
    }
    // Locked out: even the right key is not compared.
    assert_eq!(publish(PUBLISH_KEY, "198.51.100.1").await, 429);
    assert_eq!(publish("wrong-key", "198.51.100.1").await, 429);
    // Another address is not.
    assert_eq!(publish(PUBLISH_KEY, "198.51.100.2").await, 202);
    gw.stop().await;
}

#[tokio::test]
async fn secrets_as_flags_or_too_short_stop_start_up_with_one_line() {
    let ctx = TestContext::new().await;
    let env = |port: u16| {
        let mut env = ctx.gateway_env(([127, 0, 0, 1], port).into(), JWT_SECRET);
        env.push(("REALTIME_IO_TIMEOUT", "3s".to_owned()));
        env
    };
    let long = "0123456789abcdef0123456789abcdef";
    // (flags, extra environment, the variable the refusal names)
    type Case<'a> = (Vec<String>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--auth-secret".into(), long.into()],
            vec![],
            "AUTH_SECRET",
        ),
        (
            vec![format!("--realtime-publish-key={long}")],
            vec![],
            "REALTIME_PUBLISH_KEY",
        ),
        (
            vec![],
            vec![("REALTIME_PUBLISH_KEY", "short".into())],
            "REALTIME_PUBLISH_KEY",
        ),
        (
            vec![],
            vec![("AUTH_SECRET", "a-short-app-secret".into())],
            "AUTH_SECRET",
        ),
        (
            vec![],
            vec![("NEXTAUTH_SECRET", "x".repeat(31))],
            "NEXTAUTH_SECRET",
        ),
        (
            vec![],
            vec![("REALTIME_JWT_SECRET", "jwt-secret".into())],
            "REALTIME_JWT_SECRET",
        ),
    ];
    for (args, extra, named) in cases {
        let mut e = env(free_port());
        e.extend(extra);
        let mut gw = ChildProcess::spawn_with_args(&binary_path("realtime-gateway"), &args, &e);
        let status = gw.wait_exit(WAIT).await;
        let out = gw.output_text();
        assert!(!status.success(), "{named}: exits non-zero:\n{out}");
        assert!(!out.contains("panicked"), "{named}: no panic:\n{out}");
        let last = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            last.starts_with("error:") && last.contains(named),
            "{named}: {last}"
        );
        assert!(!out.contains(long), "the secret is not echoed:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_hops_with_ports_or_garbage_cannot_pick_the_rate_limit_key() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    let mut config = gateway_config(&ctx);
    // HEAD counts as a connect: two per address, then 429 for 10 s.
    config.connect_rate = 0.1;
    config.connect_burst = 2;
    config.trusted_proxies = vec!["127.0.0.0/8".into()];
    let gw = RunningGateway::start(config).await;
    let url = gw.stream_url("organizationId=orgA");
    let bearer = format!("Bearer {}", token("ua", 600));
    for (case, last_hop) in [
        // The trusted proxy wrote an address with a port: that address is
        // the client, whatever the client put on its left.
        ("ip:port", "198.51.100.7:4711"),
        ("[v6]:port", "[2001:db8::7]:4711"),
        // The trusted proxy wrote something that is not an address: the
        // chain ends at the proxy (the peer), not at the client's value.
        ("garbage", "unknown"),
    ] {
        let mut statuses = Vec::new();
        for i in 0..5 {
            // A different spoofed address each time.
            let xff = format!("203.0.113.{i}, {last_hop}");
            statuses.push(
                send(
                    Method::HEAD,
                    &url,
                    &[("authorization", &bearer), ("x-forwarded-for", &xff)],
                    "",
                )
                .await,
            );
        }
        assert_eq!(
            statuses,
            [405, 405, 429, 429, 429],
            "{case}: one key whatever the client wrote"
        );
    }
    gw.stop().await;
}
