//! Least privilege, with the real binaries on a Postgres server of the
//! test's own (roles are cluster-wide): the roles are created by exactly
//! `deploy/postgres/roles.sql`, the file the README quotes, and the whole
//! pipeline runs with them: the ingestor as a non-superuser `REPLICATION`
//! role using the publication the tables' owner created (its table list
//! then not synced, and said so at start-up), the gateway with column
//! `SELECT`s and `EXECUTE` on `pg_logical_emit_message` only (revoked from
//! `PUBLIC` first, so the file's grant is what lets it publish). An admin
//! publication that lacks a routed table stops the ingestor with one clear
//! line instead of events silently missing.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::sse::SseClient;
use crate::support::start_ready;
use realtime_tests::{ChildProcess, PostgresServer, TestContext, binary_path, free_port};

const WAIT: Duration = Duration::from_secs(30);
const ROLES_SQL_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/postgres/roles.sql");
const OWNS_SQL_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/postgres/ingestor-owns-publication.sql"
);
const README_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
const INGESTOR_PASSWORD: &str = "ingestor-pw";
const GATEWAY_PASSWORD: &str = "gateway-pw";
const PUBLISH_KEY: &str = "a-publish-key-of-at-least-32-bytes-long";

const SEED: &str = "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
     INSERT INTO users (id) VALUES ('ua'), ('ux');
     INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');
     INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires)
       VALUES ('s1', 'sess-ua', 'ua', now() + interval '1 hour');";

/// `deploy/postgres/roles.sql` with its psql variables filled in for `ctx`:
/// the statements an operator runs, byte for byte otherwise.
fn roles_sql(ctx: &TestContext) -> String {
    let sql = std::fs::read_to_string(ROLES_SQL_PATH).expect("deploy/postgres/roles.sql");
    sql.replace(":'ingestor_password'", &format!("'{INGESTOR_PASSWORD}'"))
        .replace(":'gateway_password'", &format!("'{GATEWAY_PASSWORD}'"))
        .replace(":\"db\"", &format!("\"{}\"", ctx.database()))
}

fn url_as(pg: &PostgresServer, ctx: &TestContext, role: &str, password: &str) -> String {
    format!(
        "postgres://{role}:{password}@127.0.0.1:{}/{}",
        pg.port(),
        ctx.database()
    )
}

fn ingestor_env(pg: &PostgresServer, ctx: &TestContext) -> Vec<(&'static str, String)> {
    [
        ctx.ingestor_env(),
        vec![
            (
                "DATABASE_URL",
                url_as(pg, ctx, "realtime_ingestor", INGESTOR_PASSWORD),
            ),
            // The publication of roles.sql, and no identity management.
            ("REALTIME_PUBLICATION", "realtime".to_owned()),
            ("REALTIME_MANAGE_REPLICA_IDENTITY", "false".to_owned()),
            ("REALTIME_RECONNECT_MAX", "1s".to_owned()),
        ],
    ]
    .concat()
}

