//! Completing a transaction's events at its commit: the actor
//! (`realtime.set_actor`) into their actor fields, child rows addressed to
//! their parents' organizations, bulk changes left out (see [`super::bulk`]),
//! then into the batch with their ids, each within the event size limit
//! (see [`crate::event_size`]).

use super::*;

impl<'a> super::Session<'a> {
    /// Keeps a routed event of the current transaction until
    /// [`Session::complete`]. `len` is the length of the replication message
    /// it came from: an event of a message longer than a quarter of the
    /// size limit is measured now, and truncated if it is over the limit or
    /// holds an oversize value, so that no held event weighs more than
    /// about the limit. Application messages (`source: api`) are not
    /// subject to the limit (see [`Session::push_with`]).
    pub(super) fn defer(
        &mut self,
        mut routed: Routed,
        index: u64,
        bulk_table: Option<usize>,
        len: usize,
    ) {
        let max = self.limits.max_event_bytes;
        if len > max / 4 && routed.draft.source == Source::Postgres {
            fit_payload(&mut routed.draft.payload, max, index);
        }
        match &mut self.txn {
            Some(txn) => {
                txn.pending_bytes += len.min(max);
                txn.pending.push(Pending {
                    routed,
                    index,
                    bulk_table,
                });
            }
            None => {
                tracing::warn!("skipping a change outside a transaction");
                metrics::counter!(m::SKIPPED, "reason" => "no_transaction").increment(1);
            }
        }
    }

    /// `realtime.set_actor(user)`: names the acting user of the current
    /// transaction. Outside a transaction (a non-transactional message) or
    /// not a short UTF-8 id, it is ignored with a log line.
    pub(super) fn set_actor(&mut self, transactional: bool, content: &[u8]) {
        let actor = std::str::from_utf8(content)
            .ok()
            .filter(|a| !a.is_empty() && a.len() <= MAX_ACTOR_BYTES);
        match (&mut self.txn, transactional, actor) {
            (Some(txn), true, Some(actor)) => txn.actor = Some(actor.to_owned()),
            _ => {
                tracing::warn!(
                    transactional,
                    bytes = content.len(),
                    "ignoring a {ACTOR_PREFIX} message: it names the actor of its transaction, so it must be transactional and hold a user id of 1 to {MAX_ACTOR_BYTES} UTF-8 bytes"
                );
                metrics::counter!(m::SKIPPED, "reason" => "actor").increment(1);
            }
        }
    }

