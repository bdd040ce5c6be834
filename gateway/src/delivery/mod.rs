//! Live delivery on one replica: from the Redis channels to each stream's
//! socket. Edges point one way: the stream handler (`crate::app`) and the
//! stream's task (`crate::connection`) use this module; this module uses
//! only [`crate::frame`], [`crate::chunked`], [`crate::channels`],
//! [`crate::registry`] and [`crate::trace`], never its callers.
//!
//! - [`Hub`] (`hub.rs`): one Redis subscription per organization with local
//!   streams, each message parsed and encoded once and queued to every lane
//!   of the organization's feed, each lane on its fan-out shard (one shard
//!   per runtime worker: a lane's order is kept, different lanes are written
//!   in parallel). A shard that fell behind gives each lane all its queued
//!   messages at once, and a parked stream gets them in one `writev`. On a
//!   Redis Cluster its subscriber is `hub/sharded.rs`: `SSUBSCRIBE` on the
//!   shard owning each channel's slot, resubscribing and resyncing when a
//!   slot moves or a node drops.
//! - `shard.rs`: a fan-out shard's task, which takes every job queued for
//!   it (bounded) and gives each lane its messages in one call.
//! - `OrgFeed` (`feed.rs`): one organization's live feed, split into lanes
//!   (up to one per shard, opened as the organization's streams grow past
//!   `LANE_STREAMS` per lane), so one large organization uses every core.
//!   A stream belongs to one lane for its life. A lane is a bounded
//!   `broadcast` channel its streams' tasks receive from, and the parked
//!   streams it writes to itself. A stream that falls more than the
//!   channel's capacity behind gets `Lagged` and catches up from history;
//!   memory never grows with a slow client.
//! - [`Subscription`] (`subscription.rs`): a stream's hold on its lane, with
//!   the park and unpark calls below; `joined.rs`: the channels joined, with
//!   how many streams hold each (the last one to let go ends the Redis
//!   subscription).
//! - [`Outlet`] (`outlet.rs`): a stream's socket and what a direct write to
//!   it needs, shared by the three parties below.
//! - [`decide`] (`rule.rs`): who gets a frame (revocation, duplicate, user
//!   target, channel filter), the one rule of both paths.
//!
//! # Parking: who writes to a stream's socket
//!
//! Why: with one event every 100 ms per stream nothing can be coalesced,
//! so waking a stream's task for each frame (and the poll of the body
//! behind it) was most of the gateway's own work per delivery. A stream
//! with nothing of its own to send therefore *parks*: its feed writes each
//! live frame straight to its socket, as one chunk and one non-blocking
//! `writev`, without waking anything.
//!
//! Three parties touch a stream served by the listener (`crate::serve`):
//! its **task** (the body stream, `crate::connection`), the **listener**
//! (which writes what the body yields) and its **lane** of the
//! organization's feed (run by one fan-out shard; "the feed" below). The
//! contract:
//!
//! 1. **One writer at a time.** The listener writes only what the task
//!    yields, and the task yields nothing while parked. The feed writes
//!    only to streams in its parked list, and only while holding the lane's
//!    lock. A stream enters and leaves that list under the same lock, so
//!    once `unpark` (or a hand-back) returned, the feed is not in the middle
//!    of a write and will not start one.
//! 2. **Parking** ([`Subscription::park`]) succeeds only when the stream has
//!    a socket, the listener is idle (it has written everything it was
//!    given and waits for the next frame, `Outlet::set_listener_idle`), and
//!    the stream's receiver holds nothing unread, checked under the feed's
//!    lock. The feed sends each message to the channel under that lock too,
//!    so every message is either already in the receiver (and parking is
//!    refused) or delivered after the stream is in the list (and written
//!    directly): none falls between. The feed delivers a run of messages
//!    (those its shard had queued for the lane) under one hold of the lock:
//!    each parked stream gets the run's frames for it in one chunk, and
//!    only then is the run sent on the channel.
//! 3. **Hand-back** (by the feed): when a write would block or stops
//!    half-way, when the frame revokes the stream ([`Verdict::Revoke`]: its
//!    task must act on it), when the client is gone, and on a resync. Under
//!    the lock the feed removes the stream, subscribes it a fresh receiver
//!    *before* any frame of the run being delivered is sent on the channel
//!    (so the stream receives the whole run and everything after it; what
//!    it already passed is dropped by 5), leaves the
//!    unsent rest of a half-written chunk in the outlet, and wakes the task.
//!    The feed never waits for a socket: the listener, which does, writes
//!    that rest before anything else (the task yields an empty frame to ask
//!    for it when it has nothing else to send).
//! 4. **Unpark** (by the task, for its own reasons: heartbeat, close,
//!    expiry, or being handed back) takes the stream out of the list, or
//!    takes the hand-back the feed left, with a fresh receiver.
//! 5. **Nothing is repeated**: the id of the newest event passed
//!    (`last_seen`) travels with the stream both ways, and [`decide`] drops
//!    what a fresh receiver repeats as duplicates (frames written, or left
//!    in a partial write's rest, were passed already; a revoking frame was
//!    not, nor anything after it in its run, so the task sees them). **Nothing is lost**: by 2 and 3 every message
//!    reaches the stream through exactly one of the direct write and the
//!    receiver, and a half-written chunk is finished before anything else.
//!
//! A stream served by hyper (no socket in its outlet) never parks.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

mod feed;
mod hub;
mod joined;
mod outlet;
mod rule;
mod shard;
mod subscription;
#[cfg(test)]
mod tests;

pub(crate) use hub::Hub;
pub(crate) use outlet::Outlet;
pub(crate) use rule::{Revocation, Verdict, admit, decide};
pub(crate) use subscription::Subscription;

use crate::frame::Frame;

/// What an organization's feed carries to its streams.
#[derive(Debug, Clone)]
pub(crate) enum FeedMessage {
    Frame(Arc<Frame>),
    /// The live feed may have missed messages: catch up from history.
    Resync,
}

/// A std mutex's guard, poisoned or not.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