/// The README quotes both SQL files whole, so what operators read is what
/// these tests run.
#[test]
fn the_readme_quotes_the_roles_file_verbatim() {
    let readme = std::fs::read_to_string(README_PATH).expect("README.md");
    for path in [ROLES_SQL_PATH, OWNS_SQL_PATH] {
        let sql = std::fs::read_to_string(path).expect(path);
        assert!(
            readme.contains(&format!("```sql\n{sql}```")),
            "README.md must quote {path} verbatim in a ```sql block"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_with_only_the_documented_grants() {
    let pg = PostgresServer::start().expect("postgres");
    let ctx = TestContext::on(&pg).await;
    ctx.batch(SEED).await;
    // Before the ingestor starts: it will have to look this one up.
    ctx.batch(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p0', 'orgA', 'ua', 1)",
    )
    .await;
    // Hardened: nobody may emit messages unless granted, so the file's
    // grants are what the two roles run on.
    ctx.batch(
        "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text) FROM PUBLIC",
    )
    .await;
    ctx.batch(&roles_sql(&ctx)).await;
    let roles = ctx
        .query(
            "SELECT rolname::text, rolsuper, rolreplication FROM pg_roles \
             WHERE rolname IN ('realtime_ingestor', 'realtime_gateway') ORDER BY rolname",
            &[],
        )
        .await;
    let roles: Vec<(String, bool, bool)> = roles
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("realtime_gateway".to_owned(), false, false),
            ("realtime_ingestor".to_owned(), false, true),
        ]
    );

    let ingestor = start_ready("realtime-ingestor", &ingestor_env(&pg, &ctx)).await;
    ingestor
        .wait_for_line("publication is owned by another role", WAIT)
        .await;

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = ctx.gateway_env(addr, JWT_SECRET);
    env.extend([
        (
            "DATABASE_URL",
            url_as(&pg, &ctx, "realtime_gateway", GATEWAY_PASSWORD),
        ),
        ("REALTIME_PUBLISH_KEY", PUBLISH_KEY.to_owned()),
        ("REALTIME_CONNECT_RATE", "0".to_owned()),
    ]);
    let gateway = start_ready("realtime-gateway", &env).await;
    let url = format!("http://{addr}/api/realtime/stream?organizationId=orgA");

    // Membership query (bearer token) and session lookup (database session
    // cookie), both as realtime_gateway.
    let mut by_token = SseClient::connect(&url, Some(&token("ua", 600)), &[]).await;
    assert_eq!(by_token.status, 200, "{}", by_token.body_text);
    let hello = by_token.next(WAIT).await.unwrap().unwrap();
    assert_eq!(hello.json()["organizationName"], "Acme");
    let mut by_session =
        SseClient::connect(&url, None, &[("cookie", "authjs.session-token=sess-ua")]).await;
    assert_eq!(by_session.status, 200, "{}", by_session.body_text);
    let hello = by_session.next(WAIT).await.unwrap().unwrap();
    assert_eq!(hello.json()["userId"], "ua");
    // A non-member is still refused: the query ran, it did not just fail open.
    let outsider = SseClient::connect(&url, Some(&token("ux", 600)), &[]).await;
    assert_eq!(outsider.status, 403, "{}", outsider.body_text);

    // An inserted property reaches the stream through the non-superuser
    // ingestor and the admin's publication.
    ctx.execute(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p1', 'orgA', 'ua', 1)",
        &[],
    )
    .await;
    let event = by_token.next_event(WAIT).await.expect("the property event");
    assert_eq!(event.json()["type"], "property.update");
    assert_eq!(event.json()["payload"]["propertyId"], "p1");

    // POST /api/realtime/publish emits through pg_logical_emit_message as
    // realtime_gateway.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/realtime/publish"))
        .bearer_auth(PUBLISH_KEY)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "type": "system.alert",
                "organizationId": "orgA",
                "payload": {"message": "least privilege"}
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(
        (200..300).contains(&status),
        "publish as realtime_gateway: {status} {}",
        response.text().await.unwrap_or_default()
    );
    let event = by_session.next_event(WAIT).await;
    let event = match event {
        // The session stream saw p1 first.
        Some(e) if e.json()["type"] == "property.update" => by_session.next_event(WAIT).await,
        other => other,
    }
    .expect("the published alert");
    assert_eq!(event.json()["type"], "system.alert");
    assert_eq!(event.json()["payload"]["message"], "least privilege");

    // A listing of a property the ingestor never saw in the stream: its
    // organization is looked up as realtime_ingestor, through the app's
    // row-level security (strict, as the app has it) thanks to the file's
    // policy.
    ctx.batch("INSERT INTO listings (id, \"propertyId\", \"listPrice\") VALUES ('l0', 'p0', 1)")
        .await;
    let mut seen = Vec::new();
    let listing = loop {
        let event = by_token.next_event(WAIT).await.expect("the listing event");
        let json = event.json();
        if json["payload"]["updatedFields"] == serde_json::json!(["listing"]) {
            break json;
        }
        seen.push(json);
        assert!(seen.len() < 5, "no listing event: {seen:#?}");
    };
    assert_eq!(listing["organizationId"], "orgA");
    assert_eq!(listing["payload"]["propertyId"], "p0");

    drop(gateway);
    drop(ingestor);
}

/// An admin's publication missing a routed table: the ingestor, which may
/// not alter it, refuses to start and names the table and the statement
/// its owner must run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_publication_missing_a_routed_table_stops_start_up_clearly() {
    let pg = PostgresServer::start().expect("postgres");
    let ctx = TestContext::on(&pg).await;
    ctx.batch(&roles_sql(&ctx)).await;
    ctx.batch("ALTER PUBLICATION realtime DROP TABLE activities")
        .await;

    let mut ingestor =
        ChildProcess::spawn(&binary_path("realtime-ingestor"), &ingestor_env(&pg, &ctx));
    let status = ingestor.wait_exit(WAIT).await;
    assert!(!status.success(), "the ingestor must not start");
    let output = ingestor.output_text();
    assert!(
        output.contains("ALTER PUBLICATION \"realtime\" ADD TABLE \"public\".\"activities\""),
        "the refusal names the table and the statement to run:\n{output}"
    );
    assert!(!output.contains("panicked"), "{output}");
    // The publication is the admin's: untouched.
    let tables = ctx
        .query(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'realtime'",
            &[],
        )
        .await;
    // roles.sql publishes the 11 routed tables; one was dropped.
    assert_eq!(tables[0].get::<_, i64>(0), 10);
}

