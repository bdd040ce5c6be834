//! Direct delivery to idle streams.
//!
//! A stream served by the listener (`serve.rs`) that has nothing of its own
//! to send (no queued frame, no catch-up, its receiver empty, the listener
//! done writing) *parks*: it gives its receiver up and puts its [`Sink`]
//! (socket, user, filter) in its organization's [`OrgFeed`]. The hub's
//! fan-out then writes each live frame straight to the socket, as one chunk and one non-blocking `writev`, instead of
//! waking the stream's task to do it. With one event every 100 ms per stream
//! nothing can be coalesced, so that wake-up and the poll of the stream
//! behind it were most of the gateway's own work per delivery.
//!
//! Who may write to a socket passes under the feed's lock: the hub while the
//! stream is parked, the stream's task otherwise. The feed hands a stream
//! back (a fresh receiver, subscribed under the lock before the frame being
//! delivered is sent, so the stream gets it and everything after) when a
//! write would block or stopped half-way (the unsent rest goes to the
//! listener, which writes it before anything else), for a `member.leave` of
//! its user and for a resync. The stream takes itself back for its own
//! reasons (heartbeat, close, expiry). The id of the newest event passed
//! travels with the stream both ways, so the frames that a fresh receiver
//! repeats are dropped as duplicates.

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::{BufMut, Bytes, BytesMut};
use realtime_shared::event::EventId;
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast};

use crate::frame::Frame;
use crate::hub::HubMessage;
use crate::registry::{CloseReason, Handle};
use crate::serve::chunk_size_line;

const NOT_PARKED: usize = usize::MAX;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the feed needs to deliver to one stream without its task.
pub struct Sink {
    user: Arc<str>,
    handle: Arc<Handle>,
    delivered: metrics::Counter,
    latency: metrics::Histogram,
    /// Set by the listener once the response head is written; a stream
    /// without one (served by hyper) never parks.
    socket: OnceLock<Arc<TcpStream>>,
    /// The listener has written everything it was given and is waiting for
    /// the next frame. A stream parks only then: frames it handed over are
    /// on the wire before the hub writes the next one.
    listener_idle: AtomicBool,
    /// Index in the feed's parked list, or `NOT_PARKED`; changed under the
    /// feed's lock only.
    slot: AtomicUsize,
    /// Left by the feed when it hands the stream back.
    handback: Mutex<Option<Handback>>,
    /// The unsent rest of a chunk the feed began: written by the listener
    /// before anything else.
    leftover: Mutex<Option<Bytes>>,
    unparked: Notify,
}

/// A parked stream's state coming back to its task.
pub struct Handback {
    pub rx: broadcast::Receiver<HubMessage>,
    /// The newest event id passed (sent or filtered out).
    pub last_seen: Option<EventId>,
    /// The stream's place was not found: it must catch up from history.
    pub lost: bool,
}

impl Sink {
    pub fn new(
        user: Arc<str>,
        handle: Arc<Handle>,
        delivered: metrics::Counter,
        latency: metrics::Histogram,
    ) -> Arc<Self> {
        Arc::new(Sink {
            user,
            handle,
            delivered,
            latency,
            socket: OnceLock::new(),
            listener_idle: AtomicBool::new(false),
            slot: AtomicUsize::new(NOT_PARKED),
            handback: Mutex::new(None),
            leftover: Mutex::new(None),
            unparked: Notify::new(),
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
    /// again (see `serve::pump`), which is when this is looked at.
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
        self.unparked.notified().await;
    }
}

/// A parked stream, as its feed holds it.
struct Parked {
    sink: Arc<Sink>,
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
    /// The same decisions as the stream's own `offer`, then one `writev`.
    fn deliver(&mut self, frame: &Frame, now_ms: i64) -> Direct {
        // A stream being closed (revoked, deleted, drained) gets nothing
        // more; its task is already waking on the close token.
        if self.sink.handle.close_reason() != CloseReason::None {
            return Direct::Skipped;
        }
        // Revocation before de-duplication: a leave at or below the stream's
        // position still counts (a membership checked before the leave was
        // committed, a position taken after it). The stream's task acts on
        // it (the fresh receiver gets this frame; `last_seen` is left
        // before it).
        if frame.revokes(&self.sink.user) {
            return Direct::HandBack(None);
        }
        if self.last_seen.is_some_and(|last| frame.id <= last) {
            return Direct::Skipped;
        }
        self.last_seen = Some(frame.id);
        let for_me = frame
            .user_id
            .as_deref()
            .is_none_or(|u| u == &*self.sink.user);
        if !for_me || !self.sink.handle.filter().passes(frame.event_type) {
            return Direct::Skipped;
        }
        let mut size_buf = [0u8; 18];
        let size = chunk_size_line(frame.bytes.len(), &mut size_buf);
        let parts: [&[u8]; 3] = [size, &frame.bytes, b"\r\n"];
        let slices = parts.map(IoSlice::new);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let written = match self.socket.try_write_vectored(&slices) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            // The client is gone: its task sees the socket close and ends.
            Err(_) => return Direct::HandBack(None),
        };
        self.sink.delivered.increment(1);
        self.sink
            .latency
            .record((now_ms - frame.commit_ms).max(0) as f64 / 1000.0);
        if written >= total {
            return Direct::Written;
        }
        Direct::HandBack(Some(unsent(&parts, written)))
    }
}

/// What is left of `parts`, written in order, after the first `written`
/// bytes went out.
fn unsent(parts: &[&[u8]], written: usize) -> Bytes {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut rest = BytesMut::with_capacity(total.saturating_sub(written));
    let mut skip = written;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        rest.put_slice(&part[skip..]);
        skip = 0;
    }
    rest.freeze()
}

