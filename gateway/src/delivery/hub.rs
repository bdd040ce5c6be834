//! The [`Hub`]: one Redis subscription per organization that has local
//! streams (plus the broadcast and control channels), each message parsed
//! and encoded once ([`Frame`]) and queued to every lane of the
//! organization's [`OrgFeed`], each on the fan-out shard that delivers it.
//!
//! Broadcast-scope events are forwarded into every organization's feed, so
//! a stream reads ONE totally ordered sequence (Redis delivers one
//! connection's messages in publish order, which is commit order) and can
//! drop duplicates by comparing ids.
//!
//! On a Redis Cluster the broadcast channel and an organization's channel
//! are read from different shards, so that one sequence is not given by
//! Redis: [`BroadcastOrder`] says how the hub keeps it.
//!
//! A SUBSCRIBE is confirmed before [`Subscription::ready`] resolves, so a
//! stream that subscribes, then replays history, misses nothing. After a
//! Redis disconnection the task resubscribes everything and sends
//! [`FeedMessage::Resync`], telling streams to fill the gap from history.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use realtime_shared::event::{EventId, Scope};
use realtime_shared::keys::Keys;
use realtime_shared::redis_target::RedisTarget;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::FeedMessage;
use super::feed::OrgFeed;
use super::joined::{Command, Entry, Joined};
use super::shard::{Job, SHARD_QUEUE, TraceDone, fan_out};
use super::subscription::Subscription;
use crate::frame::{Frame, Leave};
use crate::trace::Fanout;

/// The subscriber on a Redis Cluster (sharded pub/sub).
mod sharded;

