//! Publishing the batch and acknowledging: a commit's end LSN is
//! acknowledged only after Redis accepted every event up to it.

use super::*;

impl<'a> super::Session<'a> {
    /// Sends the batch to Redis, then acknowledges the newest commit whose
    /// events are all accepted.
    pub(super) async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.batch.is_empty() {
            let spans = self.publish_spans();
            let result = self.publisher.publish(&self.batch).await;
            if !spans.is_empty() {
                self.end_publish_spans(spans, &result);
            }
            let accepted = result?;
            record_published(&accepted, &self.sent);
            self.batch.clear();
            self.sent.clear();
        }
        if let Some(lsn) = self.ack_after_flush.take() {
            self.acknowledge(lsn);
            self.record(lsn).await?;
        }
        for (trace, changes) in self.committed_traces.drain(..) {
            trace.finish(changes);
        }
        Ok(())
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

    pub(super) fn end_publish_spans(
        &mut self,
        spans: Vec<telemetry::Span>,
        result: &Result<Vec<bool>, PublishError>,
    ) {
        let open = self.txn.as_mut().and_then(|txn| txn.trace.as_mut());
        for trace in self
            .committed_traces
            .iter_mut()
            .map(|(trace, _)| trace)
            .chain(open)
        {
            trace.flushed();
        }
        match result {
            Ok(accepted) => {
                let duplicates = accepted.iter().filter(|new| !**new).count();
                trace::end_publish(spans, duplicates, None);
            }
            Err(e) => {
                let error = e.to_string();
                trace::end_publish(spans, 0, Some(&error));
                // Postgres sends these transactions again after the
                // reconnect; their new spans will be the complete ones.
                for (trace, _) in self.committed_traces.drain(..) {
                    trace.fail(&error);
                }
                if let Some(trace) = self.txn.as_mut().and_then(|txn| txn.trace.take()) {
                    trace.fail(&error);
                }
            }
        }
    }

    /// Acknowledges a position past which nothing of ours is pending, when
    /// nothing is in flight: no open transaction, nothing batched, no commit
    /// waiting for a flush.
    pub(super) fn ack_if_idle(&mut self, lsn: u64) {
        if self.txn.is_none() && self.batch.is_empty() && self.ack_after_flush.is_none() {
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
