//! The dashboard and the alert rules query only metrics that the binaries
//! really export.
//!
//! Starts the real `realtime-ingestor` and `realtime-gateway` binaries (each
//! its own process, so each `/metrics` shows only its own registry) against a
//! real Postgres and Redis, makes the traffic that brings every series into
//! existence (a routed row change that is published and delivered to an SSE
//! client, a resume that replays from history, a refused request, a logical
//! message the ingestor has to skip), scrapes both `/metrics` endpoints and
//! checks every `realtime_…` metric named in the PromQL of
//! `deploy/grafana/dashboard.json` and `deploy/grafana/alerts.yaml`:
//! `realtime_ingestor_…` names must be exported by the ingestor,
//! `realtime_gateway_…` names by the gateway. Histogram series suffixes
//! (`_bucket`, `_sum`, `_count`) are stripped on both sides, so a query of
//! `x_bucket` is satisfied by the histogram `x`.
//!
//! A panel or rule that names a metric nobody exports fails this test; the
//! files are compiled in (`include_str!`), so editing them rebuilds it.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use realtime_tests::{ChildProcess, TestContext, binary_path, free_port, wait_until};
use serde_json::Value;
use support::gateway::{JWT_SECRET, token};
use support::sse::SseClient;

const DASHBOARD: &str = include_str!("../../deploy/grafana/dashboard.json");
const ALERTS: &str = include_str!("../../deploy/grafana/alerts.yaml");
const WAIT: Duration = Duration::from_secs(30);

/// Every PromQL expression of a Grafana dashboard: the `expr` of each
/// target, and the `query`/`definition` strings of template variables, at any
/// depth (rows nest panels).
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => stack.push(value),
                    }
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

/// The `expr:` values of a Prometheus rule file: plain one-line scalars and
/// block scalars (`expr: >-` / `expr: |`, whose lines are indented deeper
/// than the key). A line-based reader rather than a YAML parser, which the
/// test crate does not depend on; `rule_count` lets the caller check that
/// no rule was missed.
fn rule_expressions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        i += 1;
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('>') || value.starts_with('|') {
            let mut block = Vec::new();
            while i < lines.len() {
                let next = lines[i];
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                block.push(next.trim());
                i += 1;
            }
            out.push(block.join("\n"));
        } else {
            out.push(value.trim_matches(['"', '\'']).to_owned());
        }
    }
    out
}

/// How many rules (alerting or recording) a rule file declares.
fn rule_count(text: &str) -> usize {
    text.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("- alert:") || l.starts_with("- record:"))
        .count()
}

/// The `realtime_…` metric names an expression uses, as families: string
/// literals (label values such as `job="realtime-gateway"`) are skipped, and
/// `_bucket`/`_sum`/`_count` are stripped.
fn metric_families(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            // Skip the literal, honouring backslash escapes.
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = i + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let ident = &expr[start..end];
            if ident.starts_with("realtime_") {
                names.insert(family(ident).to_owned());
            }
        } else if c.is_ascii_digit() {
            // A number or duration (`5m`, `1e6`): not an identifier.
            while chars
                .peek()
                .is_some_and(|&(_, d)| d.is_ascii_alphanumeric() || d == '.' || d == '_')
            {
                chars.next();
            }
        }
    }
    names
}

fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// The metric families present in a Prometheus text exposition (series
/// lines, not just `# HELP`/`# TYPE`: a family counts only once it has a
/// sample).
fn exported_families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| family(name).to_owned())
        .collect()
}

/// Every `realtime_…` family the dashboard and the rules use.
fn referenced_families(dashboard: &str, rules: &str) -> BTreeSet<String> {
    let dashboard: Value = serde_json::from_str(dashboard).expect("dashboard.json is JSON");
    dashboard_expressions(&dashboard)
        .iter()
        .chain(rule_expressions(rules).iter())
        .flat_map(|e| metric_families(e))
        .collect()
}

/// The referenced families that the process they belong to does not export,
/// each with the reason.
fn missing(
    referenced: &BTreeSet<String>,
    ingestor: &BTreeSet<String>,
    gateway: &BTreeSet<String>,
) -> Vec<String> {
    referenced
        .iter()
        .filter_map(|name| {
            let (owner, exported) = if name.starts_with("realtime_ingestor_") {
                ("the ingestor", ingestor.contains(name))
            } else if name.starts_with("realtime_gateway_") {
                ("the gateway", gateway.contains(name))
            } else {
                (
                    "either process",
                    ingestor.contains(name) || gateway.contains(name),
                )
            };
            (!exported).then(|| format!("{name} (not exported by {owner})"))
        })
        .collect()
}

