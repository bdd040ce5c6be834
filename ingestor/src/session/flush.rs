//! Publishing the batch and acknowledging: a commit's end LSN is
//! acknowledged only after Redis accepted every event up to it.
//!
//! At most one batch is in flight ([`InFlight`]): while Redis runs it, the
//! session decodes and routes the next one (on one node; a cluster batch is
//! answered before [`Publisher::send`] returns). The next batch is sent only
//! after the one in flight was answered, so batches reach Redis, and are
//! acknowledged, in order, and a failed batch is never followed by a later
//! one.

use super::*;
use crate::publish::Pending as Answer;

/// A batch sent to Redis and not answered yet, with what its answer
/// settles.
pub(super) struct InFlight {
    pub(super) answer: Answer,
    sent: Vec<Sent>,
    /// The newest commit whose events are all in this batch or an earlier
    /// one: acknowledged once Redis accepted this batch.
    ack: Option<u64>,
    /// Traces of committed transactions whose events are all in this batch
    /// or an earlier one, ended with it.
    traces: Vec<(TxnTrace, u64)>,
    /// This batch's `realtime.publish` spans (none when tracing is off).
    spans: Vec<telemetry::Span>,
}

impl<'a> super::Session<'a> {
    /// Sends the batch and waits for Redis's answer, then acknowledges the
    /// newest commit whose events are all accepted.
    pub(super) async fn flush(&mut self) -> Result<(), SessionError> {
        self.send().await?;
        self.settle().await
    }

    /// Sends the batch to Redis without waiting for the answer, once the
    /// batch before it was answered (see the module docs). With an empty
    /// batch, a commit waiting for acknowledgement joins the batch in flight
    /// (its events are all in it or earlier), or is acknowledged now when
    /// nothing is in flight.
    pub(super) async fn send(&mut self) -> Result<(), SessionError> {
        if self.batch.is_empty() {
            match &mut self.in_flight {
                Some(in_flight) => {
                    if let Some(lsn) = self.ack_after_flush.take() {
                        in_flight.ack = Some(lsn);
                    }
                    in_flight.traces.append(&mut self.committed_traces);
                }
                None => {
                    let ack = self.ack_after_flush.take();
                    self.acknowledge_flushed(ack).await?;
                }
            }
            return Ok(());
        }
        self.settle().await?;
        let spans = self.publish_spans();
        if !spans.is_empty() {
            self.batch_sent();
        }
        let answer = self.publisher.send(&self.batch).await;
        self.batch.clear();
        let sent = std::mem::replace(&mut self.sent, Vec::with_capacity(self.limits.max_batch));
        let mut in_flight = InFlight {
            answer,
            sent,
            ack: self.ack_after_flush.take(),
            traces: std::mem::take(&mut self.committed_traces),
            spans,
        };
        match in_flight.answer.start() {
            Some(result) => self.answered(in_flight, result).await,
            None => {
                self.in_flight = Some(in_flight);
                // Let the connection's writer send it now (one thread runs
                // the session and the connections' tasks).
                tokio::task::yield_now().await;
                Ok(())
            }
        }
    }

    /// Waits for the batch in flight, if any, and settles it.
    pub(super) async fn settle(&mut self) -> Result<(), SessionError> {
        if let Some(mut in_flight) = self.in_flight.take() {
            let result = in_flight.answer.answered().await;
            self.answered(in_flight, result).await?;
        }
        Ok(())
    }

    /// Settles a batch with Redis's answer: metrics, spans, then the
    /// acknowledgement of the newest commit it completes.
    pub(super) async fn answered(
        &mut self,
        in_flight: InFlight,
        result: Result<Vec<bool>, PublishError>,
    ) -> Result<(), SessionError> {
        let InFlight {
            sent,
            ack,
            traces,
            spans,
            ..
        } = in_flight;
        if !spans.is_empty() {
            end_publish_spans(spans, &result);
        }
        let accepted = match result {
            Ok(accepted) => accepted,
            Err(e) => {
                let error = e.to_string();
                // Postgres sends these transactions again after the
                // reconnect; their new spans will be the complete ones.
                for (trace, _) in traces {
                    trace.fail(&error);
                }
                if let Some(trace) = self.txn.as_mut().and_then(|txn| txn.trace.take()) {
                    trace.fail(&error);
                }
                return Err(e.into());
            }
        };
        record_published(&accepted, &sent);
        for (trace, changes) in traces {
            trace.finish(changes);
        }
        self.acknowledge_flushed(ack).await
    }

