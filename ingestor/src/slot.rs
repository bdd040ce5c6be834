//! A lost replication slot is never silent.
//!
//! A logical slot can disappear or become unusable while changes are being
//! committed: Neon drops inactive slots and the slots of a restored branch,
//! a failover before Postgres 17 does not carry slots to the new primary,
//! and `max_slot_wal_keep_size` invalidates a slot that fell too far behind
//! (`wal_status = 'lost'`). Whatever was committed in between never reaches
//! the ingestor, so every client must be told to refetch.
//!
//! The ingestor therefore remembers, in Redis beside the histories, which
//! slot it streamed and from which cluster: the hash `<prefix>:{slot}:<slot>`
//! with `system_identifier` (`pg_control_system()`), `slot`, `lsn` (the last
//! acknowledged commit, informative), `id_offset` (see below) and, only while
//! a recovery is under way, `pending` (why) and `sync_id`.
//!
//! Before every replication session ([`reconcile`], at start-up and on each
//! reconnect) it compares that record with Postgres. The slot is *lost* when
//! it is missing although the record says we streamed it, when Postgres
//! reports it invalidated (`wal_status = 'lost'`, `conflicting`, or an
//! `invalidation_reason`, whichever the server version has), or when the
//! server is another cluster (its system identifier changed: a restore, a
//! branch, a failover to a rebuilt server). Then it logs one error, drops an
//! invalidated slot, creates the slot when missing, and publishes one
//! `data.sync` `{"reason":"slot_lost"}` (ARCHITECTURE.md §2, Slots) to every organization
//! that has a history stream and to the broadcast stream, through the normal
//! publish function, before streaming anything. A first start (no record)
//! only writes the record: nothing can have been missed.
//!
//! **Ids.** Event ids are `<commit LSN + id_offset>-<index>`; `id_offset` is
//! 0 until a slot loss needs it. The data.sync gets the id
//! `<C + id_offset - 1>-0`, where `C` is the new slot's consistent point
//! (every event it will decode has a commit LSN ≥ `C`), and `id_offset` is
//! raised, never lowered, until that id is above the last id every history
//! stream ever generated. On the same cluster `C` is already past every
//! published LSN and the offset stays as it was; after a restore or a
//! failover to a cluster whose LSNs are below the old ones, the offset lifts
//! the new cluster's ids above the old ones, so the streams (which refuse an
//! id not above their last) accept its events instead of skipping them as
//! duplicates forever, and clients resuming with an old `Last-Event-ID`
//! replay the data.sync, then the new events, in order. Postgres is always
//! acknowledged in raw LSNs.
//!
//! **Crash safety.** The record is marked `pending` before the slot is
//! touched, and the chosen `sync_id`/`id_offset` are written before the
//! data.sync is published; an ingestor that dies half-way finishes the same
//! recovery with the same id on its next start (a re-sent data.sync is
//! refused by the streams like any replay), and streaming starts only once
//! `pending` is cleared. Ingestors serialize [`reconcile`] with a Postgres
//! advisory lock, so a standby never recovers the same loss twice.

use std::collections::HashMap;

use crate::publish::{Outgoing, PublishError, Publisher};
use realtime_shared::envelope::Envelope;
use realtime_shared::event::{Event, EventId, EventType, EventVersion, Scope, Source};
use realtime_shared::keys::Keys;
use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::metrics as m;

/// The `reason` of the data.sync sent after a lost slot (ARCHITECTURE.md §2, Slots).
pub(crate) const SLOT_LOST: &str = "slot_lost";

#[derive(Debug, thiserror::Error)]
pub(crate) enum SlotError {
    #[error("Postgres refused {what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Redis(#[from] PublishError),
    #[error("another ingestor is checking replication slot {0:?}")]
    Busy(String),
    #[error("the slot record {key} in Redis has a bad {field}: {value:?}")]
    BadRecord {
        key: String,
        field: &'static str,
        value: String,
    },
    #[error("the history stream {key} in Redis reports an unreadable last-generated-id: {value:?}")]
    BadHistory { key: String, value: String },
    #[error("Postgres reported an unreadable LSN for replication slot {0:?}")]
    BadLsn(String),
}

fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SlotError {
    move |source| SlotError::Sql { what, source }
}

/// `<prefix>:{slot}:<slot name>`: where the slot record lives.
pub(crate) fn record_key(keys: &Keys, slot: &str) -> String {
    format!("{}:{{slot}}:{slot}", keys.prefix())
}

/// What a session needs from the record: how to name events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRecord {
    /// The Redis hash (the session writes the acknowledged LSN into it).
    pub key: String,
    /// Added to every commit LSN to make an event id (see the module docs).
    pub id_offset: u64,
}

