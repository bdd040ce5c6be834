//! Concurrent-connection caps per user and per organization, counted
//! across every replica in Redis (ARCHITECTURE.md §3, §4).
//!
//! Each open stream holds a lease: its connection id in two sorted sets,
//! `rt:{caps:user:<user>}` and `rt:{caps:org:<org>}`, scored with the lease's
//! expiry in Redis server time (one clock for every replica). A replica
//! renews the leases of its streams every third of a lease period and removes
//! them when the streams end; the leases of a replica that died (kill -9)
//! expire within one period and stop counting.
//!
//! Acquiring on one node is one script over both sets: drop the expired
//! members, compare the counts with the caps, add, so two replicas admitting
//! at once cannot both take the last place.
//!
//! On a Redis Cluster each set has its own hash tag (no single slot holds
//! every cap), so the two sets are in different slots and no script may
//! touch both. Acquiring is then one script per set, sent together: each
//! drops its expired members, compares its own count with its cap and adds,
//! atomically on its shard, so **neither set ever holds more live leases
//! than its cap**, which is the guarantee. When one set refuses, the lease
//! the other one added is removed again. Until that removal (one round
//! trip) the refused stream holds a place it does not use: a concurrent
//! request can then be refused a place that is about to free up (a 429 with
//! `Retry-After`, which clients retry), never admitted beyond a cap.
//! Renewal and the `DELETE` ownership check likewise go one set at a time.
//!
//! The user's set doubles as the ownership record `PUT`/`DELETE` check: a
//! connection id is the caller's when it holds a live lease in their set,
//! whichever replica serves it; and the caller has a stream in an
//! organization when one of their live leases is also in its set.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use realtime_shared::keys::Keys;
use realtime_shared::redis_target::RedisConn;
use redis::Script;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// Leases renewed per script call. Small on purpose: Redis runs a script
/// to the end before anything else, so one call is a pause for every other
/// client (the ingestor's publishes included). At 500 leases (2,000
/// commands) a call held Redis 5-15 ms in its slowlog, and a replica with
/// 9,000 streams sent 18 of them back to back every third of a lease: a
/// pause of that length in every organization's delivery, each period. At
/// 50 the slowlog showed 2-3.5 ms per call on the same busy host (wall
/// clock, preemption included), and other clients' commands run between
/// calls.
const RENEW_BATCH: usize = 50;

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

/// Redis Cluster: one set. KEYS[1] = the set; ARGV: id, cap, lease ms.
/// 0 = added, 1 = full.
const ACQUIRE_ONE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 1 end
local lease = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 0
";

/// Redis Cluster: one set. KEYS[1] = the set; ARGV: lease ms, then ids.
const RENEW_ONE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 0
";

/// Redis Cluster: the live members of KEYS[1].
const LIVE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";

/// Redis Cluster: whether any of ARGV is a live member of KEYS[1].
const ANY_LIVE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for _, id in ipairs(ARGV) do
  local score = redis.call('ZSCORE', KEYS[1], id)
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
    acquire_one: Script,
    renew_one: Script,
    live: Script,
    any_live: Script,
}

#[derive(Clone)]
pub(crate) struct Caps {
    redis: RedisConn,
    keys: Keys,
    per_user: u32,
    per_org: u32,
    lease: Duration,
    scripts: Arc<Scripts>,
}

