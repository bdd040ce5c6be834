//! The hub's subscriber on a Redis Cluster (ARCHITECTURE.md §3, §4, *Redis
//! Cluster*): sharded pub/sub, one `SSUBSCRIBE` per channel on the shard
//! that owns the channel's slot (an organization's channel shares its slot
//! with its history), through one RESP3 cluster connection whose push
//! messages arrive on one channel.
//!
//! The same promises as the single-node session in `hub.rs`: a subscribe is
//! confirmed before the feed is ready, and wherever live messages may have
//! been missed the feeds concerned get [`FeedMessage::Resync`] and fill the
//! gap from history (their streams drop what they already passed by id):
//!
//! - **A node's connection dropped** (`Disconnection` push: a primary
//!   killed, a network cut): the session ends; the next one reconnects from
//!   the seeds, subscribes everything again (retrying while the cluster
//!   elects a new primary) and resyncs every feed, as after a single-node
//!   reconnect.
//! - **A shard gave a channel up** (a server `sunsubscribe` push: its slot
//!   was migrated away, or its primary became a replica in a failover): the
//!   same, a new session ([`Hub::gave_up`] says why not a resubscription on
//!   this connection). Control messages are not history: one sent in that
//!   window is lost, as on a single-node reconnect.
//!
//! **Broadcasts stay in each stream's one sequence** although their shard
//! is read over another connection than an organization's: see
//! [`BroadcastOrder`]; the session starts it from the broadcast history's
//! newest id, read once the broadcast channel is subscribed.
//!
//! **Every subscription is proven to sit on the slot's primary** before its
//! feed is ready or resynced ([`Probe::subscribe_on_primary`]). Right after a
//! failover the client's slot map can still name the demoted primary, and
//! a replica accepts `SSUBSCRIBE` for its primary's slots: such a
//! subscription gets the primary's messages only by the cluster bus, and
//! only once the new primary counts the node among its replicas (seen
//! here, consistent with it: a gateway that resubscribed right after a
//! failover and resynced at once lost the ~20 events the new primary
//! published in the next ~250 ms, then got the rest live). So
//! the channel is subscribed together with a probe channel of its slot
//! (unique to this session), and a script (`EVAL`, a write as far as
//! routing goes: a replica redirects it) `SPUBLISH`es to the probe on the
//! primary: it counts one receiver only if this subscription is there.

use std::time::{Duration, Instant};

use realtime_shared::redis_target::ClusterSeeds;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use realtime_shared::event::Scope;
use realtime_shared::history::newest_id;

use super::{BroadcastOrder, Command, Hub};

/// Connect and response timeout of the subscriber's cluster connection.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `SPUBLISH`es to `KEYS[1]` on the primary of its slot and returns how
/// many clients there received it. Declared as a key so that the cluster
/// routes it by slot; a script without flags is treated as a write, which a
/// replica never serves (it answers `-MOVED`).
const PROBE_SCRIPT: &str = "return redis.call('SPUBLISH', KEYS[1], ARGV[1])";

/// What marks a probe channel: `<channel>` + this + the session's id. It
/// keeps the channel's hash tag, so the probe lives in the same slot.
const PROBE_MARK: &str = ":probe:";

