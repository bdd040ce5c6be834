//! The TypeScript client (`clients/js`) against the Rust side.
//!
//! - [`event_description_matches_the_rust_side`]: the event types, channels,
//!   wire fields and payload fields that the REAL ingestor and gateway produce
//!   are written down as `clients/js/schema/events.json`; this test fails when
//!   that file no longer matches what Rust produces, and the client's Vitest
//!   suite fails when the TypeScript definitions no longer match the file. So
//!   neither side can drift without a red test.
//! - [`browser_client_fails_over_resumes_and_resyncs`]: headless Chromium runs
//!   the package's README example (`clients/js/examples/basic.ts`) against
//!   Postgres, Redis, the ingestor binary and TWO gateway binaries, with an
//!   Auth.js database-session cookie: live events, failover to the other
//!   replica with nothing lost or duplicated, resume after a page reload, and
//!   `onResync` when the history no longer reaches back.
//! - [`browser_client_stops_on_401_and_403`]: the same page with an invalid
//!   session cookie, with none, and as a non-member: each refusal reaches
//!   `onError` with its status and reason, and the gateway sees no further
//!   stream request from the page; the gateway's transient refusal (per-user
//!   cap) is retried, never `open`, never `onError`, until the place frees.
//! - [`node_publish_reaches_a_stream`]: the package's server-side
//!   `publish()`, run by Node against the real gateway, delivers an event to
//!   an SSE client; a wrong key gets the typed `unauthorized` failure.
//!
//! Regenerate the description after a deliberate change to the events with
//! `REALTIME_UPDATE_CLIENT_SCHEMA=1 cargo test -p realtime-tests --test integration client_js::event_description`,
//! then update `clients/js/src/events.ts` until `npm test` passes in `clients/js`.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::gateway::{RunningGateway, gateway_config, token};
use crate::support::sse::SseClient;
use crate::support::{metric_value, start_ready};
use realtime_gateway::channels::ChannelFilter;
use realtime_shared::event::{EventId, EventType};
use realtime_tests::browser::{NodeDriver, client_dir};
use realtime_tests::{TestContext, free_port};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Set to rewrite `clients/js/schema/events.json` instead of comparing.
const UPDATE_VAR: &str = "REALTIME_UPDATE_CLIENT_SCHEMA";

/// The channel names of ARCHITECTURE.md §3 (`all` is every type).
const CHANNELS: [&str; 5] = [
    "property",
    "organization",
    "user",
    "notifications",
    "system",
];

fn schema_path() -> PathBuf {
    client_dir().join("schema/events.json")
}

/// `{"field": "required" | "optional"}` over a set of JSON objects: a field
/// is required when every sample has it. The TypeScript check applies the
/// same rule to union types, so both sides describe shapes alike.
fn fields_of<'a>(samples: impl IntoIterator<Item = &'a Value>) -> Value {
    let samples: Vec<&serde_json::Map<String, Value>> = samples
        .into_iter()
        .map(|v| v.as_object().expect("an object"))
        .collect();
    let names: BTreeSet<&String> = samples.iter().flat_map(|o| o.keys()).collect();
    let out: BTreeMap<&String, &str> = names
        .into_iter()
        .map(|name| {
            let everywhere = samples.iter().all(|o| o.contains_key(name.as_str()));
            (name, if everywhere { "required" } else { "optional" })
        })
        .collect();
    json!(out)
}

/// Routes: the built-in Oikion ones plus a notification table and a second
/// property table with `updatedBy`, so every optional field shows up in one
/// sample and is absent from another.
const EXTRA_DDL: &str = r#"
CREATE TABLE notifications (
  id text PRIMARY KEY,
  "organizationId" text NOT NULL,
  "userId" text NOT NULL,
  title text, message text, priority text, category text, metadata jsonb
);
CREATE TABLE deals (
  id text PRIMARY KEY,
  "organizationId" text NOT NULL,
  title text,
  "updatedBy" text
);
"#;

const EXTRA_ROUTES: &str = r#"
[[tables]]
table = "notifications"
kind = "notification"
org_column = "organizationId"
user_column = "userId"

