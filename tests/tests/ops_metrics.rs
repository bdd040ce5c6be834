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

use crate::support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::sse::SseClient;
use realtime_tests::{ChildProcess, TestContext, binary_path, free_port, wait_until};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../../deploy/grafana/dashboard.json");
const ALERTS: &str = include_str!("../../deploy/grafana/alerts.yaml");
/// The same rules as the Kubernetes PrometheusRule (deploy/k8s/check.py
/// keeps them identical); read too, so a drift cannot hide a name.
const PROMETHEUS_RULE: &str = include_str!("../../deploy/k8s/base/prometheusrule.yaml");
const WAIT: Duration = Duration::from_secs(30);

/// Every PromQL expression of a Grafana dashboard: the `expr` of each
/// target, and the `query`/`definition` strings of template variables, at any
/// depth (rows nest panels).
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(node) = stack.pop() {
        match node {
            // A datasource variable's `query` is a plugin id ("prometheus").
            Value::Object(map) if map.get("type") == Some(&Value::from("datasource")) => {}
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

/// One vector selector of a PromQL expression: the metric name and its
/// equality label matchers (`reason="unavailable"`; negative and regex
/// matchers select no particular series and are left out).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    name: String,
    equal: Vec<(String, String)>,
}

/// Words of PromQL that are not metric names when not followed by `(`.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

/// Every vector selector of a PromQL expression (Grafana's `$variables`
/// included): what is neither a function (a word followed by `(`), nor a
/// keyword, nor a label list (`by (le, job)`), nor inside `{…}` or `[…]`.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let mut out: Vec<Selector> = Vec::new();
    let mut i = 0;
    let word = |i: usize| {
        let mut j = i;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b':') {
            j += 1;
        }
        j
    };
    let skip_space = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
        } else if c == b'{' {
            // Matchers of a selector without a name (`{__name__=~"…"}`):
            // nothing of ours; skip them.
            while i < b.len() && b[i] != b'}' {
                i += 1;
            }
        } else if c == b'$' {
            i = word(i + 1);
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // A number or a duration (`5m`, `1e6`, `0.99`).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let end = word(i);
            let ident = &expr[i..end];
            let next = skip_space(end);
            i = end;
            // An aggregation with its label list first: `sum by (le) (…)`.
            let next_word = &expr[next..word(next)];
            if matches!(next_word, "by" | "without") && !KEYWORDS.contains(&ident) {
                continue;
            }
            if b.get(next) == Some(&b'(') {
                if matches!(
                    ident,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    // A label list.
                    while i < b.len() && b[i] != b')' {
                        i += 1;
                    }
                }
                continue;
            }
            if KEYWORDS.contains(&ident) {
                continue;
            }
            let mut selector = Selector {
                name: ident.to_owned(),
                equal: Vec::new(),
            };
            if b.get(next) == Some(&b'{') {
                let close = expr[next..].find('}').map_or(b.len(), |k| next + k);
                for matcher in expr[next + 1..close].split(',') {
                    let matcher = matcher.trim();
                    if let Some((label, value)) = matcher.split_once('=')
                        && !label.ends_with('!')
                        && !value.starts_with('~')
                    {
                        let value = value.trim().trim_matches(['"', '\'', '`']);
                        selector
                            .equal
                            .push((label.trim().to_owned(), value.to_owned()));
                    }
                }
                i = close + 1;
            }
            out.push(selector);
        } else {
            i += 1;
        }
    }
    out
}

/// Metrics the dashboard and the alerts read that neither binary exports,
/// and who does.
const OTHER_EXPORTERS: &[(&str, &str)] = &[
    ("up", "Prometheus itself (scrape health)"),
    (
        "pg_realtime_slot_retained_wal_bytes",
        "postgres_exporter (deploy/postgres/postgres_exporter-queries.yaml)",
    ),
    (
        "pg_realtime_slot_active",
        "postgres_exporter (deploy/postgres/postgres_exporter-queries.yaml)",
    ),
    (
        "pg_realtime_slot_lost",
        "postgres_exporter (deploy/postgres/postgres_exporter-queries.yaml)",
    ),
];

/// Labels Prometheus adds at scrape time: a selector's matcher on them is
/// no demand on the exporter.
const TARGET_LABELS: &[&str] = &["job", "instance", "namespace", "pod", "service"];

/// Every selector of the dashboard and the rules.
fn all_selectors(dashboard: &str, rules: &[&str]) -> BTreeSet<Selector> {
    let dashboard: Value = serde_json::from_str(dashboard).expect("dashboard.json is JSON");
    dashboard_expressions(&dashboard)
        .into_iter()
        .chain(rules.iter().flat_map(|r| rule_expressions(r)))
        .flat_map(|e| selectors(&e))
        .collect()
}

/// Whether an exposition holds a sample line of `family` (histograms by
/// their `_bucket`/`_sum`/`_count` lines) whose labels include every
/// `label="value"` of `equal`.
fn has_series(exposition: &str, family_name: &str, equal: &[(String, String)]) -> bool {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|n| family(n) == family_name)
        })
        .any(|l| {
            equal
                .iter()
                .all(|(label, value)| l.contains(&format!("{label}=\"{value}\"")))
        })
}

