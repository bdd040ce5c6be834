//! TLS to Postgres with libpq `sslmode`/`sslrootcert`, with the real
//! binaries against a real Postgres that has `ssl=on`, a server certificate
//! for `localhost` only (signed by a CA generated at test time) and a
//! `hostssl`-only `pg_hba.conf`, so a plaintext connection is refused.
//!
//! - `verify-full` with the CA: the ingestor (setup, heartbeat and the
//!   replication connection) and the gateway (its pool) work end to end.
//! - A host name the certificate does not name, or a CA that did not sign
//!   it, stops each binary at start-up with one `error:` line.
//! - `sslmode=disable` against the TLS-only server: one clear line.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::sse::SseClient;
use crate::support::start_ready;
use realtime_tests::{
    ChildProcess, PostgresServer, TestCa, TestContext, TlsOptions, binary_path, free_port,
};

const WAIT: Duration = Duration::from_secs(30);

/// The TLS-only server of this module's tests, started on first use. Its
/// certificate names `localhost` only, not `127.0.0.1`.
fn server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        PostgresServer::start_tls(TlsOptions {
            names: vec!["localhost".to_owned()],
            hostssl_only: true,
        })
        .unwrap_or_else(|e| panic!("starting the TLS Postgres: {e:#}"))
    })
}

async fn context() -> TestContext {
    let server = tokio::task::spawn_blocking(server).await.unwrap();
    let ctx = TestContext::on(server).await;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;
    ctx
}

/// The context's database URL on `host` with `params` as its query.
fn url(ctx: &TestContext, host: &str, params: &str) -> String {
    let plain = ctx.database_url();
    let url = plain.replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    assert_ne!(
        url == plain,
        host != "127.0.0.1",
        "host replaced in {plain}"
    );
    format!("{url}?{params}")
}

/// The test CA's PEM file.
fn ca() -> String {
    server().ca_pem().unwrap().display().to_string()
}

fn with_url(
    mut env: Vec<(&'static str, String)>,
    database_url: &str,
) -> Vec<(&'static str, String)> {
    env.retain(|(k, _)| *k != "DATABASE_URL");
    env.push(("DATABASE_URL", database_url.to_owned()));
    env.push(("REALTIME_IO_TIMEOUT", "5s".to_owned()));
    env
}

/// Runs binary `name` with `env` until it exits; asserts a non-zero exit,
/// no panic and a last line starting with `error:`; returns that line.
async fn refused(name: &str, env: &[(&'static str, String)]) -> String {
    let mut child = ChildProcess::spawn(&binary_path(name), env);
    let status = child.wait_exit(Duration::from_secs(60)).await;
    let output = child.output_text();
    assert!(!status.success(), "{name} exits non-zero:\n{output}");
    assert!(!output.contains("panicked"), "{name}: no panic:\n{output}");
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
    last
}

/// Both binaries, from one URL, refused with a last line containing every
/// one of `needles`.
async fn both_refused(ctx: &TestContext, database_url: &str, needles: &[&str]) {
    let ingestor = with_url(ctx.ingestor_env(), database_url);
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gateway = with_url(ctx.gateway_env(listen, JWT_SECRET), database_url);
    for (name, env) in [
        ("realtime-ingestor", ingestor),
        ("realtime-gateway", gateway),
    ] {
        let line = refused(name, &env).await;
        for needle in needles {
            assert!(line.contains(needle), "{name}: {needle:?} in {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_works_end_to_end() {
    let ctx = context().await;
    let database_url = url(
        &ctx,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    let _ingestor = start_ready(
        "realtime-ingestor",
        &with_url(ctx.ingestor_env(), &database_url),
    )
    .await;
    let port = free_port();
    let _gateway = start_ready(
        "realtime-gateway",
        &with_url(
            ctx.gateway_env(([127, 0, 0, 1], port).into(), JWT_SECRET),
            &database_url,
        ),
    )
    .await;
    // The gateway's pool answered the membership query over TLS.
    let mut stream = SseClient::connect(
        &format!("http://127.0.0.1:{port}/api/realtime/stream?organizationId=orgA"),
        Some(&token("ua", 600)),
        &[],
    )
    .await;
    assert_eq!(stream.status, 200, "{}", stream.body_text);
    let _hello = stream.next(WAIT).await.unwrap().unwrap();
    ctx.batch(
        r#"SELECT pg_logical_emit_message(true, 'realtime',
             '{"type":"system.alert","organizationId":"orgA","payload":{"marker":"over-tls"}}')"#,
    )
    .await;
    // The ingestor's replication connection carried it.
    let event = stream.next_event(WAIT).await.expect("the event arrives");
    let data = event.data.unwrap_or_default();
    assert!(data.contains("over-tls"), "{data}");
    // Every session of the ingestor and the gateway is encrypted.
    let rows = ctx
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a
               JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                 OR a.backend_type = 'walsender'",
            &[],
        )
        .await;
    assert!(rows.len() >= 2, "sessions seen: {}", rows.len());
    for row in rows {
        let (app, ssl): (Option<String>, bool) = (row.get(0), row.get(1));
        assert!(ssl, "session {app:?} is encrypted");
    }
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused_at_start() {
    let ctx = context().await;
    // The certificate names localhost; 127.0.0.1 is not among its SANs.
    let database_url = url(
        &ctx,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    both_refused(
        &ctx,
        &database_url,
        &["sslmode=verify-full", "not valid for name"],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_ca_is_refused_at_start() {
    let ctx = context().await;
    let other = ctx.temp_dir().join("other-ca.pem");
    std::fs::write(&other, TestCa::generate("some other CA").unwrap().pem()).unwrap();
    for mode in ["verify-ca", "verify-full", "require"] {
        let database_url = url(
            &ctx,
            "localhost",
            &format!("sslmode={mode}&sslrootcert={}", display(&other)),
        );
        both_refused(
            &ctx,
            &database_url,
            &[&format!("sslmode={mode}"), "UnknownIssuer"],
        )
        .await;
    }
}

#[tokio::test]
async fn sslmode_disable_against_a_tls_only_server_is_one_clear_line() {
    let ctx = context().await;
    let database_url = url(&ctx, "localhost", "sslmode=disable");
    both_refused(&ctx, &database_url, &["DATABASE_URL", "no encryption"]).await;
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
