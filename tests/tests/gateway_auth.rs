//! The gateway's auth chain over HTTP, with tokens minted by the real
//! next-auth (v4) and @auth/core (v5) libraries
//! (gateway/tests/fixtures/auth, made by its mint.mjs), database sessions
//! and bearer JWTs; and streams that end when their token expires.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::time::Duration;

use crate::support::gateway::{RunningGateway, gateway_config, token_with};
use crate::support::sse::SseClient;
use serde_json::Value;

const FIXTURES: &str = include_str!("../../gateway/tests/fixtures/auth/tokens.json");

fn fixtures() -> Value {
    serde_json::from_str(FIXTURES).expect("fixtures JSON")
}

async fn gateway_for_fixtures() -> (realtime_tests::TestContext, RunningGateway, Value) {
    let f = fixtures();
    let ctx = realtime_tests::TestContext::new().await;
    let sub = f["sub"].as_str().unwrap();
    ctx.execute(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme')",
        &[],
    )
    .await;
    ctx.execute("INSERT INTO users (id) VALUES ($1)", &[&sub])
        .await;
    ctx.execute(
        "INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', $1, 'orgA')",
        &[&sub],
    )
    .await;
    let mut config = gateway_config(&ctx);
    config.auth_secret = Some(f["secrets"]["primary"].as_str().unwrap().to_owned());
    config.auth_secret_1 = Some(f["secrets"]["rotated"].as_str().unwrap().to_owned());
    config.jwt_secret = Some(f["jwt_secret"].as_str().unwrap().to_owned());
    let gw = RunningGateway::start(config).await;
    (ctx, gw, f)
}

async fn status_with_cookie(gw: &RunningGateway, cookie: &str) -> (u16, Option<Value>) {
    let mut c = SseClient::connect(
        &gw.stream_url("organizationId=orgA"),
        None,
        &[("cookie", cookie)],
    )
    .await;
    if c.status != 200 {
        return (c.status, None);
    }
    let hello = c
        .next(Duration::from_secs(10))
        .await
        .ok()
        .flatten()
        .map(|m| m.json());
    (c.status, hello)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookies_minted_by_next_auth_v4_and_v5() {
    let (_ctx, gw, f) = gateway_for_fixtures().await;
    let sub = f["sub"].as_str().unwrap();
    for s in f["sessions"].as_array().unwrap() {
        let cookie = format!(
            "{}={}",
            s["cookie"].as_str().unwrap(),
            s["token"].as_str().unwrap()
        );
        let want = if s["expect"] == "valid" { 200 } else { 401 };
        let (status, hello) = status_with_cookie(&gw, &cookie).await;
        assert_eq!(status, want, "{}", s["id"]);
        if want == 200 {
            assert_eq!(hello.unwrap()["userId"], sub, "{}", s["id"]);
        }
        // Tampered: one character of the ciphertext changed.
        let token = s["token"].as_str().unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut ct: Vec<char> = parts[3].chars().collect();
        let mid = ct.len() / 2;
        ct[mid] = if ct[mid] == 'A' { 'B' } else { 'A' };
        let tampered = format!(
            "{}.{}.{}.{}.{}",
            parts[0],
            parts[1],
            parts[2],
            ct.into_iter().collect::<String>(),
            parts[4]
        );
        let (status, _) = status_with_cookie(
            &gw,
            &format!("{}={tampered}", s["cookie"].as_str().unwrap()),
        )
        .await;
        assert_eq!(status, 401, "tampered {}", s["id"]);
    }
    for c in f["chunked"].as_array().unwrap() {
        // Sent out of order, as a browser may.
        let header = c["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|chunk| {
                format!(
                    "{}={}",
                    chunk["name"].as_str().unwrap(),
                    chunk["value"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let (status, hello) = status_with_cookie(&gw, &header).await;
        assert_eq!(status, 200, "{}", c["id"]);
        assert_eq!(hello.unwrap()["userId"], sub);
    }
    // A cookie under the wrong name (v5 salt is the cookie name): refused.
    let v5 = f["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "v5-secure")
        .unwrap();
    let (status, _) = status_with_cookie(
        &gw,
        &format!("authjs.session-token={}", v5["token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_sessions_and_bearer_jwts() {
    let (ctx, gw, f) = gateway_for_fixtures().await;
    let sub = f["sub"].as_str().unwrap();
    ctx.execute(
        "INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires) VALUES
           ('s1', 'live-session-token', $1, now() + interval '1 day'),
           ('s2', 'old-session-token', $1, now() - interval '1 minute')",
        &[&sub],
    )
    .await;
    assert_eq!(
        status_with_cookie(&gw, "authjs.session-token=live-session-token")
            .await
            .0,
        200
    );
    assert_eq!(
        status_with_cookie(&gw, "next-auth.session-token=live-session-token")
            .await
            .0,
        200
    );
    assert_eq!(
        status_with_cookie(&gw, "authjs.session-token=old-session-token")
            .await
            .0,
        401
    );
    assert_eq!(
        status_with_cookie(&gw, "authjs.session-token=no-such-session")
            .await
            .0,
        401
    );
    assert_eq!(status_with_cookie(&gw, "unrelated=cookie").await.0, 401);

    for j in f["jwts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["alg"] == "HS256")
    {
        let c = SseClient::connect(
            &gw.stream_url("organizationId=orgA"),
            j["token"].as_str(),
            &[],
        )
        .await;
        let want = if j["expect"] == "valid" { 200 } else { 401 };
        assert_eq!(c.status, want, "{}", j["id"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_expires() {
    let (_ctx, gw, f) = gateway_for_fixtures().await;
    let sub = f["sub"].as_str().unwrap();
    let secret = f["jwt_secret"].as_str().unwrap();
    let mut c = SseClient::connect(
        &gw.stream_url("organizationId=orgA"),
        Some(&token_with(sub, 2, secret)),
        &[],
    )
    .await;
    assert_eq!(c.status, 200);
    assert!(
        c.ends_within(Duration::from_secs(10)).await,
        "the stream closes at exp"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_sealed_with_another_secret_are_refused() {
    let (ctx, _gw, f) = gateway_for_fixtures().await;
    let mut config = gateway_config(&ctx);
    config.auth_secret = Some("a-different-secret-than-the-app-uses".to_owned());
    config.jwt_secret = Some("a-different-jwt-secret-of-enough-length".to_owned());
    let other = RunningGateway::start(config).await;
    for s in f["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["expect"] == "valid")
    {
        let cookie = format!(
            "{}={}",
            s["cookie"].as_str().unwrap(),
            s["token"].as_str().unwrap()
        );
        assert_eq!(
            status_with_cookie(&other, &cookie).await.0,
            401,
            "{}",
            s["id"]
        );
    }
    for j in f["jwts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["alg"] == "HS256" && j["expect"] == "valid")
    {
        let c = SseClient::connect(
            &other.stream_url("organizationId=orgA"),
            j["token"].as_str(),
            &[],
        )
        .await;
        assert_eq!(c.status, 401, "{}", j["id"]);
    }
}
