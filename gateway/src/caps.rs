//! Concurrent-connection caps per user and per organization, counted
//! across every replica in Redis (ARCHITECTURE.md §3, §4).
//!
//! Each open stream holds a lease: its connection id in two sorted sets,
//! `rt:{caps}:user:<user>` and `rt:{caps}:org:<org>`, scored with the lease's
//! expiry in Redis server time (one clock for every replica). A replica
//! renews the leases of its streams every third of a lease period and removes
//! them when the streams end; the leases of a replica that died (kill -9)
//! expire within one period and stop counting. Acquiring is one script:
//! drop the expired members, compare the counts with the caps, add, so two
//! replicas admitting at once cannot both take the last place. All keys share
//! the `{caps}` hash tag, so the scripts also run on a Redis Cluster.
//!
//! The user's set doubles as the ownership record `PUT`/`DELETE` check: a
//! connection id is the caller's when it holds a live lease in their set,
//! whichever replica serves it; and the caller has a stream in an
//! organization when one of their live leases is also in its set.

use std::sync::Arc;
use std::time::Duration;

use realtime_shared::keys::Keys;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// Leases renewed per script call.
const RENEW_BATCH: usize = 500;

const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 2 end
local lease = tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease * 2)
redis.call('PEXPIRE', KEYS[2], lease * 2)
return 0
";

/// KEYS: user, org pairs; ARGV: lease ms, then one connection id per pair.
/// A plain `ZADD` (not `XX`): after a Redis restart the leases of live
/// streams come back within a third of a period. The price: a stream that
/// ended while its renewal was in flight may count for one more period.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  local u = KEYS[(i - 2) * 2 + 1]
  local o = KEYS[(i - 2) * 2 + 2]
  redis.call('ZADD', u, now + lease, ARGV[i])
  redis.call('ZADD', o, now + lease, ARGV[i])
  redis.call('PEXPIRE', u, lease * 2)
  redis.call('PEXPIRE', o, lease * 2)
end
return 0
";

const OWNS: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > now then return 1 end
return 0
";

/// KEYS: the user's set, the organization's set. Whether one of the user's
/// live leases is also a live lease in the organization; at most the
/// user's cap of members is read.
const HAS_STREAM_IN: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
for _, id in ipairs(ids) do
  local score = redis.call('ZSCORE', KEYS[2], id)
  if score and tonumber(score) > now then return 1 end
end
return 0
";

#[derive(Debug, thiserror::Error)]
pub(crate) enum CapError {
    #[error("too many open streams for this user")]
    User,
    #[error("too many open streams for this organization")]
    Organization,
    #[error("connection caps unavailable: {0}")]
    Redis(#[from] redis::RedisError),
}

struct Scripts {
    acquire: Script,
    renew: Script,
    owns: Script,
    has_stream_in: Script,
}

#[derive(Clone)]
pub(crate) struct Caps {
    redis: ConnectionManager,
    keys: Keys,
    per_user: u32,
    per_org: u32,
    lease: Duration,
    scripts: Arc<Scripts>,
}

impl Caps {
    pub(crate) fn new(
        redis: ConnectionManager,
        keys: Keys,
        per_user: u32,
        per_org: u32,
        lease: Duration,
    ) -> Self {
        Caps {
            redis,
            keys,
            per_user,
            per_org,
            lease,
            scripts: Arc::new(Scripts {
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                owns: Script::new(OWNS),
                has_stream_in: Script::new(HAS_STREAM_IN),
            }),
        }
    }

    fn user_key(&self, user: &str) -> String {
        self.keys.caps(&format!("user:{user}"))
    }

    fn org_key(&self, org: &str) -> String {
        self.keys.caps(&format!("org:{org}"))
    }

    /// `Retry-After` for a cap: places free up as streams end, and at the
    /// latest when a dead replica's leases expire.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        (self.lease.as_secs() / 3).clamp(1, 10)
    }

    fn lease_ms(&self) -> u64 {
        self.lease.as_millis().max(1) as u64
    }

    /// Takes a lease for a new stream, or says which cap is reached.
    pub(crate) async fn acquire(&self, id: &str, user: &str, org: &str) -> Result<(), CapError> {
        let mut redis = self.redis.clone();
        let verdict: i64 = self
            .scripts
            .acquire
            .key(self.user_key(user))
            .key(self.org_key(org))
            .arg(id)
            .arg(self.per_user)
            .arg(self.per_org)
            .arg(self.lease_ms())
            .invoke_async(&mut redis)
            .await?;
        match verdict {
            0 => Ok(()),
            1 => Err(CapError::User),
            _ => Err(CapError::Organization),
        }
    }

    /// Gives a lease back (best effort: an unreleased lease expires). Safe
    /// to call from a drop while the runtime shuts down: without one, the
    /// lease is left to expire.
    pub(crate) fn release(&self, id: Arc<str>, user: Arc<str>, org: Arc<str>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut redis = self.redis.clone();
        let (user_key, org_key) = (self.user_key(&user), self.org_key(&org));
        runtime.spawn(async move {
            let result: redis::RedisResult<()> = redis::pipe()
                .zrem(user_key, &*id)
                .ignore()
                .zrem(org_key, &*id)
                .ignore()
                .query_async(&mut redis)
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "lease release failed; it will expire");
            }
        });
    }

    /// Whether `id` is a live stream of `user`, on any replica.
    pub(crate) async fn owns(&self, user: &str, id: &str) -> Result<bool, redis::RedisError> {
        let mut redis = self.redis.clone();
        let owned: i64 = self
            .scripts
            .owns
            .key(self.user_key(user))
            .arg(id)
            .invoke_async(&mut redis)
            .await?;
        Ok(owned == 1)
    }

    /// Whether `user` holds a live stream in `org`, on any replica (what
    /// `DELETE ?organizationId=` would close).
    pub(crate) async fn has_stream_in(
        &self,
        user: &str,
        org: &str,
    ) -> Result<bool, redis::RedisError> {
        let mut redis = self.redis.clone();
        let found: i64 = self
            .scripts
            .has_stream_in
            .key(self.user_key(user))
            .key(self.org_key(org))
            .invoke_async(&mut redis)
            .await?;
        Ok(found == 1)
    }

    /// Renews the leases of every stream in `registry` every third of a
    /// lease period until `stop`.
    pub(crate) async fn renew_until(self, registry: Registry, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let handles = registry.all();
            for batch in handles.chunks(RENEW_BATCH) {
                let mut invocation = self.scripts.renew.prepare_invoke();
                invocation.arg(self.lease_ms());
                for h in batch {
                    invocation
                        .key(self.user_key(&h.user))
                        .key(self.org_key(&h.org))
                        .arg(&*h.id);
                }
                let mut redis = self.redis.clone();
                if let Err(e) = invocation.invoke_async::<i64>(&mut redis).await {
                    tracing::warn!(error = %e, "lease renewal failed; retrying next period");
                    break;
                }
            }
        }
    }
}
