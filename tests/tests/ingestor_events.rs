//! The ingestor against real Postgres and Redis: each routed operation
//! becomes its ARCHITECTURE.md §6 event, values map as §2 says, and a transaction's
//! events keep their order and ids.

use std::time::Duration;

use crate::support::{RunningIngestor, history, wait_for_history};
use realtime_tests::wait_until;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn property_insert_update_delete_become_property_update() {
    let ing = RunningIngestor::start_default().await;
    let ctx = &ing.ctx;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('org1', 'Acme');
         INSERT INTO users (id, name) VALUES ('u1', 'Ann');
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price, bedrooms, description)
           VALUES ('p1', 'org1', 'u1', 250000.50, 3, 'Sea view');
         UPDATE properties SET price = 240000.00, bedrooms = 3, status = 'UNDER_OFFER' WHERE id = 'p1';
         DELETE FROM properties WHERE id = 'p1';",
    )
    .await;
    let events = wait_for_history(ctx, Some("org1"), 3, DEADLINE).await;
    let types: Vec<&str> = events
        .iter()
        .map(|e| e.event["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["property.update"; 3]);

    let create = &events[0].event;
    assert_eq!(create["organizationId"], "org1");
    assert_eq!(create["source"], "postgres");
    assert_eq!(create["version"], "1.0");
    assert!(create["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    let p = &create["payload"];
    assert_eq!(p["propertyId"], "p1");
    assert_eq!(p["organizationId"], "org1");
    assert_eq!(p["operation"], "create");
    assert_eq!(p["changes"]["price"], "250000.50");
    assert_eq!(p["changes"]["bedrooms"], 3);
    assert_eq!(p["changes"]["description"], "Sea view");
    assert!(p.get("updatedFields").is_none());

    let update = &events[1].event["payload"];
    assert_eq!(update["operation"], "update");
    let mut fields: Vec<&str> = update["updatedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["price", "status"], "bedrooms did not change");
    assert_eq!(
        update["changes"],
        json!({"price": "240000.00", "status": "UNDER_OFFER"})
    );

    let delete = &events[2].event["payload"];
    assert_eq!(delete["operation"], "delete");
    assert_eq!(delete["propertyId"], "p1");
    assert!(delete.get("updatedFields").is_none());
}

#[tokio::test]
async fn membership_insert_update_delete_become_member_join_and_leave() {
    let ing = RunningIngestor::start_default().await;
    let ctx = &ing.ctx;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('org1', 'Acme');
         INSERT INTO users (id, name) VALUES ('u1', 'Ann');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\", role) VALUES ('m1', 'u1', 'org1', 'AGENT');
         UPDATE organization_members SET role = 'ADMIN' WHERE id = 'm1';
         DELETE FROM organization_members WHERE id = 'm1';",
    )
    .await;
    let events = wait_for_history(ctx, Some("org1"), 3, DEADLINE).await;
    let e: Vec<(&str, &Value)> = events
        .iter()
        .map(|e| (e.event["type"].as_str().unwrap(), &e.event["payload"]))
        .collect();
    assert_eq!(e[0].0, "member.join");
    assert_eq!(
        *e[0].1,
        json!({"memberId": "u1", "organizationId": "org1", "role": "AGENT", "invitedBy": null})
    );
    assert_eq!(e[1].0, "member.join");
    assert_eq!(e[1].1["role"], "ADMIN");
    assert_eq!(e[2].0, "member.leave");
    assert_eq!(e[2].1["memberId"], "u1");
    assert_eq!(e[2].1["organizationId"], "org1");
}

#[tokio::test]
async fn organization_update_becomes_organization_change() {
    let ing = RunningIngestor::start_default().await;
    let ctx = &ing.ctx;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('org1', 'Acme');
         UPDATE organizations SET plan = 'ENTERPRISE' WHERE id = 'org1';",
    )
    .await;
    let events = wait_for_history(ctx, Some("org1"), 1, DEADLINE).await;
    assert_eq!(events.len(), 1, "an organization insert produces no event");
    let e = &events[0].event;
    assert_eq!(e["type"], "organization.change");
    assert_eq!(e["payload"]["organizationId"], "org1");
    assert_eq!(e["payload"]["changes"], json!({"plan": "ENTERPRISE"}));
    // The app's union: a plan change is "billing".
    assert_eq!(e["payload"]["changeType"], "billing");
}

#[tokio::test]
async fn activity_insert_becomes_user_activity() {
    let ing = RunningIngestor::start_default().await;
    let ctx = &ing.ctx;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('org1', 'Acme');
         INSERT INTO users (id, name) VALUES ('u1', 'Ann');
         INSERT INTO activities (id, \"entityId\", payload, \"organizationId\", \"actorId\", \"actionType\", \"entityType\")
           VALUES ('a1', 'p9', '{\"note\": \"called the owner\"}', 'org1', 'u1', 'NOTE_ADDED', 'PROPERTY');",
    )
    .await;
    let events = wait_for_history(ctx, Some("org1"), 1, DEADLINE).await;
    let e = &events[0].event;
    assert_eq!(e["type"], "user.activity");
    let p = &e["payload"];
    assert_eq!(p["userId"], "u1");
    assert_eq!(p["action"], "NOTE_ADDED");
    assert_eq!(p["resource"], "PROPERTY");
    assert_eq!(p["metadata"], json!({"note": "called the owner"}));
}

#[tokio::test]
async fn truncate_becomes_data_sync_for_every_organization() {
    let ing = RunningIngestor::start_default().await;
    let ctx = &ing.ctx;
    ctx.batch("TRUNCATE activities;").await;
    let events = wait_for_history(ctx, None, 1, DEADLINE).await;
    let e = &events[0].event;
    assert_eq!(e["type"], "data.sync");
    assert_eq!(e["organizationId"], Value::Null);
    assert_eq!(
        e["payload"],
        json!({"entityType": "activities", "operation": "truncate"})
    );
}

#[tokio::test]
async fn emitted_message_becomes_its_event() {
    let ing = RunningIngestor::start_default().await;
    let ctx = &ing.ctx;
    ctx.batch(
        r#"SELECT pg_logical_emit_message(true, 'realtime',
             '{"type":"notification.new","organizationId":"org1","userId":"u7",
               "payload":{"userId":"u7","title":"Hi","message":"New lead","priority":"high","category":"lead"}}');
           SELECT pg_logical_emit_message(true, 'realtime',
             '{"type":"system.alert","payload":{"message":"maintenance at 22:00"}}');
           SELECT pg_logical_emit_message(true, 'other-app', '{"ignored":true}');"#,
    )
    .await;
    let org = wait_for_history(ctx, Some("org1"), 1, DEADLINE).await;
    assert_eq!(org[0].event["type"], "notification.new");
    assert_eq!(org[0].event["source"], "api");
    assert_eq!(
        org[0].user_id.as_deref(),
        Some("u7"),
        "addressed to one user"
    );
    assert_eq!(org[0].event["payload"]["title"], "Hi");
    let all = wait_for_history(ctx, None, 1, DEADLINE).await;
    assert_eq!(all[0].event["type"], "system.alert");
    assert_eq!(all[0].event["organizationId"], Value::Null);
    assert_eq!(all[0].event["payload"]["message"], "maintenance at 22:00");
}

#[tokio::test]
async fn column_types_map_to_json_as_designed() {
    let routes = r#"
        [[tables]]
        table = "typed"
        kind = "property"
        org_column = "org"
    "#;
    // The ~200 kB value below is over the default event size limit (64 KiB,
    // see ingestor_limits): this test is about mapping values, so it lifts it.
    let ing = RunningIngestor::start_with_routes_and(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE TABLE typed (
           id text PRIMARY KEY, org text NOT NULL,
           i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision, n numeric(20,5),
           b boolean, t text, j jsonb, js json, ts timestamp(3), tstz timestamptz, d date,
           m mood, ia integer[], ta text[], ma mood[], nothing text, big text);",
        routes,
        |config| config.max_event_bytes = 1024 * 1024,
    )
    .await;
    let ctx = &ing.ctx;
    // ~200 kB of incompressible text is stored out of line (TOAST).
    ctx.batch(
        "INSERT INTO typed VALUES ('r1', 'org1', 7, -2147483648, 9007199254740993, 1.5, 2.25,
           12345678901234.56789, true, 'plain \"quoted\"', '{\"a\": [1, {\"b\": null}]}', '[1,2]',
           '2024-03-01 12:34:56.789', '2024-03-01 12:34:56.789+02', '2024-03-01',
           'sad', '{1,NULL,3}', '{\"a b\",c}', '{happy,sad}', NULL,
           (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 6000) g));
         UPDATE typed SET i4 = 1 WHERE id = 'r1';",
    )
    .await;
    let events = wait_for_history(ctx, Some("org1"), 2, DEADLINE).await;
    let c = &events[0].event["payload"]["changes"];
    assert_eq!(c["i2"], 7);
    assert_eq!(c["i4"], -2147483648i64);
    assert_eq!(c["i8"], json!(9007199254740993u64), "int8 stays exact");
    assert_eq!(c["f4"], 1.5);
    assert_eq!(c["f8"], 2.25);
    assert_eq!(c["n"], "12345678901234.56789", "numeric keeps every digit");
    assert_eq!(c["b"], true);
    assert_eq!(c["t"], "plain \"quoted\"");
    assert_eq!(c["j"], json!({"a": [1, {"b": null}]}));
    assert_eq!(c["js"], json!([1, 2]));
    assert_eq!(c["ts"], "2024-03-01T12:34:56.789Z");
    assert_eq!(c["tstz"], "2024-03-01T10:34:56.789Z");
    assert_eq!(c["d"], "2024-03-01");
    assert_eq!(c["m"], "sad");
    assert_eq!(c["ia"], json!([1, null, 3]));
    assert_eq!(c["ta"], json!(["a b", "c"]));
    assert_eq!(c["ma"], json!(["happy", "sad"]));
    assert_eq!(c["nothing"], Value::Null);
    assert_eq!(c["big"].as_str().unwrap().len(), 6000 * 32);

    // The TOASTed column did not change: it is not in the update's changes.
    let u = &events[1].event["payload"];
    assert_eq!(u["changes"], json!({"i4": 1}));
    assert_eq!(u["updatedFields"], json!(["i4"]));
}

