//! One organization's live feed on this replica ([`OrgFeed`]), split into
//! [`Lane`]s: each lane holds a subset of the organization's streams, the
//! channel their tasks receive from and the parked ones it writes to
//! itself, and is always delivered by the same fan-out shard. The protocol
//! between a lane and its streams is in the `delivery` module docs.
//!
//! Why lanes: an organization's fan-out on one task caps it at one core. A
//! large organization's streams are spread over up to one lane per shard
//! (a new stream joins the lane holding the fewest; a new lane opens only
//! when every lane holds [`LANE_STREAMS`]), and every message is queued to
//! every lane of its organization. Each stream belongs to one lane for its
//! life, so it still sees its organization's messages once and in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use realtime_shared::event::EventId;
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use super::outlet::{NOT_PARKED, Outlet, Unparked};
use super::rule::{Verdict, decide};
use super::{FeedMessage, lock};
use crate::chunked::try_write_frames;
use crate::frame::{Frame, now_ms};
use crate::registry::CloseReason;

/// Streams a lane holds before the organization opens another one (while
/// it has fewer lanes than shards). Below it an organization keeps one lane:
/// a message is queued once, as before lanes existed.
pub(super) const LANE_STREAMS: usize = 256;

/// A parked stream, as its lane holds it.
struct Parked {
    outlet: Arc<Outlet>,
    socket: Arc<TcpStream>,
    last_seen: Option<EventId>,
}

/// What a direct delivery of a run of frames came to.
enum Direct {
    /// Still parked (what was for it is written, or nothing was).
    Kept,
    /// Hand the stream back, with the unsent rest of its chunk if any.
    HandBack(Option<Bytes>),
}

impl Parked {
    /// The delivery rule ([`decide`]) over a run of frames, then one
    /// non-blocking `writev` of those to send, as one chunk. `reached[k]`
    /// counts the stream for `run[k]` when it was written (or left in the
    /// rest of the chunk). `sends` is scratch space, empty on return.
    fn deliver<'a>(
        &mut self,
        run: &'a [FeedMessage],
        now_ms: i64,
        reached: &mut [usize],
        sends: &mut Vec<(usize, &'a Frame)>,
    ) -> Direct {
        // A stream being closed (revoked, deleted, drained) gets nothing
        // more; its task is already waking on the close token.
        if self.outlet.handle.close_reason() != CloseReason::None {
            return Direct::Kept;
        }
        let filter = self.outlet.handle.filter();
        let mut revoked = false;
        for (k, message) in run.iter().enumerate() {
            let FeedMessage::Frame(frame) = message else {
                continue;
            };
            match decide(frame, &mut self.last_seen, &self.outlet.user, filter) {
                Verdict::Duplicate | Verdict::Skip => {}
                // The stream's task acts on it: the fresh receiver gets this
                // frame (and the rest of the run), and `last_seen` is left
                // before it. What was decided before it is written first.
                Verdict::Revoke(_) => {
                    revoked = true;
                    break;
                }
                Verdict::Send => sends.push((k, frame)),
            }
        }
        if sends.is_empty() {
            return if revoked {
                Direct::HandBack(None)
            } else {
                Direct::Kept
            };
        }
        let rest = try_write_frames(&self.socket, sends.iter().map(|(_, f)| &f.bytes[..]));
        let rest = match rest {
            Ok(rest) => rest,
            // The client is gone: its task sees the socket close and ends.
            Err(_) => {
                sends.clear();
                return Direct::HandBack(None);
            }
        };
        for (k, frame) in sends.drain(..) {
            reached[k] += 1;
            self.outlet.latency.record(frame.latency_secs(now_ms));
        }
        match rest {
            Some(rest) => Direct::HandBack(Some(rest)),
            None if revoked => Direct::HandBack(None),
            None => Direct::Kept,
        }
    }
}

/// One organization's live feed on this replica: its lanes, opened as its
/// streams grow and kept while the organization is joined.
pub(super) struct OrgFeed {
    capacity: usize,
    /// Lane `i` is delivered by shard `(first_shard + i) % shards`.
    first_shard: usize,
    shards: usize,
    /// Lanes in the order opened; at most `shards`. Read without a lock by
    /// the hub for every message (the first `opened` are set); opened
    /// under `joining`.
    lanes: Box<[OnceLock<Arc<Lane>>]>,
    opened: AtomicUsize,
    /// Held while a stream picks its lane (and maybe opens one).
    joining: Mutex<()>,
}

impl OrgFeed {
    pub(super) fn new(capacity: usize, first_shard: usize, shards: usize) -> Self {
        let shards = shards.max(1);
        OrgFeed {
            capacity,
            first_shard,
            shards,
            lanes: (0..shards).map(|_| OnceLock::new()).collect(),
            opened: AtomicUsize::new(0),
            joining: Mutex::new(()),
        }
    }