impl Caps {
    pub(crate) fn new(
        redis: RedisConn,
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
                acquire_one: Script::new(ACQUIRE_ONE),
                renew_one: Script::new(RENEW_ONE),
                live: Script::new(LIVE),
                any_live: Script::new(ANY_LIVE),
            }),
        }
    }

    fn user_key(&self, user: &str) -> String {
        self.keys.caps_user(user)
    }

    fn org_key(&self, org: &str) -> String {
        self.keys.caps_org(org)
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
        if self.redis.is_cluster() {
            return self.acquire_per_set(id, user, org).await;
        }
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

    /// [`Self::acquire`] on a Redis Cluster: one script per set (see the
    /// module docs for why the caps still hold).
    async fn acquire_per_set(&self, id: &str, user: &str, org: &str) -> Result<(), CapError> {
        let take = |key: String, cap: u32| {
            let mut redis = self.redis.clone();
            let mut invocation = self.scripts.acquire_one.key(key);
            invocation.arg(id).arg(cap).arg(self.lease_ms());
            async move { invocation.invoke_async::<i64>(&mut redis).await }
        };
        let (user_key, org_key) = (self.user_key(user), self.org_key(org));
        let (by_user, by_org) = tokio::join!(
            take(user_key.clone(), self.per_user),
            take(org_key.clone(), self.per_org)
        );
        let refused = match (&by_user, &by_org) {
            (Ok(0), Ok(0)) => return Ok(()),
            (Ok(1), _) => CapError::User,
            (_, Ok(1)) => CapError::Organization,
            _ => match (by_user, by_org) {
                (Err(e), _) | (_, Err(e)) => CapError::Redis(e),
                _ => CapError::Organization,
            },
        };
        // Give back what one set granted (best effort: it expires anyway).
        let mut redis = self.redis.clone();
        for key in [user_key, org_key] {
            if let Err(e) = redis::cmd("ZREM")
                .arg(&key)
                .arg(id)
                .query_async::<i64>(&mut redis)
                .await
            {
                tracing::debug!(error = %e, "returning a half-taken lease failed; it will expire");
            }
        }
        Err(refused)
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
            // Two commands, not one pipeline: on a Redis Cluster the sets
            // live in different slots.
            let mut other = redis.clone();
            let mut by_user = redis::cmd("ZREM");
            by_user.arg(&user_key).arg(&*id);
            let mut by_org = redis::cmd("ZREM");
            by_org.arg(&org_key).arg(&*id);
            let (a, b) = tokio::join!(
                by_user.query_async::<i64>(&mut redis),
                by_org.query_async::<i64>(&mut other)
            );
            let result = a.and(b);
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
        if self.redis.is_cluster() {
            let mut redis = self.redis.clone();
            let live: Vec<String> = self
                .scripts
                .live
                .key(self.user_key(user))
                .invoke_async(&mut redis)
                .await?;
            if live.is_empty() {
                return Ok(false);
            }
            let mut invocation = self.scripts.any_live.key(self.org_key(org));
            for id in &live {
                invocation.arg(id);
            }
            return Ok(invocation.invoke_async::<i64>(&mut redis).await? == 1);
        }
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
            if self.redis.is_cluster() {
                self.renew_per_set(&handles).await;
                continue;
            }
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

    /// Renewal on a Redis Cluster: scripts per set (user or organization)
    /// with this replica's leases in it, a bounded number per call, sent
    /// `RENEW_BATCH` calls at a time.
    async fn renew_per_set(&self, handles: &[Arc<crate::registry::Handle>]) {
        let mut sets: std::collections::HashMap<String, Vec<&str>> =
            std::collections::HashMap::new();
        for h in handles {
            sets.entry(self.user_key(&h.user)).or_default().push(&h.id);
            sets.entry(self.org_key(&h.org)).or_default().push(&h.id);
        }
        // A set's leases in calls of at most `RENEW_BATCH * 4` (as many
        // commands as a one-node call): one organization with thousands of
        // streams here must not be one long script on its shard.
        let calls: Vec<(&str, &[&str])> = sets
            .iter()
            .flat_map(|(key, ids)| {
                ids.chunks(RENEW_BATCH * 4)
                    .map(move |ids| (key.as_str(), ids))
            })
            .collect();
        for chunk in calls.chunks(RENEW_BATCH) {
            let results = join_all(chunk.iter().map(|&(key, ids)| {
                let mut invocation = self.scripts.renew_one.key(key);
                invocation.arg(self.lease_ms());
                for id in ids {
                    invocation.arg(*id);
                }
                let mut redis = self.redis.clone();
                async move { invocation.invoke_async::<i64>(&mut redis).await }
            }))
            .await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                tracing::warn!(error = %e, "lease renewal failed; retrying next period");
                return;
            }
        }
    }
}
