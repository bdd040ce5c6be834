//! Smoke tests of the test harness itself: isolation between contexts, the
//! servers' settings, restarts on the same port, cleanup, and the waiting
//! and child-process helpers.

use std::path::Path;
use std::time::Duration;

use realtime_tests::{
    ChildProcess, PostgresServer, RedisServer, TestContext, binary_path, shared, wait_until,
};

const OIKION_TABLES: [&str; 13] = [
    "activities",
    "addresses",
    "clients",
    "interactions",
    "listings",
    "media_assets",
    "notes",
    "organization_members",
    "organizations",
    "properties",
    "sessions",
    "tasks",
    "users",
];

async fn tables(ctx: &TestContext) -> Vec<String> {
    ctx.query(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        &[],
    )
    .await
    .iter()
    .map(|row| row.get(0))
    .collect()
}

async fn ping(redis: &mut redis::aio::MultiplexedConnection) -> String {
    redis::cmd("PING").query_async(redis).await.expect("PING")
}

#[tokio::test]
async fn parallel_contexts_get_distinct_databases_with_the_oikion_tables() {
    let (a, b) = tokio::join!(TestContext::new(), TestContext::new());
    assert_ne!(a.database(), b.database());
    assert_ne!(a.database_url(), b.database_url());
    assert_ne!(a.slot(), b.slot());
    assert_ne!(a.publication(), b.publication());
    assert_ne!(a.key_prefix(), b.key_prefix());
    assert_ne!(a.temp_dir(), b.temp_dir());
    assert_eq!(a.redis_url(), b.redis_url(), "both on the shared Redis");
    assert_eq!(tables(&a).await, OIKION_TABLES);
    assert_eq!(tables(&b).await, OIKION_TABLES);

    a.batch("INSERT INTO organizations (id, name) VALUES ('o1', 'Acme')")
        .await;
    let in_b = b.query("SELECT count(*) FROM organizations", &[]).await[0].get::<_, i64>(0);
    assert_eq!(in_b, 0, "a row of one context is not visible in another");
    let inserted = a
        .execute(
            "INSERT INTO users (id, name) VALUES ($1, $2)",
            &[&"u1", &"Ann"],
        )
        .await;
    assert_eq!(inserted, 1);
}

#[tokio::test]
async fn shared_postgres_is_set_up_for_logical_replication() {
    let ctx = TestContext::new().await;
    let pg = ctx.pg().await;
    for (setting, want) in [
        ("wal_level", "logical"),
        ("max_replication_slots", "20"),
        ("max_wal_senders", "20"),
        ("listen_addresses", "127.0.0.1"),
    ] {
        let row = pg
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .expect("SHOW");
        assert_eq!(row.get::<_, String>(0), want, "{setting}");
    }
    let port = shared().postgres().port();
    assert!(port != 5432 && ctx.database_url().contains(&format!(":{port}/")));
    // Password auth (SCRAM) is enforced: a wrong password is refused.
    let wrong = ctx
        .database_url()
        .replace("postgres:postgres@", "postgres:wrong@");
    assert!(
        realtime_tests::connect(&wrong).await.is_err(),
        "a wrong password is refused"
    );
}

#[tokio::test]
async fn shared_redis_answers_ping() {
    let ctx = TestContext::new().await;
    assert!(
        !ctx.redis_url().ends_with(":6379"),
        "not the machine's own Redis"
    );
    assert_eq!(ping(&mut ctx.redis().await).await, "PONG");
}