/// The record as stored.
#[derive(Debug, Default)]
struct Stored {
    system_identifier: Option<String>,
    id_offset: u64,
    pending: Option<String>,
    sync_id: Option<EventId>,
    lsn: Option<u64>,
}

impl Stored {
    fn parse(key: &str, mut fields: HashMap<String, String>) -> Result<Self, SlotError> {
        let bad = |field: &'static str, value: String| SlotError::BadRecord {
            key: key.to_owned(),
            field,
            value,
        };
        let number = |field: &'static str, value: Option<String>| match value {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| bad(field, v)),
        };
        Ok(Self {
            system_identifier: fields.remove("system_identifier"),
            id_offset: number("id_offset", fields.remove("id_offset"))?.unwrap_or(0),
            pending: fields.remove("pending"),
            sync_id: match fields.remove("sync_id") {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| bad("sync_id", v))?),
            },
            lsn: number("lsn", fields.remove("lsn"))?,
        })
    }
}

/// The slot as `pg_replication_slots` shows it.
struct SlotRow {
    /// The whole row as JSON, so columns of newer versions (`conflicting`
    /// 16+, `invalidation_reason` 17+) are read where they exist.
    row: Value,
    confirmed_flush: Option<u64>,
}

impl SlotRow {
    /// Why Postgres says the slot can no longer be streamed, if it does.
    fn invalidated(&self) -> Option<String> {
        let field = |name: &str| self.row.get(name).filter(|v| !v.is_null());
        if let Some(reason) = field("invalidation_reason").and_then(Value::as_str) {
            return Some(format!("invalidated ({reason})"));
        }
        if field("wal_status").and_then(Value::as_str) == Some("lost") {
            return Some(
                "invalidated (wal_status = lost: it fell behind max_slot_wal_keep_size)".into(),
            );
        }
        if field("conflicting").and_then(Value::as_bool) == Some(true) {
            return Some("invalidated (conflicting with recovery)".into());
        }
        None
    }
}

/// Checks the slot against the Redis record before a session and recovers
/// a lost slot (module docs). On `Ok` the slot exists and is usable, no
/// recovery is pending, and the returned record says how to name events.
pub(crate) async fn reconcile(
    client: &Client,
    publisher: &mut Publisher,
    slot: &str,
) -> Result<SlotRecord, SlotError> {
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('realtime-slot'), hashtext($1))",
            &[&slot],
        )
        .await
        .map_err(sql("taking the slot advisory lock"))?
        .get(0);
    if !locked {
        return Err(SlotError::Busy(slot.to_owned()));
    }
    let result = reconcile_locked(client, publisher, slot).await;
    // Best effort: the lock also goes with the connection.
    let _ = client
        .execute(
            "SELECT pg_advisory_unlock(hashtext('realtime-slot'), hashtext($1))",
            &[&slot],
        )
        .await;
    result
}