[[tables]]
table = "deals"
kind = "property"
org_column = "organizationId"
updated_by_column = "updatedBy"
"#;

/// One of every operation that produces an event, with and without the
/// optional columns.
const SAMPLE_SQL: &str = r#"
INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
INSERT INTO users (id) VALUES ('ua'), ('ub');
INSERT INTO organization_members (id, "userId", "organizationId", role) VALUES ('m1', 'ua', 'orgA', 'AGENT');
UPDATE organization_members SET role = 'ADMIN' WHERE id = 'm1';
INSERT INTO organization_members (id, "userId", "organizationId") VALUES ('m2', 'ub', 'orgA');
DELETE FROM organization_members WHERE id = 'm2';
UPDATE organizations SET name = 'Acme Realty' WHERE id = 'orgA';
UPDATE organizations SET name = 'Acme', plan = 'STARTER' WHERE id = 'orgA';
INSERT INTO properties (id, "organizationId", "createdBy", price) VALUES ('p1', 'orgA', 'ua', 1);
UPDATE properties SET price = 2 WHERE id = 'p1';
DELETE FROM properties WHERE id = 'p1';
INSERT INTO deals (id, "organizationId", title) VALUES ('l1', 'orgA', 'a');
INSERT INTO deals (id, "organizationId", title, "updatedBy") VALUES ('l2', 'orgA', 'b', 'ua');
UPDATE deals SET title = 'c', "updatedBy" = 'ub' WHERE id = 'l2';
BEGIN;
SELECT realtime.set_actor('ua');
INSERT INTO properties (id, "organizationId", "createdBy", price) VALUES ('p2', 'orgA', 'ua', 1);
INSERT INTO listings (id, "propertyId", "listPrice") VALUES ('li1', 'p2', 1);
UPDATE listings SET "marketingStatus" = 'ARCHIVED' WHERE id = 'li1';
INSERT INTO organization_members (id, "userId", "organizationId") VALUES ('m3', 'ub', 'orgA');
COMMIT;
INSERT INTO clients (id, "organizationId", "createdBy", name) VALUES ('c1', 'orgA', 'ua', 'Chloe');
UPDATE clients SET phone = '1' WHERE id = 'c1';
INSERT INTO tasks (id, "organizationId", title, "createdBy") VALUES ('t1', 'orgA', 'Call', 'ua');
INSERT INTO notes (id, "clientId", content, "createdBy") VALUES ('n1', 'c1', 'Hi', 'ua');
DELETE FROM clients WHERE id = 'c1';
INSERT INTO activities (id, "organizationId", "actorId", "actionType", "entityType", "entityId", payload)
  VALUES ('a1', 'orgA', 'ua', 'PROPERTY_CREATED', 'PROPERTY', 'p1', '{"k": 1}');
INSERT INTO activities (id, "organizationId", "actorId", "actionType", "entityType")
  VALUES ('a2', 'orgA', 'ua', 'NOTE_ADDED', 'CLIENT');
INSERT INTO notifications (id, "organizationId", "userId", title, message, priority, category, metadata)
  VALUES ('n1', 'orgA', 'ua', 'Hi', 'New lead', 'high', 'lead', '{"leadId": "l9"}');
INSERT INTO notifications (id, "organizationId", "userId", title, message, priority, category)
  VALUES ('n2', 'orgA', 'ua', 'Hi', 'Call back', 'low', 'task');
SELECT pg_logical_emit_message(true, 'realtime', '{"type":"system.alert","payload":{"message":"maintenance at 22:00"}}');
TRUNCATE deals;
"#;

