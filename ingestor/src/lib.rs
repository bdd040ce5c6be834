//! The ingestor: Postgres logical replication (pgoutput) → per-organization
//! events in Redis, each exactly once, acknowledged only once Redis holds them.
//!
//! Layout:
//! - [`config`]: settings (environment variables and flags).
//! - [`setup`]: start-up checks and idempotent DDL (publication, slot, replica identity).
//! - [`identity`]: replica identity of routed tables checked on every Relation
//!   message while streaming, restored when managed.
//! - [`replication`]: DATABASE_URL → the replication connection's config.
//! - [`pgoutput`]: the pgoutput v1 decoder; [`value`]: column values → JSON.
//! - [`routes`]: the routing config (`REALTIME_ROUTES`, built-in `ingestor/routes/oikion.toml`).
//! - [`change`] and [`router`]: row changes → event drafts, by the routing config;
//!   [`parents`]: child rows' organizations from their parent rows.
//! - [`publish`]: the atomic XADD-then-PUBLISH Redis function and a pipelined publisher.
//! - [`session`]: one replication session: decode, route, publish, acknowledge.
//! - [`heartbeat`]: WAL heartbeats and slot metrics.
//! - [`slot`]: creates the slot, and notices a lost one (missing,
//!   invalidated, another cluster) before every session: `data.sync`
//!   `slot_lost` to every organization.
//! - [`trace`]: OpenTelemetry spans per transaction and `traceparent` in events.
//!
//! [`Ingestor::build`] does everything that can fail fast (config, routes,
//! Postgres and Redis reachable, DDL, admin port) so that a bad start is one
//! clear line; [`Ingestor::run_until_stopped`] then reconnects forever, with
//! exponential backoff and jitter, until its shutdown future resolves.
#![forbid(unsafe_code)]

mod change;
mod config;
mod event_size;
mod heartbeat;
mod identity;
mod metrics;
mod parents;
pub mod pgoutput;
pub mod publish;
mod replication;
mod router;
pub mod routes;
mod session;
mod setup;
mod slot;
mod trace;
pub mod value;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::publish::{PublishError, Publisher};
use crate::routes::{Routes, RoutesError};
use pgwire_replication::{ReplicationClient, ReplicationConfig};
use rand::Rng;
use realtime_shared::admin::{AdminServer, Readiness};
use realtime_shared::keys::Keys;
use realtime_shared::redis_conn::RedisConfigError;
use realtime_shared::redis_target::RedisTarget;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::identity::IdentityWatch;
use crate::parents::Parents;
use crate::router::Router;
use crate::session::{Session, SessionEnd, SessionError};
use crate::setup::SetupError;

