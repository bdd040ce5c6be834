//! `PUT`/`DELETE /api/realtime/stream` acting on a stream whichever replica
//! holds it (ARCHITECTURE.md §3, §4): applied at once when the stream is local, and
//! published on `rt:{control}` otherwise, where every replica's hub hears
//! it and applies it to its own streams (`SPUBLISH` on a Redis Cluster, where
//! every hub `SSUBSCRIBE`s the channel on the shard that owns it).
//!
//! Every message names the user, and a replica applies it only to a stream
//! of that user: a forged or stale connection id never reaches someone
//! else's stream. Ownership is checked before publishing (the caps leases,
//! see [`crate::caps`]), so the endpoints answer 404 for someone else's id.

use realtime_shared::redis_target::RedisConn;
use serde::{Deserialize, Serialize};

use crate::channels::ChannelFilter;
use crate::registry::{CloseReason, Registry};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub(crate) enum Command {
    /// Change one stream's channel filter.
    #[serde(rename_all = "camelCase")]
    Filter {
        connection_id: String,
        user_id: String,
        mask: u16,
    },
    /// Close one stream.
    #[serde(rename_all = "camelCase")]
    Close {
        connection_id: String,
        user_id: String,
    },
    /// Close all of a user's streams to one organization.
    #[serde(rename_all = "camelCase")]
    CloseAll {
        user_id: String,
        organization_id: String,
    },
}

#[derive(Clone)]
pub(crate) struct Control {
    redis: RedisConn,
    channel: String,
    registry: Registry,
}

impl Control {
    pub(crate) fn new(redis: RedisConn, channel: String, registry: Registry) -> Self {
        Control {
            redis,
            channel,
            registry,
        }
    }

    /// Applies locally when it can, else tells the other replicas.
    pub(crate) async fn send(&self, command: Command) -> Result<(), redis::RedisError> {
        let done_here = self.apply(&command);
        if done_here {
            return Ok(());
        }
        // Cannot fail (strings and a number); an empty payload would only be
        // skipped as malformed by the replicas, never misapplied.
        let payload = serde_json::to_vec(&command).unwrap_or_default();
        let mut redis = self.redis.clone();
        let publish = if redis.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        redis::cmd(publish)
            .arg(&self.channel)
            .arg(payload)
            .query_async::<i64>(&mut redis)
            .await?;
        Ok(())
    }

    /// A message heard on the control channel.
    pub(crate) fn on_message(&self, payload: &[u8]) {
        match serde_json::from_slice::<Command>(payload) {
            Ok(command) => {
                self.apply(&command);
            }
            Err(e) => tracing::warn!(error = %e, "skipping a malformed control message"),
        }
    }

    /// Acts on this replica's streams; `true` when the command is fully
    /// done here (a single stream found locally). `CloseAll` is never fully
    /// done locally: other replicas may hold more of the user's streams.
    fn apply(&self, command: &Command) -> bool {
        match command {
            Command::Filter {
                connection_id,
                user_id,
                mask,
            } => match self.registry.get(connection_id) {
                Some(h) if &*h.user == user_id => {
                    h.set_filter(ChannelFilter::from_bits(*mask));
                    true
                }
                _ => false,
            },
            Command::Close {
                connection_id,
                user_id,
            } => match self.registry.get(connection_id) {
                Some(h) if &*h.user == user_id => {
                    h.close(CloseReason::Requested);
                    true
                }
                _ => false,
            },
            Command::CloseAll {
                user_id,
                organization_id,
            } => {
                for h in self.registry.of_user_in_org(user_id, organization_id) {
                    h.close(CloseReason::Requested);
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let c = Command::Filter {
            connection_id: "c".into(),
            user_id: "u".into(),
            mask: 3,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"op":"filter","connectionId":"c","userId":"u","mask":3}"#
        );
        let c = Command::CloseAll {
            user_id: "u".into(),
            organization_id: "o".into(),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"op":"closeAll","userId":"u","organizationId":"o"}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), c);
    }
}
