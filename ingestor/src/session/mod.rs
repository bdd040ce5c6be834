//! One replication session: from START_REPLICATION until an error or
//! shutdown. The reconnect loop around it lives in [`crate::Ingestor`].
//!
//! Per replication event:
//! - Begin opens a transaction; its `final_lsn` (the commit LSN) names every
//!   event of the transaction: `<final_lsn>-<index>`, where the index counts
//!   the transaction's changes (and logical messages) in order, routed or not;
//!   a change that yields several events takes one index per event.
//! - Relation/Type messages update the caches (a routed table's Relation also
//!   has its replica identity checked, see [`crate::identity`]); Insert/Update/Delete/Truncate
//!   and logical messages go through the router and become [`Outgoing`]
//!   events, appended to the current batch.
//! - A transaction's events wait for its Commit (at most
//!   [`Limits::hold`] of them, and [`HOLD_BYTES`] of their rows: past that
//!   they are completed early, in order), because three things are only
//!   known then: the acting user (`realtime.set_actor`, a
//!   transactional message under [`ACTOR_PREFIX`], sets `updatedBy` /
//!   `invitedBy` on every event of its transaction) and the organizations of
//!   child rows' parents at the end of the transaction ([`crate::parents`]),
//!   and whether one organization's changes to one table are a bulk change
//!   to be sent as one `data.sync` ([`bulk`]).
//!   Event ids are fixed when a change arrives, so a child skipped at commit
//!   leaves a hole in the indexes, never a shifted id.
//! - The batch is sent to Redis as one pipeline when it is full or when no
//!   further replication event is immediately available.
//! - Acknowledgement (invariant 3): a Commit's end LSN is acknowledged only
//!   after the batch holding its last event was accepted by Redis. When
//!   nothing is in flight, the position of a server keepalive or of our own
//!   heartbeat message is acknowledged too, so busy unpublished tables do
//!   not pin WAL.
//! - Tracing (only when an OTLP endpoint is set, see [`crate::trace`]): a
//!   span per transaction from Begin until Redis accepted its last event,
//!   a child span per Redis pipeline carrying its events, and the span's
//!   `traceparent` in each event's envelope.

mod bulk;
mod completion;
mod flush;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::publish::{Outgoing, PublishError, Publisher};
use futures_util::FutureExt;
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationEvent};
use realtime_shared::envelope::Envelope;
use realtime_shared::event::{Event, EventId, EventType, EventVersion, Source};
use realtime_shared::telemetry;
use tokio_util::sync::CancellationToken;

use crate::change::{Operation, RowChange};
use crate::event_size;
use crate::identity::{self, IdentityWatch};
use crate::metrics as m;
use crate::parents::{ParentOrg, Parents, ParentsError};
use crate::pgoutput::{self, Message, OldTuple, Relation};
use crate::router::{self, Draft, RouteError, Routed, Router, Side};
use crate::slot::{SlotError, SlotRecord};
use crate::trace::{self, TxnTrace};
use crate::value::{self, TypeRegistry};
use serde_json::Value;

/// The prefix of our heartbeat messages (ARCHITECTURE.md §2).
pub(crate) const HEARTBEAT_PREFIX: &str = "realtime-heartbeat";

/// The prefix of `realtime.set_actor(user)`'s transactional message: its
/// content (a user id) names who made the transaction's changes.
pub(crate) const ACTOR_PREFIX: &str = "realtime-actor";

