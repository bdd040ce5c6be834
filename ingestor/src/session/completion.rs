//! Completing a transaction's events at its commit: the actor
//! (`realtime.set_actor`) into their actor fields, child rows addressed to
//! their parents' organizations, then into the batch with their ids.

use super::*;

impl<'a> super::Session<'a> {
    /// Keeps a routed event of the current transaction until
    /// [`Session::complete`].
    pub(super) fn defer(&mut self, routed: Routed, index: u64) {
        match &mut self.txn {
            Some(txn) => txn.pending.push((routed, index)),
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
        let pending = std::mem::take(&mut txn.pending);
        let actor = txn.actor.clone();
        self.parents
            .fetch(pending.iter().filter_map(|(r, _)| r.parent.as_ref()))
            .await?;
        for (mut routed, index) in pending {
            if let Some(parent) = &routed.parent {
                match self.parents.org(parent) {
                    ParentOrg::Org(org) => routed.address(org),
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
        let envelope = Envelope {
            event,
            user_id: draft.user_id,
            traceparent,
        };
        self.batch.push(Outgoing {
            id,
            scope,
            bytes: envelope.to_bytes(),
        });
        self.sent.push(Sent {
            event_type,
            commit_ms,
        });
    }
}
