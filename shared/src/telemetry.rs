//! Logs and traces.
//!
//! **Logs**: `tracing` with an env filter (`RUST_LOG`, default `info`), JSON
//! lines when `LOG_FORMAT=json`, human-readable otherwise.
//!
//! **Traces** (ARCHITECTURE.md §5): OpenTelemetry, exported over OTLP/HTTP with
//! protobuf bodies when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. The standard OTel variables
//! apply: `OTEL_SERVICE_NAME` (default: the binary's name, e.g.
//! `realtime-ingestor`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_BSP_SCHEDULE_DELAY` and the other batch-processor settings;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn tracing off.
//! `OTEL_EXPORTER_OTLP_PROTOCOL` must be `http/protobuf` (the default; every
//! collector accepts it, on port 4318): gRPC is not built in, and asking for
//! it stops start-up with one line rather than silently exporting nothing.
//!
//! The W3C trace context travels inside each event (the envelope's
//! `traceparent`, see [`crate::envelope`]): the ingestor writes the context of
//! its transaction span, the gateway continues it for fan-out. Both reach the
//! tracer through [`tracer`], which is `None` when tracing is off: that one
//! check is the whole per-event cost of a process started without an endpoint.
//!
//! Spans are made with the OpenTelemetry API directly (explicit parents,
//! sampling decided at start, independent of `RUST_LOG`); `tracing` spans, if
//! any code opens them, are exported too through the `tracing-opentelemetry`
//! layer installed beside the log layer.
//!
//! Contract kept by every caller: tokens, cookies and row values are never
//! logged nor put into span attributes (ARCHITECTURE.md §5); use table names, event
//! types, ids and LSNs instead.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TracerProvider as _};
use opentelemetry::{Context, Key, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The span type [`tracer`] starts (so callers need no SDK dependency).
pub type Span = opentelemetry_sdk::trace::Span;

/// The tracer of this process, set once by [`init`] when tracing is on.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// How long [`TelemetryGuard`] waits for the last spans to be exported at
/// exit. Bounded so an unreachable collector cannot hold a stopping process
/// past its drain time (the exporter's own timeout is 10 s by default).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why tracing could not start. The message is the one line printed before
/// exiting; it names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "{var}: {value:?} is not supported; use http/protobuf (OTLP over HTTP, usually port 4318)"
    )]
    Protocol { var: &'static str, value: String },
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: cannot set up the OTLP exporter: {0}")]
    Exporter(String),
}

/// Keeps the tracer provider alive; dropping it flushes the spans still
/// queued and shuts the exporter down (bounded by a few seconds). Keep it in
/// `main` until the service has stopped.
#[must_use = "dropping the guard shuts tracing down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            eprintln!("warning: OpenTelemetry: spans may be lost at exit: {e}");
        }
    }
}

/// Installs the global subscriber (logs) and, when an OTLP endpoint is set,
/// the OpenTelemetry tracer provider with a batch exporter, under
/// `default_service_name` unless `OTEL_SERVICE_NAME` (or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`) names the service.
///
/// Call it once, from `main`, before the async runtime exists (the exporter
/// sends from the batch processor's own thread with a blocking HTTP client).
/// A second call keeps the first subscriber and tracer.
pub fn init(
    default_filter: &str,
    default_service_name: &'static str,
) -> Result<TelemetryGuard, TelemetryError> {
    let (provider, service) = if tracing_requested() {
        let (provider, service) = provider(default_service_name)?;
        (Some(provider), service)
    } else {
        (None, String::new())
    };
    let otel_layer = provider.as_ref().map(|provider| {
        let tracer = provider.tracer(default_service_name);
        let _ = TRACER.set(tracer.clone());
        // Only this project's `tracing` spans become OTel spans; libraries'
        // (hyper, h2, reqwest…) would flood the trace, and the exporter's
        // own HTTP requests must never be traced (a feedback loop).
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target("realtime_ingestor", tracing::Level::INFO)
            .with_target("realtime_gateway", tracing::Level::INFO)
            .with_target("realtime_shared", tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(targets)
    });
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let log_layer: Box<dyn Layer<Registry> + Send + Sync> = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(log_layer.with_filter(filter))
        .with(otel_layer)
        .try_init();
    if provider.is_some() {
        tracing::info!(%service, "exporting traces over OTLP/HTTP");
    }
    Ok(TelemetryGuard { provider })
}

/// The tracer, or `None` when tracing is off: callers check this once per
/// transaction or event and skip all span work when it is `None`.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// The W3C `traceparent` of a span context
/// (`00-<trace id>-<span id>-<flags>`), or `None` when the context is invalid
/// or not sampled: an unsampled context is not worth the bytes in every
/// event, and the gateway then starts no span for the event.
pub fn traceparent(span: &SpanContext) -> Option<String> {
    if !span.is_valid() || !span.is_sampled() {
        return None;
    }
    Some(format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags() & TraceFlags::SAMPLED
    ))
}

/// The remote parent context carried by a `traceparent` value, or `None`
/// when it is malformed (W3C rules, as the standard propagator applies them).
pub fn remote_context(traceparent: &str) -> Option<Context> {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    cx.has_active_span().then_some(cx)
}

/// Whether the environment asks for span export.
fn tracing_requested() -> bool {
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true")
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The tracer provider and the service name it reports.
fn provider(
    default_service_name: &'static str,
) -> Result<(SdkTracerProvider, String), TelemetryError> {
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(value) = std::env::var(var) {
            let value = value.trim();
            if !value.is_empty() && value != "http/protobuf" {
                return Err(TelemetryError::Protocol {
                    var,
                    value: value.to_owned(),
                });
            }
            // The signal-specific variable wins over the generic one.
            if !value.is_empty() {
                break;
            }
        }
    }
    // Reads the endpoint (appending /v1/traces to the generic one), headers,
    // timeout and compression from the standard variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    // The default detectors read OTEL_SERVICE_NAME and
    // OTEL_RESOURCE_ATTRIBUTES; without either they answer
    // `unknown_service:<exe>`, which we replace with our default.
    let mut resource = Resource::builder();
    let detected = Resource::builder().build();
    let mut service = detected
        .get(&Key::new("service.name"))
        .map(|name| name.as_str().into_owned())
        .unwrap_or_default();
    if service.is_empty() || service.starts_with("unknown_service") {
        resource = resource.with_service_name(default_service_name);
        service = default_service_name.to_owned();
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            Value::from(env!("CARGO_PKG_VERSION")),
        ))
        .build();
    // The sampler comes from OTEL_TRACES_SAMPLER (default parent-based
    // always-on), the batch settings from OTEL_BSP_*.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    Ok((provider, service))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId, TraceState};

    #[test]
    fn traceparent_round_trips() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let tp = traceparent(&sc).unwrap();
        assert_eq!(
            tp,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let cx = remote_context(&tp).unwrap();
        let remote = cx.span().span_context().clone();
        assert!(remote.is_remote());
        assert_eq!(remote.trace_id(), sc.trace_id());
        assert_eq!(remote.span_id(), sc.span_id());
        assert!(remote.is_sampled());
    }

    #[test]
    fn unsampled_or_invalid_contexts_are_not_propagated() {
        let unsampled = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        assert_eq!(traceparent(&unsampled), None);
        assert_eq!(traceparent(&SpanContext::empty_context()), None);
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(remote_context(bad).is_none(), "{bad:?}");
        }
    }
}