/// One organization's live feed on this replica: the channel the streams'
/// tasks receive from, and the parked streams the hub writes to itself.
pub struct OrgFeed {
    pub(crate) tx: broadcast::Sender<HubMessage>,
    /// The hub's fan-out task that delivers to this feed, always the same.
    pub(crate) shard: usize,
    /// A std mutex, never held across an await; held while the hub writes
    /// one frame to the organization's parked sockets (non-blocking writes).
    parked: Mutex<Vec<Parked>>,
}

impl OrgFeed {
    pub fn new(capacity: usize, shard: usize) -> Self {
        OrgFeed {
            tx: broadcast::channel(capacity).0,
            shard,
            parked: Mutex::new(Vec::new()),
        }
    }

    /// Delivers `message` to every local stream of the organization: parked
    /// ones directly (or handed back), the others through the channel.
    /// Returns how many streams it was written or queued for.
    pub fn deliver(&self, message: HubMessage) -> usize {
        let mut parked = lock(&self.parked);
        let mut direct = 0;
        match &message {
            HubMessage::Frame(frame) => {
                let now_ms = crate::stream::now_ms();
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
            HubMessage::Resync => {
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
            *lock(&p.sink.leftover) = Some(rest);
        }
        *lock(&p.sink.handback) = Some(Handback {
            rx: self.tx.subscribe(),
            last_seen: p.last_seen,
            lost: false,
        });
        p.sink.unparked.notify_one();
    }

    /// Parks `sink` unless `rx` holds something unread (or there is no
    /// socket): then `rx` comes back.
    pub fn park(
        &self,
        sink: &Arc<Sink>,
        rx: broadcast::Receiver<HubMessage>,
        last_seen: Option<EventId>,
    ) -> Result<(), broadcast::Receiver<HubMessage>> {
        let Some(socket) = sink.socket.get() else {
            return Err(rx);
        };
        if !sink.listener_idle.load(Ordering::Acquire) {
            return Err(rx);
        }
        let mut parked = lock(&self.parked);
        if !rx.is_empty() {
            return Err(rx);
        }
        // A hand-back not yet taken would be stale once parked again.
        lock(&sink.handback).take();
        sink.slot.store(parked.len(), Ordering::Relaxed);
        parked.push(Parked {
            sink: sink.clone(),
            socket: socket.clone(),
            last_seen,
        });
        drop(rx);
        Ok(())
    }

    /// Takes a parked stream back: from the parked list, or from the
    /// hand-back the feed left for it.
    pub fn unpark(&self, sink: &Arc<Sink>) -> Handback {
        let mut parked = lock(&self.parked);
        let slot = sink.slot.load(Ordering::Relaxed);
        if slot != NOT_PARKED {
            let p = remove_at(&mut parked, slot);
            return Handback {
                rx: self.tx.subscribe(),
                last_seen: p.last_seen,
                lost: false,
            };
        }
        match lock(&sink.handback).take() {
            Some(back) => back,
            None => Handback {
                rx: self.tx.subscribe(),
                last_seen: None,
                lost: true,
            },
        }
    }

    /// A receiver for a stream whose place is unknown.
    pub fn lost(&self) -> Handback {
        Handback {
            rx: self.tx.subscribe(),
            last_seen: None,
            lost: true,
        }
    }
}

fn remove_at(parked: &mut Vec<Parked>, i: usize) -> Parked {
    let p = parked.swap_remove(i);
    p.sink.slot.store(NOT_PARKED, Ordering::Relaxed);
    if let Some(moved) = parked.get(i) {
        moved.sink.slot.store(i, Ordering::Relaxed);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unsent_rest_continues_where_the_write_stopped() {
        let parts: [&[u8]; 3] = [b"c\r\n", b"id: 1\ndata: x\n\n", b"\r\n"];
        let whole: Vec<u8> = parts.concat();
        for written in 0..=whole.len() {
            assert_eq!(
                &unsent(&parts, written)[..],
                &whole[written..],
                "after {written}"
            );
        }
    }
}