/// The ingestor's two limits, with the small settings [`describe_rust_side`]
/// runs with: events over 4 KiB lose their row values (`"truncated": true`),
/// and more than 5 events of one organization and table in one transaction
/// become one `data.sync` bulk. `SAMPLE_SQL` stays under both.
const LIMIT_SQL: &str = r#"
INSERT INTO properties (id, "organizationId", "createdBy", price, description) VALUES ('pbig', 'orgA', 'ua', 1, repeat('d', 8000));
UPDATE organizations SET name = repeat('n', 8000) WHERE id = 'orgA';
UPDATE organizations SET name = 'Acme' WHERE id = 'orgA';
INSERT INTO clients (id, "organizationId", "createdBy", name) VALUES ('cbig', 'orgA', 'ua', repeat('c', 8000));
INSERT INTO activities (id, "organizationId", "actorId", "actionType", "entityType", payload)
  VALUES ('abig', 'orgA', 'ua', 'NOTE_ADDED', 'CLIENT', jsonb_build_object('note', repeat('a', 8000)));
INSERT INTO notifications (id, "organizationId", "userId", title, message, priority, category, metadata)
  VALUES ('nbig', 'orgA', 'ua', 'Hi', 'Big', 'low', 'task', jsonb_build_object('k', repeat('m', 8000)));
BEGIN;
INSERT INTO tasks (id, "organizationId", title, "createdBy") SELECT 'tb' || g, 'orgA', 'Call', 'ua' FROM generate_series(1, 6) g;
COMMIT;
"#;

/// The description of the events as the Rust side produces them.
async fn describe_rust_side() -> Value {
    let mut routes = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ingestor/routes/oikion.toml"),
    )
    .expect("reading ingestor/routes/oikion.toml");
    routes.push_str(EXTRA_ROUTES);
    let ctx = TestContext::new().await;
    ctx.batch(EXTRA_DDL).await;
    let path = ctx.temp_dir().join("routes.toml");
    std::fs::write(&path, routes).expect("write routes");
    let mut config = support::config_for(&ctx);
    config.routes = Some(path);
    config.max_event_bytes = 4096;
    config.bulk_threshold = 5;
    let ing = support::RunningIngestor::start(ctx.clone(), config).await;
    ctx.batch(SAMPLE_SQL).await;
    ctx.batch(LIMIT_SQL).await;

    // 24 organization events of SAMPLE_SQL (the note created in the
    // transaction that deletes its client is skipped), 7 of LIMIT_SQL (6
    // truncated, one bulk), and 2 broadcasts (the alert, the truncate).
    let mut events: Vec<Value> = support::wait_for_history(&ctx, Some("orgA"), 31, WAIT)
        .await
        .into_iter()
        .map(|e| e.event)
        .collect();
    events.extend(
        support::wait_for_history(&ctx, None, 2, WAIT)
            .await
            .into_iter()
            .map(|e| e.event),
    );

    // The gap `data.sync` and the connection message come from the gateway.
    let gap = realtime_gateway::gap_message("orgA", Some(EventId::new(1, 0)));
    let gap = std::str::from_utf8(&gap).expect("UTF-8 frame");
    let gap: Value = serde_json::from_str(
        gap.trim()
            .strip_prefix("data: ")
            .expect("a data-only frame"),
    )
    .expect("gap JSON");
    events.push(gap);
    let gw = RunningGateway::start(gateway_config(&ctx)).await;
    let mut sse = SseClient::connect(
        &gw.stream_url("organizationId=orgA&channel=property"),
        Some(&token("ua", 600)),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200, "{}", sse.body_text);
    let hello = sse
        .next(WAIT)
        .await
        .unwrap()
        .expect("the connection message");
    let hello = hello.json();
    assert_eq!(hello["type"], "connection");

    let mut by_type: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in &events {
        let t = e["type"].as_str().expect("type").to_owned();
        by_type.entry(t).or_default().push(e);
    }
    // Every type must have been produced, or the description is incomplete.
    let mut described = serde_json::Map::new();
    for t in EventType::ALL {
        let samples = by_type
            .get(t.as_str())
            .unwrap_or_else(|| panic!("no sample of {t}: extend SAMPLE_SQL"));
        // A type that no row change produces carries whatever the
        // application published: its payload is free-form.
        let from_rows: Vec<&Value> = samples
            .iter()
            .copied()
            .filter(|e| e["source"] == "postgres" || e.get("id").is_none())
            .collect();
        let payload = if from_rows.is_empty() {
            json!("any")
        } else {
            fields_of(from_rows.iter().map(|e| &e["payload"]))
        };
        described.insert(
            t.as_str().to_owned(),
            json!({"fields": fields_of(samples.iter().copied()), "payload": payload}),
        );
    }

    let channels: BTreeMap<&str, Vec<&str>> = CHANNELS
        .into_iter()
        .map(|name| {
            let (filter, _) = ChannelFilter::parse(Some(name)).expect("a known channel");
            let types = EventType::ALL
                .into_iter()
                .filter(|t| *t != EventType::DataSync && filter.passes(*t))
                .map(EventType::as_str)
                .collect();
            (name, types)
        })
        .collect();

    gw.stop().await;
    ing.stop().await;
    json!({
        "$comment": "Generated by tests/tests/client_js.rs from the real ingestor and gateway; do not edit. Regenerate: REALTIME_UPDATE_CLIENT_SCHEMA=1 cargo test -p realtime-tests --test integration client_js::event_description",
        "eventTypes": EventType::ALL.map(EventType::as_str),
        "channels": channels,
        "connection": fields_of([&hello]),
        "events": described,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_description_matches_the_rust_side() {
    let described = describe_rust_side().await;
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(&described).expect("JSON")
    );
    let path = schema_path();
    if std::env::var_os(UPDATE_VAR).is_some() {
        std::fs::write(&path, &text).expect("writing the event description");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} is out of date with the Rust side; regenerate it with \
         `{UPDATE_VAR}=1 cargo test -p realtime-tests --test integration client_js::event_description`, \
         then update clients/js/src/events.ts until `npm test` passes there.\n\
         --- Rust side now ---\n{text}",
        path.display()
    );
}