    /// Acknowledges `ack`, the newest commit whose events Redis accepted;
    /// with nothing batched or in flight, the traces of committed
    /// transactions are complete.
    async fn acknowledge_flushed(&mut self, ack: Option<u64>) -> Result<(), SessionError> {
        if let Some(lsn) = ack {
            self.acknowledge(lsn);
            self.record(lsn).await?;
        }
        if self.in_flight.is_none() && self.batch.is_empty() {
            for (trace, changes) in self.committed_traces.drain(..) {
                trace.finish(changes);
            }
        }
        Ok(())
    }

    /// The traces whose events are in the batch being sent have nothing
    /// batched any more.
    fn batch_sent(&mut self) {
        let open = self.txn.as_mut().and_then(|txn| txn.trace.as_mut());
        for trace in self
            .committed_traces
            .iter_mut()
            .map(|(trace, _)| trace)
            .chain(open)
        {
            trace.flushed();
        }
    }

    /// The `realtime.publish` spans of the batch about to be sent: one per
    /// traced transaction with events in it (none, without allocating, when
    /// tracing is off).
    pub(super) fn publish_spans(&self) -> Vec<telemetry::Span> {
        let open = self.txn.as_ref().and_then(|txn| txn.trace.as_ref());
        self.committed_traces
            .iter()
            .map(|(trace, _)| trace)
            .chain(open)
            .filter_map(|trace| trace.publish_span(self.batch.len()))
            .collect()
    }

    /// Acknowledges a position past which nothing of ours is pending, when
    /// nothing is in flight: no open transaction, nothing batched, no commit
    /// waiting for a flush.
    pub(super) fn ack_if_idle(&mut self, lsn: u64) {
        if self.txn.is_none()
            && self.batch.is_empty()
            && self.in_flight.is_none()
            && self.ack_after_flush.is_none()
        {
            self.acknowledge(lsn);
        }
    }

    /// `<lsn + id_offset>-<index>`.
    pub(super) fn event_id(&self, lsn: u64, index: u64) -> EventId {
        EventId::new(lsn.saturating_add(self.slot.id_offset), index)
    }

    /// Writes an acknowledged commit position into the slot record (at most
    /// once per [`RECORD_INTERVAL`]), so a lost slot's log line can say up to
    /// where we streamed.
    pub(super) async fn record(&mut self, lsn: u64) -> Result<(), SessionError> {
        if self
            .recorded_at
            .is_some_and(|at| at.elapsed() < RECORD_INTERVAL)
        {
            return Ok(());
        }
        self.publisher
            .query::<()>(
                "writing the slot record",
                redis::cmd("HSET").arg(&self.slot.key).arg("lsn").arg(lsn),
            )
            .await?;
        self.recorded_at = Some(Instant::now());
        Ok(())
    }

    pub(super) fn acknowledge(&self, lsn: u64) {
        self.client.update_applied_lsn(Lsn::from_u64(lsn));
        metrics::gauge!(m::ACKNOWLEDGED_LSN).set(lsn as f64);
    }
}

/// Ends a batch's publish spans with its outcome.
fn end_publish_spans(spans: Vec<telemetry::Span>, result: &Result<Vec<bool>, PublishError>) {
    match result {
        Ok(accepted) => {
            let duplicates = accepted.iter().filter(|new| !**new).count();
            trace::end_publish(spans, duplicates, None);
        }
        Err(e) => trace::end_publish(spans, 0, Some(&e.to_string())),
    }
}

/// The metrics of one accepted batch: events published per type, the
/// commit-to-publish latency of each, duplicates. Each metric handle is
/// looked up once per batch, not per event (a lookup hashes the name and
/// labels: it showed in the drain's profile).
fn record_published(accepted: &[bool], sent: &[Sent]) {
    let now = now_millis();
    let mut published = [0u64; EventType::ALL.len()];
    let mut duplicates = 0u64;
    let latency = metrics::histogram!(m::COMMIT_TO_PUBLISH);
    for (new, sent) in accepted.iter().zip(sent) {
        if *new {
            if let Some(slot) = EventType::ALL.iter().position(|t| *t == sent.event_type) {
                published[slot] += 1;
            }
            latency.record((now - sent.commit_ms).max(0) as f64 / 1000.0);
        } else {
            duplicates += 1;
        }
    }
    for (event_type, n) in EventType::ALL.iter().zip(published) {
        if n > 0 {
            metrics::counter!(m::EVENTS_PUBLISHED, "type" => event_type.as_str()).increment(n);
        }
    }
    if duplicates > 0 {
        metrics::counter!(m::DUPLICATES_SKIPPED).increment(duplicates);
    }
}
