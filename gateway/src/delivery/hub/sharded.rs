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
//!   channel is subscribed again, which the cluster client routes to the
//!   slot's new owner (following `-MOVED` and refreshing its slot map), and
//!   that one feed resyncs (every feed for the broadcast channel). Control
//!   messages are not history: one sent in that window is lost, as on a
//!   single-node reconnect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use realtime_shared::redis_target::ClusterSeeds;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Command, FeedMessage, Hub, OrgFeed};

/// Connect and response timeout of the subscriber's cluster connection.
const TIMEOUT: Duration = Duration::from_secs(5);

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
        let control_channel = self.inner.keys.control();
        conn.ssubscribe(broadcast_channel).await?;
        conn.ssubscribe(&control_channel).await?;
        // Commands queued while disconnected are reflected in the map.
        while commands.try_recv().is_ok() {}
        let channels: Vec<String> = self.lock().keys().cloned().collect();
        for channel in &channels {
            conn.ssubscribe(channel).await?;
        }
        self.subscribed_all(first).await;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                command = commands.recv() => match command {
                    Some(Command::Subscribe(channel)) => {
                        conn.ssubscribe(&channel).await?;
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
                        self.on_push(&mut conn, push, broadcast_channel, &control_channel)
                            .await?;
                    }
                    None => return Err(closed("the cluster push channel closed")),
                },
            }
        }
    }

    async fn on_push(
        &self,
        conn: &mut redis::cluster_async::ClusterConnection,
        push: PushInfo,
        broadcast_channel: &str,
        control_channel: &str,
    ) -> redis::RedisResult<()> {
        match push.kind {
            PushKind::SMessage => {
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (push.data.first(), push.data.get(1))
                else {
                    return Ok(());
                };
                if channel.as_slice() == control_channel.as_bytes() {
                    (self.inner.on_control)(payload.as_slice());
                } else if let Ok(channel) = std::str::from_utf8(channel) {
                    self.dispatch(channel, payload.as_slice(), broadcast_channel)
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
                self.regain(conn, channel, broadcast_channel, control_channel)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// `channel` was unsubscribed. If this replica still needs it, the shard
    /// gave it up (its slot moved): subscribe it again where the slot lives
    /// now, then resync what it feeds. Otherwise it was this hub's own
    /// `SUNSUBSCRIBE`, confirmed.
    async fn regain(
        &self,
        conn: &mut redis::cluster_async::ClusterConnection,
        channel: &str,
        broadcast_channel: &str,
        control_channel: &str,
    ) -> redis::RedisResult<()> {
        let fixed = channel == broadcast_channel || channel == control_channel;
        let joined = {
            let entries = self.lock();
            match entries.get(channel) {
                Some(entry) => {
                    entry.ready.send_replace(None);
                    true
                }
                None => false,
            }
        };
        if !fixed && !joined {
            return Ok(());
        }
        tracing::info!(
            channel,
            "a Redis Cluster shard gave up a channel (slot moved); subscribing where it lives now"
        );
        conn.ssubscribe(channel).await?;
        let now = Instant::now();
        let feeds: Vec<Arc<OrgFeed>> = {
            let entries = self.lock();
            if channel == broadcast_channel {
                entries.values().map(|e| e.feed.clone()).collect()
            } else if let Some(entry) = entries.get(channel) {
                entry.ready.send_replace(Some(now));
                vec![entry.feed.clone()]
            } else {
                Vec::new()
            }
        };
        for feed in feeds {
            self.enqueue(feed, FeedMessage::Resync, None).await;
        }
        Ok(())
    }
}

fn closed(why: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, why))
}
