//! Drop-in for the original app: with its schema (`fixtures/oikion-schema.sql`:
//! properties with their listings, clients, tasks, notes, members,
//! organizations) and the built-in Oikion routes, each kind of change the
//! app makes produces exactly the payload type the app declares
//! (steveapo/Oikion-MVP f5c8194, summarised in ARCHITECTURE.md §6; copied below as [`APP_TYPES`]), checked field
//! by field against a real ingestor, Postgres and Redis: the acting user
//! named with `realtime.set_actor` arrives as `updatedBy` / `invitedBy`
//! (null without it), archiving goes through `listings`, and child rows
//! follow their parent's organization (moved in the same transaction, in
//! either statement order; deleted; gone before the ingestor read it)
//! without ever stalling the stream.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{
    Entry, InProcess, config_for, history, http_get, metric_value, wait_for_history,
};
use realtime_ingestor::Ingestor;
use realtime_tests::{TestContext, wait_until};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

/// The app's payload declarations (steveapo/Oikion-MVP f5c8194, its realtime
/// event types, summarised in ARCHITECTURE.md §6): event type,
/// required fields, optional fields.
const APP_TYPES: &[(&str, &[&str], &[&str])] = &[
    (
        "property.update",
        &["propertyId", "organizationId", "operation", "updatedBy"],
        &["updatedFields", "changes"],
    ),
    (
        "member.join",
        &["memberId", "organizationId", "role", "invitedBy"],
        &[],
    ),
    ("member.leave", &["memberId", "organizationId"], &["reason"]),
    (
        "organization.change",
        &["organizationId", "changeType", "changes", "updatedBy"],
        &[],
    ),
    (
        "data.sync",
        &["entityType", "entityId", "operation", "data"],
        &[],
    ),
];

/// The app's string unions: field → allowed values, per event type.
fn app_union(event_type: &str, field: &str) -> Option<&'static [&'static str]> {
    match (event_type, field) {
        ("property.update", "operation") => Some(&["create", "update", "archive", "delete"]),
        ("organization.change", "changeType") => {
            Some(&["name", "settings", "permissions", "billing"])
        }
        ("data.sync", "operation") => Some(&["create", "update", "delete"]),
        _ => None,
    }
}

/// Asserts that `event` is exactly one of the app's declared event types:
/// the base fields, every required payload field, nothing undeclared, and
/// every union-typed field inside its union; `updatedBy`/`invitedBy` a
/// string or null.
fn assert_app_type(event: &Value) {
    for base in ["id", "type", "timestamp", "source", "version", "payload"] {
        assert!(event.get(base).is_some(), "{base} missing in {event}");
    }
    assert!(event["timestamp"].is_i64(), "{event}");
    let event_type = event["type"].as_str().unwrap();
    let (_, required, optional) = APP_TYPES
        .iter()
        .find(|(t, _, _)| *t == event_type)
        .unwrap_or_else(|| panic!("{event_type} is not checked here"));
    let payload = event["payload"].as_object().unwrap();
    let keys: BTreeSet<&str> = payload.keys().map(String::as_str).collect();
    for field in *required {
        assert!(
            keys.contains(field),
            "{event_type}: {field} missing in {event}"
        );
    }
    for key in &keys {
        assert!(
            required.contains(key) || optional.contains(key),
            "{event_type}: {key} is not in the app's type: {event}"
        );
        if let Some(allowed) = app_union(event_type, key) {
            let value = payload[*key].as_str().unwrap_or_default();
            assert!(allowed.contains(&value), "{event_type}.{key} = {value:?}");
        }
    }
    for who in ["updatedBy", "invitedBy"] {
        if let Some(v) = payload.get(who) {
            assert!(v.is_string() || v.is_null(), "{who}: {v}");
        }
    }
}

/// An ingestor in this process that can be stopped and started again on
/// the same database.
struct Pipeline {
    ctx: TestContext,
    process: Option<InProcess>,
    admin: Option<std::net::SocketAddr>,
}

impl Pipeline {
    async fn new(seed: &str) -> Self {
        let ctx = TestContext::new().await;
        ctx.batch(seed).await;
        let mut me = Self {
            ctx,
            process: None,
            admin: None,
        };
        me.start().await;
        me
    }