/// The longest actor id accepted; a longer one is ignored (and logged).
const MAX_ACTOR_BYTES: usize = 256;

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("replication stream: {0}")]
    Replication(#[from] PgWireError),
    #[error("replication stream ended")]
    StreamEnded,
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("checking the replication slot: {0}")]
    Slot(#[from] SlotError),
    #[error(transparent)]
    Setup(#[from] crate::setup::SetupError),
    #[error(transparent)]
    Parents(#[from] ParentsError),
}

impl SessionError {
    /// Another ingestor holds the slot: this one is a hot standby.
    pub(crate) fn is_slot_busy(&self) -> bool {
        match self {
            SessionError::Replication(PgWireError::Server(msg)) => msg.contains("55006"),
            SessionError::Slot(SlotError::Busy(_)) => true,
            _ => false,
        }
    }
}

/// Why a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    Shutdown,
}

struct Txn {
    final_lsn: u64,
    commit_ms: i64,
    next_index: u64,
    /// Events routed but not yet completed (see the module docs).
    pending: Vec<Pending>,
    /// The row bytes behind `pending` (each change's message length, at most
    /// `max_event_bytes` per event): with [`HOLD_BYTES`], bounds what a
    /// transaction holds whatever its rows weigh.
    pending_bytes: usize,
    /// Events per organization and table so far, for coalescing.
    bulk: bulk::Counts,
    /// The transaction's actor, from `realtime.set_actor`.
    actor: Option<String>,
    /// `None` unless tracing is on and the sampler kept the transaction.
    trace: Option<TxnTrace>,
}

/// A routed event held until its transaction's commit (or an early
/// completion).
struct Pending {
    routed: Routed,
    index: u64,
    /// The routed table (its index in [`crate::routes::Routes::tables`]) when
    /// the event may be coalesced into a bulk `data.sync`; `None` for
    /// membership and notification events, truncates and messages.
    bulk_table: Option<usize>,
}

/// The row bytes a transaction may hold before its events are completed
/// early (see [`Txn::pending_bytes`]).
const HOLD_BYTES: usize = 16 * 1024 * 1024;

/// How many events a session batches and holds, and the two limits on
/// what it publishes (ARCHITECTURE.md §2, *Batching*, *Bulk changes*,
/// *Event size*).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Events per Redis pipeline (`REALTIME_PUBLISH_BATCH`).
    pub(crate) max_batch: usize,
    /// Past this many events of one organization and table in one
    /// transaction they become one `data.sync` (`REALTIME_BULK_THRESHOLD`;
    /// 0: never).
    pub(crate) bulk_threshold: u64,
    /// `REALTIME_MAX_EVENT_BYTES` (see [`crate::event_size`]).
    pub(crate) max_event_bytes: usize,
}

impl Limits {
    /// How many events of a transaction wait for its commit: enough for a
    /// bulk change to cross the threshold before any of its events is
    /// published (four times the threshold, at most 65,536), at least one
    /// pipeline.
    pub(crate) fn hold(&self) -> usize {
        let bulk = usize::try_from(self.bulk_threshold.saturating_mul(4)).unwrap_or(usize::MAX);
        bulk.min(65_536).max(self.max_batch)
    }
}

/// Metadata kept beside each batched event for metrics.
struct Sent {
    event_type: EventType,
    commit_ms: i64,
}

pub(crate) struct Session<'a> {
    client: ReplicationClient,
    publisher: &'a mut Publisher,
    router: &'a Router,
    identity: &'a IdentityWatch,
    parents: Parents,
    limits: Limits,
    relations: HashMap<u32, Relation>,
    types: TypeRegistry,
    txn: Option<Txn>,
    batch: Vec<Outgoing>,
    sent: Vec<Sent>,
    /// End LSN of the newest commit whose events are all in `batch` or
    /// already in Redis: acknowledged after the next successful flush.
    ack_after_flush: Option<u64>,
    /// Traces of committed transactions whose events are all in `batch` or
    /// already in Redis, with their change counts: ended after the next
    /// successful flush, like `ack_after_flush`.
    committed_traces: Vec<(TxnTrace, u64)>,
    /// The batch sent to Redis and not answered yet (see [`flush`]).
    in_flight: Option<flush::InFlight>,
    /// Event ids are `<commit LSN + slot.id_offset>-<index>` (see
    /// [`crate::slot`]); the acknowledged LSN is written to `slot.key`.
    slot: SlotRecord,
    /// When the acknowledged LSN was last written to the slot record: at
    /// most once per [`RECORD_INTERVAL`], it only says up to where we got.
    recorded_at: Option<Instant>,
}

/// How often the acknowledged LSN is written into the slot record.
const RECORD_INTERVAL: Duration = Duration::from_secs(1);

