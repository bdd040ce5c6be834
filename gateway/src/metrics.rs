//! The gateway's metric names (ARCHITECTURE.md §5).

pub(crate) const CONNECTIONS: &str = "realtime_gateway_connections";
pub(crate) const CONNECTIONS_TOTAL: &str = "realtime_gateway_connections_total";
pub(crate) const EVENTS_DELIVERED: &str = "realtime_gateway_events_delivered_total";
pub(crate) const COMMIT_TO_SEND: &str = "realtime_gateway_commit_to_send_seconds";
pub(crate) const REPLAYED: &str = "realtime_gateway_replayed_events_total";
pub(crate) const REJECTED: &str = "realtime_gateway_rejected_total";
pub(crate) const PUBLISHED: &str = "realtime_gateway_published_total";
pub(crate) const DRAINED: &str = "realtime_gateway_drained_total";
pub(crate) const REVOKED: &str = "realtime_gateway_revoked_total";
/// Public-listener connections (sockets), whatever they carry.
pub(crate) const SOCKETS: &str = "realtime_gateway_sockets";
pub(crate) const SOCKETS_REFUSED: &str = "realtime_gateway_sockets_refused_total";
pub(crate) const SOCKETS_CLOSED: &str = "realtime_gateway_sockets_closed_total";
pub(crate) const SOCKETS_SERVED: &str = "realtime_gateway_sockets_served_total";
/// 1 while the replica's Postgres answers, 0 while it is degraded without
/// it (`/readyz` stays 200 then, so this is what alerts watch).
pub(crate) const POSTGRES_UP: &str = "realtime_gateway_postgres_up";

/// The `reason` of a refused stream request (`app.rs`: `reject` and
/// `too_many`), counted in both [`REJECTED`] and [`CONNECTIONS_TOTAL`]
/// (`result`).
pub(crate) const STREAM_REFUSALS: [&str; 10] = [
    "unauthenticated",
    "forbidden",
    "bad_request",
    "unavailable",
    "shutting_down",
    "rate_limited",
    "user_limit",
    "org_limit",
    "activity_rate_limited",
    "error",
];
/// The other `reason`s of [`REJECTED`] (requests that are not streams).
pub(crate) const OTHER_REJECTIONS: [&str; 3] = [
    "request_rate_limited",
    "cross_origin",
    "publish_key_failures",
];
/// The `reason`s of [`REVOKED`].
pub(crate) const REVOKE_REASONS: [&str; 3] = ["member_left", "recheck", "session"];
/// The `reason`s of [`SOCKETS_CLOSED`] (`crate::serve`).
pub(crate) const SOCKET_CLOSE_REASONS: [&str; 3] = ["head_timeout", "idle", "evicted"];
/// The `by` values of [`SOCKETS_SERVED`].
pub(crate) const SERVED_BY: [&str; 2] = ["direct", "hyper"];

/// Registers descriptions, and exports every series the dashboard and the
/// alerts read from start-up (counters at 0 for each known label value,
/// gauges at 0, empty histograms): a series that appears only at its first
/// increment shows as "no data" in panels and has no `rate()` until then.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    metrics::gauge!(CONNECTIONS).increment(0.0);
    metrics::counter!(CONNECTIONS_TOTAL, "result" => "accepted").increment(0);
    for reason in STREAM_REFUSALS {
        metrics::counter!(REJECTED, "reason" => reason).increment(0);
        metrics::counter!(CONNECTIONS_TOTAL, "result" => reason).increment(0);
    }
    for reason in OTHER_REJECTIONS {
        metrics::counter!(REJECTED, "reason" => reason).increment(0);
    }
    for reason in REVOKE_REASONS {
        metrics::counter!(REVOKED, "reason" => reason).increment(0);
    }
    for reason in SOCKET_CLOSE_REASONS {
        metrics::counter!(SOCKETS_CLOSED, "reason" => reason).increment(0);
    }
    for by in SERVED_BY {
        metrics::counter!(SOCKETS_SERVED, "by" => by).increment(0);
    }
    metrics::counter!(EVENTS_DELIVERED).increment(0);
    metrics::counter!(REPLAYED).increment(0);
    // A registered histogram is exported with zero counts.
    let _ = metrics::histogram!(COMMIT_TO_SEND);
    describe_gauge!(CONNECTIONS, "Open SSE streams on this replica.");
    describe_gauge!(
        POSTGRES_UP,
        "1 while Postgres answers this replica's readiness probe, 0 while the replica serves degraded without it."
    );
    // Exported from the start, so dashboards and alerts see zeros, not gaps.
    metrics::counter!(DRAINED).increment(0);
    metrics::counter!(PUBLISHED).increment(0);
    metrics::counter!(SOCKETS_REFUSED).increment(0);
    metrics::gauge!(SOCKETS).set(0.0);
    describe_gauge!(
        SOCKETS,
        "Open connections on the public listener (under REALTIME_MAX_CONNECTIONS)."
    );
    describe_counter!(
        SOCKETS_REFUSED,
        "Connections closed at accept: at REALTIME_MAX_CONNECTIONS with none waiting for a head."
    );
    describe_counter!(
        SOCKETS_CLOSED,
        "Connections closed by the listener, by reason: head_timeout (no whole request head within REALTIME_HEAD_TIMEOUT of the accept), idle (keep-alive, no next head within it), evicted (made room at the cap)."
    );
    describe_counter!(
        SOCKETS_SERVED,
        "Connections by how their first request was served: direct (the SSE fast path) or hyper."
    );
    describe_counter!(CONNECTIONS_TOTAL, "Stream requests, by result.");
    describe_counter!(
        EVENTS_DELIVERED,
        "Events queued to clients (one per client)."
    );
    describe_histogram!(
        COMMIT_TO_SEND,
        Unit::Seconds,
        "Commit time to a live event being handed to a client's stream (replays excluded)."
    );
    describe_counter!(
        REPLAYED,
        "Events read from history for resumes and catch-ups."
    );
    describe_counter!(REJECTED, "Stream requests refused, by reason.");
    describe_counter!(
        PUBLISHED,
        "Events accepted by POST /api/realtime/stream and /api/realtime/publish."
    );
    describe_counter!(
        REVOKED,
        "Streams closed because their user may no longer read the organization, by reason \
         (member_left, recheck, session)."
    );
    describe_counter!(
        DRAINED,
        "Streams closed by a drain (SIGTERM), each with a jittered retry."
    );
}

/// Counts one open stream while alive.
pub(crate) struct ConnectionGuard(());

impl ConnectionGuard {
    pub(crate) fn new() -> Self {
        metrics::gauge!(CONNECTIONS).increment(1.0);
        ConnectionGuard(())
    }
}

impl Default for ConnectionGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS).decrement(1.0);
    }
}
