//! Bad configuration stops the real binary with one clear line and a
//! non-zero exit, never a panic.

use std::time::Duration;

use realtime_tests::{ChildProcess, TestContext, binary_path};

/// Runs the ingestor binary with `env` until it exits; returns the last
/// line of its output and its whole output.
async fn run_failing(env: Vec<(&str, String)>) -> (String, String) {
    let mut child = ChildProcess::spawn(&binary_path("realtime-ingestor"), &env);
    let status = child.wait_exit(Duration::from_secs(60)).await;
    let output = child.output_text();
    assert!(!status.success(), "exits non-zero:\n{output}");
    assert!(!output.contains("panicked"), "no panic:\n{output}");
    let last = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.starts_with("error:"),
        "ends with one error line:\n{output}"
    );
    (last, output)
}

fn base_env(ctx: &TestContext) -> Vec<(&'static str, String)> {
    let mut env = ctx.ingestor_env();
    env.push(("REALTIME_IO_TIMEOUT", "3s".to_owned()));
    env
}

fn set(env: &mut Vec<(&'static str, String)>, key: &'static str, value: impl Into<String>) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value.into()));
}

#[tokio::test]
async fn malformed_routes_file_is_one_clear_line() {
    let ctx = TestContext::new().await;
    let path = ctx.temp_dir().join("routes.toml");
    std::fs::write(
        &path,
        "[[tables]]\ntable = \"properties\"\nkind = \"propety\"\norg_column = \"organizationId\"\n",
    )
    .expect("write");
    let mut env = base_env(&ctx);
    set(&mut env, "REALTIME_ROUTES", path.display().to_string());
    let (line, _) = run_failing(env).await;
    assert!(line.contains("REALTIME_ROUTES"), "{line}");
    assert!(line.contains("propety"), "names the bad value: {line}");
}

#[tokio::test]
async fn routed_table_without_its_org_column_is_one_clear_line() {
    let ctx = TestContext::new().await;
    ctx.batch("CREATE TABLE deals (id text PRIMARY KEY, owner text)")
        .await;
    let path = ctx.temp_dir().join("routes.toml");
    std::fs::write(
        &path,
        "[[tables]]\ntable = \"deals\"\nkind = \"property\"\norg_column = \"organizationId\"\n",
    )
    .expect("write");
    let mut env = base_env(&ctx);
    set(&mut env, "REALTIME_ROUTES", path.display().to_string());
    let (line, _) = run_failing(env).await;
    assert!(
        line.contains("deals") && line.contains("organizationId"),
        "{line}"
    );
}

#[tokio::test]
async fn missing_replica_identity_names_the_table_and_the_sql() {
    let ctx = TestContext::new().await;
    let mut env = base_env(&ctx);
    set(&mut env, "REALTIME_MANAGE_REPLICA_IDENTITY", "false");
    let (line, _) = run_failing(env).await;
    assert!(
        line.contains("REPLICA IDENTITY FULL") && line.contains("ALTER TABLE"),
        "{line}"
    );
}

#[tokio::test]
async fn unreachable_postgres_is_one_clear_line() {
    let ctx = TestContext::new().await;
    let port = realtime_tests::free_port();
    let mut env = base_env(&ctx);
    set(
        &mut env,
        "DATABASE_URL",
        format!("postgres://postgres:postgres@127.0.0.1:{port}/nowhere"),
    );
    let (line, _) = run_failing(env).await;
    assert!(
        line.contains("Postgres") && line.contains(&port.to_string()),
        "{line}"
    );
}

#[tokio::test]
async fn unreachable_redis_is_one_clear_line() {
    let ctx = TestContext::new().await;
    let port = realtime_tests::free_port();
    let mut env = base_env(&ctx);
    set(&mut env, "REDIS_URL", format!("redis://127.0.0.1:{port}"));
    let (line, _) = run_failing(env).await;
    assert!(line.contains("REDIS_URL"), "{line}");
}

#[tokio::test]
async fn bad_setting_names_the_variable() {
    let ctx = TestContext::new().await;
    let mut env = base_env(&ctx);
    set(&mut env, "REALTIME_HISTORY_LEN", "lots");
    let (line, output) = run_failing(env).await;
    assert!(output.contains("REALTIME_HISTORY_LEN"), "{output}");
    let _ = line;
}