impl<'a> Session<'a> {
    pub(crate) fn new(
        client: ReplicationClient,
        publisher: &'a mut Publisher,
        router: &'a Router,
        identity: &'a IdentityWatch,
        parents: Parents,
        limits: Limits,
        slot: SlotRecord,
    ) -> Self {
        let max_batch = limits.max_batch;
        Self {
            client,
            publisher,
            router,
            identity,
            parents,
            limits,
            relations: HashMap::new(),
            types: TypeRegistry::default(),
            txn: None,
            batch: Vec::with_capacity(max_batch),
            sent: Vec::with_capacity(max_batch),
            ack_after_flush: None,
            committed_traces: Vec::new(),
            in_flight: None,
            slot,
            recorded_at: None,
        }
    }

    /// Streams until `shutdown` is cancelled (→ `Ok`) or something fails
    /// (→ `Err`; the caller reconnects and Postgres re-sends everything
    /// after the last acknowledged position).
    pub(crate) async fn run(
        mut self,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, SessionError> {
        let result = self.stream(shutdown).await;
        if result.is_ok() {
            // Let the worker send the final acknowledgement and end the
            // stream with CopyDone; a failure here only means more replays.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.client.shutdown()).await;
        } else {
            self.client.abort();
        }
        result
    }

    async fn stream(&mut self, shutdown: &CancellationToken) -> Result<SessionEnd, SessionError> {
        loop {
            // PRIORITY 1: shutdown; publish what is batched, then stop.
            if shutdown.is_cancelled() {
                self.flush().await?;
                return Ok(SessionEnd::Shutdown);
            }
            // PRIORITY 2: the next replication event, if one is ready now;
            // otherwise send the batch before waiting, so latency stays low
            // when traffic is light and batches grow when it is heavy.
            // While waiting, Redis's answer to the batch in flight is
            // settled as soon as it comes (acknowledging its commits).
            let next = match self.client.recv().now_or_never() {
                Some(next) => next,
                None => {
                    self.send().await?;
                    let next = loop {
                        let (client, in_flight) = (&mut self.client, &mut self.in_flight);
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => break None,
                            result = async move {
                                match in_flight {
                                    Some(f) => f.answer.answered().await,
                                    None => std::future::pending().await,
                                }
                            } => {
                                if let Some(in_flight) = self.in_flight.take() {
                                    self.answered(in_flight, result).await?;
                                }
                            }
                            next = client.recv() => break Some(next),
                        }
                    };
                    match next {
                        Some(next) => next,
                        None => continue,
                    }
                }
            };
            match next? {
                Some(event) => self.handle(event).await?,
                None => return Err(SessionError::StreamEnded),
            }
            if self.batch.len() >= self.limits.max_batch {
                self.send().await?;
            }
        }
    }

