//! Publishing events to Redis: the atomic XADD-then-PUBLISH function of
//! ARCHITECTURE.md §4 and a pipelined [`Publisher`].
//!
//! The function appends the event to its scope's history stream with the
//! event id as the stream entry id, then PUBLISHes the same bytes, in one
//! atomic step. A stream refuses an id that is not above its last one, and the
//! function turns that refusal into a return value of 0 ("already held"):
//! a change re-sent by Postgres after a crash is skipped, never delivered twice.
//! It returns 1 when the id was new.
//!
//! Publishing goes through one multiplexed connection and one pipeline per
//! batch: Redis executes a connection's commands in order, so events keep
//! their commit order in every stream and channel. Consecutive events of
//! the batch for the same stream go in one call of `realtime_publish_many`,
//! the same steps in a loop: one function call per run instead of one per
//! event, so a drain pays the call's own cost (command dispatch, the
//! KEYS/ARGV tables) once per run.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use realtime_shared::event::{EventId, Scope};
use realtime_shared::keys::Keys;
use realtime_shared::redis_conn::{RedisConnectError, explain_connect_error};

/// The function library, loaded with `FUNCTION LOAD REPLACE` on every
/// (re)connection, so a Redis that restarted empty gets it back.
///
/// KEYS[1] = history stream, KEYS[2] = live channel (same hash slot);
/// ARGV[1] = event id, ARGV[2] = envelope bytes, ARGV[3] = history length cap.
pub const FUNCTION_LIBRARY: &str = r#"#!lua name=realtime_v1
local function publish(keys, args)
  local ok, err = pcall(redis.call, 'XADD', keys[1], 'MAXLEN', '~', args[3], args[1], 'e', args[2])
  if not ok then
    local msg = type(err) == 'table' and err.err or tostring(err)
    if string.find(msg, 'equal or smaller', 1, true) then
      return 0
    end
    return redis.error_reply(msg)
  end
  redis.call('PUBLISH', keys[2], args[2])
  return 1
end
redis.register_function('realtime_publish', publish)