    /// The lanes open now, each to be given every message of the feed.
    pub(super) fn lanes(&self) -> impl Iterator<Item = &Arc<Lane>> {
        let opened = self.opened.load(Ordering::Acquire);
        self.lanes[..opened].iter().filter_map(OnceLock::get)
    }

    /// The lane a new stream joins, counted in: the one holding the fewest
    /// streams, or a new one when every lane holds [`LANE_STREAMS`] and
    /// there are fewer lanes than shards. The caller subscribes to it
    /// before it reads history, so the lane's messages from then on reach
    /// the stream.
    pub(super) fn join(&self) -> Arc<Lane> {
        let _joining = lock(&self.joining);
        let least = self
            .lanes()
            .min_by_key(|lane| lane.streams.load(Ordering::Relaxed))
            .cloned();
        let lane = match least {
            Some(lane)
                if lane.streams.load(Ordering::Relaxed) < LANE_STREAMS
                    || self.opened.load(Ordering::Relaxed) == self.shards =>
            {
                lane
            }
            _ => {
                let i = self.opened.load(Ordering::Relaxed);
                let lane = Arc::new(Lane::new(
                    self.capacity,
                    (self.first_shard + i) % self.shards,
                ));
                let _ = self.lanes[i].set(lane.clone());
                self.opened.store(i + 1, Ordering::Release);
                lane
            }
        };
        lane.streams.fetch_add(1, Ordering::Relaxed);
        lane
    }
}

/// A part of an organization's feed: the channel its streams' tasks
/// receive from, and its parked streams, written by one fan-out shard.
pub(super) struct Lane {
    pub(super) tx: broadcast::Sender<FeedMessage>,
    /// The hub's fan-out task that delivers to this lane, always the same.
    pub(super) shard: usize,
    /// Streams holding the lane (their [`super::Subscription`]s).
    pub(super) streams: AtomicUsize,
    /// A std mutex, never held across an await; held while a run of
    /// messages is written to the lane's parked sockets (non-blocking
    /// writes) and sent on the channel.
    parked: Mutex<Vec<Parked>>,
    /// `realtime_gateway_events_delivered_total`, counted once per run for
    /// every parked stream of the lane: one shared atomic per stream and
    /// frame, on both shards' threads, showed in the fan-out profile.
    delivered: metrics::Counter,
}

impl Lane {
    pub(super) fn new(capacity: usize, shard: usize) -> Self {
        Lane {
            tx: broadcast::channel(capacity).0,
            shard,
            streams: AtomicUsize::new(0),
            parked: Mutex::new(Vec::new()),
            delivered: metrics::counter!(crate::metrics::EVENTS_DELIVERED),
        }
    }

    /// Delivers `messages`, in order, to every stream of the lane: parked
    /// ones directly (or handed back), the others through the channel.
    /// Adds to `reached[k]` how many streams `messages[k]` was written or
    /// queued for.
    ///
    /// A run of frames (up to the next resync) is written to each parked
    /// stream as ONE chunk and one `writev`: a lane that fell behind (more
    /// than one job queued on its shard) catches up in one system call per
    /// stream, not one per frame. Every parked stream has had its direct
    /// writes before any of the run is sent on the channel, so a stream
    /// handed back during the run gets a receiver that holds the whole run
    /// and drops what it already passed (`last_seen`).
    pub(super) fn deliver(&self, messages: &[FeedMessage], reached: &mut [usize]) {
        debug_assert_eq!(messages.len(), reached.len());
        let mut parked = lock(&self.parked);
        let mut sends = Vec::new();
        let mut start = 0;
        while start < messages.len() {
            if let FeedMessage::Resync = messages[start] {
                while !parked.is_empty() {
                    let last = parked.len() - 1;
                    self.hand_back(&mut parked, last, None);
                }
                reached[start] += self.tx.send(FeedMessage::Resync).unwrap_or(0);
                start += 1;
                continue;
            }
            let end = messages[start..]
                .iter()
                .position(|m| matches!(m, FeedMessage::Resync))
                .map_or(messages.len(), |p| start + p);
            let run = &messages[start..end];
            let run_reached = &mut reached[start..end];
            let now_ms = now_ms();
            let before: usize = run_reached.iter().sum();
            let mut i = 0;
            while i < parked.len() {
                match parked[i].deliver(run, now_ms, run_reached, &mut sends) {
                    Direct::Kept => i += 1,
                    Direct::HandBack(rest) => self.hand_back(&mut parked, i, rest),
                }
            }
            // What the direct writes reached: counted once per run.
            let delivered = run_reached.iter().sum::<usize>() - before;
            if delivered > 0 {
                self.delivered.increment(delivered as u64);
            }
            // After the hand-backs: their fresh receivers get the run.
            for (message, reached) in run.iter().zip(run_reached.iter_mut()) {
                *reached += self.tx.send(message.clone()).unwrap_or(0);
            }
            start = end;
        }
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
    /// hand-back the lane left for it.
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