/// Without `REPLICATION` the ingestor cannot create its slot: start-up
/// stops with Postgres's reason, not a bare "db error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingestor_role_without_replication_is_refused_with_the_reason() {
    let pg = PostgresServer::start().expect("postgres");
    let ctx = TestContext::on(&pg).await;
    ctx.batch(&roles_sql(&ctx)).await;
    ctx.batch("ALTER ROLE realtime_ingestor NOREPLICATION")
        .await;

    let mut ingestor =
        ChildProcess::spawn(&binary_path("realtime-ingestor"), &ingestor_env(&pg, &ctx));
    let status = ingestor.wait_exit(WAIT).await;
    assert!(!status.success(), "the ingestor must not start");
    let output = ingestor.output_text();
    assert!(
        output.contains("replication role"),
        "the refusal says REPLICATION is missing:\n{output}"
    );
    assert!(!output.contains("panicked"), "{output}");
}

/// The alternative: the ingestor joins the tables' owner role (exactly
/// `deploy/postgres/ingestor-owns-publication.sql`), creates the
/// publication, sets REPLICA IDENTITY FULL, and on a later start puts back a
/// routed table someone dropped from its publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingestor_in_the_owner_role_creates_and_syncs_its_publication() {
    let pg = PostgresServer::start().expect("postgres");
    let ctx = TestContext::on(&pg).await;
    // The application's tables, owned by a non-superuser role.
    ctx.batch(
        "CREATE ROLE app_owner;
         ALTER TABLE properties OWNER TO app_owner;
         ALTER TABLE listings OWNER TO app_owner;
         ALTER TABLE addresses OWNER TO app_owner;
         ALTER TABLE media_assets OWNER TO app_owner;
         ALTER TABLE organization_members OWNER TO app_owner;
         ALTER TABLE organizations OWNER TO app_owner;
         ALTER TABLE activities OWNER TO app_owner;
         ALTER TABLE clients OWNER TO app_owner;
         ALTER TABLE tasks OWNER TO app_owner;
         ALTER TABLE notes OWNER TO app_owner;
         ALTER TABLE interactions OWNER TO app_owner;",
    )
    .await;
    let sql = std::fs::read_to_string(OWNS_SQL_PATH)
        .expect(OWNS_SQL_PATH)
        .replace(":'ingestor_password'", &format!("'{INGESTOR_PASSWORD}'"))
        .replace(":\"db\"", &format!("\"{}\"", ctx.database()))
        .replace(":\"owner\"", "\"app_owner\"");
    ctx.batch(&sql).await;
    let env = [
        ingestor_env(&pg, &ctx),
        vec![
            ("REALTIME_PUBLICATION", "own_pub".to_owned()),
            ("REALTIME_MANAGE_REPLICA_IDENTITY", "true".to_owned()),
        ],
    ]
    .concat();
    let publication_tables = || async {
        ctx.query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'own_pub' ORDER BY 1",
            &[],
        )
        .await
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
    };
    let routed: Vec<String> = [
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
        "tasks",
    ]
    .map(str::to_owned)
    .to_vec();

    let first = start_ready("realtime-ingestor", &env).await;
    let owner = ctx
        .query(
            "SELECT pg_get_userbyid(pubowner)::text FROM pg_publication WHERE pubname = 'own_pub'",
            &[],
        )
        .await;
    assert_eq!(owner[0].get::<_, String>(0), "realtime_ingestor");
    assert_eq!(publication_tables().await, routed);
    let full = ctx
        .query(
            "SELECT count(*) FROM pg_class WHERE relname = ANY($1) AND relreplident = 'f'",
            &[&routed],
        )
        .await;
    assert_eq!(full[0].get::<_, i64>(0), 11, "REPLICA IDENTITY FULL set");
    drop(first);

    ctx.batch("ALTER PUBLICATION own_pub DROP TABLE activities")
        .await;
    let second = start_ready("realtime-ingestor", &env).await;
    assert_eq!(
        publication_tables().await,
        routed,
        "the table list is synced back"
    );
    assert!(
        !second.output_text().contains("owned by another role"),
        "{}",
        second.output_text()
    );
}