#[tokio::test]
async fn dedicated_redis_restart_keeps_the_port_and_loses_the_data() {
    let server = RedisServer::start().expect("redis starts");
    let port = server.port();
    let ctx = TestContext::new().await.with_redis(&server);
    assert_eq!(ctx.redis_url(), server.url());
    let mut redis = ctx.redis().await;
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut redis)
        .await
        .expect("SET");

    server.restart().expect("redis restarts");
    assert_eq!(server.port(), port);
    let mut redis = ctx.redis().await;
    assert_eq!(ping(&mut redis).await, "PONG");
    let value: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut redis)
        .await
        .expect("GET");
    assert_eq!(value, None, "no persistence: a restart starts empty");

    server.stop().expect("stop");
    assert!(ctx.try_redis().await.is_err(), "stopped");
    server.start_again().expect("start again");
    assert_eq!(ping(&mut ctx.redis().await).await, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_postgres_restarts_and_recovers_on_the_same_port() {
    let server = PostgresServer::start().expect("postgres starts");
    let port = server.port();
    let ctx = TestContext::on(&server).await;
    ctx.batch("INSERT INTO organizations (id, name) VALUES ('o1', 'Acme')")
        .await;

    server.restart().expect("clean restart");
    assert_eq!(server.port(), port);
    assert_eq!(
        ctx.query("SELECT name FROM organizations", &[]).await.len(),
        1
    );

    // Every acknowledged commit survives a crash, up to the last one.
    let pg = ctx.pg().await;
    for i in 0..200 {
        pg.execute(
            "INSERT INTO organizations (id, name) VALUES ($1, 'x')",
            &[&format!("c{i}")],
        )
        .await
        .expect("insert");
    }
    server.crash_restart().expect("crash and recovery");
    assert!(
        pg.simple_query("SELECT 1").await.is_err(),
        "old sessions are gone"
    );
    let count = ctx.query("SELECT count(*) FROM organizations", &[]).await[0].get::<_, i64>(0);
    assert_eq!(count, 201, "no acknowledged commit is lost in a crash");

    server.stop().expect("stop");
    assert!(!server.is_running());
    assert!(ctx.try_pg().await.is_err(), "stopped");
    server.start_again().expect("start again");
    wait_until(
        "Postgres accepts connections again",
        Duration::from_secs(10),
        || async { ctx.try_pg().await.ok() },
    )
    .await;
}

#[tokio::test]
async fn dropping_a_context_drops_its_slot_and_database() {
    let ctx = TestContext::new().await;
    ctx.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&ctx.slot()],
    )
    .await;
    let (slot, database) = (ctx.slot().to_owned(), ctx.database().to_owned());
    let temp_dir = ctx.temp_dir().to_path_buf();
    drop(ctx);

    let other = TestContext::new().await;
    let slots = other
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await;
    assert!(slots.is_empty(), "slot {slot} was dropped");
    let databases = other
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await;
    assert!(databases.is_empty(), "database {database} was dropped");
    assert!(!temp_dir.exists());
}

#[tokio::test]
async fn wait_until_returns_the_first_value() {
    let mut polls = 0;
    let value = wait_until("the third poll", Duration::from_secs(5), || {
        polls += 1;
        let n = polls;
        async move { (n >= 3).then_some(n * 10) }
    })
    .await;
    assert_eq!(value, 30);
}

#[tokio::test]
#[should_panic(expected = "timed out waiting until the impossible happens")]
async fn wait_until_panics_naming_what_it_waited_for() {
    wait_until(
        "the impossible happens",
        Duration::from_millis(100),
        || async { None::<()> },
    )
    .await;
}

#[tokio::test]
#[should_panic(expected = "timed out waiting until a hung poll ends")]
async fn wait_until_cuts_off_a_poll_that_hangs() {
    wait_until("a hung poll ends", Duration::from_millis(100), || {
        std::future::pending::<Option<()>>()
    })
    .await;
}

#[test]
#[should_panic(expected = "cargo build --workspace --bins")]
fn binary_path_explains_a_missing_binary() {
    binary_path("realtime-no-such-binary");
}

#[tokio::test]
async fn child_process_captures_output_and_reports_its_exit() {
    let sh = Path::new("/bin/sh");
    let script = "echo \"start $GREETING\"; echo 'INFO x: listening admin=127.0.0.1:4321' >&2; exec sleep 30";
    let mut child = ChildProcess::spawn_with_args(sh, &["-c", script], &[("GREETING", "hello")]);
    assert_eq!(child.admin_addr(Duration::from_secs(10)).await.port(), 4321);
    assert_eq!(
        child.wait_for_line("start", Duration::from_secs(10)).await,
        "start hello"
    );
    child.terminate();
    let status = child.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "killed by SIGTERM: {status}");

    let mut done =
        ChildProcess::spawn_with_args(sh, &["-c", "echo bye; exit 3"], &[] as &[(&str, &str)]);
    assert_eq!(
        done.wait_exit(Duration::from_secs(10)).await.code(),
        Some(3)
    );
    assert_eq!(done.output_text(), "bye\n");
}
