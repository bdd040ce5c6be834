//! The ingestor's metric names (ARCHITECTURE.md §5), in one place. Labels are
//! low-cardinality: event types only, never organizations or tables' rows.

pub(crate) const EVENTS_PUBLISHED: &str = "realtime_ingestor_events_published_total";
pub(crate) const DUPLICATES_SKIPPED: &str = "realtime_ingestor_duplicates_skipped_total";
pub(crate) const COMMIT_TO_PUBLISH: &str = "realtime_ingestor_commit_to_publish_seconds";
pub(crate) const CONFIRMED_FLUSH_LSN: &str = "realtime_ingestor_confirmed_flush_lsn";
pub(crate) const SLOT_LAG_BYTES: &str = "realtime_ingestor_slot_lag_bytes";
pub(crate) const RECONNECTS: &str = "realtime_ingestor_reconnects_total";
/// The position this process last acknowledged (the slot catches up within
/// one status interval).
pub(crate) const ACKNOWLEDGED_LSN: &str = "realtime_ingestor_acknowledged_lsn";
/// Changes, messages or replication bytes that could not become an event
/// and were skipped, by reason.
pub(crate) const SKIPPED: &str = "realtime_ingestor_skipped_total";

/// Relation messages of routed tables that need old rows showing a replica
/// identity other than FULL, by table (routed tables only: bounded).
pub(crate) const REPLICA_IDENTITY_NOT_FULL: &str =
    "realtime_ingestor_replica_identity_not_full_total";
/// Membership changes that arrived without their old row and were published
/// as a broadcast `member.leave` with a null member (gateways re-check).
pub(crate) const UNKNOWN_MEMBER_LEAVES: &str = "realtime_ingestor_unknown_member_leaves_total";

/// Lost replication slots recovered: each one sent a `data.sync`
/// `{"reason":"slot_lost"}` to every organization (see [`crate::slot`]).
pub(crate) const SLOT_RECREATED: &str = "realtime_ingestor_slot_recreated_total";

/// Events left out of a bulk change: a `data.sync` bulk stands for them
/// (see `session::bulk`).
pub(crate) const EVENTS_COALESCED: &str = "realtime_ingestor_events_coalesced_total";
/// Bulk `data.sync` events published, one per organization and table past
/// `REALTIME_BULK_THRESHOLD` in a transaction.
pub(crate) const BULK_SYNCS: &str = "realtime_ingestor_bulk_syncs_total";
/// Events published without their row values (`"truncated": true`) because
/// they were larger than `REALTIME_MAX_EVENT_BYTES`.
pub(crate) const EVENTS_TRUNCATED: &str = "realtime_ingestor_events_truncated_total";

/// The reasons of [`SKIPPED`], every one `session.rs` counts: exported at 0
/// from start-up.
pub(crate) const SKIP_REASONS: [&str; 8] = [
    "decode",
    "replica_identity",
    "route",
    "message",
    "no_transaction",
    "parent",
    "actor",
    "size",
];

/// Registers descriptions, and exports every series the dashboard and the
/// alerts read from start-up (counters at 0, each known label value, empty
/// histograms): a series that appears only at its first increment shows as
/// "no data" in panels and has no `rate()` until then.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events appended to a history stream and published, by type."
    );
    describe_counter!(
        DUPLICATES_SKIPPED,
        "Events Redis refused because their history already held the id (replays after a restart)."
    );
    describe_histogram!(
        COMMIT_TO_PUBLISH,
        Unit::Seconds,
        "Time from a transaction's commit to Redis accepting its event."
    );
    describe_gauge!(
        CONFIRMED_FLUSH_LSN,
        "The replication slot's confirmed_flush_lsn, as a number."
    );
    describe_gauge!(
        SLOT_LAG_BYTES,
        "WAL bytes between the server's current position and the slot's confirmed_flush_lsn."
    );
    describe_counter!(RECONNECTS, "Replication sessions restarted after an error.");
    describe_gauge!(
        ACKNOWLEDGED_LSN,
        "The last WAL position this ingestor acknowledged."
    );
    describe_counter!(SKIPPED, "Changes or messages skipped (logged), by reason.");
    describe_counter!(
        REPLICA_IDENTITY_NOT_FULL,
        "Relation messages showing a routed table without REPLICA IDENTITY FULL, by table."
    );
    describe_counter!(
        UNKNOWN_MEMBER_LEAVES,
        "Membership changes without their old row, published as a broadcast member.leave with a null member."
    );
    describe_counter!(
        SLOT_RECREATED,
        "Replication slots found lost (missing, invalidated or on another cluster) and recreated; each sent data.sync slot_lost to every organization."
    );
    describe_counter!(
        EVENTS_COALESCED,
        "Events left out of a bulk change (more than REALTIME_BULK_THRESHOLD of one organization and table in one transaction): a data.sync bulk stands for them."
    );
    describe_counter!(
        BULK_SYNCS,
        "data.sync bulk events published, one per organization and table past REALTIME_BULK_THRESHOLD in a transaction."
    );
    describe_counter!(
        EVENTS_TRUNCATED,
        "Events published without their row values (\"truncated\": true) because they were larger than REALTIME_MAX_EVENT_BYTES."
    );
    metrics::counter!(EVENTS_COALESCED).increment(0);
    metrics::counter!(BULK_SYNCS).increment(0);
    metrics::counter!(EVENTS_TRUNCATED).increment(0);
    metrics::counter!(SLOT_RECREATED).increment(0);
    metrics::counter!(UNKNOWN_MEMBER_LEAVES).increment(0);
    metrics::counter!(DUPLICATES_SKIPPED).increment(0);
    metrics::counter!(RECONNECTS).increment(0);
    for event_type in realtime_shared::event::EventType::ALL {
        metrics::counter!(EVENTS_PUBLISHED, "type" => event_type.as_str()).increment(0);
    }
    for reason in SKIP_REASONS {
        metrics::counter!(SKIPPED, "reason" => reason).increment(0);
    }
    // A registered histogram is exported with zero counts.
    let _ = metrics::histogram!(COMMIT_TO_PUBLISH);
}
