//! OpenTelemetry spans of the gateway (ARCHITECTURE.md §5): the trace an event
//! started in the ingestor continues here.
//!
//! Per event and replica, when the envelope carries a `traceparent` and
//! tracing is on, one `realtime.fanout` span whose parent is the ingestor's
//! transaction span (the remote context). It covers parsing the envelope,
//! encoding the SSE frame once and queueing it for every local stream of the
//! organization, and records how many streams it was queued to
//! (`realtime.connections`). There is deliberately no span per connection:
//! at tens of thousands of deliveries per second that would cost more than
//! the delivery itself; each stream's channel filter and user target then
//! decide what it writes, as counted by `realtime_gateway_events_delivered_total`.
//!
//! When tracing is off, [`Fanout::start`] returns `None` after one check and
//! the envelope is not looked at twice.

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer};
use realtime_shared::envelope::RawEnvelope;
use realtime_shared::event::EventType;
use realtime_shared::telemetry::{self, Span};

/// The fan-out span of one event on this replica.
pub(crate) struct Fanout {
    span: Span,
}

impl Fanout {
    /// Starts the span of an envelope received from Redis, as a child of the
    /// context in its `traceparent`; `None` when tracing is off, the
    /// envelope carries no (valid) `traceparent`, or the sampler drops it.
    pub(crate) fn start(envelope: &[u8]) -> Option<Fanout> {
        let tracer = telemetry::tracer()?;
        let head = RawEnvelope::parse(envelope).ok()?;
        let parent = telemetry::remote_context(head.traceparent.as_deref()?)?;
        let span = tracer
            .span_builder("realtime.fanout")
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "redis"),
                KeyValue::new("messaging.operation.type", "process"),
            ])
            .start_with_context(tracer, &parent);
        Some(Fanout { span })
    }

    /// Ends the span once the frame is queued for `connections` local
    /// streams (`broadcast`: the event was for every organization).
    pub(crate) fn finish(
        mut self,
        event_type: EventType,
        event_id: &impl std::fmt::Display,
        broadcast: bool,
        connections: usize,
    ) {
        self.span.set_attributes([
            KeyValue::new("realtime.event.type", event_type.as_str()),
            KeyValue::new("realtime.event.id", event_id.to_string()),
            KeyValue::new(
                "realtime.scope",
                if broadcast {
                    "broadcast"
                } else {
                    "organization"
                },
            ),
            KeyValue::new("realtime.connections", connections as i64),
        ]);
        self.span.end();
    }

    /// Ends the span of an envelope that could not be parsed.
    pub(crate) fn fail(mut self, error: &str) {
        self.span.set_status(Status::error(error.to_owned()));
        self.span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_envelopes_trace_context_not_the_payloads() {
        let env = br#"{"event":{"id":"5-1","type":"member.leave","payload":{"traceparent":"x"}},"userId":"u9","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
        let head = RawEnvelope::parse(env).unwrap();
        assert_eq!(
            head.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let head = RawEnvelope::parse(br#"{"event":{}}"#).unwrap();
        assert_eq!(head.traceparent, None);
    }

    #[test]
    fn nothing_is_traced_without_a_tracer() {
        let env = br#"{"event":{},"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
        assert!(Fanout::start(env).is_none());
    }
}