    async fn start(&mut self) {
        let ingestor = Ingestor::build(config_for(&self.ctx))
            .await
            .expect("ingestor starts");
        let admin = ingestor.admin_addr();
        self.process = Some(InProcess::spawn(|rx| {
            ingestor.run_until_stopped(async {
                let _ = rx.await;
            })
        }));
        self.admin = Some(admin);
        let url = format!("http://{admin}/readyz");
        wait_until("the ingestor is ready", DEADLINE, || {
            let url = url.clone();
            async move { http_get(&url).await.filter(|(status, _)| *status == 200) }
        })
        .await;
    }

    async fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.stop("the ingestor").await;
        }
    }

    async fn skipped_for_parent(&self) -> f64 {
        let url = format!("http://{}/metrics", self.admin.unwrap());
        let text = http_get(&url).await.map(|(_, b)| b).unwrap_or_default();
        metric_value(&text, "realtime_ingestor_skipped_total{reason=\"parent\"}")
    }
}

/// The history of `org` from index `from` on, once it holds `n` more.
async fn next(ctx: &TestContext, org: &str, from: usize, n: usize) -> Vec<Value> {
    let all: Vec<Entry> = wait_for_history(ctx, Some(org), from + n, DEADLINE).await;
    all[from..].iter().map(|e| e.event.clone()).collect()
}

/// Waits for a marker client (a data.sync create in `org`) so that
/// everything committed before it was processed, then returns the history
/// of `org` without any marker.
async fn through_marker(ctx: &TestContext, org: &str, marker: &str) -> Vec<Value> {
    ctx.batch(&format!(
        "INSERT INTO clients (id, \"organizationId\", \"createdBy\", name) VALUES ('{marker}', '{org}', 'u1', 'marker')"
    ))
    .await;
    let events = wait_until(&format!("marker {marker} in {org}"), DEADLINE, || async {
        let events: Vec<Value> = history(ctx, Some(org))
            .await
            .into_iter()
            .map(|e| e.event)
            .collect();
        events
            .iter()
            .any(|e| e["payload"]["entityId"] == marker)
            .then_some(events)
    })
    .await;
    events
        .into_iter()
        .filter(|e| {
            !e["payload"]["entityId"]
                .as_str()
                .is_some_and(|id| id.starts_with("marker-"))
        })
        .collect()
}