#[tokio::test]
async fn changes_in_unrouted_tables_produce_nothing() {
    let ing = RunningIngestor::start_default().await;
    let ctx = &ing.ctx;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('org1', 'Acme');
         INSERT INTO users (id, name, \"organizationId\") VALUES ('u1', 'Ann', 'org1');
         UPDATE users SET name = 'Anne' WHERE id = 'u1';
         INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires) VALUES ('s1', 'tok', 'u1', now());
         UPDATE organizations SET name = 'Acme Ltd' WHERE id = 'org1';",
    )
    .await;
    // The organization update is the marker: once it is there, every
    // earlier change has been processed.
    let events = wait_for_history(ctx, Some("org1"), 1, DEADLINE).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event["type"], "organization.change");
    let mut redis = ctx.redis().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", ctx.key_prefix()))
        .query_async(&mut redis)
        .await
        .unwrap();
    keys.sort();
    // The one history, and the ingestor's record of its slot.
    assert_eq!(
        keys,
        [
            format!("{}:{{org:org1}}:history", ctx.key_prefix()),
            format!("{}:{{slot}}:{}", ctx.key_prefix(), ctx.slot()),
        ]
    );
}

#[tokio::test]
async fn events_of_one_transaction_keep_their_order_and_ids() {
    let ing = RunningIngestor::start_default().await;
    let ctx = &ing.ctx;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('a', 'A'), ('b', 'B');
         INSERT INTO users (id) VALUES ('u1');",
    )
    .await;
    ctx.batch(
        "BEGIN;
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p1', 'a', 'u1', 1);
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p2', 'b', 'u1', 2);
         INSERT INTO users (id) VALUES ('u2');
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p3', 'a', 'u1', 3);
         UPDATE properties SET price = 4 WHERE id = 'p1';
         COMMIT;
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p4', 'a', 'u1', 5);",
    )
    .await;
    let a = wait_for_history(ctx, Some("a"), 4, DEADLINE).await;
    let b = wait_for_history(ctx, Some("b"), 1, DEADLINE).await;
    let ids: Vec<(u64, u64)> = a.iter().map(|e| e.id).collect();
    let txn_lsn = ids[0].0;
    assert_eq!(&ids[..3], &[(txn_lsn, 0), (txn_lsn, 2), (txn_lsn, 3)]);
    assert_eq!(b[0].id, (txn_lsn, 1));
    assert!(
        ids[3].0 > txn_lsn,
        "a later transaction has a later commit LSN"
    );
    let order: Vec<&str> = a
        .iter()
        .map(|e| e.event["payload"]["propertyId"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["p1", "p3", "p1", "p4"]);
    for e in a.iter().chain(&b) {
        assert_eq!(
            e.event["id"],
            format!("{}-{}", e.id.0, e.id.1),
            "event id = stream id"
        );
    }
    // Nothing else lands in either history: a later transaction's events
    // are the marker (once they are there, everything committed before was
    // published), and each history then holds exactly what is above, then
    // its marker. The unrouted `users` insert added nothing, nothing was
    // published twice.
    ctx.batch(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('ma', 'a', 'u1', 6);
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('mb', 'b', 'u1', 7);",
    )
    .await;
    for (org, before) in [("a", &a[..4]), ("b", &b[..1])] {
        let all = wait_until(&format!("the marker in {org}"), DEADLINE, || async move {
            let all = history(ctx, Some(org)).await;
            all.iter()
                .any(|e| e.event["payload"]["propertyId"] == format!("m{org}"))
                .then_some(all)
        })
        .await;
        let got: Vec<(u64, u64, String)> = all
            .iter()
            .map(|e| {
                let p = e.event["payload"]["propertyId"].as_str().unwrap_or("?");
                (e.id.0, e.id.1, p.to_owned())
            })
            .collect();
        let mut expected: Vec<(u64, u64, String)> = before
            .iter()
            .map(|e| {
                let p = e.event["payload"]["propertyId"].as_str().unwrap_or("?");
                (e.id.0, e.id.1, p.to_owned())
            })
            .collect();
        let marker = all.last().unwrap();
        expected.push((marker.id.0, marker.id.1, format!("m{org}")));
        assert_eq!(
            got, expected,
            "history of {org}: these events once each, then the marker"
        );
    }
}