/// The client library's page in a browser (`clients/js/e2e/driver.mjs`,
/// through the shared [`NodeDriver`]).
struct Driver {
    driver: NodeDriver,
}

impl Driver {
    async fn start(ctx: &TestContext, env: &[(&str, String)]) -> Driver {
        let dir = client_dir();
        for needed in ["node_modules/esbuild", "dist/index.js"] {
            assert!(
                dir.join(needed).exists(),
                "clients/js/{needed} is missing: run `make test-js` (npm ci + build) before this test"
            );
        }
        let log = ctx.temp_dir().join("driver.log");
        let (driver, _) =
            NodeDriver::start("e2e/driver.mjs", env, log, Duration::from_secs(90), WAIT).await;
        Driver { driver }
    }

    fn log_text(&self) -> String {
        self.driver.log_text()
    }

    /// Sends one command and returns its result; panics on a failure reply.
    async fn call(&mut self, command: Value) -> Value {
        self.driver.call(command).await
    }

    /// Polls the page's state until `done` holds, for at most `WAIT`.
    #[track_caller]
    fn until<'a>(
        &'a mut self,
        what: &'a str,
        done: impl Fn(&Value) -> bool + 'a,
    ) -> impl std::future::Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let started = tokio::time::Instant::now();
            loop {
                let state = self.call(json!({"cmd": "state"})).await;
                if done(&state) {
                    return state;
                }
                if started.elapsed() >= WAIT {
                    panic!(
                        "timed out after {WAIT:?} waiting until {what} at {caller}\n\
                         page state: {state:#}\ndriver log:\n{}",
                        self.log_text()
                    );
                }
                tokio::time::sleep(realtime_tests::wait::POLL_INTERVAL * 5).await;
            }
        }
    }

    async fn quit(self) {
        self.driver.quit().await;
    }
}