const SEED: &str = "
    INSERT INTO organizations (id, name) VALUES ('org1', 'Acme'), ('org2', 'Beta');
    INSERT INTO users (id, name) VALUES ('u1', 'Ann'), ('u2', 'Bob');
    -- Written before the ingestor started: it learns their organization by
    -- looking it up, not from the stream.
    INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p0', 'org1', 'u1', 1);
    INSERT INTO listings (id, \"propertyId\", \"listPrice\") VALUES ('l0', 'p0', 1);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_change_produces_the_apps_exact_payload_type() {
    let pipeline = Pipeline::new(SEED).await;
    let ctx = &pipeline.ctx;

    // A property created with its listing, the acting user named.
    ctx.batch(
        "BEGIN;
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price, bedrooms)
           VALUES ('p1', 'org1', 'u1', 250000.50, 3);
         SELECT realtime.set_actor('u1');
         INSERT INTO listings (id, \"propertyId\", \"listPrice\", \"marketingStatus\")
           VALUES ('l1', 'p1', 250000.50, 'ACTIVE');
         COMMIT;",
    )
    .await;
    let e = next(ctx, "org1", 0, 2).await;
    for event in &e {
        assert_app_type(event);
    }
    let create = &e[0]["payload"];
    assert_eq!(e[0]["type"], "property.update");
    assert_eq!(create["propertyId"], "p1");
    assert_eq!(create["organizationId"], "org1");
    assert_eq!(create["operation"], "create");
    // The actor named after the insert still names it: every event of the
    // transaction carries it.
    assert_eq!(create["updatedBy"], "u1");
    assert_eq!(create["changes"]["price"], "250000.50");
    assert!(create["changes"].get("createdAt").is_some(), "{create}");
    assert!(create["changes"].get("created_at").is_none(), "{create}");
    let listing = &e[1]["payload"];
    assert_eq!(listing["propertyId"], "p1");
    assert_eq!(listing["organizationId"], "org1");
    assert_eq!(listing["operation"], "update");
    assert_eq!(listing["updatedFields"], json!(["listing"]));
    assert_eq!(listing["changes"]["listing"]["marketingStatus"], "ACTIVE");
    assert_eq!(listing["updatedBy"], "u1");

    // An update without an actor: updatedBy null.
    ctx.batch("UPDATE properties SET price = 240000 WHERE id = 'p1'")
        .await;
    let e = next(ctx, "org1", 2, 1).await;
    assert_app_type(&e[0]);
    assert_eq!(
        e[0]["payload"],
        json!({"propertyId": "p1", "organizationId": "org1", "operation": "update",
               "updatedFields": ["price"], "changes": {"price": "240000.00"}, "updatedBy": null})
    );

    // Archive: listings."marketingStatus" → ARCHIVED.
    ctx.batch(
        "BEGIN;
         SELECT realtime.set_actor('u2');
         UPDATE listings SET \"marketingStatus\" = 'ARCHIVED', \"archivedAt\" = '2026-12-01 10:00:00' WHERE id = 'l1';
         COMMIT;",
    )
    .await;
    let e = next(ctx, "org1", 3, 1).await;
    assert_app_type(&e[0]);
    assert_eq!(
        e[0]["payload"],
        json!({"propertyId": "p1", "organizationId": "org1", "operation": "archive",
               "updatedFields": ["listing.archivedAt", "listing.marketingStatus"],
               "changes": {"listing": {"marketingStatus": "ARCHIVED",
                                       "archivedAt": "2026-12-01T10:00:00Z"}},
               "updatedBy": "u2"})
    );

    // A listing whose property the ingestor never saw change: looked up.
    ctx.batch("UPDATE listings SET \"listPrice\" = 2 WHERE id = 'l0'")
        .await;
    let e = next(ctx, "org1", 4, 1).await;
    assert_app_type(&e[0]);
    assert_eq!(e[0]["payload"]["propertyId"], "p0");
    assert_eq!(e[0]["organizationId"], "org1");

    // A member joins, invited by u1.
    ctx.batch(
        "BEGIN;
         SELECT realtime.set_actor('u1');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\", role) VALUES ('m2', 'u2', 'org1', 'AGENT');
         COMMIT;",
    )
    .await;
    let e = next(ctx, "org1", 5, 1).await;
    assert_app_type(&e[0]);
    assert_eq!(
        e[0]["payload"],
        json!({"memberId": "u2", "organizationId": "org1", "role": "AGENT", "invitedBy": "u1"})
    );

    // Rename, then plan change.
    ctx.batch(
        "BEGIN; SELECT realtime.set_actor('u1'); UPDATE organizations SET name = 'Acme Realty' WHERE id = 'org1'; COMMIT;
         UPDATE organizations SET plan = 'PROFESSIONAL' WHERE id = 'org1';",
    )
    .await;
    let e = next(ctx, "org1", 6, 2).await;
    assert_app_type(&e[0]);
    assert_app_type(&e[1]);
    assert_eq!(
        e[0]["payload"],
        json!({"organizationId": "org1", "changeType": "name",
               "changes": {"name": "Acme Realty"}, "updatedBy": "u1"})
    );
    assert_eq!(
        e[1]["payload"],
        json!({"organizationId": "org1", "changeType": "billing",
               "changes": {"plan": "PROFESSIONAL"}, "updatedBy": null})
    );

    // A client, a task and a note: data.sync in the app's shape.
    ctx.batch(
        "INSERT INTO clients (id, \"organizationId\", \"createdBy\", name, email) VALUES ('c1', 'org1', 'u1', 'Chloe', 'c@example.com');
         UPDATE clients SET phone = '+30 210 0000000' WHERE id = 'c1';
         INSERT INTO tasks (id, \"organizationId\", title, \"createdBy\", \"clientId\") VALUES ('t1', 'org1', 'Call', 'u1', 'c1');
         UPDATE tasks SET status = 'COMPLETED' WHERE id = 't1';
         INSERT INTO notes (id, \"clientId\", content, \"createdBy\") VALUES ('n1', 'c1', 'Likes the sea', 'u1');",
    )
    .await;
    let e = next(ctx, "org1", 8, 5).await;
    for event in &e {
        assert_eq!(event["type"], "data.sync");
        assert_app_type(event);
    }
    let p = |i: usize| &e[i]["payload"];
    assert_eq!(
        (
            p(0)["entityType"].as_str(),
            p(0)["entityId"].as_str(),
            p(0)["operation"].as_str()
        ),
        (Some("client"), Some("c1"), Some("create"))
    );
    assert_eq!(p(0)["data"]["email"], "c@example.com");
    assert!(p(0)["data"].get("createdAt").is_some());
    assert_eq!(p(1)["operation"], "update");
    assert_eq!(p(1)["data"]["phone"], "+30 210 0000000");
    assert_eq!(p(1)["data"]["name"], "Chloe", "data is the whole row");
    assert_eq!(
        (p(2)["entityType"].as_str(), p(2)["operation"].as_str()),
        (Some("task"), Some("create"))
    );
    assert_eq!(
        (p(3)["operation"].as_str(), p(3)["data"]["status"].as_str()),
        (Some("update"), Some("COMPLETED"))
    );
    assert_eq!(
        (p(4)["entityType"].as_str(), p(4)["entityId"].as_str()),
        (Some("note"), Some("n1"))
    );
    assert_eq!(e[4]["organizationId"], "org1", "a note follows its client");

    // A property delete.
    ctx.batch("DELETE FROM properties WHERE id = 'p1'").await;
    let e = next(ctx, "org1", 13, 1).await;
    assert_app_type(&e[0]);
    assert_eq!(e[0]["payload"]["operation"], "delete");
    assert_eq!(e[0]["payload"]["propertyId"], "p1");
    // Its listing went with it (ON DELETE CASCADE): the property's delete
    // stands for it, nothing else was published for the transaction.
    let rest = through_marker(ctx, "org1", "marker-1").await;
    assert_eq!(rest.len(), 14, "{:#?}", &rest[13..]);
    assert!(history(ctx, Some("org2")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_follows_its_parent_moved_or_deleted_in_its_transaction() {
    let mut pipeline = Pipeline::new(SEED).await;
    let ctx = &pipeline.ctx;
    ctx.batch(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p1', 'org1', 'u1', 1);
         INSERT INTO listings (id, \"propertyId\", \"listPrice\") VALUES ('l1', 'p1', 1);",
    )
    .await;
    next(ctx, "org1", 0, 2).await;

    // The listing changes first, then its property moves to org2: the
    // listing's event goes where the property is at commit.
    ctx.batch(
        "BEGIN;
         UPDATE listings SET \"listPrice\" = 2 WHERE id = 'l1';
         UPDATE properties SET \"organizationId\" = 'org2' WHERE id = 'p1';
         COMMIT;",
    )
    .await;
    let org2 = next(ctx, "org2", 0, 2).await;
    let kinds: Vec<(&str, &str)> = org2
        .iter()
        .map(|e| {
            (
                e["payload"]["operation"].as_str().unwrap(),
                e["payload"]["updatedFields"][0].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(kinds, [("update", "listing.listPrice"), ("create", "-")]);
    // Org1 saw the property leave and nothing of the listing.
    let org1 = through_marker(ctx, "org1", "marker-1").await;
    assert_eq!(org1.len(), 3, "{org1:#?}");
    assert_eq!(org1[2]["payload"]["operation"], "delete");

    // The other order: the property moves back first, then the listing.
    ctx.batch(
        "BEGIN;
         UPDATE properties SET \"organizationId\" = 'org1' WHERE id = 'p1';
         UPDATE listings SET \"listPrice\" = 3 WHERE id = 'l1';
         COMMIT;",
    )
    .await;
    let org1 = next(ctx, "org1", 4, 2).await;
    assert_eq!(org1[0]["payload"]["operation"], "create");
    assert_eq!(
        org1[1]["payload"]["updatedFields"],
        json!(["listing.listPrice"])
    );
    assert_eq!(org1[1]["organizationId"], "org1");
    let org2 = through_marker(ctx, "org2", "marker-2").await;
    assert_eq!(org2.len(), 3, "{org2:#?}");
    assert_eq!(org2[2]["payload"]["operation"], "delete");

    // A parent gone before the ingestor could read it: the ingestor is
    // stopped, the pre-existing p0's listing changes, then p0 is deleted.
    // Replayed, the listing's parent is looked up, not found, and the
    // child skipped; everything after it still flows.
    let before = pipeline.skipped_for_parent().await;
    pipeline.stop().await;
    let ctx = &pipeline.ctx;
    ctx.batch(
        "UPDATE listings SET \"listPrice\" = 9 WHERE id = 'l0';
         DELETE FROM properties WHERE id = 'p0';",
    )
    .await;
    pipeline.start().await;
    let ctx = &pipeline.ctx;
    let org1 = through_marker(ctx, "org1", "marker-3").await;
    let tail: Vec<(&str, &str)> = org1[5..]
        .iter()
        .map(|e| {
            (
                e["payload"]["propertyId"].as_str().unwrap_or("-"),
                e["payload"]["operation"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    let all: Vec<String> = org1
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["id"], e["payload"]["operation"], e["payload"]["updatedFields"]
            )
        })
        .collect();
    assert_eq!(tail, [("p0", "delete")], "{all:#?}");
    assert!(pipeline.skipped_for_parent().await >= before + 1.0);
}
