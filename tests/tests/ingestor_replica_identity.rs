//! A routed table that loses REPLICA IDENTITY FULL while the real ingestor
//! binary streams: membership deletes are never skipped (a broadcast
//! `member.leave` with a null member makes gateways re-check), the problem
//! is logged and counted, and with REALTIME_MANAGE_REPLICA_IDENTITY=true the
//! identity is set back to FULL.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::time::Duration;

use crate::support::{history, http_get, metric_value, wait_for_history};
use realtime_tests::{ChildProcess, TestContext, binary_path, wait_until};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

/// The routed tables of the default (Oikion) routes.
/// Every table of the built-in Oikion routes.
const ROUTED: [&str; 11] = [
    "properties",
    "listings",
    "addresses",
    "media_assets",
    "organization_members",
    "organizations",
    "activities",
    "clients",
    "tasks",
    "notes",
    "interactions",
];

/// Starts the real ingestor binary and waits until it streams (`/readyz`).
async fn start_ingestor(ctx: &TestContext, manage: bool) -> (ChildProcess, std::net::SocketAddr) {
    let mut env = ctx.ingestor_env();
    env.retain(|(k, _)| *k != "REALTIME_MANAGE_REPLICA_IDENTITY");
    env.push(("REALTIME_MANAGE_REPLICA_IDENTITY", manage.to_string()));
    env.push(("REALTIME_STATUS_INTERVAL", "200ms".to_owned()));
    let child = ChildProcess::spawn(&binary_path("realtime-ingestor"), &env);
    let admin = child.admin_addr(DEADLINE).await;
    wait_until("the ingestor streams", DEADLINE, || async move {
        http_get(&format!("http://{admin}/readyz"))
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    (child, admin)
}

async fn replica_identity(ctx: &TestContext, table: &str) -> String {
    let rows = ctx
        .query(
            "SELECT relreplident::text FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await;
    rows[0].get(0)
}

/// Seeds an organization with two members (before the ingestor starts, so
/// these rows produce no events).
async fn seed(ctx: &TestContext) {
    for table in ROUTED {
        ctx.batch(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL"))
            .await;
    }
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('org1', 'Acme');
         INSERT INTO users (id) VALUES ('u1'), ('u2'), ('u3');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'u1', 'org1');",
    )
    .await;
}

const UNKNOWN_LEAVE: fn() -> serde_json::Value =
    || json!({"memberId": null, "organizationId": null, "reason": "unknown"});

#[tokio::test]
async fn membership_delete_after_identity_reset_is_a_broadcast_unknown_leave() {
    let ctx = TestContext::new().await;
    seed(&ctx).await;
    let (child, admin) = start_ingestor(&ctx, false).await;

    // A migration resets the identity on the live system; one transaction
    // then deletes a member between two property changes.
    ctx.batch("ALTER TABLE organization_members REPLICA IDENTITY DEFAULT")
        .await;
    ctx.batch(
        "BEGIN;
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p1', 'org1', 'u1', 1);
         DELETE FROM organization_members WHERE id = 'm1';
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p2', 'org1', 'u1', 2);
         COMMIT;",
    )
    .await;

    let broadcast = wait_for_history(&ctx, None, 1, DEADLINE).await;
    assert_eq!(broadcast.len(), 1, "{broadcast:?}");
    let leave = &broadcast[0];
    assert_eq!(leave.event["type"], "member.leave");
    assert_eq!(leave.event["source"], "postgres");
    assert_eq!(leave.event["organizationId"], serde_json::Value::Null);
    assert_eq!(leave.event["payload"], UNKNOWN_LEAVE());
    assert_eq!(leave.user_id, None);

    // In order with the transaction's other events: same commit LSN, the
    // index between the two property events.
    let org = wait_for_history(&ctx, Some("org1"), 2, DEADLINE).await;
    let ids: Vec<(u64, u64)> = org.iter().map(|e| e.id).collect();
    assert_eq!(ids, [(leave.id.0, 0), (leave.id.0, 2)], "{org:?}");
    assert_eq!(leave.id.1, 1);
    assert!(
        org.iter().all(|e| e.event["type"] == "property.update"),
        "no routed member.leave: {org:?}"
    );

    // Said loudly and counted; not managed, so left as it is.
    let line = child
        .wait_for_line("lost REPLICA IDENTITY FULL", DEADLINE)
        .await;
    assert!(
        line.contains("ERROR")
            && line.contains("organization_members")
            && line
                .contains("ALTER TABLE \"public\".\"organization_members\" REPLICA IDENTITY FULL"),
        "{line}"
    );
    let line = child
        .wait_for_line("publishing a broadcast member.leave", DEADLINE)
        .await;
    assert!(line.contains("ERROR"), "{line}");
    let metrics = http_get(&format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains(
            "realtime_ingestor_replica_identity_not_full_total{table=\"organization_members\"} 1"
        ),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "realtime_ingestor_unknown_member_leaves_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(replica_identity(&ctx, "organization_members").await, "d");

    // A property delete without its organization stays a skip, logged as
    // an error naming the table and the fix.
    ctx.batch(
        "ALTER TABLE properties REPLICA IDENTITY DEFAULT; DELETE FROM properties WHERE id = 'p1';",
    )
    .await;
    let line = child
        .wait_for_line("arrived without its old row: the table", DEADLINE)
        .await;
    assert!(
        line.contains("ERROR")
            && line.contains("ALTER TABLE \"public\".\"properties\" REPLICA IDENTITY FULL"),
        "{line}"
    );
    assert_eq!(history(&ctx, Some("org1")).await.len(), 2);
}

#[tokio::test]
async fn managed_identity_is_set_back_to_full_and_later_deletes_route_normally() {
    let ctx = TestContext::new().await;
    seed(&ctx).await;
    let (child, _admin) = start_ingestor(&ctx, true).await;

    ctx.batch("ALTER TABLE organization_members REPLICA IDENTITY DEFAULT")
        .await;
    ctx.batch("DELETE FROM organization_members WHERE id = 'm1'")
        .await;
    let broadcast = wait_for_history(&ctx, None, 1, DEADLINE).await;
    assert_eq!(broadcast[0].event["payload"], UNKNOWN_LEAVE());

    wait_until("REPLICA IDENTITY FULL is restored", DEADLINE, || {
        let ctx = &ctx;
        async move { (replica_identity(ctx, "organization_members").await == "f").then_some(()) }
    })
    .await;
    child
        .wait_for_line("set REPLICA IDENTITY FULL again", DEADLINE)
        .await;

    ctx.batch(
        "INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m2', 'u2', 'org1');
         DELETE FROM organization_members WHERE id = 'm2';",
    )
    .await;
    let org = wait_for_history(&ctx, Some("org1"), 2, DEADLINE).await;
    assert_eq!(org[0].event["type"], "member.join");
    assert_eq!(org[1].event["type"], "member.leave");
    assert_eq!(
        org[1].event["payload"],
        json!({"memberId": "u2", "organizationId": "org1"})
    );
    assert_eq!(
        history(&ctx, None).await.len(),
        1,
        "no further unknown leave once FULL again"
    );
}

#[test]
fn routed_is_every_table_of_the_built_in_routes() {
    let routes = realtime_ingestor::routes::Routes::oikion_default();
    let tables: Vec<&str> = routes.tables().iter().map(|t| t.table()).collect();
    assert_eq!(tables, ROUTED);
}
