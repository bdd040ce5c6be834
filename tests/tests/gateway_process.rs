//! The real gateway binary: SIGTERM ends open streams and the process, and
//! bad settings stop it with one clear line.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use crate::support;

use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::sse::SseClient;
use realtime_tests::{ChildProcess, TestContext, binary_path, free_port};

fn env(ctx: &TestContext, listen_port: u16) -> Vec<(&'static str, String)> {
    let mut env = ctx.gateway_env(([127, 0, 0, 1], listen_port).into(), JWT_SECRET);
    env.push(("REALTIME_IO_TIMEOUT", "3s".to_owned()));
    env.push(("REALTIME_DRAIN", "2s".to_owned()));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_and_the_process() {
    let ctx = TestContext::new().await;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;
    let port = free_port();
    let mut gw = ChildProcess::spawn(&binary_path("realtime-gateway"), &env(&ctx, port));
    let admin = gw.admin_addr(Duration::from_secs(30)).await;
    realtime_tests::wait_until(
        "the gateway is ready",
        Duration::from_secs(30),
        || async move {
            support::http_get(&format!("http://{admin}/readyz"))
                .await
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/api/realtime/stream?organizationId=orgA");
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = SseClient::connect(&url, Some(&token("ua", 600)), &[]).await;
        assert_eq!(s.status, 200);
        let _hello = s.next(Duration::from_secs(10)).await.unwrap().unwrap();
        streams.push(s);
    }
    gw.terminate();
    for s in &mut streams {
        assert!(
            s.ends_within(Duration::from_secs(10)).await,
            "the stream ends on SIGTERM"
        );
    }
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exits cleanly:\n{}", gw.output_text());
}

#[tokio::test]
async fn unreachable_services_and_bad_settings_are_one_clear_line() {
    let ctx = TestContext::new().await;
    let dead = free_port();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "DATABASE_URL",
            format!("postgres://postgres:postgres@127.0.0.1:{dead}/x"),
            "DATABASE_URL",
        ),
        (
            "REDIS_URL",
            format!("redis://127.0.0.1:{dead}"),
            "REDIS_URL",
        ),
        (
            "REALTIME_HEARTBEAT",
            "often".to_owned(),
            "REALTIME_HEARTBEAT",
        ),
        (
            "REALTIME_JWKS_URL",
            "ftp://example".to_owned(),
            "REALTIME_JWKS_URL",
        ),
    ];
    for (key, value, named) in cases {
        let mut e = env(&ctx, free_port());
        e.retain(|(k, _)| *k != key);
        e.push((key, value));
        let mut gw = ChildProcess::spawn(&binary_path("realtime-gateway"), &e);
        let status = gw.wait_exit(Duration::from_secs(30)).await;
        let out = gw.output_text();
        assert!(!status.success(), "{key}: exits non-zero");
        assert!(!out.contains("panicked"), "{key}: no panic:\n{out}");
        let last = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            last.starts_with("error:") && last.contains(named),
            "{key}: {last}"
        );
    }
}

/// Starts the real gateway with `env` and waits until `/readyz` answers 200.
async fn start_ready(env: &[(&'static str, String)]) -> ChildProcess {
    let gw = ChildProcess::spawn(&binary_path("realtime-gateway"), env);
    let admin = gw.admin_addr(Duration::from_secs(30)).await;
    realtime_tests::wait_until(
        "the gateway is ready",
        Duration::from_secs(30),
        || async move {
            support::http_get(&format!("http://{admin}/readyz"))
                .await
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;
    gw
}

/// Membership is "the query returned a row with a name": a query that
/// returns a row for everyone would let every user into every organization,
/// so the replica refuses to start with one line naming the variable.
#[tokio::test]
async fn membership_query_answering_for_everyone_is_refused_at_start() {
    let ctx = TestContext::new().await;
    let cases = [
        (
            "SELECT EXISTS(SELECT 1 FROM organization_members m WHERE m.\"userId\" = $1 AND m.\"organizationId\" = $2)",
            "returns 1 column of type bool",
        ),
        (
            "SELECT count(*) FROM organization_members m WHERE m.\"userId\" = $1 AND m.\"organizationId\" = $2",
            "returns 1 column of type int8",
        ),
        (
            "SELECT o.name FROM organizations o WHERE o.id = $1",
            "takes 1 parameter(s)",
        ),
    ];
    for (query, why) in cases {
        let mut e = env(&ctx, free_port());
        e.push(("REALTIME_MEMBERSHIP_QUERY", query.to_owned()));
        let mut gw = ChildProcess::spawn(&binary_path("realtime-gateway"), &e);
        let status = gw.wait_exit(Duration::from_secs(30)).await;
        let out = gw.output_text();
        assert!(!status.success(), "{query}: exits non-zero:\n{out}");
        assert!(!out.contains("panicked"), "{query}: no panic:\n{out}");
        let last = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            last.starts_with("error: REALTIME_MEMBERSHIP_QUERY: ") && last.contains(why),
            "{query}: {last}"
        );
        assert!(
            last.contains("it must return one text column") || last.contains("two text parameters"),
            "{query}: says what it must be: {last}"
        );
    }
}

/// The default query and a valid custom one start; the custom one (a scalar
/// subquery: one row for everyone, NULL for a non-member) lets the member in
/// with the organization's name and refuses the non-member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_valid_custom_membership_queries_are_accepted() {
    let ctx = TestContext::new().await;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('ua'), ('ub');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;
    let mut gw = start_ready(&env(&ctx, free_port())).await;
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).await.success());

    let port = free_port();
    let mut e = env(&ctx, port);
    e.push((
        "REALTIME_MEMBERSHIP_QUERY",
        "SELECT (SELECT o.name::varchar FROM organization_members m JOIN organizations o \
         ON o.id = m.\"organizationId\" WHERE m.\"userId\" = $1 AND m.\"organizationId\" = $2) AS name"
            .to_owned(),
    ));
    let mut gw = start_ready(&e).await;
    let url = format!("http://127.0.0.1:{port}/api/realtime/stream?organizationId=orgA");
    let mut member = SseClient::connect(&url, Some(&token("ua", 600)), &[]).await;
    assert_eq!(member.status, 200);
    let hello = member.next(Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(hello.json()["organizationName"], "Acme");
    let outsider = SseClient::connect(&url, Some(&token("ub", 600)), &[]).await;
    assert_eq!(
        outsider.status, 403,
        "a NULL name is no membership: {}",
        outsider.body_text
    );
    drop(member);
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).await.success());
}