    /// Completes the current transaction's pending events in order: the
    /// actor goes into their actor fields, children are addressed to their
    /// parents' organizations (looked up when not known from the stream),
    /// and the events join the batch. A child whose parent is gone is
    /// skipped (see [`crate::parents`]).
    pub(super) async fn complete(&mut self) -> Result<(), SessionError> {
        let Some(txn) = &mut self.txn else {
            return Ok(());
        };
        if txn.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut txn.pending);
        txn.pending_bytes = 0;
        let actor = txn.actor.clone();
        self.parents
            .fetch(pending.iter().filter_map(|p| p.routed.parent.as_ref()))
            .await?;
        // Children first get their organizations, so that they count
        // towards their organization's bulk like any other event.
        for p in &mut pending {
            if let Some(parent) = &p.routed.parent
                && let ParentOrg::Org(org) = self.parents.org(parent)
            {
                p.routed.address(org);
            }
        }
        if let Some(txn) = self.txn.as_mut()
            && self.limits.bulk_threshold > 0
        {
            for p in &pending {
                if let (Some(table), Some(org)) =
                    (p.bulk_table, p.routed.draft.organization_id.as_deref())
                {
                    txn.bulk.count(org, table, self.limits.bulk_threshold);
                }
            }
        }
        let mut coalesced = 0u64;
        for Pending {
            mut routed,
            index,
            bulk_table,
        } in pending
        {
            if let (Some(table), Some(org), Some(txn)) = (
                bulk_table,
                routed.draft.organization_id.as_deref(),
                self.txn.as_ref(),
            ) && txn.bulk.is_bulk(org, table, self.limits.bulk_threshold)
            {
                // Its index stays a hole; the bulk data.sync stands for it.
                coalesced += 1;
                continue;
            }
            if let Some(parent) = &routed.parent {
                match self.parents.org(parent) {
                    ParentOrg::Org(_) => {}
                    ParentOrg::Gone => {
                        let table = self
                            .router
                            .routes()
                            .tables()
                            .get(parent.table)
                            .map(|t| format!("{}.{}", t.schema(), t.table()))
                            .unwrap_or_default();
                        tracing::info!(
                            parent = %table,
                            event_type = %routed.draft.event_type,
                            "skipping a child row's event: its parent row was deleted in the same transaction or no longer exists"
                        );
                        metrics::counter!(m::SKIPPED, "reason" => "parent").increment(1);
                        continue;
                    }
                }
            }
            if let Some(actor) = &actor {
                routed.set_actor(actor);
            }
            self.push(routed.draft, index);
        }
        if coalesced > 0 {
            metrics::counter!(m::EVENTS_COALESCED).increment(coalesced);
        }
        Ok(())
    }

    pub(super) fn push(&mut self, draft: Draft, index: u64) {
        let Some(txn) = &mut self.txn else {
            tracing::warn!("skipping a change outside a transaction");
            metrics::counter!(m::SKIPPED, "reason" => "no_transaction").increment(1);
            return;
        };
        let id = EventId::new(txn.final_lsn.saturating_add(self.slot.id_offset), index);
        let commit_ms = txn.commit_ms;
        let traceparent = txn.trace.as_mut().map(TxnTrace::event);
        self.push_with(draft, id, commit_ms, traceparent);
    }

    /// Appends the event to the batch, within the size limit: an envelope
    /// of a row change over `max_event_bytes` is truncated (see
    /// [`crate::event_size`]) and serialized again; one that cannot be
    /// brought under it is skipped, logged and counted. An application
    /// message (`source: api`) has no row values to drop and its content is
    /// the application's: it is published whole (the publish endpoints bound
    /// it with `REALTIME_MAX_PUBLISH_BYTES`), with a warning when it is over
    /// the limit.
    pub(super) fn push_with(
        &mut self,
        draft: Draft,
        id: EventId,
        commit_ms: i64,
        traceparent: Option<String>,
    ) {
        let event = Event {
            id,
            event_type: draft.event_type,
            timestamp: commit_ms,
            source: draft.source,
            version: EventVersion,
            organization_id: draft.organization_id,
            payload: draft.payload,
        };
        let scope = event.scope();
        let event_type = event.event_type;
        let mut envelope = Envelope {
            event,
            user_id: draft.user_id,
            traceparent,
            // Set by the cluster publisher, which knows the order (publish.rs).
            last_broadcast: None,
        };
        let mut bytes = envelope.to_bytes();
        let max = self.limits.max_event_bytes;
        if bytes.len() > max && envelope.event.source == Source::Api {
            tracing::warn!(
                event_id = %id,
                event_type = %event_type,
                bytes = bytes.len(),
                max,
                "publishing an application message larger than REALTIME_MAX_EVENT_BYTES whole"
            );
        } else if bytes.len() > max && event_size::truncate(&mut envelope.event.payload) {
            note_truncated(id.index, bytes.len(), max);
            bytes = envelope.to_bytes();
        }
        if bytes.len() > max && envelope.event.source == Source::Postgres {
            tracing::error!(
                event_id = %id,
                event_type = %event_type,
                bytes = bytes.len(),
                max,
                "skipping an event larger than REALTIME_MAX_EVENT_BYTES even without its row values"
            );
            metrics::counter!(m::SKIPPED, "reason" => "size").increment(1);
            return;
        }
        self.batch.push(Outgoing { id, scope, bytes });
        self.sent.push(Sent {
            event_type,
            commit_ms,
        });
    }
}

/// Truncates a held event's payload when it is over `max` bytes or holds
/// an oversize marker (the envelope adds a few hundred bytes more, checked
/// again at [`Session::push_with`]).
fn fit_payload(payload: &mut Value, max: usize, index: u64) {
    let len = event_size::json_len(payload);
    if (len > max || event_size::contains_oversize(payload)) && event_size::truncate(payload) {
        note_truncated(index, len, max);
    }
}

/// The log line and metric of one truncated event.
fn note_truncated(index: u64, bytes: usize, max: usize) {
    tracing::warn!(
        index,
        bytes,
        max,
        "an event is larger than REALTIME_MAX_EVENT_BYTES: publishing it without its row values, with \"truncated\": true (clients refetch the entity)"
    );
    metrics::counter!(m::EVENTS_TRUNCATED).increment(1);
}
