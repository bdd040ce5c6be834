//! Redis over TLS with an ACL user, as managed Redis runs (ARCHITECTURE.md §5; README, TLS):
//! the real ingestor and gateway binaries against a `redis-server` that
//! listens only on `--tls-port`, whose `default` user is off, reached as
//! `rediss://user:password@127.0.0.1:port` with `REALTIME_REDIS_CA` = the
//! test CA. Events flow end to end (publisher, the gateway's hub pub/sub,
//! caps, history for a resume, control for a DELETE); a wrong password, an
//! unknown user and an untrusted server certificate each stop either binary
//! at start with one line naming the variable, never the password.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::sse::SseClient;
use crate::support::start_ready;
use realtime_tests::{
    ChildProcess, RedisServer, TestCerts, TestContext, binary_path, free_port, wait_until,
};

const WAIT: Duration = Duration::from_secs(30);
const USER: &str = "realtime_app";
const PASSWORD: &str = "tls-test-password-8f3a";

const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
     INSERT INTO users (id) VALUES ('ua');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES
       ('m1', 'ua', 'orgA');";

/// A TLS-only Redis with the ACL user, and a context (fresh database and
/// key prefix) pointed at it: its envs carry the `rediss://` URL and
/// `REALTIME_REDIS_CA`.
async fn tls_context() -> (RedisServer, TestContext) {
    let redis = tokio::task::spawn_blocking(|| RedisServer::start_tls(USER, PASSWORD))
        .await
        .unwrap()
        .expect("TLS redis-server starts (is redis-server built with TLS?)");
    let ctx = TestContext::new().await.with_redis(&redis);
    ctx.batch(SEED).await;
    (redis, ctx)
}

/// Runs binary `name` with `env` until it exits; checks it failed with one
/// `error:` line and no panic, and returns that line and the whole output.
async fn run_failing(name: &str, env: &[(&str, String)]) -> (String, String) {
    let mut child = ChildProcess::spawn(&binary_path(name), env);
    let status = child.wait_exit(Duration::from_secs(60)).await;
    let output = child.output_text();
    assert!(!status.success(), "{name} exits non-zero:\n{output}");
    assert!(
        !output.contains("panicked"),
        "{name} does not panic:\n{output}"
    );
    let last = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.starts_with("error:"),
        "{name} ends with one error line:\n{output}"
    );
    eprintln!("{name}: {last}");
    (last, output)
}

fn set(env: &mut Vec<(&'static str, String)>, key: &'static str, value: Option<String>) {
    env.retain(|(k, _)| *k != key);
    if let Some(value) = value {
        env.push((key, value));
    }
}

/// Both binaries' environments for `ctx`, with `REDIS_URL` and
/// `REALTIME_REDIS_CA` replaced (`None`: unset).
fn envs(
    ctx: &TestContext,
    redis_url: String,
    ca: Option<String>,
) -> [(&'static str, Vec<(&'static str, String)>); 2] {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut ingestor = ctx.ingestor_env();
    let mut gateway = ctx.gateway_env(listen, JWT_SECRET);
    for env in [&mut ingestor, &mut gateway] {
        set(env, "REDIS_URL", Some(redis_url.clone()));
        set(env, "REALTIME_REDIS_CA", ca.clone());
        env.push(("REALTIME_IO_TIMEOUT", "3s".to_owned()));
    }
    [
        ("realtime-ingestor", ingestor),
        ("realtime-gateway", gateway),
    ]
}

/// One `system.alert` to `org`, committed through Postgres.
async fn emit(ctx: &TestContext, org: &str, n: i64) {
    ctx.execute(
        "SELECT pg_logical_emit_message(true, 'realtime', json_build_object(
             'type', 'system.alert', 'organizationId', $1::text,
             'payload', json_build_object('n', $2::bigint))::text)",
        &[&org, &n],
    )
    .await;
}

/// The `payload.n` of the next event on `sse`.
async fn next_n(sse: &mut SseClient) -> (String, i64) {
    let m = sse.next_event(WAIT).await.expect("an event within 30 s");
    let n = m.json()["payload"]["n"]
        .as_i64()
        .unwrap_or_else(|| panic!("a test event: {m:?}"));
    (m.id.unwrap(), n)
}

async fn hello(sse: &mut SseClient) {
    assert_eq!(sse.status, 200, "{}", sse.body_text);
    let first = sse.next(WAIT).await.expect("hello").expect("stream open");
    assert_eq!(first.json()["type"], "connection", "{first:?}");
}

