//! OpenTelemetry traces across the real binaries (ARCHITECTURE.md §5): the ingestor
//! and a gateway export OTLP/HTTP to a receiver in this test; one inserted
//! row makes one trace: the ingestor's transaction span (whose context is
//! the `traceparent` stored with the event in Redis), its publish child, and
//! the gateway's fan-out span continuing it.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::gateway::{JWT_SECRET, token};
use crate::support::http_get;
use crate::support::sse::SseClient;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use realtime_tests::{ChildProcess, TestContext, binary_path, free_port, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// One exported span, flattened with its service name.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<KeyValue>,
}

impl ReceivedSpan {
    fn attr(&self, key: &str) -> Option<any_value::Value> {
        self.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|AnyValue { value }| value)
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            any_value::Value::IntValue(v) => Some(v),
            _ => None,
        }
    }

    fn string(&self, key: &str) -> Option<String> {
        match self.attr(key)? {
            any_value::Value::StringValue(v) => Some(v),
            _ => None,
        }
    }
}

/// Everything the receiver got, plus how many requests it failed to decode.
#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    undecodable: usize,
}

type Shared = Arc<Mutex<Received>>;

/// An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf) on a free
/// loopback port; it runs until the test's runtime ends.
async fn otlp_receiver() -> (SocketAddr, Shared) {
    let received = Shared::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(export))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, received)
}

async fn export(State(received): State<Shared>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        received.lock().unwrap().undecodable += 1;
        return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes,
                });
            }
        }
    }
    received.lock().unwrap().spans.extend(spans);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// OTel settings for a child: export to `receiver` quickly.
fn otel_env(receiver: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_BSP_EXPORT_TIMEOUT", "5000".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000".to_owned()),
    ]
}

fn ingestor_env(ctx: &TestContext, receiver: SocketAddr) -> Vec<(&'static str, String)> {
    let mut env = ctx.ingestor_env();
    env.push(("REALTIME_STATUS_INTERVAL", "200ms".to_owned()));
    env.extend(otel_env(receiver));
    env
}

fn gateway_env(
    ctx: &TestContext,
    listen_port: u16,
    receiver: SocketAddr,
) -> Vec<(&'static str, String)> {
    let listen = SocketAddr::from(([127, 0, 0, 1], listen_port));
    let mut env = ctx.gateway_env(listen, JWT_SECRET);
    env.push(("REALTIME_IO_TIMEOUT", "3s".to_owned()));
    env.extend(otel_env(receiver));
    env
}

