//! Building and running a gateway replica.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use realtime_shared::admin::{AdminServer, Readiness};
use realtime_shared::keys::Keys;
use realtime_shared::redis_conn::{RedisConfigError, RedisConnectError, explain_connect_error};
use realtime_shared::redis_target::{RedisConn, RedisTarget};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, RouterOptions};
use crate::auth::{AuthConfig, AuthEnv, Verifier};
use crate::caps::Caps;
use crate::client_ip::{self, ClientIp};
use crate::config::{Config, ConfigError};
use crate::control::Control;
use crate::delivery::Hub;
use crate::frame::Leave;
use crate::history::History;
use crate::membership::{Membership, MembershipError, QueryShapeError};
use crate::metrics as m;
use crate::origin::Origins;
use crate::publishing::Emitter;
use crate::registry::{CloseReason, Registry};
use crate::serve;
use crate::sessions;
use crate::shutdown::Shutdown;
use crate::slots;
use crate::strikes::Strikes;

/// Why a replica could not start; each message is the one line printed
/// before a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("DATABASE_URL: {0}")]
    Postgres(#[source] MembershipError),
    #[error("REALTIME_MEMBERSHIP_QUERY: {0}")]
    MembershipQuery(#[source] QueryShapeError),
    /// Names its own variable (`REDIS_URL` or `REALTIME_REDIS_CA`).
    #[error("{0}")]
    Redis(#[from] RedisConnectError),
    #[error(transparent)]
    RedisConfig(#[from] RedisConfigError),
    #[error("{var}: cannot listen on {addr}: {source}")]
    Listen {
        var: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Auth(String),
    #[error("REALTIME_TRUSTED_PROXIES: {0}")]
    TrustedProxies(String),
    #[error("{0}")]
    Config(#[from] ConfigError),
}

impl From<MembershipError> for StartError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::Query(shape) => StartError::MembershipQuery(shape),
            other => StartError::Postgres(other),
        }
    }
}

pub struct Gateway {
    config: Config,
    listener: TcpListener,
    admin: AdminServer,
    readiness: Readiness,
    membership: Arc<Membership>,
    verifier: Verifier,
    /// One node or a cluster (TLS, CA, ACL user): the hub's pub/sub
    /// connections are opened from it.
    redis_target: RedisTarget,
    /// Commands: caps, control, history, publishing.
    redis: RedisConn,
    client_ip: ClientIp,
}

impl Gateway {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let _ = realtime_shared::admin::metrics_handle();
        m::describe();
        config.check_secrets()?;
        let auth = AuthConfig::from_env_values(AuthEnv {
            auth_secret: config.auth_secret.clone(),
            nextauth_secret: config.nextauth_secret.clone(),
            auth_secret_rotated: [
                config.auth_secret_1.clone(),
                config.auth_secret_2.clone(),
                config.auth_secret_3.clone(),
            ],
            jwt_secret: config.jwt_secret.clone(),
            jwks_url: config.jwks_url.clone(),
        })
        .map_err(|e| StartError::Auth(e.to_string()))?;
        let verifier = Verifier::new(auth).map_err(|e| StartError::Auth(e.to_string()))?;
        let client_ip = ClientIp::new(
            client_ip::parse_trusted(&config.trusted_proxies)
                .map_err(StartError::TrustedProxies)?,
        );
        // Settings first: a bad URL or CA file is reported before any connection.
        let target = RedisTarget::parse(&config.redis_url, config.redis_ca.as_deref())?;
        let membership = Membership::new(
            &config.database_url,
            config.membership_query.clone(),
            &config.sessions_table,
            config.membership_ttl,
            config.io_timeout,
        )?;
        // Postgres must answer at start (as before); the membership query is
        // then validated on that same first connection, so a replica never
        // serves a membership decided by an unchecked query.
        membership.ping().await?;
        membership.validate_query().await?;
        // A connection manager (or a cluster connection) reconnects by
        // itself after a Redis restart or a failover.
        let ca = config.redis_ca.as_deref();
        let mut redis = target
            .command_connection(config.io_timeout)
            .await
            .map_err(|e| explain_connect_error(e, ca))?;
        // Connecting authenticates only when the URL names a user or
        // password; a server that requires one (or an ACL user without
        // rights) is refused here, at start, rather than on every request.
        redis::cmd("PING")
            .query_async::<String>(&mut redis)
            .await
            .map_err(|e| explain_connect_error(e, ca))?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    var: "REALTIME_LISTEN",
                    addr: config.listen,
                    source,
                })?;
        let readiness = Readiness::default();
        let admin = AdminServer::bind(config.admin_listen, readiness.clone())
            .await
            .map_err(|source| StartError::Listen {
                var: "REALTIME_ADMIN_LISTEN",
                addr: config.admin_listen,
                source,
            })?;
        tracing::info!(
            listen = %listener.local_addr().map_or(config.listen, |a| a),
            admin = %admin.local_addr().map_or(config.admin_listen, |a| a),
            "gateway listening"
        );
        Ok(Self {
            config,
            listener,
            admin,
            readiness,
            membership: Arc::new(membership),
            verifier,
            redis_target: target,
            redis,
            client_ip,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.admin_listen)
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns 503
    /// and new streams are refused at once, open streams are closed paced
    /// over `REALTIME_DRAIN`, each with a jittered `retry:`, and the replica
    /// stops within the drain time.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let shutdown_state = Shutdown::new();
        let Shutdown {
            draining,
            stop,
            connections,
        } = shutdown_state.clone();
        let trigger = draining.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let keys = Keys::new(self.config.key_prefix.clone());
        let registry = Registry::default();
        let control = Control::new(self.redis.clone(), keys.control(), registry.clone());
        let membership = self.membership.clone();
        let control_hook = control.clone();
        let hub = Hub::start(
            self.redis_target.clone(),
            keys.clone(),
            self.config.client_buffer as usize,
            {
                let registry = registry.clone();
                move |leave, org| match (leave, org) {
                    (Leave::Member(user), Some(org)) => {
                        membership.revoke(user, org);
                        let closed = registry.revoke_member(user, org);
                        metrics::counter!(m::REVOKED, "reason" => "member_left")
                            .increment(closed as u64);
                    }
                    // Whose membership ended is unknown: forget them all;
                    // every stream re-checks as the leave reaches it.
                    (Leave::Unknown, _) => membership.revoke_all(),
                    (Leave::Member(_), None) => {}
                }
            },
            move |payload| control_hook.on_message(payload),
            stop.clone(),
        );
        let caps = Caps::new(
            self.redis.clone(),
            keys.clone(),
            self.config.max_connections_per_user,
            self.config.max_connections_per_org,
            self.config.connection_lease,
        );
        let renewal = tokio::spawn(caps.clone().renew_until(registry.clone(), stop.clone()));
        let session_recheck = tokio::spawn(sessions::recheck_until(
            registry.clone(),
            self.membership.clone(),
            self.config.session_recheck,
            stop.clone(),
        ));
        let state = Arc::new(AppState {
            hub,
            history: History::new(self.redis.clone(), keys),
            membership: self.membership.clone(),
            verifier: self.verifier,
            heartbeat: self.config.heartbeat,
            retry: self.config.retry,
            io_timeout: self.config.io_timeout,
            shutdown: shutdown_state,
            registry: registry.clone(),
            caps,
            control,
            emitter: Emitter::new(self.membership.pool()),
            publish_key: self.config.publish_key.clone().filter(|k| !k.is_empty()),
            activity_limiter: api::activity_limiter(
                self.config.activity_rate,
                self.config.activity_burst,
            ),
            publish_strikes: Strikes::new(
                self.config.publish_key_failures,
                self.config.publish_key_lockout,
            ),
            client_ip: self.client_ip.clone(),
            origins: Origins::new(&self.config.cors_origins),
        });
        let readiness_task = tokio::spawn(watch_readiness(
            self.readiness.clone(),
            self.membership.clone(),
            self.redis.clone(),
            draining.clone(),
        ));
        let admin_stop = stop.clone().cancelled_owned();
        let admin = tokio::spawn(async move {
            if let Err(e) = self.admin.run(admin_stop).await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
        let app = api::router(
            state,
            RouterOptions {
                cors_origins: self.config.cors_origins.clone(),
                connect_rate: self.config.connect_rate,
                connect_burst: self.config.connect_burst,
                request_rate: self.config.request_rate,
                request_burst: self.config.request_burst,
                client_ip: self.client_ip,
                max_publish_bytes: self.config.max_publish_bytes as usize,
                body_timeout: self.config.head_timeout,
            },
        );
        let drain_time = self.config.drain;
        let drained = stop.clone();
        let drain_signal = draining.clone();
        let drainer = tokio::spawn(async move {
            drain_signal.cancelled().await;
            drain(&registry, drain_time).await;
            drained.cancel();
        });
        // From the start of the drain the listener is closed (a load
        // balancer retries elsewhere) and hyper connections lose
        // keep-alive; stream connections close as each stream is drained,
        // so a client's reconnection cannot land here again.
        let nofile = slots::open_files_limit();
        let max_connections = slots::effective_cap(self.config.max_connections, nofile);
        if self.config.max_connections as usize > max_connections {
            tracing::warn!(
                configured = self.config.max_connections,
                open_files_limit = nofile,
                max_connections,
                "REALTIME_MAX_CONNECTIONS lowered to what the open-files limit allows"
            );
        }
        tracing::info!(
            max_connections,
            head_timeout = ?self.config.head_timeout,
            "public listener limits"
        );
        let listening = tokio::spawn(serve::serve(
            self.listener,
            app,
            draining.clone(),
            connections.clone(),
            serve::Limits {
                head_timeout: self.config.head_timeout,
                max_connections,
            },
        ));
        stop.cancelled().await;
        let _ = listening.await;
        connections.close();
        // Streams have ended; the last writes and idle keep-alive
        // connections get a moment before the replica stops regardless.
        let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
        stop.cancel();
        drainer.abort();
        let _ = renewal.await;
        let _ = session_recheck.await;
        let _ = readiness_task.await;
        let _ = admin.await;
        tracing::info!("gateway stopped");
    }
}

/// Closes every open stream, paced evenly over 80% of `within` (the rest is
/// slack for the last writes and the exit), each with a jittered `retry:`.
/// Spreading the closes spreads the reconnections the other replicas see.
async fn drain(registry: &Registry, within: Duration) {
    let handles = registry.all();
    let count = handles.len();
    tracing::info!(streams = count, over = ?within, "draining");
    if count == 0 {
        return;
    }
    let span = within.mul_f64(0.8);
    let start = tokio::time::Instant::now();
    for (i, handle) in handles.iter().enumerate() {
        let at = start + span.mul_f64(i as f64 / count as f64);
        tokio::time::sleep_until(at).await;
        handle.close(CloseReason::Drain);
        metrics::counter!(m::DRAINED).increment(1);
    }
    // Streams opened during the drain were refused; any left are closed now.
    for handle in registry.all() {
        handle.close(CloseReason::Drain);
    }
    // Give the last streams time to write their retry hint.
    let left = span
        .mul_f64(1.0 / count as f64)
        .min(Duration::from_millis(200));
    tokio::time::sleep(left).await;
}

/// `/readyz`: 200 while Redis answers and the replica is not draining;
/// 503 otherwise.
///
/// Postgres down does not make a replica unready: it is shared by every
/// replica, so a 503 would pull all of them out of the load balancer at
/// once, while each can still serve its open streams, resume them from
/// Redis history and admit members whose answer it has cached (new
/// membership or session lookups get a transient refusal an `EventSource`
/// retries by itself). The 200's body then says `degraded: postgres
/// unavailable`, and the state is logged once per change. Redis down is a
/// 503: without it no replica can deliver anything.
async fn watch_readiness(
    readiness: Readiness,
    membership: Arc<Membership>,
    mut redis: RedisConn,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut pg_was_ok = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                readiness.set(false);
                return;
            }
            _ = tick.tick() => {
                // Any error is "not ready", the safe reading.
                let redis_ok = redis.ping().await.is_ok();
                let pg = membership.ping().await;
                let pg_ok = pg.is_ok();
                if pg_ok != pg_was_ok {
                    match &pg {
                        Ok(()) => tracing::info!("postgres answers again: readiness no longer degraded"),
                        Err(e) => tracing::warn!(error = %e, "postgres unavailable: serving open streams and cached memberships; /readyz stays 200 (degraded)"),
                    }
                    pg_was_ok = pg_ok;
                }
                metrics::gauge!(m::POSTGRES_UP).set(if pg_ok { 1.0 } else { 0.0 });
                readiness.set_degraded((!pg_ok).then(|| "postgres unavailable".to_owned()));
                readiness.set(redis_ok);
            }
        }
    }
}
