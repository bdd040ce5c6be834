//! Who may read which organization: the membership query (ARCHITECTURE.md §6,
//! `REALTIME_MEMBERSHIP_QUERY`) behind a short cache, and Auth.js database
//! sessions.
//!
//! The cache is only trusted for answers obtained after the replica's Redis
//! subscription to the organization was confirmed (see
//! [`crate::delivery::Subscription::ready`]): from then on every `member.leave` of
//! the organization passes through this replica and drops the entry, so a
//! revoked membership is never served from the cache. Negative answers are
//! not cached (a new member is let in at once).
//!
//! The query's shape is checked once at start-up ([`Membership::validate_query`]):
//! membership is "the query returned a row with a name", so a query that
//! always returns a row (`SELECT EXISTS(…)`, `SELECT count(*) …`) would make
//! every user a member of every organization. Only a query taking two text
//! parameters and returning one text column is accepted, and at run time a
//! NULL name counts as no row (a scalar subquery `SELECT (SELECT o.name …)`
//! also always returns a row).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use realtime_shared::postgres_tls::{self, PgTlsError};
use tokio_postgres::types::Type;

/// Most cached memberships; past it the cache is cleared (it refills from
/// Postgres), so memory stays bounded whatever the traffic.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("DATABASE_URL is not a valid Postgres URL: {0}")]
    BadUrl(String),
    /// `sslmode`/`sslrootcert` in DATABASE_URL cannot be used.
    #[error("DATABASE_URL: {0}")]
    Tls(#[from] PgTlsError),
    #[error("cannot build the Postgres pool: {0}")]
    Pool(String),
    #[error("Postgres is unavailable: {0}")]
    Unavailable(String),
    /// The membership query cannot decide membership safely (start-up).
    #[error(transparent)]
    Query(#[from] QueryShapeError),
    /// A row's name column could not be read as text (the schema changed
    /// under a running replica): an error, never a membership.
    #[error("the membership query's name column cannot be read as text: {0}")]
    BadRow(String),
}

/// Why `REALTIME_MEMBERSHIP_QUERY` was refused at start-up. Each message
/// says what the query does and what it must do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryShapeError {
    #[error("Postgres refused it: {0}")]
    Refused(String),
    #[error(
        "takes {0} parameter(s); it must take exactly two text parameters, $1 = the user id and $2 = the organization id"
    )]
    ParameterCount(usize),
    #[error(
        "parameter ${index} has type {found}; $1 (user id) and $2 (organization id) must be text (cast in the query, e.g. `m.\"userId\" = $1::text::uuid`)"
    )]
    ParameterType { index: usize, found: String },
    #[error(
        "returns {count} column(s) ({columns}); it must return one text column, the organization's name, and no row for a non-member"
    )]
    ColumnCount { count: usize, columns: String },
    #[error(
        "returns 1 column of type {found}; it must return one text column, the organization's name, and no row for a non-member"
    )]
    ColumnType { found: String },
}

/// Types a `&str` parameter binds to and a `String` reads from.
fn is_text(ty: &Type) -> bool {
    matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME) || ty.name() == "citext"
}