async fn wait_ready(child: &ChildProcess, what: &str) {
    let admin = child.admin_addr(WAIT).await;
    wait_until(what, WAIT, || async move {
        http_get(&format!("http://{admin}/readyz"))
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
}

/// XRANGE's reply: entries of (stream id, [(field, value)]).
type StreamEntries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// The raw envelope stored in `org`'s history under `id`.
async fn history_envelope(ctx: &TestContext, org: &str, id: &str) -> serde_json::Value {
    let mut redis = ctx.redis().await;
    let key = format!("{}:{{org:{org}}}:history", ctx.key_prefix());
    let entries: StreamEntries = redis::cmd("XRANGE")
        .arg(&key)
        .arg(id)
        .arg(id)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (_, fields) = entries
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{key} holds {id}"));
    let (_, bytes) = fields.into_iter().find(|(f, _)| f == "e").unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_ingest_publish_and_fanout() {
    let (receiver, received) = otlp_receiver().await;
    let ctx = TestContext::new().await;
    ctx.batch(
        "INSERT INTO organizations (id, name) VALUES ('orgA', 'Acme');
         INSERT INTO users (id) VALUES ('ua');
         INSERT INTO organization_members (id, \"userId\", \"organizationId\") VALUES ('m1', 'ua', 'orgA');",
    )
    .await;

    let mut ingestor = ChildProcess::spawn(
        &binary_path("realtime-ingestor"),
        &ingestor_env(&ctx, receiver),
    );
    wait_ready(&ingestor, "the ingestor streams").await;
    let port = free_port();
    let mut gateway = ChildProcess::spawn(
        &binary_path("realtime-gateway"),
        &gateway_env(&ctx, port, receiver),
    );
    wait_ready(&gateway, "the gateway is ready").await;

    let url = format!("http://127.0.0.1:{port}/api/realtime/stream?organizationId=orgA");
    let mut stream = SseClient::connect(&url, Some(&token("ua", 600)), &[]).await;
    assert_eq!(stream.status, 200, "{}", stream.body_text);
    let hello = stream.next(WAIT).await.unwrap().unwrap();
    assert_eq!(hello.json()["type"], "connection");

    ctx.execute(
        "INSERT INTO properties (id, \"organizationId\", \"createdBy\", price) VALUES ('p1', 'orgA', 'ua', 1)",
        &[],
    )
    .await;
    let event = stream.next(WAIT).await.unwrap().unwrap();
    let event_id = event.id.clone().expect("the event has an id");
    assert_eq!(event.json()["type"], "property.update");
    assert!(
        event.json().get("traceparent").is_none(),
        "clients get the event, not the envelope's trace context"
    );

    // The envelope in Redis carries the ingestor's trace context.
    let envelope = history_envelope(&ctx, "orgA", &event_id).await;
    let traceparent = envelope["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the envelope has a traceparent: {envelope}"))
        .to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{traceparent}");
    let (trace_id, ingest_span_id) = (parts[1].to_owned(), parts[2].to_owned());

    // All three spans of that trace reach the receiver.
    let (ingest, publish, fanout) = wait_until(
        "the ingest, publish and fan-out spans of the event's trace are exported",
        WAIT,
        || {
            let received = received.clone();
            let (trace_id, ingest_span_id) = (trace_id.clone(), ingest_span_id.clone());
            async move {
                let received = received.lock().unwrap();
                let in_trace = |name: &str| {
                    received
                        .spans
                        .iter()
                        .find(|s| s.trace_id == trace_id && s.name == name)
                        .cloned()
                };
                let ingest = in_trace("realtime.ingest")?;
                let publish = in_trace("realtime.publish")?;
                let fanout = in_trace("realtime.fanout")?;
                (ingest.span_id == ingest_span_id).then_some((ingest, publish, fanout))
            }
        },
    )
    .await;
    assert_eq!(received.lock().unwrap().undecodable, 0);

    // The ingestor's transaction span: the context in the traceparent.
    assert_eq!(ingest.service, "realtime-ingestor");
    assert_eq!(ingest.span_id, ingest_span_id);
    assert_eq!(ingest.int("realtime.events"), Some(1));
    let (lsn, _index) = event_id.split_once('-').unwrap();
    assert_eq!(
        ingest.int("realtime.commit_lsn.u64").map(|v| v.to_string()),
        Some(lsn.to_owned()),
        "the span names the commit LSN of the event ids"
    );
    assert!(ingest.int("realtime.xid").is_some());
    // No row values in span attributes.
    for span in [&ingest, &publish, &fanout] {
        for kv in &span.attributes {
            let text = format!("{:?}", kv.value);
            assert!(
                !text.contains("p1") || kv.key == "realtime.event.id",
                "{kv:?}"
            );
        }
    }

    // Its Redis publish, a child span.
    assert_eq!(publish.service, "realtime-ingestor");
    assert_eq!(publish.parent_span_id, ingest_span_id);
    assert_eq!(publish.int("realtime.events"), Some(1));

    // The gateway's fan-out continues the trace from the event's context.
    assert_eq!(fanout.service, "realtime-gateway");
    assert_eq!(fanout.trace_id, trace_id);
    assert_eq!(
        fanout.parent_span_id, ingest_span_id,
        "the fan-out span's parent is the span in the event's traceparent"
    );
    assert_eq!(
        fanout.string("realtime.event.type").as_deref(),
        Some("property.update")
    );
    assert_eq!(fanout.string("realtime.event.id"), Some(event_id.clone()));
    assert_eq!(
        fanout.int("realtime.connections"),
        Some(1),
        "queued for the one local stream"
    );

    // Both stop cleanly with the exporter shut down.
    drop(stream);
    ingestor.terminate();
    gateway.terminate();
    for child in [&mut ingestor, &mut gateway] {
        let status = child.wait_exit(WAIT).await;
        let output = child.output_text();
        assert!(status.success(), "exits cleanly:\n{output}");
        assert!(!output.contains("panicked"), "{output}");
    }
}

#[tokio::test]
async fn an_unsupported_otlp_protocol_is_one_clear_line() {
    let ctx = TestContext::new().await;
    for binary in ["realtime-ingestor", "realtime-gateway"] {
        let mut env = gateway_env(&ctx, free_port(), "127.0.0.1:9".parse().unwrap());
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()));
        let mut child = ChildProcess::spawn(&binary_path(binary), &env);
        let status = child.wait_exit(WAIT).await;
        let output = child.output_text();
        assert!(!status.success(), "{binary} exits non-zero:\n{output}");
        let last = output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            last.starts_with("error: OTEL_EXPORTER_OTLP_PROTOCOL") && last.contains("grpc"),
            "{binary}: {last}"
        );
    }
}