async fn reconcile_locked(
    client: &Client,
    publisher: &mut Publisher,
    slot: &str,
) -> Result<SlotRecord, SlotError> {
    let key = record_key(publisher.keys(), slot);
    let system_identifier: String = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(sql("reading the system identifier"))?
        .get(0);
    let fields: HashMap<String, String> = publisher
        .query("reading the slot record", redis::cmd("HGETALL").arg(&key))
        .await?;
    let first_start = fields.is_empty();
    let stored = Stored::parse(&key, fields)?;
    let mut current = read_slot(client, slot).await?;

    let lost = if let Some(pending) = &stored.pending {
        Some(pending.clone())
    } else if first_start {
        None
    } else if stored.system_identifier.as_deref() != Some(system_identifier.as_str()) {
        Some(format!(
            "the database is another cluster (system identifier {} -> {system_identifier}: a restore, a branch or a failover)",
            stored.system_identifier.as_deref().unwrap_or("unknown")
        ))
    } else if let Some(why) = current.as_ref().and_then(SlotRow::invalidated) {
        Some(why)
    } else if current.is_none() {
        Some("missing (dropped, or not carried over by a failover or restore)".into())
    } else {
        None
    };

    let Some(reason) = lost else {
        let (created, consistent) = match &current {
            Some(row) => (false, row.confirmed_flush),
            None => (true, Some(create_slot(client, slot).await?)),
        };
        let mut id_offset = stored.id_offset;
        if created && let Some(c) = consistent {
            // A fresh slot next to histories someone else wrote: keep ids
            // above theirs, or the streams would refuse ours.
            id_offset = offset_above(last_history_id(publisher).await?, c, id_offset);
        }
        if first_start || created || id_offset != stored.id_offset {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key)
                .arg("system_identifier")
                .arg(&system_identifier)
                .arg("slot")
                .arg(slot)
                .arg("id_offset")
                .arg(id_offset);
            if let Some(c) = consistent {
                cmd.arg("lsn").arg(c);
            }
            publisher
                .query::<()>("writing the slot record", &cmd)
                .await?;
        }
        return Ok(SlotRecord { key, id_offset });
    };

    if stored.pending.is_none() {
        tracing::error!(
            slot,
            reason = %reason,
            last_acknowledged_lsn = stored.lsn.unwrap_or(0),
            "replication slot {slot:?} was lost: {reason}; changes committed since the last acknowledged position may never reach clients; recreating the slot and sending data.sync {{\"reason\":\"slot_lost\"}} to every organization"
        );
        publisher
            .query::<()>(
                "marking the slot record pending",
                redis::cmd("HSET").arg(&key).arg("pending").arg(&reason),
            )
            .await?;
    } else {
        tracing::warn!(slot, reason = %reason, "finishing an interrupted slot_lost recovery");
    }

    let (sync_id, id_offset) = match stored.sync_id {
        Some(id) => (id, stored.id_offset),
        None => {
            if current.as_ref().and_then(SlotRow::invalidated).is_some() {
                drop_slot(client, slot).await?;
                current = None;
            }
            // A slot that still exists here is usable: the fresh one of an
            // interrupted recovery, or a restored cluster's own slot (it
            // streams whatever that cluster committed after its backup).
            let consistent = match current.and_then(|row| row.confirmed_flush) {
                Some(c) => c,
                None => create_slot(client, slot).await?,
            };
            let id_offset = offset_above(
                last_history_id(publisher).await?,
                consistent,
                stored.id_offset,
            );
            let sync_id = EventId::new(consistent.saturating_add(id_offset) - 1, 0);
            publisher
                .query::<()>(
                    "writing the slot record",
                    redis::cmd("HSET")
                        .arg(&key)
                        .arg("sync_id")
                        .arg(sync_id.to_string())
                        .arg("id_offset")
                        .arg(id_offset)
                        .arg("lsn")
                        .arg(consistent),
                )
                .await?;
            (sync_id, id_offset)
        }
    };

    let scopes = scopes_with_history(publisher).await?;
    let batch: Vec<Outgoing> = scopes
        .into_iter()
        .map(|scope| slot_lost_event(sync_id, scope))
        .collect();
    let sent = batch.len();
    publisher.publish(&batch).await?;
    publisher
        .query::<()>(
            "clearing the pending slot recovery",
            redis::cmd("HSET")
                .arg(&key)
                .arg("system_identifier")
                .arg(&system_identifier)
                .arg("slot")
                .arg(slot)
                .arg("id_offset")
                .arg(id_offset),
        )
        .await?;
    publisher
        .query::<()>(
            "clearing the pending slot recovery",
            redis::cmd("HDEL").arg(&key).arg("pending").arg("sync_id"),
        )
        .await?;
    metrics::counter!(m::SLOT_RECREATED).increment(1);
    tracing::info!(slot, %sync_id, streams = sent, id_offset, "slot_lost data.sync sent; streaming from the new slot");
    Ok(SlotRecord { key, id_offset })
}

/// The smallest offset, not below `current`, that puts `<consistent +
/// offset - 1>-0` above `last` (and so every id of the slot above it too).
fn offset_above(last: EventId, consistent: u64, current: u64) -> u64 {
    current.max(last.lsn.saturating_add(2).saturating_sub(consistent))
}

async fn read_slot(client: &Client, slot: &str) -> Result<Option<SlotRow>, SlotError> {
    let row = client
        .query_opt(
            "SELECT to_jsonb(s), (s.confirmed_flush_lsn - '0/0'::pg_lsn)::text \
             FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("looking up the replication slot"))?;
    let Some(row) = row else { return Ok(None) };
    let confirmed_flush = match row.get::<_, Option<String>>(1) {
        None => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| SlotError::BadLsn(slot.to_owned()))?,
        ),
    };
    Ok(Some(SlotRow {
        row: row.get(0),
        confirmed_flush,
    }))
}

/// Creates the slot; returns its consistent point. A slot created meanwhile
/// by someone else is used as it is.
async fn create_slot(client: &Client, slot: &str) -> Result<u64, SlotError> {
    match client
        .query_one(
            "SELECT (lsn - '0/0'::pg_lsn)::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
    {
        Ok(row) => {
            tracing::info!(slot, "created replication slot");
            row.get::<_, String>(0)
                .parse()
                .map_err(|_| SlotError::BadLsn(slot.to_owned()))
        }
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => read_slot(client, slot)
            .await?
            .and_then(|row| row.confirmed_flush)
            .ok_or_else(|| SlotError::BadLsn(slot.to_owned())),
        Err(e) => Err(sql("creating the replication slot")(e)),
    }
}

async fn drop_slot(client: &Client, slot: &str) -> Result<(), SlotError> {
    match client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(()),
        Err(e) => Err(sql("dropping the invalidated replication slot")(e)),
    }
}

