//! The real gateway binary: SIGTERM ends open streams and the process, and
//! bad settings stop it with one clear line.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

mod support;

use std::time::Duration;

use realtime_tests::{ChildProcess, TestContext, binary_path, free_port};
use support::gateway::{JWT_SECRET, token};
use support::sse::SseClient;

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
