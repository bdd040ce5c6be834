//! The ingestor's two limits on what it publishes, end to end (real
//! Postgres, Redis, ingestor and gateway; events read as a browser reads
//! them, over SSE):
//!
//! - bulk changes (`REALTIME_BULK_THRESHOLD`): a 5,000-row update of one
//!   organization reaches its clients as one `data.sync` with the count,
//!   while another organization's small changes in the same transaction
//!   arrive as usual, ids stay ordered, and a client resuming from before
//!   the transaction gets exactly what it missed; membership events are
//!   never coalesced, children count towards their parent's organization;
//! - the event size limit (`REALTIME_MAX_EVENT_BYTES`): a 1 MB row arrives
//!   without its row values and with `"truncated": true`, and an update that
//!   leaves the large column alone arrives whole.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::time::Duration;

use crate::support::gateway::{RunningGateway, gateway_config, token};
use crate::support::sse::{Message, SseClient};
use crate::support::{RunningIngestor, config_for, history, metric_value, wait_for_history};
use realtime_shared::event::EventId;
use realtime_tests::TestContext;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

const SEED: &str = "
    INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme'), ('orgB', 'Bolt');
    INSERT INTO users (id) VALUES ('ua'), ('ub');
    INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES
      ('m1', 'ua', 'orgA'), ('m2', 'ub', 'orgB');";

async fn stream(gw: &RunningGateway, org: &str, user: &str, resume: Option<&str>) -> SseClient {
    let headers: Vec<(&str, &str)> = resume.map(|id| ("last-event-id", id)).into_iter().collect();
    let client = SseClient::connect(
        &gw.stream_url(&format!("organizationId={org}")),
        Some(&token(user, 600)),
        &headers,
    )
    .await;
    assert_eq!(client.status, 200, "{}", client.body_text);
    client
}

fn id_of(m: &Message) -> EventId {
    m.id.as_deref().unwrap().parse().unwrap()
}