    async fn handle(&mut self, event: ReplicationEvent) -> Result<(), SessionError> {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.parents.begin();
                self.txn = Some(Txn {
                    final_lsn: final_lsn.as_u64(),
                    commit_ms: unix_millis(commit_time_micros),
                    next_index: 0,
                    pending: Vec::new(),
                    pending_bytes: 0,
                    bulk: bulk::Counts::default(),
                    actor: None,
                    trace: TxnTrace::start(xid, final_lsn.as_u64()),
                });
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.complete().await?;
                self.publish_bulk();
                if let Some(Txn {
                    trace: Some(trace),
                    next_index,
                    ..
                }) = self.txn.take()
                {
                    self.committed_traces.push((trace, next_index));
                }
                self.ack_after_flush = Some(end_lsn.as_u64());
                if self.batch.is_empty() {
                    // Nothing to send: acknowledged now, or with the batch
                    // in flight.
                    self.send().await?;
                }
            }
            ReplicationEvent::XLogData { data, .. } => {
                match pgoutput::decode(&data) {
                    Ok(message) => {
                        self.handle_message(message, data.len())?;
                        let hold = self.limits.hold();
                        if self.txn.as_ref().is_some_and(|t| {
                            t.pending.len() >= hold || t.pending_bytes >= HOLD_BYTES
                        }) {
                            self.complete().await?;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "skipping an undecodable replication message");
                        metrics::counter!(m::SKIPPED, "reason" => "decode").increment(1);
                    }
                }
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => self.handle_logical_message(transactional, lsn.as_u64(), &prefix, &content),
            ReplicationEvent::KeepAlive { wal_end, .. } => self.ack_if_idle(wal_end.as_u64()),
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    /// `len`: the message's length in bytes, what its rows weigh.
    fn handle_message(&mut self, message: Message, len: usize) -> Result<(), SessionError> {
        match message {
            Message::Relation(rel) => {
                if let Some(route) = self.router.routes().find(&rel.namespace, &rel.name) {
                    self.identity.observe(&rel, route);
                }
                self.relations.insert(rel.oid, rel);
            }
            Message::Type {
                oid,
                namespace,
                name,
            } => self.types.remember(oid, namespace, name),
            Message::Insert { relation, new } => {
                self.change(relation, Operation::Insert, None, Some(&new), len)?
            }
            Message::Update { relation, old, new } => {
                self.change(relation, Operation::Update, old.as_ref(), Some(&new), len)?
            }
            Message::Delete { relation, old } => {
                self.change(relation, Operation::Delete, Some(&old), None, len)?
            }
            Message::Truncate { relations, .. } => {
                for oid in relations {
                    let index = self.next_index();
                    let rel = self
                        .relations
                        .get(&oid)
                        .ok_or(SessionError::UnknownRelation(oid))?;
                    if let Some(draft) = self.router.route_truncate(&rel.namespace, &rel.name) {
                        self.defer(Routed::from(draft), index, None, 0);
                    }
                }
            }
            // pgwire-replication types these itself; they never arrive raw.
            Message::Begin { .. } | Message::Commit { .. } | Message::Message { .. } => {}
            Message::Origin { .. } => {}
        }
        Ok(())
    }

    fn change(
        &mut self,
        relation: u32,
        operation: Operation,
        old: Option<&OldTuple>,
        new: Option<&pgoutput::Tuple>,
        len: usize,
    ) -> Result<(), SessionError> {
        let rel = self
            .relations
            .get(&relation)
            .ok_or(SessionError::UnknownRelation(relation))?;
        let max_value = self.limits.max_event_bytes;
        let old_row = old.map(|old| {
            let mut row = value::row(rel, old.tuple(), &self.types, max_value);
            if let OldTuple::Key(_) = old {
                // A key-only image sends non-key columns as NULL: keep the
                // key columns only, so those NULLs never look like values.
                for column in &rel.columns {
                    if column.flags & 1 == 0 {
                        row.remove(&column.name);
                    }
                }
            }
            row
        });
        let mut new_row = new.map(|t| value::row(rel, t, &self.types, max_value));
        // Unchanged TOASTed columns are absent from the new row: take them
        // from the old row (REPLICA IDENTITY FULL sends it whole).
        if let (Some(old_row), Some(new_row)) = (&old_row, &mut new_row) {
            for (column, value) in old_row {
                if !new_row.contains_key(column) {
                    new_row.insert(column.clone(), value.clone());
                }
            }
        }
        let change = RowChange {
            schema: &rel.namespace,
            table: &rel.name,
            operation,
            old: old_row,
            new: new_row,
        };
        // One lookup of the table's route for all uses.
        let table = self.router.index_of(change.schema, change.table);
        let routed = match table {
            Some(index) => {
                self.parents.observe(index, &change);
                self.router.route_change_at(index, &change)
            }
            None => Ok(Vec::new()),
        };
        let bulk_table = table.filter(|&i| self.router.may_coalesce(i));
        match &routed {
            Err(e) if lacks_old_row(e) && rel.replica_identity != identity::FULL => {
                let table = qualified(rel);
                tracing::error!(
                    table = %table,
                    identity = identity::describe(rel.replica_identity),
                    error = %e,
                    "skipping a change that arrived without its old row: the table is not REPLICA IDENTITY FULL; run `ALTER TABLE {table} REPLICA IDENTITY FULL` or set REALTIME_MANAGE_REPLICA_IDENTITY=true"
                );
                metrics::counter!(m::SKIPPED, "reason" => "replica_identity").increment(1);
            }
            Err(e) => {
                tracing::warn!(table = %rel.name, error = %e, "skipping a change that cannot be routed");
                metrics::counter!(m::SKIPPED, "reason" => "route").increment(1);
            }
            Ok(drafts) => {
                if drafts
                    .iter()
                    .any(|r| router::is_unknown_member_leave(&r.draft))
                {
                    let table = qualified(rel);
                    tracing::error!(
                        table = %table,
                        identity = identity::describe(rel.replica_identity),
                        "a membership change arrived without its old row, so who left is unknown: publishing a broadcast member.leave with a null member (every gateway re-checks its streams); run `ALTER TABLE {table} REPLICA IDENTITY FULL` or set REALTIME_MANAGE_REPLICA_IDENTITY=true"
                    );
                    metrics::counter!(m::UNKNOWN_MEMBER_LEAVES).increment(1);
                }
            }
        }
        let drafts = routed.unwrap_or_default();
        // One index per change, and one more per extra event of the same
        // change (an update that moves a row between organizations yields a
        // leave and a join): every event keeps a distinct, deterministic id.
        if drafts.is_empty() {
            self.next_index();
        }
        for routed in drafts {
            let index = self.next_index();
            self.defer(routed, index, bulk_table, len);
        }
        Ok(())
    }

    fn handle_logical_message(
        &mut self,
        transactional: bool,
        lsn: u64,
        prefix: &str,
        content: &[u8],
    ) {
        if prefix == HEARTBEAT_PREFIX {
            if !transactional {
                self.ack_if_idle(lsn);
            }
            return;
        }
        if prefix == ACTOR_PREFIX {
            self.set_actor(transactional, content);
            return;
        }
        let (index, commit_ms) = match (&self.txn, transactional) {
            (Some(_), true) => (
                self.next_index(),
                self.txn.as_ref().map_or(0, |t| t.commit_ms),
            ),
            _ => (0, now_millis()),
        };
        match self.router.route_message(prefix, content) {
            Ok(Some(draft)) if transactional && self.txn.is_some() => {
                self.defer(Routed::from(draft), index, None, content.len());
            }
            Ok(Some(draft)) => {
                let (id, traceparent) = match &mut self.txn {
                    Some(txn) if transactional => (
                        EventId::new(txn.final_lsn.saturating_add(self.slot.id_offset), index),
                        txn.trace.as_mut().map(TxnTrace::event),
                    ),
                    // A non-transactional message is decoded at its own WAL
                    // position, between transactions: its LSN orders it.
                    _ => (self.event_id(lsn, 0), None),
                };
                self.push_with(draft, id, commit_ms, traceparent);
                if !transactional && self.txn.is_none() {
                    self.ack_after_flush = Some(lsn);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(prefix, error = %e, "skipping a logical message that is not a valid event");
                metrics::counter!(m::SKIPPED, "reason" => "message").increment(1);
            }
        }
    }

    fn next_index(&mut self) -> u64 {
        match &mut self.txn {
            Some(txn) => {
                let i = txn.next_index;
                txn.next_index += 1;
                i
            }
            None => 0,
        }
    }
}

/// `"schema"."table"`, as SQL in log hints.
fn qualified(rel: &Relation) -> String {
    format!(
        "{}.{}",
        crate::setup::quote_ident(&rel.namespace),
        crate::setup::quote_ident(&rel.name)
    )
}

/// A routing error caused by a missing or partial old row (what a table
/// without REPLICA IDENTITY FULL sends).
fn lacks_old_row(e: &RouteError) -> bool {
    matches!(
        e,
        RouteError::MissingRow {
            side: Side::Old,
            ..
        } | RouteError::MissingColumn {
            side: Side::Old,
            ..
        }
    )
}

/// Postgres timestamps (µs since 2000-01-01) to Unix milliseconds.
fn unix_millis(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS) / 1000
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_holds_enough_events_for_a_bulk_change_to_show() {
        let limits = |max_batch, bulk_threshold| Limits {
            max_batch,
            bulk_threshold,
            max_event_bytes: 65_536,
        };
        assert_eq!(limits(512, 1000).hold(), 4000);
        assert_eq!(limits(512, 0).hold(), 512, "no coalescing: one pipeline");
        assert_eq!(limits(512, 10).hold(), 512);
        assert_eq!(limits(512, 1_000_000).hold(), 65_536, "bounded");
        assert_eq!(limits(100_000, 1000).hold(), 100_000);
    }

    #[test]
    fn postgres_epoch_converts_to_unix_millis() {
        assert_eq!(unix_millis(0), 946_684_800_000);
        assert_eq!(unix_millis(1_500), 946_684_800_001);
    }
}