impl Hub {
    /// One cluster pub/sub connection; `Ok` only on shutdown. Mirrors
    /// `Hub::session` (one node).
    pub(super) async fn sharded_session(
        &self,
        seeds: &ClusterSeeds,
        broadcast_channel: &str,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        shutdown: &CancellationToken,
        first: bool,
    ) -> redis::RedisResult<()> {
        let (tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let client = seeds.pubsub_client(tx, TIMEOUT)?;
        let mut conn = client.get_async_connection().await?;
        let probe = Probe::new();
        let control_channel = self.inner.keys.control();
        probe
            .subscribe_on_primary(&mut conn, broadcast_channel)
            .await?;
        // After the subscription: a broadcast published meanwhile is both
        // read live and, perhaps, counted here; either way it is not
        // missed, and every feed resyncs after a reconnection anyway.
        let mut order = BroadcastOrder {
            newest: newest_id(&mut conn, &self.inner.keys.history(&Scope::Broadcast)).await?,
        };
        probe
            .subscribe_on_primary(&mut conn, &control_channel)
            .await?;
        // Commands queued while disconnected are reflected in the map.
        while commands.try_recv().is_ok() {}
        let channels: Vec<String> = self.lock().keys().cloned().collect();
        for channel in &channels {
            probe.subscribe_on_primary(&mut conn, channel).await?;
        }
        self.subscribed_all(first).await;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                command = commands.recv() => match command {
                    Some(Command::Subscribe(channel)) => {
                        probe.subscribe_on_primary(&mut conn, &channel).await?;
                        if let Some(entry) = self.lock().get(&channel) {
                            entry.ready.send_replace(Some(Instant::now()));
                        }
                    }
                    Some(Command::Unsubscribe(channel)) => {
                        // Re-joined meanwhile: keep the subscription.
                        if !self.lock().contains_key(&channel) {
                            conn.sunsubscribe(&channel).await?;
                        }
                    }
                    None => return Ok(()),
                },
                push = pushes.recv() => match push {
                    Some(push) => {
                        self.on_push(&probe, push, broadcast_channel, &control_channel, &mut order)
                            .await?;
                    }
                    None => return Err(closed("the cluster push channel closed")),
                },
            }
        }
    }

    async fn on_push(
        &self,
        probe: &Probe,
        push: PushInfo,
        broadcast_channel: &str,
        control_channel: &str,
        order: &mut BroadcastOrder,
    ) -> redis::RedisResult<()> {
        match push.kind {
            PushKind::SMessage => {
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (push.data.first(), push.data.get(1))
                else {
                    return Ok(());
                };
                if probe.is_probe(channel) {
                    // A probe's own message (or one reaching a subscription
                    // left on a demoted node): nothing to deliver.
                } else if channel.as_slice() == control_channel.as_bytes() {
                    (self.inner.on_control)(payload.as_slice());
                } else if let Ok(channel) = std::str::from_utf8(channel) {
                    self.dispatch(channel, payload.as_slice(), broadcast_channel, Some(order))
                        .await;
                }
                Ok(())
            }
            PushKind::Disconnection => Err(closed("a Redis Cluster node's connection dropped")),
            PushKind::SUnsubscribe => {
                let Some(Value::BulkString(channel)) = push.data.first() else {
                    return Ok(());
                };
                let Ok(channel) = std::str::from_utf8(channel) else {
                    return Ok(());
                };
                self.gave_up(channel, broadcast_channel, control_channel)
            }
            _ => Ok(()),
        }
    }

    /// `channel` was unsubscribed. If this replica still needs it, the shard
    /// gave it up (its slot was migrated away, or its primary was demoted in
    /// a failover): the session ends, and the next one subscribes every
    /// channel again from the seeds on a fresh connection (each proven on
    /// its primary) and resyncs every feed, as after a lost connection.
    /// Otherwise it was this hub's own `SUNSUBSCRIBE`, confirmed.
    ///
    /// Why not resubscribe the one channel on this connection: seen here,
    /// after a manual failover, a channel resubscribed (and proven) on the
    /// same cluster connection went silent for good on one of two gateways
    /// while the other kept receiving; the client's own resubscription after
    /// its slot-map refresh and ours interleave in ways its API does not
    /// let us check. A failover or a migration is rare; a fresh session is
    /// the path already proven by the kill -9 test.
    fn gave_up(
        &self,
        channel: &str,
        broadcast_channel: &str,
        control_channel: &str,
    ) -> redis::RedisResult<()> {
        let needed = channel == broadcast_channel
            || channel == control_channel
            || self.lock().contains_key(channel);
        if needed {
            tracing::info!(
                channel,
                "a Redis Cluster shard gave up a channel (slot moved or primary demoted); subscribing everything again"
            );
            return Err(closed("a Redis Cluster shard gave up a channel"));
        }
        Ok(())
    }
}

/// A session's proof that its subscriptions sit on the primaries (module
/// documentation).
struct Probe {
    /// Unique to the session: no other client subscribes to its channels,
    /// so one receiver counted is this subscription.
    suffix: String,
    script: redis::Script,
}

impl Probe {
    fn new() -> Self {
        let id: u64 = rand::random();
        Self {
            suffix: format!("{PROBE_MARK}{id:016x}"),
            script: redis::Script::new(PROBE_SCRIPT),
        }
    }

    /// A channel of this session's probes (one left on a demoted node
    /// included): a suffix compare per message, not a search.
    fn is_probe(&self, channel: &[u8]) -> bool {
        channel.ends_with(self.suffix.as_bytes())
    }

    /// `SSUBSCRIBE channel probe` (one command: one slot, one node), then
    /// the probe script on the slot's primary. One receiver: the
    /// subscription is on the primary and gets every message published
    /// from now on. None (or the script failed): the subscription landed
    /// on a node that no longer serves the slot (a failover in progress);
    /// the session ends, and the next one starts from the seeds, after the
    /// reconnect backoff, with a fresh slot map. Trying again on this
    /// connection would not do: unsubscribing the channel first reads, when
    /// its push arrives, as the shard giving it up, which ends the session
    /// anyway.
    async fn subscribe_on_primary(
        &self,
        conn: &mut redis::cluster_async::ClusterConnection,
        channel: &str,
    ) -> redis::RedisResult<()> {
        let probe = format!("{channel}{}", self.suffix);
        conn.ssubscribe(&[channel, probe.as_str()]).await?;
        let receivers: redis::RedisResult<i64> = self
            .script
            .key(&probe)
            .arg("probe")
            .invoke_async(conn)
            .await;
        // The probe channel is not needed past the answer.
        conn.sunsubscribe(&probe).await?;
        match receivers? {
            n if n >= 1 => Ok(()),
            _ => {
                tracing::info!(
                    channel,
                    "subscribed on a node that is not the slot's primary (a failover in progress); starting a new subscriber session"
                );
                Err(closed(
                    "a channel was subscribed on a node that is not its slot's primary",
                ))
            }
        }
    }
}

fn closed(why: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, why))
}
