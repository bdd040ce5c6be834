//! One organization's live feed on this replica ([`OrgFeed`]): the channel
//! the streams' tasks receive from, and the parked streams it writes to
//! itself. The protocol between them is in the `delivery` module docs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use realtime_shared::event::EventId;
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use super::outlet::{NOT_PARKED, Outlet, Unparked};
use super::rule::{Verdict, decide};
use super::{FeedMessage, lock};
use crate::chunked::try_write_chunk;
use crate::frame::{Frame, now_ms};
use crate::registry::CloseReason;

/// A parked stream, as its feed holds it.
struct Parked {
    outlet: Arc<Outlet>,
    socket: Arc<TcpStream>,
    last_seen: Option<EventId>,
}

/// What a direct delivery came to.
enum Direct {
    /// Not for this stream (a duplicate, another user's, filtered out).
    Skipped,
    Written,
    /// Hand the stream back, with the unsent rest of its chunk if any.
    HandBack(Option<Bytes>),
}

impl Parked {
    /// The delivery rule ([`decide`]), then one non-blocking `writev`.
    fn deliver(&mut self, frame: &Frame, now_ms: i64) -> Direct {
        // A stream being closed (revoked, deleted, drained) gets nothing
        // more; its task is already waking on the close token.
        if self.outlet.handle.close_reason() != CloseReason::None {
            return Direct::Skipped;
        }
        let filter = self.outlet.handle.filter();
        match decide(frame, &mut self.last_seen, &self.outlet.user, filter) {
            Verdict::Duplicate | Verdict::Skip => return Direct::Skipped,
            // The stream's task acts on it: the fresh receiver gets this
            // frame, and `last_seen` is left before it.
            Verdict::Revoke(_) => return Direct::HandBack(None),
            Verdict::Send => {}
        }
        let rest = match try_write_chunk(&self.socket, &frame.bytes) {
            Ok(rest) => rest,
            // The client is gone: its task sees the socket close and ends.
            Err(_) => return Direct::HandBack(None),
        };
        self.outlet.delivered.increment(1);
        self.outlet.latency.record(frame.latency_secs(now_ms));
        match rest {
            None => Direct::Written,
            Some(rest) => Direct::HandBack(Some(rest)),
        }
    }
}

/// One organization's live feed on this replica: the channel the streams'
/// tasks receive from, and the parked streams the hub's fan-out writes to
/// itself.
pub(super) struct OrgFeed {
    pub(super) tx: broadcast::Sender<FeedMessage>,
    /// The hub's fan-out task that delivers to this feed, always the same.
    pub(super) shard: usize,
    /// A std mutex, never held across an await; held while one frame is
    /// written to the organization's parked sockets (non-blocking writes).
    parked: Mutex<Vec<Parked>>,
}

impl OrgFeed {
    pub(super) fn new(capacity: usize, shard: usize) -> Self {
        OrgFeed {
            tx: broadcast::channel(capacity).0,
            shard,
            parked: Mutex::new(Vec::new()),
        }
    }

    /// Delivers `message` to every local stream of the organization: parked
    /// ones directly (or handed back), the others through the channel.
    /// Returns how many streams it was written or queued for.
    pub(super) fn deliver(&self, message: FeedMessage) -> usize {
        let mut parked = lock(&self.parked);
        let mut direct = 0;
        match &message {
            FeedMessage::Frame(frame) => {
                let now_ms = now_ms();
                let mut i = 0;
                while i < parked.len() {
                    match parked[i].deliver(frame, now_ms) {
                        Direct::Skipped => i += 1,
                        Direct::Written => {
                            direct += 1;
                            i += 1;
                        }
                        Direct::HandBack(rest) => {
                            direct += usize::from(rest.is_some());
                            self.hand_back(&mut parked, i, rest);
                        }
                    }
                }
            }
            FeedMessage::Resync => {
                while !parked.is_empty() {
                    let last = parked.len() - 1;
                    self.hand_back(&mut parked, last, None);
                }
            }
        }
        // After the hand-backs: their fresh receivers get this message.
        direct + self.tx.send(message).unwrap_or(0)
    }

    fn hand_back(&self, parked: &mut Vec<Parked>, i: usize, rest: Option<Bytes>) {
        let p = remove_at(parked, i);
        if let Some(rest) = rest {
            *lock(&p.outlet.leftover) = Some(rest);
        }
        *lock(&p.outlet.unparked) = Some(Unparked {
            rx: self.tx.subscribe(),
            last_seen: p.last_seen,
            lost: false,
        });
        p.outlet.handed_back.notify_one();
    }

    /// Parks `outlet` unless `rx` holds something unread, the listener is
    /// still writing or there is no socket: then `rx` comes back.
    pub(super) fn park(
        &self,
        outlet: &Arc<Outlet>,
        rx: broadcast::Receiver<FeedMessage>,
        last_seen: Option<EventId>,
    ) -> Result<(), broadcast::Receiver<FeedMessage>> {
        let Some(socket) = outlet.socket.get() else {
            return Err(rx);
        };
        if !outlet.listener_idle.load(Ordering::Acquire) {
            return Err(rx);
        }
        let mut parked = lock(&self.parked);
        if !rx.is_empty() {
            return Err(rx);
        }
        // A hand-back not yet taken would be stale once parked again.
        lock(&outlet.unparked).take();
        outlet.slot.store(parked.len(), Ordering::Relaxed);
        parked.push(Parked {
            outlet: outlet.clone(),
            socket: socket.clone(),
            last_seen,
        });
        drop(rx);
        Ok(())
    }

    /// Takes a parked stream back: from the parked list, or from the
    /// hand-back the feed left for it.
    pub(super) fn unpark(&self, outlet: &Arc<Outlet>) -> Unparked {
        let mut parked = lock(&self.parked);
        let slot = outlet.slot.load(Ordering::Relaxed);
        if slot != NOT_PARKED {
            let p = remove_at(&mut parked, slot);
            return Unparked {
                rx: self.tx.subscribe(),
                last_seen: p.last_seen,
                lost: false,
            };
        }
        match lock(&outlet.unparked).take() {
            Some(back) => back,
            None => Unparked {
                rx: self.tx.subscribe(),
                last_seen: None,
                lost: true,
            },
        }
    }

    /// A receiver for a stream whose place is unknown.
    pub(super) fn lost(&self) -> Unparked {
        Unparked {
            rx: self.tx.subscribe(),
            last_seen: None,
            lost: true,
        }
    }
}

fn remove_at(parked: &mut Vec<Parked>, i: usize) -> Parked {
    let p = parked.swap_remove(i);
    p.outlet.slot.store(NOT_PARKED, Ordering::Relaxed);
    if let Some(moved) = parked.get(i) {
        moved.outlet.slot.store(i, Ordering::Relaxed);
    }
    p
}