/// The property ids the page saw, in order.
fn seen(state: &Value) -> Vec<String> {
    state["seen"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["propertyId"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The messages of the `system.alert` events the page saw, in order.
fn alerts(state: &Value) -> Vec<String> {
    state["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "system.alert")
                .filter_map(|e| e["message"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An organization-scoped `system.alert`, published the way an app does it.
async fn alert(ctx: &TestContext, message: &str) {
    let content =
        json!({"type": "system.alert", "organizationId": "orgA", "payload": {"message": message}})
            .to_string();
    ctx.execute(
        "SELECT pg_logical_emit_message(true, 'realtime', $1::text)",
        &[&content],
    )
    .await;
}

fn names(prefix: &str, range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

async fn insert_properties(ctx: &TestContext, ids: &[String]) {
    for id in ids {
        ctx.execute(
            "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'orgA', 'ua', 1)",
            &[id],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_fails_over_resumes_and_resyncs() {
    let ctx = TestContext::new().await;
    // An Auth.js database session: the cookie holds an opaque token that the
    // gateway looks up in `sessions` (EventSource cannot send headers).
    let session = format!("sess-{}", rand::random::<u64>());
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;
    ctx.execute(
        "INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires) VALUES ('s1', $1, 'ua', now() + interval '1 hour')",
        &[&session],
    )
    .await;

    // The ingestor keeps a tiny history so that a client away for a few
    // hundred events can no longer be caught up (→ data.sync).
    let _ingestor = start_ready(
        "realtime-ingestor",
        &[
            ctx.ingestor_env(),
            vec![
                ("REALTIME_STATUS_INTERVAL", "200ms".to_owned()),
                ("REALTIME_HISTORY_LEN", "10".to_owned()),
            ],
        ]
        .concat(),
    )
    .await;

    let page_port = free_port();
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let gateway_ports = [free_port(), free_port()];
    let gateway_env = |port: u16| {
        vec![
            ("DATABASE_URL", ctx.database_url()),
            ("REDIS_URL", ctx.redis_url()),
            ("REALTIME_KEY_PREFIX", ctx.key_prefix().to_owned()),
            (
                "AUTH_SECRET",
                "e2e-auth-secret-at-least-32-bytes-long".to_owned(),
            ),
            ("REALTIME_LISTEN", format!("127.0.0.1:{port}")),
            ("REALTIME_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
            ("REALTIME_CORS_ORIGINS", page_origin.clone()),
            ("REALTIME_RETRY", "500ms".to_owned()),
            ("REALTIME_HEARTBEAT", "2s".to_owned()),
        ]
    };
    let mut gw0 = start_ready("realtime-gateway", &gateway_env(gateway_ports[0])).await;
    let _gw1 = start_ready("realtime-gateway", &gateway_env(gateway_ports[1])).await;
    let urls = gateway_ports.map(|p| format!("http://127.0.0.1:{p}"));

    let mut page = Driver::start(
        &ctx,
        &[
            ("E2E_PAGE_PORT", page_port.to_string()),
            ("E2E_GATEWAYS", urls.join(",")),
            ("E2E_ORG", "orgA".to_owned()),
            ("E2E_COOKIE", format!("authjs.session-token={session}")),
        ],
    )
    .await;

    // 1. Live: the page connects to the first replica; inserted rows arrive.
    page.call(json!({"cmd": "open"})).await;
    page.until("the page is connected to the first gateway", |s| {
        s["state"] == "open" && s["currentUrl"] == urls[0].as_str()
    })
    .await;
    let mut expected = names("live", 1..=3);
    insert_properties(&ctx, &expected).await;
    page.until("the live rows arrive", |s| seen(s) == expected)
        .await;

    // 2. Failover: the replica dies; rows written while the client moves and
    //    after it moved arrive once each, in commit order.
    gw0.kill9();
    let during = names("down", 1..=3);
    insert_properties(&ctx, &during).await;
    expected.extend(during);
    let state = page
        .until("the page moved to the second gateway", |s| {
            s["state"] == "open" && s["currentUrl"] == urls[1].as_str()
        })
        .await;
    assert!(
        state["states"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == "reconnecting")),
        "the state went through reconnecting: {state}"
    );
    let after = names("after", 1..=3);
    insert_properties(&ctx, &after).await;
    expected.extend(after);
    page.until("every row arrives exactly once after the failover", |s| {
        seen(s) == expected
    })
    .await;

    // 3. Reload: the page is gone while rows are written; the reloaded page
    //    resumes from the id saved in sessionStorage (and finds the first
    //    gateway still down on the way).
    page.call(json!({"cmd": "away"})).await;
    let away = names("away", 1..=3);
    insert_properties(&ctx, &away).await;
    expected.extend(away);
    page.call(json!({"cmd": "open"})).await;
    page.until("the rows written while away arrive after the reload", |s| {
        seen(s) == expected
    })
    .await;

    // 4. Resync: away for longer than the history reaches back → one
    //    data.sync → onResync; the page carries on live afterwards.
    page.call(json!({"cmd": "away"})).await;
    let before: u64 =
        ctx.query("SELECT count(*) FROM properties", &[]).await[0].get::<_, i64>(0) as u64;
    ctx.batch(
        "DO $$ BEGIN FOR i IN 1..300 LOOP
           INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('bulk' || i, 'orgA', 'ua', 1);
           COMMIT; END LOOP; END $$;",
    )
    .await;
    support::wait_until_published(&ctx, "orgA", before + 300).await;
    page.call(json!({"cmd": "open"})).await;
    page.until("onResync is called", |s| s["resyncs"] == 1)
        .await;
    let last = vec!["final".to_owned()];
    insert_properties(&ctx, &last).await;
    expected.extend(last);
    let state = page
        .until("live rows arrive after the resync", |s| {
            seen(s).last().map(String::as_str) == Some("final")
        })
        .await;
    assert_eq!(seen(&state), expected, "no bulk row replayed, none twice");
    assert_eq!(state["resyncs"], 1);

    // 5. Channel change and close through the gateway's control endpoints,
    //    as the browser sends them (cookie, CORS preflight for the JSON PUT).
    let connection = state["connectionId"].clone();
    page.call(json!({"cmd": "changeChannels", "channels": ["property", "system"]}))
        .await;
    // An alert passes only once the new filter is in force on the server.
    alert(&ctx, "a1").await;
    page.until("a system.alert arrives under the new filter", |s| {
        alerts(s) == ["a1"]
    })
    .await;
    page.call(json!({"cmd": "changeChannels", "channels": ["system"]}))
        .await;
    alert(&ctx, "a2").await;
    page.until("the second filter is in force", |s| {
        alerts(s) == ["a1", "a2"]
    })
    .await;
    insert_properties(&ctx, &["hidden".to_owned()]).await;
    // Per organization, events arrive in commit order: once a3 is here,
    // `hidden` was filtered out, not merely late.
    alert(&ctx, "a3").await;
    let state = page
        .until("the alert after the filtered row arrives", |s| {
            alerts(s) == ["a1", "a2", "a3"]
        })
        .await;
    assert_eq!(seen(&state), expected, "the property channel is off");
    assert_eq!(
        state["connectionId"], connection,
        "the filter changed on the open connection (no reconnect): {state}"
    );
    page.call(json!({"cmd": "close"})).await;
    let state = page
        .until("the page's client is closed and its DELETE answered", |s| {
            s["state"] == "closed" && s["control"].as_array().is_some_and(|c| c.len() == 3)
        })
        .await;
    let control: Vec<(String, String, u64)> = state["control"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["method"].as_str().unwrap_or_default().to_owned(),
                c["url"].as_str().unwrap_or_default().to_owned(),
                c["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let control_url = format!(
        "{}/api/realtime/stream?connectionId={}",
        urls[1],
        connection.as_str().unwrap_or_default()
    );
    assert_eq!(
        control,
        vec![
            ("PUT".to_owned(), control_url.clone(), 200),
            ("PUT".to_owned(), control_url.clone(), 200),
            ("DELETE".to_owned(), control_url, 204),
        ]
    );

    page.quit().await;
}

/// Every stream request the gateway has answered (accepted or refused),
/// from its `/metrics`.
async fn stream_requests(admin: std::net::SocketAddr) -> f64 {
    let (status, text) = support::http_get(&format!("http://{admin}/metrics"))
        .await
        .expect("the gateway's /metrics answers");
    assert_eq!(status, 200);
    metric_value(&text, "realtime_gateway_connections_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_stops_on_401_and_403() {
    let ctx = TestContext::new().await;
    let session = format!("sess-{}", rand::random::<u64>());
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme'), ('orgB', 'Other');
         INSERT INTO users (id) VALUES ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;
    ctx.execute(
        "INSERT INTO sessions (id, \"sessionToken\", \"userId\", expires) VALUES ('s1', $1, 'ua', now() + interval '1 hour')",
        &[&session],
    )
    .await;
    let page_port = free_port();
    let gateway_port = free_port();
    let gateway = start_ready(
        "realtime-gateway",
        &[
            ("DATABASE_URL", ctx.database_url()),
            ("REDIS_URL", ctx.redis_url()),
            ("REALTIME_KEY_PREFIX", ctx.key_prefix().to_owned()),
            (
                "AUTH_SECRET",
                "e2e-auth-secret-at-least-32-bytes-long".to_owned(),
            ),
            ("REALTIME_LISTEN", format!("127.0.0.1:{gateway_port}")),
            ("REALTIME_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
            (
                "REALTIME_CORS_ORIGINS",
                format!("http://127.0.0.1:{page_port}"),
            ),
            ("REALTIME_RETRY", "500ms".to_owned()),
            ("REALTIME_HEARTBEAT", "1s".to_owned()),
            // One stream per user: the last step holds it to get the
            // transient refusal.
            ("REALTIME_MAX_CONNECTIONS_PER_USER", "1".to_owned()),
        ],
    )
    .await;
    let admin = gateway.admin_addr(WAIT).await;
    let mut page = Driver::start(
        &ctx,
        &[
            ("E2E_PAGE_PORT", page_port.to_string()),
            ("E2E_GATEWAYS", format!("http://127.0.0.1:{gateway_port}")),
            ("E2E_ORG", "orgA".to_owned()),
            (
                "E2E_COOKIE",
                "authjs.session-token=no-such-session".to_owned(),
            ),
        ],
    )
    .await;

    // (org, cookie, status, reason): an unknown session, no cookie at all,
    // a signed-in user who is not a member of the organization.
    let cases = [
        (
            "orgA",
            json!("authjs.session-token=no-such-session"),
            401,
            "invalid or expired session",
        ),
        ("orgA", Value::Null, 401, "authentication required"),
        (
            "orgB",
            json!(format!("authjs.session-token={session}")),
            403,
            "not a member of this organization",
        ),
    ];
    for (i, (org, cookie, status, reason)) in cases.into_iter().enumerate() {
        let before = stream_requests(admin).await;
        page.call(json!({"cmd": "open", "org": org, "cookie": cookie}))
            .await;
        let state = page
            .until(
                "the refusal reaches onError and the client is closed",
                |s| s["state"] == "closed" && s["errors"].as_array().is_some_and(|e| e.len() > i),
            )
            .await;
        let error = &state["errors"][i];
        assert_eq!(error["status"], status, "{state:#}");
        assert_eq!(error["message"], reason, "{state:#}");
        assert!(
            error["url"]
                .as_str()
                .is_some_and(|u| u.contains(&format!("organizationId={org}"))),
            "{state:#}"
        );
        // The EventSource's request and the client's one probe that read
        // the status.
        let after = stream_requests(admin).await;
        assert_eq!(after - before, 2.0, "requests for case {i}: {state:#}");
        // Then nothing: a client still retrying (backoff from 250 ms,
        // doubling) would have asked at least three more times in 4 s.
        // Proving an absence needs a time window; this is the only sleep.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            stream_requests(admin).await,
            after,
            "no request after a final refusal (case {i})"
        );
        let state = page.call(json!({"cmd": "state"})).await;
        assert_eq!(state["state"], "closed");
        assert_eq!(
            state["errors"].as_array().map(Vec::len),
            Some(i + 1),
            "onError once: {state:#}"
        );
    }

    // Not final: the per-user cap is taken (by another stream of the same
    // user), so the gateway answers the page's EventSource with its
    // transient refusal (200, `retry:`, a reason comment, the end). The
    // client keeps asking, never calls onError and is not `open`; once the
    // place is free it connects.
    let cookie = format!("authjs.session-token={session}");
    let url = format!("http://127.0.0.1:{gateway_port}/api/realtime/stream?organizationId=orgA");
    let holder = SseClient::connect(&url, None, &[("Cookie", cookie.as_str())]).await;
    assert_eq!(holder.status, 200, "{}", holder.body_text);
    let before = stream_requests(admin).await;
    page.call(json!({"cmd": "open", "org": "orgA", "cookie": cookie}))
        .await;
    realtime_tests::wait_until("the page asked again and again", WAIT, || async {
        (stream_requests(admin).await >= before + 3.0).then_some(())
    })
    .await;
    let state = page.call(json!({"cmd": "state"})).await;
    assert_eq!(state["state"], "reconnecting", "{state:#}");
    assert!(
        !state["states"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "open"),
        "a transient refusal is not an open stream: {state:#}"
    );
    drop(holder);
    let state = page
        .until("the page connects once the place is free", |s| {
            s["state"] == "open"
        })
        .await;
    assert_eq!(
        state["errors"].as_array().map(Vec::len),
        Some(3),
        "no onError for a transient refusal: {state:#}"
    );
    page.quit().await;
}

/// Runs `clients/js/e2e/publish.mjs` (the built package's `publish()`) with
/// `event`; returns its result.
async fn node_publish(gateway: &str, key: &str, event: &Value) -> Value {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("node")
            .arg("e2e/publish.mjs")
            .arg(event.to_string())
            .current_dir(client_dir())
            .env("E2E_GATEWAY", gateway)
            .env("E2E_PUBLISH_KEY", key)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node publish.mjs finishes")
    .expect("starting `node`");
    assert!(
        output.status.success(),
        "publish.mjs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "publish.mjs said {:?}: {e}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_publish_reaches_a_stream() {
    const KEY: &str = "e2e-publish-key-at-least-32-bytes-long";
    assert!(
        client_dir().join("dist/server.js").exists(),
        "clients/js/dist is missing: run `make test-js` (npm ci + build) before this test"
    );
    let ctx = TestContext::new().await;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;
    let ingestor = support::RunningIngestor::start(ctx.clone(), support::config_for(&ctx)).await;
    let mut config = gateway_config(&ctx);
    config.publish_key = Some(KEY.to_owned());
    let gw = RunningGateway::start(config).await;
    let base = format!("http://{}", gw.addr);
    let mut sse = SseClient::connect(
        &gw.stream_url("organizationId=orgA"),
        Some(&token("ua", 600)),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200, "{}", sse.body_text);

    let alert = json!({
        "type": "system.alert",
        "organizationId": "orgA",
        "payload": {"alertType": "info", "message": "from node"},
    });
    let result = node_publish(&base, KEY, &alert).await;
    assert_eq!(result["ok"], true, "{result}");
    assert!(
        result["lsn"].as_str().is_some_and(|l| l.contains('/')),
        "an LSN: {result}"
    );
    let event = sse
        .next_event(WAIT)
        .await
        .expect("the published event reaches the stream")
        .json();
    assert_eq!(event["type"], "system.alert");
    assert_eq!(event["source"], "api");
    assert_eq!(event["organizationId"], "orgA");
    assert_eq!(event["payload"], alert["payload"]);

    let wrong = node_publish(&base, "not-the-key", &alert).await;
    assert_eq!(
        wrong,
        json!({"ok": false, "kind": "unauthorized", "status": 401,
               "message": "wrong publish key", "retryable": false}),
    );
    let bad = node_publish(
        &base,
        KEY,
        &json!({"type": "notification.new", "organizationId": "orgA", "payload": {}}),
    )
    .await;
    assert_eq!(bad["kind"], "bad_request", "{bad}");
    assert!(
        bad["message"]
            .as_str()
            .is_some_and(|m| m.contains("userId")),
        "{bad}"
    );
    gw.stop().await;
    ingestor.stop().await;
}