/// What the dashboard and the rules read that the scrapes do not show:
/// each `realtime_ingestor_…`/`realtime_gateway_…` family from its own
/// process, with a series for every label value a selector names; names of
/// other exporters are passed over when listed in [`OTHER_EXPORTERS`], and
/// any other name is reported.
fn unserved(selectors: &BTreeSet<Selector>, ingestor: &str, gateway: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in selectors {
        let name = family(&s.name);
        let exposition = if name.starts_with("realtime_ingestor_") {
            ingestor
        } else if name.starts_with("realtime_gateway_") {
            gateway
        } else {
            if !OTHER_EXPORTERS.iter().any(|(n, _)| *n == s.name) {
                out.push(format!(
                    "{} (neither binary's, nor listed in OTHER_EXPORTERS)",
                    s.name
                ));
            }
            continue;
        };
        let equal: Vec<(String, String)> = s
            .equal
            .iter()
            .filter(|(label, _)| !TARGET_LABELS.contains(&label.as_str()))
            .cloned()
            .collect();
        if !has_series(exposition, name, &equal) {
            out.push(format!("{}{equal:?}", s.name));
        }
    }
    out
}

#[test]
fn selectors_are_names_with_their_equality_matchers() {
    let got = selectors(
        "sum by (le, job) (rate(realtime_gateway_commit_to_send_seconds_bucket{job=\"g\"}[$__rate_interval])) \
         / on() group_left sum(rate(realtime_gateway_rejected_total{job=\"g\", reason!=\"x\", a=~\"y\", reason=\"unavailable\"}[5m] offset 1h)) > bool 0.5 \
         and on(instance) absent(up{job=\"realtime-gateway\"} == 1) or vector(0) * 1e6 + pg_realtime_slot_lost",
    );
    let sel = |name: &str, equal: &[(&str, &str)]| Selector {
        name: name.to_owned(),
        equal: equal
            .iter()
            .map(|(l, v)| ((*l).to_owned(), (*v).to_owned()))
            .collect(),
    };
    assert_eq!(
        got,
        vec![
            sel(
                "realtime_gateway_commit_to_send_seconds_bucket",
                &[("job", "g")]
            ),
            sel(
                "realtime_gateway_rejected_total",
                &[("job", "g"), ("reason", "unavailable")]
            ),
            sel("up", &[("job", "realtime-gateway")]),
            sel("pg_realtime_slot_lost", &[]),
        ]
    );
    let all: BTreeSet<Selector> = got.into_iter().collect();
    let gateway = "realtime_gateway_commit_to_send_seconds_bucket{le=\"0.1\"} 0\n\
                   realtime_gateway_rejected_total{reason=\"user_limit\"} 0\n";
    assert_eq!(
        unserved(&all, "", gateway),
        vec!["realtime_gateway_rejected_total[(\"reason\", \"unavailable\")]".to_owned()],
        "a label value no series has is reported; job is Prometheus's"
    );
    let unknown: BTreeSet<Selector> = [sel("node_load1", &[])].into_iter().collect();
    assert_eq!(
        unserved(&unknown, "", "").len(),
        1,
        "an unlisted exporter's metric"
    );
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

/// Start-up, before any event: every series the dashboard and the alerts
/// read is already exported (counters at 0, labelled counters with each
/// label value a query names, histograms empty), so panels and `rate()`
/// show zeros instead of "no data", and `absent()`-style alerts and ratios
/// have their operands. Both real binaries, each with its own registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported_from_start_up() {
    let selectors = all_selectors(DASHBOARD, &[ALERTS, PROMETHEUS_RULE]);
    let ctx = TestContext::new().await;
    let ingestor = ChildProcess::spawn(&binary_path("realtime-ingestor"), &ctx.ingestor_env());
    let ingestor_admin = ingestor.admin_addr(WAIT).await;
    wait_ready("the ingestor is ready", ingestor_admin).await;
    let port = free_port();
    let gateway = ChildProcess::spawn(
        &binary_path("realtime-gateway"),
        &ctx.gateway_env(([127, 0, 0, 1], port).into(), JWT_SECRET),
    );
    let gateway_admin = gateway.admin_addr(WAIT).await;
    wait_ready("the gateway is ready", gateway_admin).await;

    // The first scrapes once ready: nothing has happened yet.
    let ingestor_text = scrape(ingestor_admin).await;
    let gateway_text = scrape(gateway_admin).await;
    let published: f64 = ingestor_text
        .lines()
        .filter(|l| l.starts_with("realtime_ingestor_events_published_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(published, 0.0, "no event before the check");
    let absent = unserved(&selectors, &ingestor_text, &gateway_text);
    assert!(
        absent.is_empty(),
        "at start-up, dashboard.json / alerts.yaml read series that are not exported yet:\n  {}\n\
         ingestor:\n{ingestor_text}\ngateway:\n{gateway_text}",
        absent.join("\n  ")
    );
    let ours = selectors
        .iter()
        .filter(|s| s.name.starts_with("realtime_"))
        .count();
    assert!(
        ours >= 10,
        "the files read at least ten realtime series: {selectors:?}"
    );
    eprintln!(
        "{ours} selectors of realtime series checked; other exporters' names passed over: {:?}",
        OTHER_EXPORTERS.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    drop(gateway);
    drop(ingestor);
}