/// `(type, payload)` of each message.
fn shapes(messages: &[Message]) -> Vec<(String, Value)> {
    messages
        .iter()
        .map(|m| {
            let j = m.json();
            (j["type"].as_str().unwrap().to_owned(), j["payload"].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_update_reaches_its_organization_as_one_data_sync() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    // 5,000 properties of orgA, written before the ingestor's slot exists.
    ctx.batch(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price)
           SELECT 'p' || g, 'orgA', 'ua', 1 FROM generate_series(1, 5000) g;",
    )
    .await;
    // The default threshold (1,000).
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let gw = RunningGateway::start(gateway_config(&ctx)).await;
    let mut a = stream(&gw, "orgA", "ua", None).await;
    let mut b = stream(&gw, "orgB", "ub", None).await;

    ctx.batch("UPDATE properties SET price = 2 WHERE id = 'p1';")
        .await;
    let before = a.next_event(WAIT).await.expect("the event before the bulk");
    assert_eq!(before.json()["payload"]["operation"], "update");
    let resume_from = before.id.clone().unwrap();

    ctx.batch(
        "BEGIN;
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('b1', 'orgB', 'ub', 1);
         UPDATE properties SET price = price + 1 WHERE \"organizationId\" = 'orgA';
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('b2', 'orgB', 'ub', 1);
         INSERT INTO clients (id, \"organizationId\", \"createdBy\", name) VALUES ('c1', 'orgA', 'ua', 'Chloe');
         COMMIT;
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('after', 'orgA', 'ua', 1);",
    )
    .await;

    let got = a.events(3, WAIT).await;
    assert_eq!(got.len(), 3, "{:?}", shapes(&got));
    let (kinds, payloads): (Vec<String>, Vec<Value>) = shapes(&got).into_iter().unzip();
    assert_eq!(kinds, ["data.sync", "data.sync", "property.update"]);
    assert_eq!(
        (&payloads[0]["entityId"], &payloads[0]["operation"]),
        (&json!("c1"), &json!("create")),
        "the other table's change arrives as usual"
    );
    assert_eq!(
        payloads[1],
        json!({"entityType": "properties", "operation": "bulk", "count": 5000}),
        "one data.sync for the 5,000 updates"
    );
    assert_eq!(got[2].json()["payload"]["propertyId"], "after");
    assert!(
        a.next_event(Duration::from_millis(500)).await.is_none(),
        "none of the 5,000 updates reaches the client"
    );
    let ids: Vec<EventId> = std::iter::once(&before).chain(&got).map(id_of).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered ids: {ids:?}");
    let (bulk, client_row) = (ids[2], ids[1]);
    assert_eq!(bulk.lsn, client_row.lsn, "one transaction");
    assert!(
        bulk.index > 5002,
        "the data.sync takes an index after every change of its transaction: {bulk}"
    );

    // orgB's two rows of the same transaction arrive as usual.
    let got_b = b.events(2, WAIT).await;
    let ids_b = crate::support::sse::property_ids(&got_b);
    assert_eq!(ids_b, ["b1", "b2"]);
    assert_eq!(id_of(&got_b[0]).lsn, bulk.lsn);
    assert!(id_of(&got_b[1]) < bulk);

    // orgA's history holds four events, not 5,003.
    let held = history(&ctx, Some("orgA")).await;
    assert_eq!(held.len(), 4, "{held:?}");

    // Resuming from before the transaction replays exactly what was missed.
    let mut again = stream(&gw, "orgA", "ua", Some(&resume_from)).await;
    let replayed = again.events(3, WAIT).await;
    assert_eq!(
        replayed.iter().map(id_of).collect::<Vec<_>>(),
        got.iter().map(id_of).collect::<Vec<_>>()
    );
    assert_eq!(shapes(&replayed), shapes(&got));
    assert!(again.next_event(Duration::from_millis(300)).await.is_none());

    let metrics = ing.metrics().await;
    assert!(metric_value(&metrics, "realtime_ingestor_events_coalesced_total") >= 5000.0);
    assert!(metric_value(&metrics, "realtime_ingestor_bulk_syncs_total") >= 1.0);
    gw.stop().await;
    ing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memberships_are_never_coalesced_and_children_count_for_their_parent() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    ctx.batch(
        "INSERT INTO users (id) SELECT 'u' || g FROM generate_series(1, 15) g;
         INSERT INTO properties (id, \"organizationId\", \"createdBy\", price)
           SELECT 'p' || g, 'orgA', 'ua', 1 FROM generate_series(1, 15) g;
         INSERT INTO listings (id, \"propertyId\", \"listPrice\")
           SELECT 'l' || g, 'p' || g, 1 FROM generate_series(1, 15) g;",
    )
    .await;
    let mut config = config_for(&ctx);
    config.bulk_threshold = 10;
    let ing = RunningIngestor::start(ctx.clone(), config).await;
    ctx.batch(
        "BEGIN;
         INSERT INTO organization_members (id, \"userId\", \"organizationId\")
           SELECT 'mu' || g, 'u' || g, 'orgA' FROM generate_series(1, 15) g;
         UPDATE listings SET \"listPrice\" = 2;
         UPDATE properties SET price = 3 WHERE id IN ('p1', 'p2');
         COMMIT;
         INSERT INTO clients (id, \"organizationId\", \"createdBy\", name) VALUES ('marker', 'orgA', 'ua', 'M');",
    )
    .await;
    let events = wait_for_history(&ctx, Some("orgA"), 19, WAIT).await;
    let kinds: Vec<(String, Value)> = events
        .iter()
        .map(|e| {
            (
                e.event["type"].as_str().unwrap().to_owned(),
                e.event["payload"].clone(),
            )
        })
        .collect();
    let joins = kinds.iter().filter(|(t, _)| t == "member.join").count();
    assert_eq!(joins, 15, "every membership event is published: {kinds:?}");
    let bulk: Vec<&Value> = kinds
        .iter()
        .filter(|(_, p)| p["operation"] == "bulk")
        .map(|(_, p)| p)
        .collect();
    // 15 listings (children of orgA's properties) are past 10; the two
    // property updates are not, and arrive as events.
    assert_eq!(
        bulk,
        [&json!({"entityType": "listings", "operation": "bulk", "count": 15})]
    );
    let mut updates: Vec<&Value> = kinds
        .iter()
        .filter(|(t, p)| t == "property.update" && p["operation"] == "update")
        .map(|(_, p)| &p["propertyId"])
        .collect();
    updates.sort_by_key(|v| v.as_str().map(str::to_owned));
    assert_eq!(updates, [&json!("p1"), &json!("p2")]);
    assert_eq!(
        events.len(),
        19,
        "15 joins, 2 updates, the bulk, the marker: {kinds:?}"
    );
    ing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_row_arrives_truncated() {
    let ctx = TestContext::new().await;
    ctx.batch(SEED).await;
    // The default limit (64 KiB).
    let ing = RunningIngestor::start(ctx.clone(), config_for(&ctx)).await;
    let gw = RunningGateway::start(gateway_config(&ctx)).await;
    let mut a = stream(&gw, "orgA", "ua", None).await;
    ctx.batch(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price, description)
           VALUES ('big', 'orgA', 'ua', 1, repeat('0123456789abcdef', 65536));
         UPDATE properties SET price = 2 WHERE id = 'big';
         UPDATE properties SET description = repeat('fedcba9876543210', 65536) WHERE id = 'big';
         UPDATE properties SET bedrooms = 4, description = 'short' WHERE id = 'big';",
    )
    .await;
    let got = a.events(4, WAIT).await;
    assert_eq!(got.len(), 4);
    let p: Vec<Value> = got.iter().map(|m| m.json()["payload"].clone()).collect();
    for m in &got {
        assert!(
            m.data.as_ref().unwrap().len() < 64 * 1024,
            "{} bytes",
            m.data.as_ref().unwrap().len()
        );
    }
    // The insert: ids and keys, no row values.
    assert_eq!(
        p[0],
        json!({"propertyId": "big", "organizationId": "orgA", "operation": "create",
               "updatedBy": null, "truncated": true})
    );
    // The large column did not change: the event is whole.
    assert_eq!(
        p[1],
        json!({"propertyId": "big", "organizationId": "orgA", "operation": "update",
               "updatedFields": ["price"], "changes": {"price": "2.00"}, "updatedBy": null})
    );
    // It changed: which fields changed, but not their values.
    assert_eq!(
        p[2],
        json!({"propertyId": "big", "organizationId": "orgA", "operation": "update",
               "updatedFields": ["description"], "updatedBy": null, "truncated": true})
    );
    // Back to a small value: whole again.
    assert_eq!(
        p[3]["changes"],
        json!({"bedrooms": 4, "description": "short"})
    );
    assert!(p[3].get("truncated").is_none());
    let metrics = ing.metrics().await;
    assert!(metric_value(&metrics, "realtime_ingestor_events_truncated_total") >= 2.0);
    gw.stop().await;
    ing.stop().await;
}
