//! The public listener's connection cap (`REALTIME_MAX_CONNECTIONS`).
//!
//! Every accepted connection holds a [`Slot`] until its socket is closed,
//! so the replica never holds more than the cap's file descriptors on the
//! public listener, however many clients connect: without a cap, sockets
//! that connect and send nothing exhaust the open-files limit and then
//! nobody (not even Postgres or Redis reconnections) gets a descriptor.
//!
//! Which connection gives way at the cap decides who is served under a
//! flood. Refusing the newcomer lets idle sockets keep everyone else out
//! for as long as the head timeout, again and again. So a connection that
//! is waiting for a request head (from its accept until the head is
//! complete, and a keep-alive connection between requests) can be
//! evicted: at the cap, a newcomer takes the place of the one that has
//! waited longest. A legitimate client sends its head within a round trip
//! of connecting, so it is evicted only if a cap's worth of connections
//! arrive in that round trip. Connections that have sent their head (open
//! streams, requests in flight) are never evicted: when every slot is held
//! by one, the newcomer is closed at once (accept-and-close, so the kernel
//! backlog does not fill with stale connections) and counted in
//! `realtime_gateway_sockets_refused_total`. An `EventSource` whose
//! connection is closed without a response reconnects after its retry
//! delay, which a 503 would have stopped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// How long a newcomer waits for an evicted connection to close its socket
/// before it is refused instead (the eviction is a cancellation seen by
/// the evicted task at its next poll, so this is only ever hit when the
/// runtime is starved).
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// The cap used when the open-files limit cannot be read.
pub const FALLBACK_CAP: usize = 50_000;

/// The connection slots of one listener.
pub struct Slots {
    cap: usize,
    state: Mutex<State>,
    /// Signalled whenever a slot is freed.
    freed: Notify,
}

#[derive(Default)]
struct State {
    open: usize,
    next_key: u64,
    /// Connections waiting for a request head, oldest (smallest key) first.
    waiting: BTreeMap<u64, CancellationToken>,
}

/// The result of [`Slots::admit`].
pub enum Admission {
    /// A free slot (`evicted`: another connection was closed to make room).
    Admitted { slot: Slot, evicted: bool },
    /// Every slot is held by a connection that has sent its head.
    Full,
}

impl Slots {
    /// Slots for `cap` connections (at least one).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Slots {
            cap: cap.max(1),
            state: Mutex::default(),
            freed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is still
        // consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections holding a slot.
    pub fn open(&self) -> usize {
        self.state().open
    }

    /// A slot for a new connection: a free one, or, at the cap, the slot of
    /// the connection that has waited longest for its request head (which
    /// is told to close; this waits until it has). Only one task (the
    /// accept loop) calls this.
    pub async fn admit(self: &Arc<Self>) -> Admission {
        let mut evicted = false;
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.state();
                if state.open < self.cap {
                    state.open += 1;
                    return Admission::Admitted {
                        slot: Slot::new(self.clone()),
                        evicted,
                    };
                }
                if evicted {
                    // Already made room once: wait for that socket below.
                } else if let Some((_, oldest)) = state.waiting.pop_first() {
                    oldest.cancel();
                    evicted = true;
                } else {
                    return Admission::Full;
                }
            }
            if tokio::time::timeout(EVICTION_WAIT, freed).await.is_err() {
                return Admission::Full;
            }
        }
    }

    fn release(&self, key: Option<u64>) {
        {
            let mut state = self.state();
            if let Some(key) = key {
                state.waiting.remove(&key);
            }
            state.open = state.open.saturating_sub(1);
        }
        self.freed.notify_one();
    }
}

/// One connection's place under the cap; the place is freed when the last
/// clone is dropped, which is after the socket is closed.
#[derive(Clone)]
pub struct Slot(Arc<SlotInner>);

struct SlotInner {
    slots: Arc<Slots>,
    /// Its key in the waiting queue, while waiting for a head.
    waiting: Mutex<Option<u64>>,
    evicted: CancellationToken,
}

impl Slot {
    fn new(slots: Arc<Slots>) -> Self {
        Slot(Arc::new(SlotInner {
            slots,
            waiting: Mutex::new(None),
            evicted: CancellationToken::new(),
        }))
    }

