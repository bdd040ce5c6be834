//! The replica's shutdown plumbing, in one place (used by the API state and
//! by [`crate::gateway`], which drives it).

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a replica stops, in two steps that every loop, stream and
/// connection honours (mini-redis's `Listener`/`Handler` shutdown, split in
/// two because streams are drained, not cut):
/// - `draining` is cancelled at SIGTERM (the `shutdown` future): `/readyz`
///   answers 503, new streams are refused with the transient refusal, the
///   listener stops accepting and hyper connections lose keep-alive, and
///   `gateway::drain` closes the open streams paced over `REALTIME_DRAIN`, each
///   with a jittered `retry:`;
/// - `stop` is cancelled when the drain is done: every stream's close token
///   is its child, and the admin server, the lease renewal, the session
///   re-checks and the readiness watch end;
/// - `connections` tracks the listener's connection tasks, which get at
///   most one more second after `stop` for their last writes.
#[derive(Clone)]
pub(crate) struct Shutdown {
    pub(crate) draining: CancellationToken,
    pub(crate) stop: CancellationToken,
    pub(crate) connections: TaskTracker,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Self {
            draining: CancellationToken::new(),
            stop: CancellationToken::new(),
            connections: TaskTracker::new(),
        }
    }
}