/// Called for every `member.leave` seen, with its organization (`None` for
/// a broadcast one), before the leave is queued to any stream.
type LeaveHook = Box<dyn Fn(Leave<'_>, Option<&str>) + Send + Sync>;

/// On a Redis Cluster, how the hub keeps broadcasts in each stream's one
/// sequence (ARCHITECTURE.md §4, *Broadcast order*). A broadcast and the
/// organization events around it arrive over different shards' connections
/// and may be read in either order, though both were in their histories
/// before the later one was published:
///
/// - an organization event read before an earlier broadcast would make
///   streams drop that broadcast as a duplicate by id. The ingestor names
///   the last broadcast in every organization event (`lastBroadcast`); one
///   naming a broadcast newer than [`Self::newest`] is preceded, in every
///   feed, by a resync: the streams fill the gap from the histories (both
///   hold the broadcast and the event, merged by id) and drop the live
///   copies. The broadcast then counts as read, so a broadcast lost from
///   Redis (a flush) costs one resync, not one per later event.
/// - a broadcast read before an earlier organization event would make
///   streams drop that event. So a broadcast is handed to every feed as a
///   resync rather than as a frame: the streams read both histories up to
///   it, the late organization event included, and drop the live copies.
///   Broadcasts are rare (`system.alert`, truncates, a lost slot), and the
///   resync reads are shared per organization and position.
#[derive(Debug)]
pub(super) struct BroadcastOrder {
    /// The newest broadcast read live, or found in the broadcast history
    /// when the session subscribed.
    newest: Option<EventId>,
}

/// Called with the payload of every message on the control channel.
type ControlHook = Box<dyn Fn(&[u8]) + Send + Sync>;

struct Inner {
    keys: Keys,
    capacity: usize,
    /// The channels joined, shared with every [`Subscription`].
    joined: Arc<Joined>,
    /// Called once per `member.leave` frame (membership cache invalidation
    /// and closing the member's streams through the registry).
    on_leave: LeaveHook,
    /// Control messages (`rt:{control}`) for this replica's streams.
    on_control: ControlHook,
    /// The fan-out tasks, one per runtime worker: a lane always goes to the
    /// same one (its order is kept), different lanes (of different
    /// organizations, or of one large organization) are written in
    /// parallel, and no single thread caps the replica's deliveries nor an
    /// organization's.
    shards: Vec<mpsc::Sender<Job>>,
    /// Round-robin assignment of new feeds' first lanes to shards (a feed's
    /// next lanes go to the shards after it).
    next_shard: AtomicUsize,
}

/// Cheap to clone; see the module docs.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the subscriber task; it runs until `shutdown`. `redis` is the
    /// replica's one node or cluster (TLS and ACL user included): every
    /// pub/sub (re)connection is opened from it.
    pub(crate) fn start(
        redis: RedisTarget,
        keys: Keys,
        capacity: usize,
        on_leave: impl Fn(Leave<'_>, Option<&str>) + Send + Sync + 'static,
        on_control: impl Fn(&[u8]) + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let shards = (0..workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(SHARD_QUEUE);
                tokio::spawn(fan_out(rx, shutdown.clone()));
                tx
            })
            .collect();
        let hub = Hub {
            inner: Arc::new(Inner {
                keys,
                capacity,
                joined: Arc::new(Joined::new(tx)),
                on_leave: Box::new(on_leave),
                on_control: Box::new(on_control),
                shards,
                next_shard: AtomicUsize::new(0),
            }),
        };
        tokio::spawn(hub.clone().run(redis, rx, shutdown));
        hub
    }

    /// Joins an organization's feed.
    pub(crate) fn join(&self, org: &str) -> Subscription {
        let channel = self
            .inner
            .keys
            .channel(&Scope::Organization(org.to_owned()));
        let mut entries = self.lock();
        let entry = entries.entry(channel.clone()).or_insert_with(|| {
            self.inner
                .joined
                .command(Command::Subscribe(channel.clone()));
            Entry {
                org: org.to_owned(),
                feed: Arc::new(OrgFeed::new(
                    self.inner.capacity,
                    self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % self.inner.shards.len(),
                    self.inner.shards.len(),
                )),
                refs: 0,
                ready: watch::channel(None).0,
            }
        });
        entry.refs += 1;
        let lane = entry.feed.join();
        Subscription::new(
            self.inner.joined.clone(),
            channel,
            lane.tx.subscribe(),
            entry.ready.subscribe(),
            lane,
        )
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.joined.lock()
    }

    async fn run(
        self,
        redis: RedisTarget,
        mut commands: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
    ) {
        let broadcast_channel = self.inner.keys.channel(&Scope::Broadcast);
        let mut first = true;
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let session = match &redis {
                RedisTarget::Single(client) => {
                    self.session(client, &broadcast_channel, &mut commands, &shutdown, first)
                        .await
                }
                RedisTarget::Cluster(seeds) => {
                    self.sharded_session(seeds, &broadcast_channel, &mut commands, &shutdown, first)
                        .await
                }
            };
            match session {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "redis subscription lost; resubscribing");
                    for entry in self.lock().values() {
                        entry.ready.send_replace(None);
                    }
                }
            }
            first = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// One Redis pub/sub connection; `Ok` only on shutdown.
    async fn session(
        &self,
        client: &redis::Client,
        broadcast_channel: &str,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        shutdown: &CancellationToken,
        first: bool,
    ) -> redis::RedisResult<()> {
        let (mut subscriber, mut messages) = client.get_async_pubsub().await?.split();
        subscriber.subscribe(broadcast_channel).await?;
        let control_channel = self.inner.keys.control();
        subscriber.subscribe(&control_channel).await?;
        // Commands queued while disconnected are reflected in the map.
        while commands.try_recv().is_ok() {}
        let channels: Vec<String> = self.lock().keys().cloned().collect();
        for channel in &channels {
            subscriber.subscribe(channel).await?;
        }
        self.subscribed_all(first).await;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                command = commands.recv() => match command {
                    Some(Command::Subscribe(channel)) => {
                        subscriber.subscribe(&channel).await?;
                        if let Some(entry) = self.lock().get(&channel) {
                            entry.ready.send_replace(Some(Instant::now()));
                        }
                    }
                    Some(Command::Unsubscribe(channel)) => {
                        // Re-joined meanwhile: keep the subscription.
                        if !self.lock().contains_key(&channel) {
                            subscriber.unsubscribe(&channel).await?;
                        }
                    }
                    None => return Ok(()),
                },
                message = messages.next() => match message {
                    Some(message) if message.get_channel_name() == control_channel => {
                        (self.inner.on_control)(message.get_payload_bytes());
                    }
                    Some(message) => self.dispatch(message.get_channel_name(), message.get_payload_bytes(), broadcast_channel, None).await,
                    None => return Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub connection closed"))),
                },
            }
        }
    }

    /// After (re)subscribing every joined channel: marks each ready (a
    /// waiting stream may replay history now) and, after a reconnection
    /// (`!first`), tells every feed to resync from history. Both
    /// subscribers (one node, cluster) call it.
    async fn subscribed_all(&self, first: bool) {
        let now = Instant::now();
        let feeds: Vec<Arc<OrgFeed>> = self
            .lock()
            .values()
            .map(|entry| {
                entry.ready.send_replace(Some(now));
                entry.feed.clone()
            })
            .collect();
        if !first {
            for feed in feeds {
                self.enqueue(feed, FeedMessage::Resync, None).await;
            }
        }
    }

    /// Hands `message` to the shard of each lane of `feed`, waiting while
    /// one is full.
    async fn enqueue(
        &self,
        feed: Arc<OrgFeed>,
        message: FeedMessage,
        trace: Option<Arc<TraceDone>>,
    ) {
        for lane in feed.lanes() {
            let job = Job {
                lane: lane.clone(),
                message: message.clone(),
                trace: trace.clone(),
            };
            // Fails only once the shard stopped at shutdown, when this task
            // stops too.
            let _ = self.inner.shards[lane.shard].send(job).await;
        }
    }

    /// Parses one message of `channel` and queues it to the feeds it
    /// concerns (every feed for a broadcast). `order` is the cluster
    /// session's [`BroadcastOrder`]; `None` on one node, whose one
    /// connection already delivers in publish order.
    async fn dispatch(
        &self,
        channel: &str,
        payload: &[u8],
        broadcast_channel: &str,
        order: Option<&mut BroadcastOrder>,
    ) {
        // `None` (one check) unless tracing is on and the event carries a
        // trace context: see `crate::trace`.
        let fanout = Fanout::start(payload);
        let frame = match Frame::parse(payload) {
            Ok(frame) => Arc::new(frame),
            Err(e) => {
                tracing::warn!(error = %e, channel, "skipping a malformed message");
                if let Some(fanout) = fanout {
                    fanout.fail(&e.to_string());
                }
                return;
            }
        };
        let (event_type, id) = (frame.event_type, frame.id);
        let broadcast = channel == broadcast_channel;
        // The feeds, taken out of the map so that writing to parked sockets
        // holds only each organization's own lock.
        let (feeds, org): (Vec<Arc<OrgFeed>>, Option<String>) = {
            let entries = self.lock();
            if broadcast {
                (entries.values().map(|e| e.feed.clone()).collect(), None)
            } else if let Some(entry) = entries.get(channel) {
                (vec![entry.feed.clone()], Some(entry.org.clone()))
            } else {
                (Vec::new(), None)
            }
        };
        // Revocation first, outside the map's lock: the member's streams are
        // closed (and the cached membership dropped) before the leave, or
        // anything after it, is queued to any of them.
        if let Some(leave) = frame.leave()
            && (broadcast || org.is_some())
        {
            (self.inner.on_leave)(leave, org.as_deref());
        }
        // The span ends when the last feed had the frame, with how many
        // local streams it was written or queued for.
        let trace = fanout.map(|fanout| {
            Arc::new(TraceDone {
                fanout: Some(fanout),
                connections: AtomicUsize::new(0),
                event_type,
                id,
                broadcast,
            })
        });
        let message = match order {
            None => FeedMessage::Frame(frame.clone()),
            Some(order) if broadcast => {
                order.newest = order.newest.max(Some(id));
                FeedMessage::Resync
            }
            Some(order) => {
                if frame.last_broadcast > order.newest {
                    // Every feed, not only this one: the broadcast is for
                    // all of them, and once it counts as read, later events
                    // naming it resync nothing.
                    order.newest = frame.last_broadcast;
                    let all: Vec<Arc<OrgFeed>> =
                        self.lock().values().map(|e| e.feed.clone()).collect();
                    for feed in all {
                        self.enqueue(feed, FeedMessage::Resync, None).await;
                    }
                }
                FeedMessage::Frame(frame.clone())
            }
        };
        for feed in feeds {
            self.enqueue(feed, message.clone(), trace.clone()).await;
        }
    }
}
