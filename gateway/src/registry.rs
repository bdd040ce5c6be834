//! The streams open on this replica, by connection id: what `PUT` and
//! `DELETE /api/realtime/stream` (arriving here directly or as control
//! messages from another replica), lease renewal and the paced drain act on.
//!
//! A stream reads its filter and its close signal from its [`Handle`]; the
//! registry never touches a stream's state otherwise. The map is behind a std
//! mutex held for map operations only, never across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::channels::ChannelFilter;

/// Why a stream is being closed; decides its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Still open (or ended by the replica stopping).
    None = 0,
    /// `DELETE` by its user: ends without a reconnection hint.
    Requested = 1,
    /// The replica is draining: a jittered `retry:` first, so the client
    /// reconnects elsewhere without a thundering herd.
    Drain = 2,
    /// The user may no longer read this organization: a `member.leave`
    /// passed, a membership re-check failed, or the database session the
    /// stream was opened with ended. The stream ends at once and drops what
    /// it had queued (it may hold events after the revocation); a browser
    /// that reconnects is refused with 401 or 403.
    Revoked = 3,
}

/// One open stream's shared state.
#[derive(Debug)]
pub struct Handle {
    pub id: Arc<str>,
    pub user: Arc<str>,
    pub org: Arc<str>,
    /// The Auth.js database session token the stream was opened with, if
    /// any: re-checked at an interval (`crate::sessions`), since a sign-out
    /// or a ban deletes the row long before `expires`.
    pub session: Option<Arc<str>>,
    filter: AtomicU16,
    reason: AtomicU8,
    /// Cancelled to end the stream; a child of the replica's stop token.
    closed: CancellationToken,
}

impl Handle {
    pub fn filter(&self) -> ChannelFilter {
        ChannelFilter::from_bits(self.filter.load(Ordering::Relaxed))
    }

    pub fn set_filter(&self, filter: ChannelFilter) {
        self.filter.store(filter.bits(), Ordering::Relaxed);
    }

    /// Ends the stream after what it has queued; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.compare_exchange(
            CloseReason::None as u8,
            reason as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.closed.cancel();
    }

    pub fn close_reason(&self) -> CloseReason {
        match self.reason.load(Ordering::Relaxed) {
            1 => CloseReason::Requested,
            2 => CloseReason::Drain,
            3 => CloseReason::Revoked,
            _ => CloseReason::None,
        }
    }

    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }
}

#[derive(Clone, Default)]
pub(crate) struct Registry {
    inner: Arc<Mutex<HashMap<Arc<str>, Arc<Handle>>>>,
}

/// Removes its handle from the registry when the stream ends.
pub(crate) struct Registration {
    registry: Registry,
    pub handle: Arc<Handle>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Handle>>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn register(
        &self,
        id: Arc<str>,
        user: Arc<str>,
        org: Arc<str>,
        session: Option<Arc<str>>,
        filter: ChannelFilter,
        stop: &CancellationToken,
    ) -> Registration {
        let handle = Arc::new(Handle {
            id: id.clone(),
            user,
            org,
            session,
            filter: AtomicU16::new(filter.bits()),
            reason: AtomicU8::new(CloseReason::None as u8),
            closed: stop.child_token(),
        });
        self.lock().insert(id, handle.clone());
        Registration {
            registry: self.clone(),
            handle,
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Handle>> {
        self.lock().get(id).cloned()
    }

    /// The user's streams of one organization on this replica.
    pub(crate) fn of_user_in_org(&self, user: &str, org: &str) -> Vec<Arc<Handle>> {
        self.lock()
            .values()
            .filter(|h| &*h.user == user && &*h.org == org)
            .cloned()
            .collect()
    }

    /// A `member.leave` of (`user`, `org`) passed this replica: closes the
    /// user's streams of that organization, wherever each stream stands in
    /// its own sequence (lagging, catching up, parked). Returns how many.
    ///
    /// Called by the hub before the leave is queued to any stream, so no
    /// event after the leave is written to these streams.
    pub(crate) fn revoke_member(&self, user: &str, org: &str) -> usize {
        let handles = self.of_user_in_org(user, org);
        for handle in &handles {
            handle.close(CloseReason::Revoked);
        }
        handles.len()
    }

    /// The open streams opened with a database session.
    pub(crate) fn with_sessions(&self) -> Vec<Arc<Handle>> {
        self.lock()
            .values()
            .filter(|h| h.session.is_some())
            .cloned()
            .collect()
    }

    /// Every open stream, for lease renewal and draining.
    pub(crate) fn all(&self) -> Vec<Arc<Handle>> {
        self.lock().values().cloned().collect()
    }

    /// Whether no stream is open (tests).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.handle.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_lives_as_long_as_the_stream() {
        let registry = Registry::default();
        let stop = CancellationToken::new();
        let reg = registry.register(
            "c1".into(),
            "u".into(),
            "o".into(),
            None,
            ChannelFilter::ALL,
            &stop,
        );
        assert!(registry.get("c1").is_some());
        assert_eq!(registry.of_user_in_org("u", "o").len(), 1);
        assert!(registry.of_user_in_org("u", "other").is_empty());
        drop(reg);
        assert!(registry.get("c1").is_none());
        assert!(registry.is_empty());
    }

    #[test]
    fn first_close_reason_wins_and_stop_closes_all() {
        let registry = Registry::default();
        let stop = CancellationToken::new();
        let a = registry.register(
            "a".into(),
            "u".into(),
            "o".into(),
            None,
            ChannelFilter::ALL,
            &stop,
        );
        a.handle.close(CloseReason::Requested);
        a.handle.close(CloseReason::Drain);
        assert_eq!(a.handle.close_reason(), CloseReason::Requested);
        let b = registry.register(
            "b".into(),
            "u".into(),
            "o".into(),
            None,
            ChannelFilter::ALL,
            &stop,
        );
        stop.cancel();
        assert!(b.handle.closed().is_cancelled());
        assert_eq!(b.handle.close_reason(), CloseReason::None);
    }

    #[test]
    fn filter_changes_are_seen() {
        let registry = Registry::default();
        let stop = CancellationToken::new();
        let r = registry.register(
            "a".into(),
            "u".into(),
            "o".into(),
            None,
            ChannelFilter::ALL,
            &stop,
        );
        let (f, _) = ChannelFilter::parse(Some("property")).unwrap();
        r.handle.set_filter(f);
        assert_eq!(r.handle.filter(), f);
    }

    #[test]
    fn a_leave_revokes_only_that_users_streams_of_that_org() {
        let registry = Registry::default();
        let stop = CancellationToken::new();
        let register = |id: &str, user: &str, org: &str| {
            registry.register(
                id.into(),
                user.into(),
                org.into(),
                Some("s".into()),
                ChannelFilter::ALL,
                &stop,
            )
        };
        let (a, b, c, d) = (
            register("a", "u", "o"),
            register("b", "u", "o"),
            register("c", "u", "other"),
            register("d", "v", "o"),
        );
        assert_eq!(registry.revoke_member("u", "o"), 2);
        for r in [&a, &b] {
            assert_eq!(r.handle.close_reason(), CloseReason::Revoked);
            assert!(r.handle.closed().is_cancelled());
        }
        for r in [&c, &d] {
            assert_eq!(r.handle.close_reason(), CloseReason::None);
        }
        assert_eq!(registry.with_sessions().len(), 4);
    }
}