    fn key(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection starts waiting for a request head: it may be evicted,
    /// after every connection that started waiting before it.
    pub fn waiting(&self) {
        let mut key = self.key();
        if key.is_some() || self.0.evicted.is_cancelled() {
            return;
        }
        let mut state = self.0.slots.state();
        let k = state.next_key;
        state.next_key += 1;
        state.waiting.insert(k, self.0.evicted.clone());
        *key = Some(k);
    }

    /// A whole head has arrived: the connection can no longer be evicted.
    /// `false` when it was evicted already (the caller closes it).
    pub fn busy(&self) -> bool {
        let mut key = self.key();
        if let Some(k) = key.take() {
            self.0.slots.state().waiting.remove(&k);
        }
        !self.0.evicted.is_cancelled()
    }

    /// Resolves when a newcomer has taken this connection's place.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.0.evicted.cancelled()
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let key = self
            .waiting
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.slots.release(key);
    }
}

/// Raises the soft open-files limit to the hard one (what Go's runtime
/// does too: the soft default of 1,024 is a relic for `select(2)`, which
/// nothing here uses). Process-wide, so the binary calls it, not the
/// library.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(soft) = limit.current
        && limit.maximum.is_none_or(|hard| hard > soft)
    {
        // Linux refuses an unlimited NOFILE; stop at a large finite value.
        let target = limit.maximum.unwrap_or(1 << 20);
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, soft, "cannot raise the open-files limit");
        }
    }
}

/// The soft open-files limit; `None` where unlimited.
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The connection cap for an open-files limit: the limit less a reserve
/// (a tenth, at least 256) for Postgres, Redis, the admin listener, logs
/// and the sockets being accepted or closed at any moment.
pub fn cap_for_open_files(nofile: u64) -> usize {
    let reserve = (nofile / 10).max(256);
    usize::try_from(nofile.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(16)
}

/// The cap in force: `configured` (0: derived from the open-files limit),
/// never above what the open-files limit allows.
pub fn effective_cap(configured: u32, nofile: Option<u64>) -> usize {
    let allowed = nofile.map_or(FALLBACK_CAP, cap_for_open_files);
    match configured {
        0 => allowed,
        n => (n as usize).min(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> Slot {
        match a {
            Admission::Admitted { slot, .. } => slot,
            Admission::Full => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn the_cap_refuses_when_every_connection_has_sent_its_head() {
        let slots = Slots::new(2);
        let a = admitted(slots.admit().await);
        let b = admitted(slots.admit().await);
        assert!(a.busy() && b.busy());
        assert!(matches!(slots.admit().await, Admission::Full));
        drop(a);
        let c = admitted(slots.admit().await);
        assert_eq!(slots.open(), 2);
        drop((b, c));
        assert_eq!(slots.open(), 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_waiting_connection_gives_way() {
        let slots = Slots::new(3);
        let stream = admitted(slots.admit().await);
        assert!(stream.busy());
        let old = admitted(slots.admit().await);
        old.waiting();
        let young = admitted(slots.admit().await);
        young.waiting();
        // The evicted connection's task closes when told to.
        let closer = {
            let old = old.clone();
            tokio::spawn(async move {
                old.evicted().await;
            })
        };
        drop(old);
        let admit = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit().await }
        });
        closer.await.unwrap();
        match admit.await.unwrap() {
            Admission::Admitted { evicted, .. } => assert!(evicted),
            Admission::Full => panic!("the newcomer was refused"),
        }
        assert!(young.busy(), "the younger one was not evicted");
        assert!(
            tokio::time::timeout(Duration::from_millis(10), stream.evicted())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_evicted_connection_cannot_become_busy() {
        let slots = Slots::new(1);
        let a = admitted(slots.admit().await);
        a.waiting();
        let a2 = a.clone();
        let admit = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit().await }
        });
        a2.evicted().await;
        assert!(!a2.busy());
        drop((a, a2));
        assert!(matches!(
            admit.await.unwrap(),
            Admission::Admitted { evicted: true, .. }
        ));
    }

    #[test]
    fn caps_leave_room_below_the_open_files_limit() {
        assert_eq!(cap_for_open_files(1024), 768);
        assert_eq!(cap_for_open_files(100_000), 90_000);
        assert_eq!(cap_for_open_files(10), 16);
        assert_eq!(effective_cap(0, Some(20_000)), 18_000);
        assert_eq!(effective_cap(500, Some(20_000)), 500);
        assert_eq!(effective_cap(50_000, Some(20_000)), 18_000);
        assert_eq!(effective_cap(0, None), FALLBACK_CAP);
    }
}