#[test]
fn the_extraction_sees_every_metric_and_flags_unknown_ones() {
    let dashboard = r#"{"panels":[{"type":"row","panels":[{"targets":[
        {"expr":"histogram_quantile(0.99, sum by (le) (rate(realtime_gateway_commit_to_send_seconds_bucket{job=\"realtime_gateway_not_a_metric\"}[5m])))"}]}]},
        {"targets":[{"expr":"sum(rate(realtime_gateway_made_up_total[$__rate_interval])) > 1e6"}]}],
        "templating":{"list":[{"type":"query","query":"label_values(realtime_ingestor_slot_lag_bytes, instance)"}]}}"#;
    let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: >-\n          max(realtime_ingestor_slot_lag_bytes) > 5\n          and on()\n          sum(realtime_ingestor_invented_count) == 0\n        for: 5m\n      - alert: B\n        expr: absent(up{job=\"x\"} == 1)\n";
    assert_eq!(rule_expressions(rules).len(), rule_count(rules));
    let referenced = referenced_families(dashboard, rules);
    let expected: BTreeSet<String> = [
        "realtime_gateway_commit_to_send_seconds",
        "realtime_gateway_made_up_total",
        "realtime_ingestor_slot_lag_bytes",
        "realtime_ingestor_invented",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        referenced, expected,
        "label values and durations are not names"
    );
    let ingestor = exported_families(
        "# TYPE realtime_ingestor_slot_lag_bytes gauge\nrealtime_ingestor_slot_lag_bytes 0\n# HELP realtime_ingestor_invented_count described only\n",
    );
    let gateway = exported_families(
        "realtime_gateway_commit_to_send_seconds_bucket{le=\"0.001\"} 1\nrealtime_gateway_commit_to_send_seconds_sum 0.0001\n",
    );
    assert_eq!(
        missing(&referenced, &ingestor, &gateway),
        vec![
            "realtime_gateway_made_up_total (not exported by the gateway)".to_owned(),
            "realtime_ingestor_invented (not exported by the ingestor)".to_owned(),
        ]
    );
    // A gateway metric exported only by the ingestor does not count.
    let swapped = missing(&referenced, &gateway, &ingestor);
    assert!(
        swapped
            .iter()
            .any(|m| m.starts_with("realtime_gateway_commit_to_send_seconds"))
    );
}

#[test]
fn the_shipped_files_are_read_whole() {
    assert_eq!(
        rule_expressions(ALERTS).len(),
        rule_count(ALERTS),
        "one expression per rule in alerts.yaml"
    );
    let referenced = referenced_families(DASHBOARD, ALERTS);
    for name in [
        "realtime_gateway_commit_to_send_seconds",
        "realtime_gateway_rejected_total",
        "realtime_ingestor_slot_lag_bytes",
        "realtime_ingestor_events_published_total",
    ] {
        assert!(
            referenced.contains(name),
            "{name} is queried: {referenced:?}"
        );
    }
}

async fn scrape(admin: SocketAddr) -> String {
    support::http_get(&format!("http://{admin}/metrics"))
        .await
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
        .unwrap_or_default()
}

async fn wait_ready(what: &str, admin: SocketAddr) {
    wait_until(what, WAIT, || async move {
        support::http_get(&format!("http://{admin}/readyz"))
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let referenced = referenced_families(DASHBOARD, ALERTS);

    let ctx = TestContext::new().await;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;

    let ingestor = ChildProcess::spawn(
        &binary_path("realtime-ingestor"),
        &[
            ctx.ingestor_env(),
            vec![
                // Slot lag and confirmed position are read with the heartbeat.
                ("REALTIME_WAL_HEARTBEAT", "1s".to_owned()),
                ("REALTIME_STATUS_INTERVAL", "200ms".to_owned()),
                ("REALTIME_RECONNECT_MAX", "1s".to_owned()),
            ],
        ]
        .concat(),
    );
    let ingestor_admin = ingestor.admin_addr(WAIT).await;
    wait_ready("the ingestor is ready", ingestor_admin).await;

    let port = free_port();
    let gateway = ChildProcess::spawn(
        &binary_path("realtime-gateway"),
        &ctx.gateway_env(([127, 0, 0, 1], port).into(), JWT_SECRET),
    );
    let gateway_admin = gateway.admin_addr(WAIT).await;
    wait_ready("the gateway is ready", gateway_admin).await;

    // One live client, and one request refused (no credentials).
    let url = format!("http://127.0.0.1:{port}/api/realtime/stream?organizationId=orgA");
    let mut live = SseClient::connect(&url, Some(&token("ua", 600)), &[]).await;
    assert_eq!(live.status, 200, "{}", live.body_text);
    let hello = live
        .next(WAIT)
        .await
        .unwrap()
        .expect("the connection message");
    assert_eq!(hello.json()["type"], "connection");
    let refused = SseClient::connect(&url, None, &[]).await;
    assert_eq!(refused.status, 401);

    // Two row changes, published by the ingestor and delivered live.
    for id in ["p1", "p2"] {
        ctx.execute(
            "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ($1, 'orgA', 'ua', 1)",
            &[&id],
        )
        .await;
    }
    let events = live.events(2, WAIT).await;
    assert_eq!(events.len(), 2, "both changes reach the live client");
    let first = events[0].id.clone().expect("event id");

    // A resume after the first event replays the second from history.
    let mut resumed =
        SseClient::connect(&url, Some(&token("ua", 600)), &[("Last-Event-ID", &first)]).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body_text);
    let replayed = resumed.events(1, WAIT).await;
    assert_eq!(replayed.len(), 1, "the resume replays the second event");
    assert_eq!(replayed[0].json()["payload"]["propertyId"], "p2");

    // A transactional message that is not a valid event: skipped and counted.
    ctx.execute(
        "SELECT pg_logical_emit_message(true, 'realtime', 'not an event')",
        &[],
    )
    .await;

    // Series appear as their first sample is recorded; give them a deadline.
    let started = tokio::time::Instant::now();
    let (absent, ingestor_families, gateway_families) = loop {
        let ingestor_families = exported_families(&scrape(ingestor_admin).await);
        let gateway_families = exported_families(&scrape(gateway_admin).await);
        let absent = missing(&referenced, &ingestor_families, &gateway_families);
        if absent.is_empty() || started.elapsed() >= WAIT {
            break (absent, ingestor_families, gateway_families);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        absent.is_empty(),
        "dashboard.json / alerts.yaml query metrics that no running process exports:\n  {}\n\
         ingestor exports: {ingestor_families:?}\ngateway exports: {gateway_families:?}",
        absent.join("\n  ")
    );
    // The check above is only as good as what it checked.
    assert!(
        referenced.len() >= 10,
        "the files name at least ten realtime metrics: {referenced:?}"
    );
    drop(live);
    drop(resumed);
}