/// Why the ingestor could not start. Each variant's message is the one line
/// printed before a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("REALTIME_ROUTES: {0}")]
    Routes(#[from] RoutesError),
    #[error(transparent)]
    Postgres(#[from] SetupError),
    /// A connect failure names its own variable (`REDIS_URL` or
    /// `REALTIME_REDIS_CA`); other publisher failures are `REDIS_URL`'s.
    #[error("{}", redis_line(.0))]
    Redis(#[from] PublishError),
    #[error(transparent)]
    RedisConfig(#[from] RedisConfigError),
    /// The role may not create or use the replication slot: no retry can
    /// fix that, so start-up stops with Postgres's reason.
    #[error("DATABASE_URL: {0}")]
    SlotPrivilege(String),
    #[error("REALTIME_ADMIN_LISTEN: cannot listen on {addr}: {source}")]
    AdminListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn redis_line(e: &PublishError) -> String {
    match e {
        PublishError::Connect(e) => e.to_string(),
        other => format!("REDIS_URL: {other}"),
    }
}

/// A started ingestor, ready to stream.
pub struct Ingestor {
    config: Config,
    router: Router,
    identity: IdentityWatch,
    replication: ReplicationConfig,
    /// Built once from REDIS_URL and REALTIME_REDIS_CA; every (re)connection
    /// of the publisher goes through it.
    redis: RedisTarget,
    publisher: Option<Publisher>,
    /// Taken by `run_until_stopped`, which serves it.
    admin: Option<AdminServer>,
    admin_addr: SocketAddr,
    readiness: Readiness,
}

impl Ingestor {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let _ = realtime_shared::admin::metrics_handle();
        metrics::describe();
        let routes = match &config.routes {
            Some(path) => Routes::load(path)?,
            None => Routes::oikion_default(),
        };
        let redis = RedisTarget::parse(&config.redis_url, config.redis_ca.as_deref())?;
        let replication = replication::config_from_url(
            &config.database_url,
            &config.slot,
            &config.publication,
            config.status_interval,
        )?;
        let client = setup::connect(&config.database_url, config.io_timeout).await?;
        setup::prepare(
            &client,
            &routes,
            &config.publication,
            &config.slot,
            config.manage_replica_identity,
        )
        .await?;
        let mut publisher = Publisher::connect(
            &redis,
            config.redis_ca.as_deref(),
            Keys::new(config.key_prefix.clone()),
            config.history_len as usize,
            config.io_timeout,
        )
        .await?;
        // The slot once at start-up (it is checked again before every
        // session): a role that may not create or use it is refused here
        // with the reason, rather than retried forever. Anything else (a
        // standby finding the lock taken, a passing failure) is left to the
        // session loop.
        if let Err(slot::SlotError::Sql { what, source }) =
            slot::reconcile(&client, &mut publisher, &config.slot).await
            && source.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        {
            let reason = source
                .as_db_error()
                .map_or_else(|| source.to_string(), |db| db.message().to_owned());
            return Err(StartError::SlotPrivilege(format!(
                "Postgres refused {what}: {reason} (the role needs REPLICATION, see README \"Least privilege\")"
            )));
        }
        let readiness = Readiness::default();
        let admin = AdminServer::bind(config.admin_listen, readiness.clone())
            .await
            .map_err(|source| StartError::AdminListen {
                addr: config.admin_listen,
                source,
            })?;
        let admin_addr = admin.local_addr().unwrap_or(config.admin_listen);
        tracing::info!(admin = %admin_addr, "admin endpoints listening on /healthz, /readyz, /metrics");
        Ok(Self {
            router: Router::new(routes),
            identity: IdentityWatch::new(
                config.manage_replica_identity,
                config.database_url.clone(),
                config.io_timeout,
            ),
            replication,
            redis,
            publisher: Some(publisher),
            admin: Some(admin),
            admin_addr,
            readiness,
            config,
        })
    }

    /// The bound admin address (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Streams until `shutdown` resolves, reconnecting on any failure.
    pub async fn run_until_stopped(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let token = CancellationToken::new();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let admin = self.admin.take().map(|admin| {
            let stop = token.clone().cancelled_owned();
            tokio::spawn(async move {
                if let Err(e) = admin.run(stop).await {
                    tracing::error!(error = %e, "admin server failed");
                }
            })
        });
        let heartbeat = tokio::spawn(
            heartbeat::Heartbeat {
                database_url: self.config.database_url.clone(),
                slot: self.config.slot.clone(),
                interval: self.config.wal_heartbeat,
                io_timeout: self.config.io_timeout,
            }
            .run(token.clone()),
        );

        let mut backoff = Backoff::new(Duration::from_millis(100), self.config.reconnect_max);
        while !token.is_cancelled() {
            let started = Instant::now();
            let result = self.session(&token).await;
            self.readiness.set(false);
            match result {
                Ok(SessionEnd::Shutdown) => break,
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff.reset();
                    }
                    if e.is_slot_busy() {
                        tracing::info!(slot = %self.config.slot, "the slot is held by another ingestor; standing by");
                    } else {
                        tracing::warn!(error = %e, "replication session ended; reconnecting");
                        ::metrics::counter!(metrics::RECONNECTS).increment(1);
                    }
                    if matches!(
                        e,
                        SessionError::Publish(_) | SessionError::Slot(slot::SlotError::Redis(_))
                    ) {
                        self.publisher = None;
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        token.cancel();
        let _ = heartbeat.await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!("ingestor stopped");
    }

    async fn session(&mut self, token: &CancellationToken) -> Result<SessionEnd, SessionError> {
        let publisher = match &mut self.publisher {
            Some(p) => p,
            None => self.publisher.insert(
                Publisher::connect(
                    &self.redis,
                    self.config.redis_ca.as_deref(),
                    Keys::new(self.config.key_prefix.clone()),
                    self.config.history_len as usize,
                    self.config.io_timeout,
                )
                .await?,
            ),
        };
        // Before every session: a slot lost since the last one is recovered
        // (and announced) before anything new is streamed.
        let sql = setup::connect(&self.config.database_url, self.config.io_timeout).await?;
        let record = slot::reconcile(&sql, publisher, &self.config.slot).await?;
        // The same connection then serves the session's parent lookups.
        let parents = Parents::new(self.router.routes(), |i| self.router.is_parent(i), sql);
        let mut client = ReplicationClient::connect(self.replication.clone()).await?;
        client.wait_started().await?;
        tracing::info!(slot = %self.config.slot, "streaming");
        self.readiness.set(true);
        Session::new(
            client,
            publisher,
            &self.router,
            &self.identity,
            parents,
            session::Limits {
                max_batch: self.config.publish_batch as usize,
                bulk_threshold: self.config.bulk_threshold,
                max_event_bytes: self.config.max_event_bytes as usize,
            },
            record,
        )
        .run(token)
        .await
    }
}

/// Exponential backoff with equal jitter: the n-th delay is uniformly drawn
/// from [d/2, d] with d = min(max, base·2ⁿ), so replicas that failed together
/// do not retry together.
struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
