//! OpenTelemetry spans of the ingestor (ARCHITECTURE.md §5).
//!
//! One `realtime.ingest` span per replicated transaction, from its Begin
//! until Redis accepted its last event, with one `realtime.publish` child per
//! Redis pipeline that carried some of its events. The W3C `traceparent` of
//! the transaction span goes into every event's envelope, so the gateway's
//! fan-out spans join the same trace (ingest → publish → deliver).
//!
//! Everything here is skipped when tracing is off ([`TxnTrace::start`]
//! returns `None` after one check) or when the sampler drops the transaction
//! (its events then carry no `traceparent`). Spans carry xids, LSNs, counts
//! and event types: never row values, and no organization or user ids in span
//! names.

use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use realtime_shared::telemetry::{self, Span};

/// The trace of one transaction while it is being ingested.
pub(crate) struct TxnTrace {
    span: Span,
    context: SpanContext,
    /// The span's context as a `traceparent`, copied into each event.
    traceparent: String,
    /// Events routed so far.
    events: u64,
    /// Of those, how many are in the batch not yet sent to Redis.
    in_batch: u64,
}

impl TxnTrace {
    /// Starts the span of the transaction that Begin announced; `None` when
    /// tracing is off or the sampler does not keep this transaction.
    pub(crate) fn start(xid: u32, commit_lsn: u64) -> Option<TxnTrace> {
        let tracer = telemetry::tracer()?;
        let span = tracer
            .span_builder("realtime.ingest")
            // It creates the messages the gateways consume.
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("realtime.xid", i64::from(xid)),
                KeyValue::new("realtime.commit_lsn", pg_lsn(commit_lsn)),
                // The prefix of the transaction's event ids (`<lsn>-<index>`).
                KeyValue::new("realtime.commit_lsn.u64", commit_lsn as i64),
            ])
            .start(tracer);
        let context = span.span_context().clone();
        let traceparent = telemetry::traceparent(&context)?;
        Some(TxnTrace {
            span,
            context,
            traceparent,
            events: 0,
            in_batch: 0,
        })
    }

    /// Counts one more event of the transaction, batched for Redis, and
    /// returns the `traceparent` for its envelope.
    pub(crate) fn event(&mut self) -> String {
        self.events += 1;
        self.in_batch += 1;
        self.traceparent.clone()
    }

    /// Starts the child span of a Redis pipeline of `batch_len` events that
    /// holds some of this transaction's; `None` when it holds none.
    pub(crate) fn publish_span(&self, batch_len: usize) -> Option<Span> {
        if self.in_batch == 0 {
            return None;
        }
        let tracer = telemetry::tracer()?;
        let parent = Context::new().with_remote_span_context(self.context.clone());
        Some(
            tracer
                .span_builder("realtime.publish")
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("db.system.name", "redis"),
                    KeyValue::new("db.operation.name", "FCALL realtime_publish"),
                    KeyValue::new("db.operation.batch.size", batch_len as i64),
                    KeyValue::new("realtime.events", self.in_batch as i64),
                ])
                .start_with_context(tracer, &parent),
        )
    }

    /// The batch was sent (or failed): this transaction has nothing
    /// batched any more.
    pub(crate) fn flushed(&mut self) {
        self.in_batch = 0;
    }

    /// Ends the span once every event of the transaction is in Redis.
    /// `changes` counts the transaction's changes, routed or not.
    pub(crate) fn finish(mut self, changes: u64) {
        self.span
            .set_attribute(KeyValue::new("realtime.events", self.events as i64));
        self.span
            .set_attribute(KeyValue::new("realtime.changes", changes as i64));
        self.span.end();
    }

    /// Ends the span of a transaction whose events Redis did not take (the
    /// session reconnects and Postgres sends the transaction again).
    pub(crate) fn fail(mut self, error: &str) {
        self.span.set_status(Status::error(error.to_owned()));
        self.span.end();
    }
}

/// Ends the publish spans of one Redis pipeline with its outcome.
pub(crate) fn end_publish(spans: Vec<Span>, duplicates: usize, error: Option<&str>) {
    for mut span in spans {
        match error {
            Some(error) => span.set_status(Status::error(error.to_owned())),
            None => span.set_attribute(KeyValue::new(
                "realtime.batch.duplicates",
                duplicates as i64,
            )),
        }
        span.end();
    }
}

/// An LSN as Postgres writes it (`16/B374D848`).
fn pg_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_form() {
        assert_eq!(pg_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(pg_lsn(0x0153_CD00), "0/153CD00");
    }

    #[test]
    fn nothing_is_traced_without_a_tracer() {
        // Unit tests never install a tracer: the cheap path.
        assert!(TxnTrace::start(1, 2).is_none());
    }
}
