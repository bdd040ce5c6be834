//! Who may read which organization: the membership query (DESIGN §6,
//! `REALTIME_MEMBERSHIP_QUERY`) behind a short cache, and Auth.js database
//! sessions.
//!
//! The cache is only trusted for answers obtained after the replica's Redis
//! subscription to the organization was confirmed (see
//! [`crate::hub::Subscription::ready`]): from then on every `member.leave` of
//! the organization passes through this replica and drops the entry, so a
//! revoked membership is never served from the cache. Negative answers are
//! not cached (a new member is let in at once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// Most cached memberships; past it the cache is cleared (it refills from
/// Postgres), so memory stays bounded whatever the traffic.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("DATABASE_URL is not a valid Postgres URL: {0}")]
    BadUrl(String),
    #[error("cannot build the Postgres pool: {0}")]
    Pool(String),
    #[error("Postgres is unavailable: {0}")]
    Unavailable(String),
}

struct Cached {
    organization_name: String,
    checked_at: Instant,
}

pub struct Membership {
    pool: Pool,
    query: String,
    sessions_sql: String,
    live_sessions_sql: String,
    ttl: Duration,
    cache: Mutex<HashMap<(String, String), Cached>>,
    /// Bumped by every revocation; an answer obtained while it moved is not
    /// cached (the revocation may have raced the query).
    generation: AtomicU64,
}

impl Membership {
    pub fn new(
        database_url: &str,
        query: String,
        sessions_table: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Self, MembershipError> {
        let mut config: tokio_postgres::Config = database_url
            .parse()
            .map_err(|e: tokio_postgres::Error| MembershipError::BadUrl(e.to_string()))?;
        config.connect_timeout(timeout);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| MembershipError::Pool(e.to_string()))?;
        let table = sessions_table
            .split('.')
            .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(".");
        Ok(Self {
            pool,
            query,
            sessions_sql: format!(
                "SELECT \"userId\"::text, expires FROM {table} WHERE \"sessionToken\" = $1"
            ),
            live_sessions_sql: format!(
                "SELECT \"sessionToken\"::text, expires FROM {table} \
                 WHERE \"sessionToken\" = ANY($1::text[]) AND \"userId\" IS NOT NULL"
            ),
            ttl,
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        })
    }

    /// Checks Postgres answers (for `/readyz` and start-up).
    pub async fn ping(&self) -> Result<(), MembershipError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| MembershipError::Unavailable(e.to_string()))
    }

    /// The connection pool, shared with the publish endpoints.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, MembershipError> {
        self.pool
            .get()
            .await
            .map_err(|e| MembershipError::Unavailable(e.to_string()))
    }

    /// The organization's name when `user` is a member of `org`, `None`
    /// when not. `subscribed_since`: when this replica's subscription to the
    /// organization was confirmed; older cache entries are not trusted.
    pub async fn organization_name(
        &self,
        user: &str,
        org: &str,
        subscribed_since: Instant,
    ) -> Result<Option<String>, MembershipError> {
        let key = (user.to_owned(), org.to_owned());
        if let Some(hit) = self.lock().get(&key)
            && hit.checked_at >= subscribed_since
            && hit.checked_at.elapsed() < self.ttl
        {
            return Ok(Some(hit.organization_name.clone()));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let checked_at = Instant::now();
        let client = self.client().await?;
        let row = client
            .query_opt(self.query.as_str(), &[&user, &org])
            .await
            .map_err(|e| MembershipError::Unavailable(e.to_string()))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let name: String = row
            .try_get::<_, Option<String>>(0)
            .ok()
            .flatten()
            .unwrap_or_default();
        if self.generation.load(Ordering::Acquire) == generation {
            let mut cache = self.lock();
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(
                key,
                Cached {
                    organization_name: name.clone(),
                    checked_at,
                },
            );
        }
        Ok(Some(name))
    }

    /// A first look, before the replica subscribes to the organization on
    /// the user's behalf: any cached answer still within its TTL, else the
    /// query. It lets a non-member (or a made-up organization id) be refused
    /// without a SUBSCRIBE/UNSUBSCRIBE round; a member is checked again
    /// after the subscription ([`Self::organization_name`]), which is the
    /// check that guards revocation.
    pub async fn precheck(&self, user: &str, org: &str) -> Result<Option<String>, MembershipError> {
        let any_fresh = Instant::now()
            .checked_sub(self.ttl)
            .unwrap_or_else(Instant::now);
        self.organization_name(user, org, any_fresh).await
    }

    /// A `member.leave` passed: forget the cached membership.
    pub fn revoke(&self, user: &str, org: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lock().remove(&(user.to_owned(), org.to_owned()));
    }

    /// A `member.leave` naming nobody passed (see
    /// [`crate::frame::Leave::Unknown`]): forget every cached membership.
    pub fn revoke_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lock().clear();
    }

    /// The user of an Auth.js database session, with its expiry; `None`
    /// when unknown or expired.
    pub async fn session_user(
        &self,
        token: &str,
    ) -> Result<Option<(String, SystemTime)>, MembershipError> {
        let client = self.client().await?;
        let row = client
            .query_opt(self.sessions_sql.as_str(), &[&token])
            .await
            .map_err(|e| MembershipError::Unavailable(e.to_string()))?;
        let Some(row) = row else { return Ok(None) };
        // A NULL (or otherwise unreadable) user or expiry is no session.
        let user = row.try_get::<_, Option<String>>(0).ok().flatten();
        let expires = row.try_get::<_, Option<SystemTime>>(1).ok().flatten();
        let (Some(user), Some(expires)) = (user, expires) else {
            tracing::warn!("a sessions row without \"userId\" or expires; refused");
            return Ok(None);
        };
        Ok((expires > SystemTime::now() && !user.is_empty()).then_some((user, expires)))
    }

    /// Which of `tokens` are still live database sessions (present, not
    /// expired). One query for all of them: the periodic re-check of every
    /// stream opened with a session (`crate::sessions`).
    pub async fn live_sessions(
        &self,
        tokens: &[&str],
    ) -> Result<std::collections::HashSet<String>, MembershipError> {
        let client = self.client().await?;
        let rows = client
            .query(self.live_sessions_sql.as_str(), &[&tokens])
            .await
            .map_err(|e| MembershipError::Unavailable(e.to_string()))?;
        // Expiry compared here, as in `session_user`: `expires` is a
        // timestamp without time zone, which `now()` would read in the
        // connection's time zone.
        let now = SystemTime::now();
        Ok(rows
            .iter()
            .filter(|row| {
                row.try_get::<_, Option<SystemTime>>(1)
                    .ok()
                    .flatten()
                    .is_some_and(|expires| expires > now)
            })
            .filter_map(|row| row.try_get::<_, Option<String>>(0).ok().flatten())
            .collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