-- KEYS as above; ARGV[1] = history length cap, then id, bytes pairs.
-- Returns one 1 (new) or 0 (already held) per event, in order.
local function publish_many(keys, args)
  local out = {}
  for i = 2, #args, 2 do
    local ok, err = pcall(redis.call, 'XADD', keys[1], 'MAXLEN', '~', args[1], args[i], 'e', args[i + 1])
    if ok then
      redis.call('PUBLISH', keys[2], args[i + 1])
      out[#out + 1] = 1
    else
      local msg = type(err) == 'table' and err.err or tostring(err)
      if not string.find(msg, 'equal or smaller', 1, true) then
        return redis.error_reply(msg)
      end
      out[#out + 1] = 0
    end
  end
  return out
end
redis.register_function('realtime_publish_many', publish_many)
"#;

/// The function's name, for `FCALL`.
pub const FUNCTION_NAME: &str = "realtime_publish";

/// The function publishing a run of events to one stream, for `FCALL`.
pub const FUNCTION_MANY: &str = "realtime_publish_many";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Worded by [`explain_connect_error`]: names `REDIS_URL` or
    /// `REALTIME_REDIS_CA` itself.
    #[error("{0}")]
    Connect(#[source] RedisConnectError),
    #[error("cannot load the publish function into Redis: {0}")]
    LoadFunction(#[source] redis::RedisError),
    #[error("Redis did not accept a publish batch: {0}")]
    Publish(#[source] redis::RedisError),
    #[error("Redis refused {what}: {source}")]
    Command {
        what: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis answered a publish batch of {sent} with {got} replies")]
    ShortReply { sent: usize, got: usize },
    #[error("Redis answered a publish call with something other than a count or a list of them")]
    BadReply,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// One event ready to publish: where it goes and its envelope bytes.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: EventId,
    pub scope: Scope,
    pub bytes: Vec<u8>,
}

/// A Redis connection with the publish function loaded.
pub struct Publisher {
    conn: MultiplexedConnection,
    keys: Keys,
    history_len: usize,
    timeout: Duration,
}

impl Publisher {
    /// Connects through `client` (built by
    /// [`redis_client`](realtime_shared::redis_conn::redis_client), so TLS and the ACL
    /// user apply), checks the server answers, and loads the function
    /// library. `ca` is the configured CA bundle, only to word errors.
    pub async fn connect(
        client: &redis::Client,
        ca: Option<&std::path::Path>,
        keys: Keys,
        history_len: usize,
        timeout: Duration,
    ) -> Result<Self, PublishError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| PublishError::Connect(explain_connect_error(e, ca)))?;
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(FUNCTION_LIBRARY)
            .query_async::<String>(&mut conn)
            .await
            // NOAUTH/NOPERM here means the credentials, not the function.
            .map_err(|e| match explain_connect_error(e, ca) {
                RedisConnectError::Other(e) => PublishError::LoadFunction(e),
                known => PublishError::Connect(known),
            })?;
        Ok(Self {
            conn,
            keys,
            history_len,
            timeout,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs one other command on the publishing connection, with the same
    /// timeout: the ingestor's slot record and its history scan
    /// (`ingestor::slot`) go through here so they use the connection (and
    /// its TLS and credentials) events use.
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        what: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, PublishError> {
        tokio::time::timeout(self.timeout, cmd.query_async(&mut self.conn))
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
            .map_err(|source| PublishError::Command { what, source })
    }

    /// Publishes `batch` in one pipeline, in order. Returns, per event,
    /// whether it was new (`true`) or already in its history (`false`).
    ///
    /// On `Err` some prefix of the batch may have been applied; the caller
    /// re-sends from its last acknowledged position and the history refuses
    /// what it already holds.
    pub async fn publish(&mut self, batch: &[Outgoing]) -> Result<Vec<bool>, PublishError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let mut id = String::with_capacity(48);
        let mut runs = 0;
        for run in batch.chunk_by(|a, b| a.scope == b.scope) {
            use std::fmt::Write;
            runs += 1;
            let scope = &run[0].scope;
            let (history, channel) = (self.keys.history(scope), self.keys.channel(scope));
            if let [out] = run {
                id.clear();
                let _ = write!(id, "{}", out.id);
                pipe.cmd("FCALL")
                    .arg(FUNCTION_NAME)
                    .arg(2)
                    .arg(history)
                    .arg(channel)
                    .arg(id.as_str())
                    .arg(out.bytes.as_slice())
                    .arg(self.history_len);
                continue;
            }
            let cmd = pipe
                .cmd("FCALL")
                .arg(FUNCTION_MANY)
                .arg(2)
                .arg(history)
                .arg(channel)
                .arg(self.history_len);
            for out in run {
                id.clear();
                let _ = write!(id, "{}", out.id);
                cmd.arg(id.as_str()).arg(out.bytes.as_slice());
            }
        }
        let replies: Vec<redis::Value> =
            tokio::time::timeout(self.timeout, pipe.query_async(&mut self.conn))
                .await
                .map_err(|_| PublishError::Timeout(self.timeout))?
                .map_err(PublishError::Publish)?;
        if replies.len() != runs {
            return Err(PublishError::ShortReply {
                sent: runs,
                got: replies.len(),
            });
        }
        let mut accepted = Vec::with_capacity(batch.len());
        for reply in replies {
            match reply {
                redis::Value::Int(n) => accepted.push(n == 1),
                redis::Value::Array(items) => {
                    accepted.extend(items.iter().map(|v| matches!(v, redis::Value::Int(1))))
                }
                _ => return Err(PublishError::BadReply),
            }
        }
        if accepted.len() != batch.len() {
            return Err(PublishError::ShortReply {
                sent: batch.len(),
                got: accepted.len(),
            });
        }
        Ok(accepted)
    }
}
