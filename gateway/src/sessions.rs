//! Database sessions re-checked while their streams are open.
//!
//! A stream authenticated by an Auth.js database session (a cookie that is
//! not a JWE, looked up in `sessions`) would otherwise live until the row's
//! `expires`, often 30 days: a sign-out or a ban deletes the row at once.
//! Every `REALTIME_SESSION_RECHECK` this replica asks Postgres, in one query
//! per batch, which of its streams' session tokens are still live, and
//! closes the streams of the others ([`CloseReason::Revoked`]).
//!
//! A failed query closes nothing (a Postgres hiccup must not drop every
//! session stream at once; reconnecting clients would be refused anyway)
//! and is tried again at the next tick.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::membership::Membership;
use crate::metrics as m;
use crate::registry::{CloseReason, Registry};

/// Tokens asked about per query: bounds the query's size.
const BATCH: usize = 1000;

/// Re-checks every `interval` until `stop`.
pub(crate) async fn recheck_until(
    registry: Registry,
    membership: Arc<Membership>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = recheck(&registry, &membership).await {
            tracing::warn!(error = %e, "database sessions could not be re-checked; retrying at the next tick");
        }
    }
}

/// One round: closes the streams whose session is gone or expired.
/// Returns how many were closed.
pub(crate) async fn recheck(
    registry: &Registry,
    membership: &Membership,
) -> Result<usize, crate::membership::MembershipError> {
    let handles = registry.with_sessions();
    if handles.is_empty() {
        return Ok(0);
    }
    let tokens: Vec<&str> = handles
        .iter()
        .filter_map(|h| h.session.as_deref())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut live = HashSet::new();
    for batch in tokens.chunks(BATCH) {
        live.extend(membership.live_sessions(batch).await?);
    }
    let mut closed = 0;
    for handle in &handles {
        if handle.session.as_deref().is_some_and(|t| !live.contains(t)) {
            handle.close(CloseReason::Revoked);
            closed += 1;
        }
    }
    if closed > 0 {
        metrics::counter!(m::REVOKED, "reason" => "session").increment(closed as u64);
        tracing::info!(
            streams = closed,
            "closed streams whose database session ended"
        );
    }
    Ok(closed)
}
