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
//! On one node, publishing goes through one multiplexed connection and one
//! pipeline per batch: Redis executes a connection's commands in order, so
//! events keep their commit order in every stream and channel. Consecutive
//! events of the batch for the same stream go in one call of
//! `realtime_publish_many`, the same steps in a loop: one function call per
//! run instead of one per event, so a drain pays the call's own cost
//! (command dispatch, the KEYS/ARGV tables) once per run.
//!
//! On a Redis Cluster (ARCHITECTURE.md §4, *Redis Cluster*) the function
//! `SPUBLISH`es (sharded pub/sub: the message stays on the shard that owns
//! the organization's slot), and a batch is one pipeline per scope (a
//! pipeline must stay in one slot), sent concurrently: each scope's events
//! keep their order, which is all a stream and its channel need. A
//! broadcast-scope event is published on its own, after every event before
//! it was accepted and before any event after it is sent, so the broadcast
//! shard never runs behind the organizations' shards by more than one
//! event. Every organization event published after a broadcast carries
//! that broadcast's id (`lastBroadcast`, spliced into its envelope; the
//! last one is read back from the broadcast history on connecting), so a
//! gateway that reads the organization's shard first knows a broadcast is
//! missing (ARCHITECTURE.md §4, *Broadcast order*). The library is loaded
//! on every primary; a primary that lacks it (a new node that took slots
//! over) answers "Function not found", and the library is loaded again and
//! the failed scopes retried once. Each scope's
//! pipeline ends with `WAIT 1`: the batch is acknowledged to Postgres once
//! the shard's replica holds it too (or after [`REPLICA_WAIT`], with a
//! warning, when the shard has no replica keeping up: a missing replica slows
//! publishing down, it does not stop it), so a failover does not lose events
//! Postgres was told are safe.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::Value;

use realtime_shared::envelope::Envelope;
use realtime_shared::event::{EventId, Scope};
use realtime_shared::history::newest_id;
use realtime_shared::keys::Keys;
use realtime_shared::redis_conn::{RedisConnectError, explain_connect_error};
use realtime_shared::redis_target::{RedisConn, RedisTarget};

/// The function library, loaded with `FUNCTION LOAD REPLACE` on every
/// (re)connection (on every primary of a cluster), so a Redis that
/// restarted empty gets it back.
///
/// KEYS[1] = history stream, KEYS[2] = live channel (same hash slot);
/// ARGV[1] = event id, ARGV[2] = envelope bytes, ARGV[3] = history length cap.
/// `realtime_publish` PUBLISHes (one node), `realtime_publish_sharded`
/// SPUBLISHes (Redis Cluster).
pub const FUNCTION_LIBRARY: &str = r#"#!lua name=realtime_v1
local function append(keys, args)
  local ok, err = pcall(redis.call, 'XADD', keys[1], 'MAXLEN', '~', args[3], args[1], 'e', args[2])
  if not ok then
    local msg = type(err) == 'table' and err.err or tostring(err)
    if string.find(msg, 'equal or smaller', 1, true) then
      return 0
    end
    return redis.error_reply(msg)
  end
  return nil
end
local function publish(keys, args)
  local held = append(keys, args)
  if held ~= nil then return held end
  redis.call('PUBLISH', keys[2], args[2])
  return 1
end
local function publish_sharded(keys, args)
  local held = append(keys, args)
  if held ~= nil then return held end
  redis.call('SPUBLISH', keys[2], args[2])
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
redis.register_function('realtime_publish_sharded', publish_sharded)
"#;

/// How long a cluster publish waits for the shard's replica (`WAIT 1`).
pub const REPLICA_WAIT: Duration = Duration::from_millis(200);

/// The function's name, for `FCALL` on one node.
pub const FUNCTION_NAME: &str = "realtime_publish";

/// The function publishing a run of events to one stream, for `FCALL`.
pub const FUNCTION_MANY: &str = "realtime_publish_many";

/// The function's name, for `FCALL` on a Redis Cluster.
pub const SHARDED_FUNCTION_NAME: &str = "realtime_publish_sharded";

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
    conn: RedisConn,
    keys: Keys,
    history_len: usize,
    timeout: Duration,
    /// Cluster pipelines no replica confirmed (`WAIT 1` answered 0), logged
    /// at most once per [`UNREPLICATED_WARNING_EVERY`]: a shard without a
    /// replica would otherwise log every batch.
    unreplicated: LogEvery,
    /// On a cluster: the last broadcast-scope event published (or found in
    /// the broadcast history on connecting), named by every later
    /// organization event's envelope (module docs). Always `None` on one
    /// node.
    last_broadcast: Option<EventId>,
}