/// Every organization with a history stream, and the broadcast scope.
async fn scopes_with_history(publisher: &mut Publisher) -> Result<Vec<Scope>, SlotError> {
    let prefix = publisher.keys().prefix().to_owned();
    let head = format!("{prefix}:{{org:");
    let pattern = format!("{}*}}:history", glob_escape(&head));
    // On a Redis Cluster, every primary is scanned.
    let keys = publisher
        .scan_keys("scanning the history streams", &pattern, "stream")
        .await?;
    let mut scopes = Vec::new();
    for key in keys {
        if let Some(org) = key
            .strip_prefix(&head)
            .and_then(|rest| rest.strip_suffix("}:history"))
        {
            scopes.push(Scope::Organization(org.to_owned()));
        }
    }
    scopes.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    scopes.dedup();
    scopes.push(Scope::Broadcast);
    Ok(scopes)
}

/// The highest id any history stream (organizations and broadcast) ever
/// generated; `0-0` when there is none.
async fn last_history_id(publisher: &mut Publisher) -> Result<EventId, SlotError> {
    let mut last = EventId::new(0, 0);
    for scope in scopes_with_history(publisher).await? {
        let key = publisher.keys().history(&scope);
        let exists: bool = publisher
            .query("checking a history stream", redis::cmd("EXISTS").arg(&key))
            .await?;
        if !exists {
            continue;
        }
        let info: HashMap<String, redis::Value> = publisher
            .query(
                "reading a history stream",
                redis::cmd("XINFO").arg("STREAM").arg(&key),
            )
            .await?;
        // An unreadable id is an error, not "nothing here": read as none,
        // the offset could stay below ids this stream holds, and the
        // streams would then refuse the new cluster's events as replays.
        let raw = info
            .get("last-generated-id")
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        let id = raw.as_deref().and_then(|s| s.parse::<EventId>().ok());
        match id {
            Some(id) => last = last.max(id),
            None => {
                return Err(SlotError::BadHistory {
                    key,
                    value: raw.unwrap_or_default(),
                });
            }
        }
    }
    Ok(last)
}

fn slot_lost_event(id: EventId, scope: Scope) -> Outgoing {
    let organization_id = match &scope {
        Scope::Organization(org) => Some(org.clone()),
        Scope::Broadcast => None,
    };
    let event = Event {
        id,
        event_type: EventType::DataSync,
        timestamp: now_millis(),
        source: Source::Postgres,
        version: EventVersion,
        organization_id,
        payload: json!({ "reason": SLOT_LOST }),
    };
    Outgoing {
        id,
        scope,
        bytes: Envelope::new(event).to_bytes(),
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `s` with the glob specials of SCAN MATCH escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_id_sorts_above_every_old_id_and_below_the_new_slot() {
        // Same cluster: the new slot starts past everything published.
        let off = offset_above(EventId::new(1_000, 7), 5_000, 0);
        assert_eq!(off, 0);
        // A restored cluster whose LSNs are below the old ones.
        let last = EventId::new(90_000, 3);
        let off = offset_above(last, 5_000, 0);
        let sync = EventId::new(5_000 + off - 1, 0);
        assert!(sync > last, "{sync} > {last}");
        assert!(EventId::new(5_000 + off, 0) > sync);
        // An offset is never lowered.
        assert_eq!(offset_above(EventId::new(1, 0), 5_000, 42), 42);
    }

    #[test]
    fn invalidation_is_read_from_whatever_columns_the_version_has() {
        let row = |v: Value| SlotRow {
            row: v,
            confirmed_flush: None,
        };
        assert!(
            row(json!({"wal_status": "reserved"}))
                .invalidated()
                .is_none()
        );
        assert!(row(json!({"wal_status": "lost"})).invalidated().is_some());
        assert!(
            row(json!({"wal_status": "reserved", "conflicting": true}))
                .invalidated()
                .is_some()
        );
        assert!(
            row(json!({"wal_status": "lost", "invalidation_reason": "wal_removed"}))
                .invalidated()
                .unwrap()
                .contains("wal_removed")
        );
        assert!(
            row(json!({"conflicting": null, "invalidation_reason": null}))
                .invalidated()
                .is_none()
        );
    }

    #[test]
    fn the_history_pattern_escapes_the_prefix() {
        assert_eq!(glob_escape("a*b:{org:"), "a\\*b:{org:");
    }
}