#[tokio::test]
async fn events_flow_end_to_end_over_tls_with_an_acl_user() {
    let (redis, ctx) = tls_context().await;
    assert!(ctx.redis_url().starts_with("rediss://"));
    let ingestor_env = ctx.ingestor_env();
    assert!(
        ingestor_env.iter().any(|(k, _)| *k == "REALTIME_REDIS_CA"),
        "{ingestor_env:?}"
    );
    let _ingestor = start_ready("realtime-ingestor", &ingestor_env).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway_env = ctx.gateway_env(addr, JWT_SECRET);
    let _gateway = start_ready("realtime-gateway", &gateway_env).await;
    let url = format!("http://{addr}/api/realtime/stream?organizationId=orgA");
    let tok = token("ua", 600);

    // Live: committed in Postgres → ingestor → Redis (TLS) → the hub's
    // pub/sub (TLS) → SSE. The stream's admission went through the caps
    // counters on the same Redis.
    let mut live = SseClient::connect(&url, Some(&tok), &[]).await;
    hello(&mut live).await;
    emit(&ctx, "orgA", 1).await;
    let (first_id, n) = next_n(&mut live).await;
    assert_eq!(n, 1);

    // Resume: committed while no stream is open, read back from the history
    // stream after the last id seen.
    drop(live);
    emit(&ctx, "orgA", 2).await;
    let mut resumed =
        SseClient::connect(&url, Some(&tok), &[("Last-Event-ID", first_id.as_str())]).await;
    hello(&mut resumed).await;
    let (_, n) = next_n(&mut resumed).await;
    assert_eq!(n, 2, "the event committed while away, from history");
    emit(&ctx, "orgA", 3).await;
    let (_, n) = next_n(&mut resumed).await;
    assert_eq!(n, 3, "then live again");

    // Control: a DELETE is published on the control channel and heard by
    // the hub, which closes the caller's stream.
    let status = reqwest::Client::new()
        .delete(format!(
            "http://{addr}/api/realtime/stream?organizationId=orgA"
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!((200..300).contains(&status), "DELETE answered {status}");
    assert!(resumed.ends_within(WAIT).await, "DELETE closes the stream");

    // Only the ACL user over TLS could have done this: the server has no
    // plain port and its default user is off.
    let mut conn = ctx.redis().await;
    let whoami: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(whoami, USER);
    let history: i64 = redis::cmd("XLEN")
        .arg(format!("{}:{{org:orgA}}:history", ctx.key_prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(history, 3);
    drop(redis);
}

#[tokio::test]
async fn wrong_password_or_unknown_user_stops_both_binaries_with_one_line() {
    let (redis, ctx) = tls_context().await;
    let ca = redis.ca_path().map(|p| p.display().to_string());
    let port = redis.port();
    let cases = [
        (redis.tls_url(USER, "not-the-password-41c7"), USER),
        (
            redis.tls_url("nobody_here", "not-the-password-41c7"),
            "nobody_here",
        ),
        // No credentials at all: connecting works, the first command
        // meets NOAUTH (the default user is off).
        (format!("rediss://127.0.0.1:{port}"), "default"),
    ];
    let password = "not-the-password-41c7";
    for (url, user) in cases {
        for (name, env) in envs(&ctx, url.clone(), ca.clone()) {
            let (line, output) = run_failing(name, &env).await;
            assert!(
                line.starts_with("error: REDIS_URL: ") && line.contains("credentials"),
                "{name} ({user}): {line}"
            );
            assert!(
                !output.contains(password) && !output.contains(PASSWORD),
                "{name} never prints a password:\n{output}"
            );
        }
    }
}

#[tokio::test]
async fn untrusted_server_certificate_stops_both_binaries_with_one_line() {
    let (redis, ctx) = tls_context().await;
    // No CA: the platform's roots do not know the test CA.
    for (name, env) in envs(&ctx, redis.url(), None) {
        let (line, output) = run_failing(name, &env).await;
        assert!(
            line.starts_with("error: REDIS_URL: ")
                && line.contains("not trusted")
                && line.contains("REALTIME_REDIS_CA"),
            "{name}: {line}"
        );
        assert!(!output.contains(PASSWORD), "{name}:\n{output}");
    }
    // Another CA than the one that signed the server's certificate.
    let other = TestCerts::generate(ctx.temp_dir(), "other").unwrap();
    let other_ca = Some(other.ca.display().to_string());
    for (name, env) in envs(&ctx, redis.url(), other_ca) {
        let (line, output) = run_failing(name, &env).await;
        assert!(
            line.starts_with("error: REALTIME_REDIS_CA: ") && line.contains("not trusted"),
            "{name}: {line}"
        );
        assert!(!output.contains(PASSWORD), "{name}:\n{output}");
    }
    // A CA file that holds no certificate: refused before connecting.
    let junk = ctx.temp_dir().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    for (name, env) in envs(&ctx, redis.url(), Some(junk.display().to_string())) {
        let (line, _) = run_failing(name, &env).await;
        assert!(
            line.starts_with("error: REALTIME_REDIS_CA: ") && line.contains("no usable PEM"),
            "{name}: {line}"
        );
    }
}

#[tokio::test]
async fn reconnections_after_a_redis_restart_keep_tls_and_the_acl_user() {
    let (redis, ctx) = tls_context().await;
    let _ingestor = start_ready("realtime-ingestor", &ctx.ingestor_env()).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _gateway = start_ready("realtime-gateway", &ctx.gateway_env(addr, JWT_SECRET)).await;
    let url = format!("http://{addr}/api/realtime/stream?organizationId=orgA");
    let tok = token("ua", 600);
    let mut live = SseClient::connect(&url, Some(&tok), &[]).await;
    hello(&mut live).await;
    emit(&ctx, "orgA", 1).await;
    assert_eq!(next_n(&mut live).await.1, 1);
    drop(live);

    // Same port, same certificate, empty: the ingestor's publisher, the
    // gateway's connection manager and its hub all reconnect, and each
    // reconnection must again be TLS with the ACL user (the server has
    // nothing else).
    redis.restart().unwrap();
    let next = std::sync::atomic::AtomicI64::new(100);
    let (ctx, url, tok, next) = (&ctx, &url, &tok, &next);
    wait_until(
        "an event committed after the restart reaches a new stream",
        Duration::from_secs(60),
        || async move {
            let sse = SseClient::connect(url, Some(tok), &[]).await;
            if sse.status != 200 {
                return None; // e.g. 503 while the gateway reconnects
            }
            let mut sse = sse;
            let first = sse.next(Duration::from_secs(5)).await.ok()??;
            if first.json()["type"] != "connection" {
                return None;
            }
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            emit(ctx, "orgA", n).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let m = sse.next_event(left).await?;
                if m.json()["payload"]["n"].as_i64() == Some(n) {
                    return Some(());
                }
            }
        },
    )
    .await;
}
