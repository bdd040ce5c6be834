//! A stream's [`Outlet`]: what its organization's feed needs to write to the
//! stream's socket without the stream's task, shared by the three parties
//! of the park/hand-back protocol (see the `delivery` module docs).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use realtime_shared::event::EventId;
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast};

use super::{FeedMessage, lock};
use crate::registry::Handle;

/// `Outlet::slot` of a stream that is not parked.
pub(super) const NOT_PARKED: usize = usize::MAX;

/// One stream's socket and what a direct write to it needs: made by the
/// stream handler, given the socket by the listener, parked in (and handed
/// back by) its organization's [`super::OrgFeed`].
pub struct Outlet {
    pub(super) user: Arc<str>,
    pub(super) handle: Arc<Handle>,
    pub(super) latency: metrics::Histogram,
    /// Set by the listener once the response head is written; a stream
    /// without one (served by hyper) never parks.
    pub(super) socket: OnceLock<Arc<TcpStream>>,
    /// The listener has written everything it was given and is waiting for
    /// the next frame. A stream parks only then: frames it handed over are
    /// on the wire before the feed writes the next one.
    pub(super) listener_idle: AtomicBool,
    /// Index in the feed's parked list, or `NOT_PARKED`; changed under the
    /// feed's lock only.
    pub(super) slot: AtomicUsize,
    /// Left by the feed when it hands the stream back.
    pub(super) unparked: Mutex<Option<Unparked>>,
    /// The unsent rest of a chunk the feed began: written by the listener
    /// before anything else.
    pub(super) leftover: Mutex<Option<Bytes>>,
    /// Signalled when the feed hands the stream back.
    pub(super) handed_back: Notify,
}

/// A parked stream's state coming back to its task.
pub(super) struct Unparked {
    pub rx: broadcast::Receiver<FeedMessage>,
    /// The newest event id passed (sent or filtered out).
    pub last_seen: Option<EventId>,
    /// The stream's place was not found: it must catch up from history.
    pub lost: bool,
}

impl Outlet {
    pub fn new(user: Arc<str>, handle: Arc<Handle>, latency: metrics::Histogram) -> Arc<Self> {
        Arc::new(Outlet {
            user,
            handle,
            latency,
            socket: OnceLock::new(),
            listener_idle: AtomicBool::new(false),
            slot: AtomicUsize::new(NOT_PARKED),
            unparked: Mutex::new(None),
            leftover: Mutex::new(None),
            handed_back: Notify::new(),
        })
    }

    /// The socket the listener writes this stream's body to.
    pub fn attach(&self, socket: Arc<TcpStream>) {
        let _ = self.socket.set(socket);
    }

    /// Whether the listener is waiting with nothing left to write; see the
    /// field.
    pub fn set_listener_idle(&self, idle: bool) {
        self.listener_idle.store(idle, Ordering::Release);
    }

    /// The stream could park but for the listener, which is still writing
    /// what it was given.
    pub fn waits_for_listener(&self) -> bool {
        self.socket.get().is_some() && !self.listener_idle.load(Ordering::Acquire)
    }

    /// Resolves once the listener is idle. It never registers a waker: the
    /// flag is set only by the listener, right before it polls the stream
    /// again (see `serve::direct::pump`), which is when this is looked at.
    pub async fn listener_idle(&self) {
        std::future::poll_fn(|_| {
            if self.listener_idle.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }

    /// Bytes the listener must write before anything else.
    pub fn take_leftover(&self) -> Option<Bytes> {
        lock(&self.leftover).take()
    }

    pub fn has_leftover(&self) -> bool {
        lock(&self.leftover).is_some()
    }

    /// Resolves when the feed handed the stream back (a stored permit: a
    /// hand-back before the wait is not missed).
    pub async fn handed_back(&self) {
        self.handed_back.notified().await;
    }
}