/// The contract of `REALTIME_MEMBERSHIP_QUERY`, on a prepared statement's
/// parameter and column types: exactly two text parameters (user id,
/// organization id) and exactly one text column (the organization's name).
/// Anything else (a boolean from `EXISTS`, a number from `count(*)`, a query
/// ignoring the organization) could answer "member" for everyone.
pub(crate) fn check_query_shape(
    params: &[Type],
    columns: &[(&str, Type)],
) -> Result<(), QueryShapeError> {
    if params.len() != 2 {
        return Err(QueryShapeError::ParameterCount(params.len()));
    }
    for (i, ty) in params.iter().enumerate() {
        // Postgres infers `unknown` only when nothing constrains the
        // parameter; it binds as text.
        if !is_text(ty) && *ty != Type::UNKNOWN {
            return Err(QueryShapeError::ParameterType {
                index: i + 1,
                found: ty.name().to_owned(),
            });
        }
    }
    match columns {
        [(_, ty)] if is_text(ty) => Ok(()),
        [(_, ty)] => Err(QueryShapeError::ColumnType {
            found: ty.name().to_owned(),
        }),
        _ => Err(QueryShapeError::ColumnCount {
            count: columns.len(),
            columns: columns
                .iter()
                .map(|(name, ty)| format!("{name} {}", ty.name()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

struct Cached {
    organization_name: String,
    checked_at: Instant,
}

pub(crate) struct Membership {
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
    pub(crate) fn new(
        database_url: &str,
        query: String,
        sessions_table: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Self, MembershipError> {
        // TLS as the URL's sslmode/sslrootcert ask; the pool is shared with
        // the publish endpoints, so they get the same protection.
        let (mut config, tls) = postgres_tls::parse(database_url).map_err(|e| match e {
            PgTlsError::BadUrl(why) => MembershipError::BadUrl(why),
            other => MembershipError::Tls(other),
        })?;
        config.connect_timeout(timeout);
        let manager = Manager::from_config(
            config,
            tls.connector()?,
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
    pub(crate) async fn ping(&self) -> Result<(), MembershipError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| MembershipError::Unavailable(e.to_string()))
    }

    /// Prepares the membership query and checks its shape
    /// ([`check_query_shape`]). Run at start-up, after [`Self::ping`]: a
    /// replica whose query could let everyone in must not start. A query
    /// Postgres refuses (syntax, unknown table) is a [`QueryShapeError`]
    /// too; only a lost connection is [`MembershipError::Unavailable`].
    pub(crate) async fn validate_query(&self) -> Result<(), MembershipError> {
        let client = self.client().await?;
        let statement =
            client
                .prepare(self.query.as_str())
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => QueryShapeError::Refused(db.message().to_owned()).into(),
                    None => MembershipError::Unavailable(e.to_string()),
                })?;
        let columns: Vec<(&str, Type)> = statement
            .columns()
            .iter()
            .map(|c| (c.name(), c.type_().clone()))
            .collect();
        check_query_shape(statement.params(), &columns)?;
        Ok(())
    }

    /// The connection pool, shared with the publish endpoints.
    pub(crate) fn pool(&self) -> Pool {
        self.pool.clone()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, MembershipError> {
        self.pool
            .get()
            .await
            .map_err(|e| MembershipError::Unavailable(postgres_tls::error_chain(&e)))
    }

    /// The organization's name when `user` is a member of `org`, `None`
    /// when not. `subscribed_since`: when this replica's subscription to the
    /// organization was confirmed; older cache entries are not trusted.
    pub(crate) async fn organization_name(
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
        // A NULL name is no membership: `SELECT (SELECT o.name …)` returns
        // one row for everyone, NULL for non-members. An unreadable value is
        // an error (503), never a membership.
        let name: String = match row.try_get::<_, Option<String>>(0) {
            Ok(Some(name)) => name,
            Ok(None) => return Ok(None),
            Err(e) => return Err(MembershipError::BadRow(e.to_string())),
        };
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
    pub(crate) async fn precheck(
        &self,
        user: &str,
        org: &str,
    ) -> Result<Option<String>, MembershipError> {
        let any_fresh = Instant::now()
            .checked_sub(self.ttl)
            .unwrap_or_else(Instant::now);
        self.organization_name(user, org, any_fresh).await
    }

    /// A `member.leave` passed: forget the cached membership.
    pub(crate) fn revoke(&self, user: &str, org: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lock().remove(&(user.to_owned(), org.to_owned()));
    }

    /// A `member.leave` naming nobody passed (see
    /// [`crate::frame::Leave::Unknown`]): forget every cached membership.
    pub(crate) fn revoke_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lock().clear();
    }

    /// The user of an Auth.js database session, with its expiry; `None`
    /// when unknown or expired.
    pub(crate) async fn session_user(
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
    pub(crate) async fn live_sessions(
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
        // An unreadable token or expiry counts as not live: the stream is
        // closed (fail closed), never kept open on a value we cannot read.
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

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT2: [Type; 2] = [Type::TEXT, Type::TEXT];

    #[test]
    fn one_text_column_and_two_text_parameters_pass() {
        for ty in [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME] {
            assert_eq!(check_query_shape(&TEXT2, &[("name", ty)]), Ok(()));
        }
        assert_eq!(
            check_query_shape(&[Type::VARCHAR, Type::UNKNOWN], &[("name", Type::TEXT)]),
            Ok(())
        );
    }

    #[test]
    fn always_a_row_queries_are_refused() {
        let e = check_query_shape(&TEXT2, &[("exists", Type::BOOL)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "returns 1 column of type bool; it must return one text column, the organization's name, and no row for a non-member"
        );
        let e = check_query_shape(&TEXT2, &[("count", Type::INT8)]).unwrap_err();
        assert!(e.to_string().contains("type int8"), "{e}");
        let e = check_query_shape(&TEXT2, &[("name", Type::TEXT), ("id", Type::TEXT)]).unwrap_err();
        assert!(
            e.to_string().contains("2 column(s) (name text, id text)"),
            "{e}"
        );
        let e = check_query_shape(&TEXT2, &[]).unwrap_err();
        assert!(e.to_string().contains("returns 0 column(s)"), "{e}");
    }

    #[test]
    fn parameters_must_be_the_user_and_the_organization_as_text() {
        let e = check_query_shape(&[Type::TEXT], &[("name", Type::TEXT)]).unwrap_err();
        assert_eq!(e, QueryShapeError::ParameterCount(1));
        let e = check_query_shape(&[Type::TEXT, Type::UUID], &[("name", Type::TEXT)]).unwrap_err();
        assert!(
            e.to_string().starts_with("parameter $2 has type uuid"),
            "{e}"
        );
    }
}