/// How often the "no replica confirmed" warning may be logged.
const UNREPLICATED_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Counts occurrences and says when one may be logged: the first, then at
/// most one per `every`, each carrying how many happened since the last.
#[derive(Debug)]
struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    since: u64,
}

impl LogEvery {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            since: 0,
        }
    }

    /// `n` more at `now`; `Some(count since the last log)` when it is time
    /// to log.
    fn count(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.since += n;
        if self.since == 0
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

impl Publisher {
    /// Connects through `target` (built by
    /// [`RedisTarget::parse`], so TLS and the ACL user apply), checks the
    /// server answers, and loads the function library (on every primary of
    /// a cluster). `ca` is the configured CA bundle, only to word errors.
    pub async fn connect(
        target: &RedisTarget,
        ca: Option<&std::path::Path>,
        keys: Keys,
        history_len: usize,
        timeout: Duration,
    ) -> Result<Self, PublishError> {
        let mut conn = target
            .publishing_connection(timeout)
            .await
            .map_err(|e| PublishError::Connect(explain_connect_error(e, ca)))?;
        load_library(&mut conn)
            .await
            // NOAUTH/NOPERM here means the credentials, not the function.
            .map_err(|e| match explain_connect_error(e, ca) {
                RedisConnectError::Other(e) => PublishError::LoadFunction(e),
                known => PublishError::Connect(known),
            })?;
        let mut publisher = Self {
            conn,
            keys,
            history_len,
            timeout,
            unreplicated: LogEvery::new(UNREPLICATED_WARNING_EVERY),
            last_broadcast: None,
        };
        if publisher.conn.is_cluster() {
            publisher.last_broadcast = publisher.newest_broadcast().await?;
        }
        Ok(publisher)
    }

    /// The id of the broadcast history's newest entry: the last broadcast
    /// published before this process (a restart keeps naming it).
    async fn newest_broadcast(&mut self) -> Result<Option<EventId>, PublishError> {
        let history = self.keys.history(&Scope::Broadcast);
        tokio::time::timeout(self.timeout, newest_id(&mut self.conn, &history))
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
            .map_err(|source| PublishError::Command {
                what: "reading the broadcast history's newest id",
                source,
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

    /// Every key matching `pattern` of Redis type `kind`: `SCAN` on the one
    /// node, or on every primary of a cluster.
    pub async fn scan_keys(
        &mut self,
        what: &'static str,
        pattern: &str,
        kind: &str,
    ) -> Result<Vec<String>, PublishError> {
        self.conn
            .scan_keys(pattern, kind)
            .await
            .map_err(|source| PublishError::Command { what, source })
    }

    /// Publishes `batch`, in order per scope. Returns, per event, whether it
    /// was new (`true`) or already in its history (`false`).
    ///
    /// On `Err` some prefix of the batch may have been applied (on a
    /// cluster: some prefix of each scope's events); the caller re-sends
    /// from its last acknowledged position and the histories refuse what
    /// they already hold.
    pub async fn publish(&mut self, batch: &[Outgoing]) -> Result<Vec<bool>, PublishError> {
        self.send(batch).await.answered().await
    }

    /// Starts publishing `batch` (as [`Self::publish`]) and returns the
    /// pending answer, which owns what it needs: on one node the pipeline is
    /// encoded now and the caller may build the next batch while Redis
    /// works on this one (the ingest drain's overlap, ARCHITECTURE.md §2
    /// *Batching*). The request leaves once the answer is first polled
    /// ([`Pending::start`]). On a cluster the batch is published here and
    /// the answer is ready (its scopes' pipelines, the broadcast ordering
    /// and the library reload need the publisher itself).
    pub async fn send(&mut self, batch: &[Outgoing]) -> Pending {
        if batch.is_empty() {
            return Pending::ready(Ok(Vec::new()));
        }
        if self.conn.is_cluster() {
            let result = tokio::time::timeout(self.timeout, self.publish_sharded(batch))
                .await
                .map_err(|_| PublishError::Timeout(self.timeout))
                .and_then(|r| r);
            return Pending::ready(result);
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
        let (mut conn, timeout, events) = (self.conn.clone(), self.timeout, batch.len());
        Pending::new(async move {
            let replies: Vec<redis::Value> =
                tokio::time::timeout(timeout, pipe.query_async(&mut conn))
                    .await
                    .map_err(|_| PublishError::Timeout(timeout))?
                    .map_err(PublishError::Publish)?;
            accepted_of(replies, runs, events)
        })
    }

    /// One `FCALL` per event at `indices` of `batch`, in that order, with
    /// the envelope bytes of `bytes` (the same index).
    fn pipeline(
        &self,
        function: &str,
        batch: &[Outgoing],
        bytes: &[Cow<'_, [u8]>],
        indices: &[usize],
    ) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let mut id = String::with_capacity(48);
        for &i in indices {
            use std::fmt::Write;
            let out = &batch[i];
            id.clear();
            let _ = write!(id, "{}", out.id);
            pipe.cmd("FCALL")
                .arg(function)
                .arg(2)
                .arg(self.keys.history(&out.scope))
                .arg(self.keys.channel(&out.scope))
                .arg(id.as_str())
                .arg(&*bytes[i])
                .arg(self.history_len);
        }
        pipe
    }

    /// The envelope bytes a cluster publishes for each event of `batch`:
    /// an organization event after a broadcast names it (`lastBroadcast`).
    /// Returns them with the last broadcast after the batch.
    fn stamped<'b>(&self, batch: &'b [Outgoing]) -> (Vec<Cow<'b, [u8]>>, Option<EventId>) {
        let mut last = self.last_broadcast;
        let bytes = batch
            .iter()
            .map(|out| match (&out.scope, last) {
                (Scope::Broadcast, _) => {
                    last = Some(out.id);
                    Cow::Borrowed(out.bytes.as_slice())
                }
                (_, Some(broadcast)) => {
                    Cow::Owned(Envelope::with_last_broadcast(&out.bytes, broadcast))
                }
                (_, None) => Cow::Borrowed(out.bytes.as_slice()),
            })
            .collect();
        (bytes, last)
    }

    /// The cluster form of [`Self::publish`] (see the module docs).
    async fn publish_sharded(&mut self, batch: &[Outgoing]) -> Result<Vec<bool>, PublishError> {
        let (bytes, last_broadcast) = self.stamped(batch);
        let mut accepted = vec![false; batch.len()];
        let mut start = 0;
        while start < batch.len() {
            // A broadcast alone; otherwise everything up to the next broadcast.
            let end = if batch[start].scope == Scope::Broadcast {
                start + 1
            } else {
                batch[start..]
                    .iter()
                    .position(|out| out.scope == Scope::Broadcast)
                    .map_or(batch.len(), |p| start + p)
            };
            let mut groups: Vec<(&Scope, Vec<usize>)> = Vec::new();
            for (i, out) in batch.iter().enumerate().take(end).skip(start) {
                let scope = &out.scope;
                match groups.iter_mut().find(|(s, _)| *s == scope) {
                    Some((_, indices)) => indices.push(i),
                    None => groups.push((scope, vec![i])),
                }
            }
            let mut pending: Vec<Vec<usize>> = groups.into_iter().map(|(_, g)| g).collect();
            for attempt in 0..2 {
                let wait_ms = REPLICA_WAIT.as_millis() as u64;
                let results = join_all(pending.iter().map(|indices| {
                    let mut pipe = self.pipeline(SHARDED_FUNCTION_NAME, batch, &bytes, indices);
                    // Acknowledged only once the shard's replica holds it
                    // (when it has one that keeps up): a failover then
                    // loses no event Postgres was told is safe.
                    pipe.cmd("WAIT").arg(1).arg(wait_ms);
                    let mut conn = self.conn.clone();
                    async move {
                        let mut replies = pipe.query_async::<Vec<Value>>(&mut conn).await?;
                        let replicas = replies.pop();
                        let accepted = replies
                            .iter()
                            .map(redis::from_redis_value_ref::<i64>)
                            .collect::<Result<Vec<i64>, _>>()?;
                        Ok::<_, redis::RedisError>((accepted, replicas))
                    }
                }))
                .await;
                let mut failed = Vec::new();
                let mut missing_function = false;
                let mut unreplicated = 0;
                for (indices, result) in pending.into_iter().zip(results) {
                    match result {
                        Ok((replies, replicas)) if replies.len() == indices.len() => {
                            if matches!(replicas, Some(Value::Int(0))) {
                                unreplicated += 1;
                            }
                            for (i, r) in indices.into_iter().zip(replies) {
                                accepted[i] = r == 1;
                            }
                        }
                        Ok((replies, _)) => {
                            return Err(PublishError::ShortReply {
                                sent: indices.len(),
                                got: replies.len(),
                            });
                        }
                        Err(e) if attempt == 0 && is_missing_function(&e) => {
                            missing_function = true;
                            failed.push(indices);
                        }
                        Err(e) => return Err(PublishError::Publish(e)),
                    }
                }
                if let Some(pipelines) = self.unreplicated.count(unreplicated, Instant::now()) {
                    tracing::warn!(
                        pipelines,
                        "no Redis replica confirmed a publish within {wait_ms} ms; a failover of that shard now could lose it"
                    );
                }
                if failed.is_empty() {
                    break;
                }
                if missing_function {
                    tracing::warn!(
                        "a Redis primary lacks the publish function (a new or emptied node); loading it on every primary"
                    );
                    load_library(&mut self.conn)
                        .await
                        .map_err(PublishError::LoadFunction)?;
                }
                pending = failed;
            }
            start = end;
        }
        // Only once every broadcast of the batch was accepted (or found
        // held): a failed batch is sent again from its start, and stamps
        // again from the same point.
        self.last_broadcast = last_broadcast;
        Ok(accepted)
    }
}

/// `FUNCTION LOAD REPLACE` of [`FUNCTION_LIBRARY`]; a cluster connection
/// sends it to every primary.
async fn load_library(conn: &mut RedisConn) -> redis::RedisResult<()> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(FUNCTION_LIBRARY)
        .query_async::<Value>(conn)
        .await
        .map(drop)
}

/// The answer to one publish batch, per event whether it was new (see
/// [`Publisher::send`]).
pub struct Pending {
    answer: futures_util::future::BoxFuture<'static, Result<Vec<bool>, PublishError>>,
}

impl Pending {
    fn new(
        answer: impl std::future::Future<Output = Result<Vec<bool>, PublishError>> + Send + 'static,
    ) -> Self {
        Self {
            answer: Box::pin(answer),
        }
    }

    fn ready(result: Result<Vec<bool>, PublishError>) -> Self {
        Self::new(std::future::ready(result))
    }

    /// Polls the answer once, which hands the pipeline to the connection's
    /// writer; `Some` when it is already complete.
    pub fn start(&mut self) -> Option<Result<Vec<bool>, PublishError>> {
        use futures_util::FutureExt;
        (&mut self.answer).now_or_never()
    }

    /// Waits for Redis's answer without giving the pending answer up (for a
    /// `select!` branch; poll no more once it returned).
    pub async fn answered(&mut self) -> Result<Vec<bool>, PublishError> {
        (&mut self.answer).await
    }
}

/// Per event of a one-node batch of `events` sent as `runs` calls, whether
/// it was new: a call of one event answers a count, a call of a run a list
/// of them.
fn accepted_of(
    replies: Vec<redis::Value>,
    runs: usize,
    events: usize,
) -> Result<Vec<bool>, PublishError> {
    if replies.len() != runs {
        return Err(PublishError::ShortReply {
            sent: runs,
            got: replies.len(),
        });
    }
    let mut accepted = Vec::with_capacity(events);
    for reply in replies {
        match reply {
            redis::Value::Int(n) => accepted.push(n == 1),
            redis::Value::Array(items) => {
                accepted.extend(items.iter().map(|v| matches!(v, redis::Value::Int(1))))
            }
            _ => return Err(PublishError::BadReply),
        }
    }
    if accepted.len() != events {
        return Err(PublishError::ShortReply {
            sent: events,
            got: accepted.len(),
        });
    }
    Ok(accepted)
}

/// The node has no such function: it never loaded the library (a new node,
/// or one emptied by a restart without persistence).
fn is_missing_function(error: &redis::RedisError) -> bool {
    let text = error.to_string();
    text.contains("Function not found") || error.code() == Some("NOSCRIPT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_logged_once_per_period_with_its_count() {
        let every = Duration::from_secs(10);
        let mut log = LogEvery::new(every);
        let t0 = Instant::now();
        assert_eq!(log.count(0, t0), None, "nothing happened");
        assert_eq!(log.count(1, t0), Some(1), "the first is logged");
        assert_eq!(log.count(3, t0 + Duration::from_secs(1)), None);
        assert_eq!(log.count(2, t0 + Duration::from_secs(9)), None);
        assert_eq!(
            log.count(1, t0 + every),
            Some(6),
            "the next, with every one since the last log"
        );
        assert_eq!(log.count(0, t0 + 3 * every), None, "none since");
        assert_eq!(log.count(1, t0 + 3 * every), Some(1));
    }
}
