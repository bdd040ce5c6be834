//! Building and running a gateway replica.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use realtime_shared::admin::{AdminServer, Readiness};
use realtime_shared::keys::Keys;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppState};
use crate::auth::{AuthConfig, AuthEnv, Verifier};
use crate::config::Config;
use crate::history::History;
use crate::hub::Hub;
use crate::membership::{Membership, MembershipError};
use crate::metrics as m;

/// Why a replica could not start; each message is the one line printed
/// before a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("DATABASE_URL: {0}")]
    Postgres(#[from] MembershipError),
    #[error("REDIS_URL: cannot connect to Redis: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("{var}: cannot listen on {addr}: {source}")]
    Listen {
        var: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Auth(String),
}

pub struct Gateway {
    config: Config,
    listener: TcpListener,
    admin: AdminServer,
    readiness: Readiness,
    membership: Arc<Membership>,
    verifier: Verifier,
    redis: redis::aio::ConnectionManager,
}

impl Gateway {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let _ = realtime_shared::admin::metrics_handle();
        m::describe();
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
        let membership = Membership::new(
            &config.database_url,
            config.membership_query.clone(),
            &config.sessions_table,
            config.membership_ttl,
            config.io_timeout,
        )?;
        membership.ping().await?;
        let client = redis::Client::open(config.redis_url.as_str()).map_err(StartError::Redis)?;
        // A connection manager reconnects by itself after a Redis restart.
        let redis_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.io_timeout))
            .set_response_timeout(Some(config.io_timeout))
            .set_number_of_retries(2);
        let redis = client
            .get_connection_manager_with_config(redis_config)
            .await
            .map_err(StartError::Redis)?;
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
            redis,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.admin_listen)
    }

    /// Serves until `shutdown` resolves; open streams end themselves then.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let token = CancellationToken::new();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let keys = Keys::new(self.config.key_prefix.clone());
        let membership = self.membership.clone();
        let hub = Hub::start(
            self.config.redis_url.clone(),
            keys.clone(),
            self.config.client_buffer as usize,
            move |user, org| membership.revoke(user, org),
            token.clone(),
        );
        let state = Arc::new(AppState {
            hub,
            history: History::new(self.redis.clone(), keys),
            membership: self.membership.clone(),
            verifier: self.verifier,
            heartbeat: self.config.heartbeat,
            retry: self.config.retry,
            io_timeout: self.config.io_timeout,
            shutdown: token.clone(),
        });
        let readiness_task = tokio::spawn(watch_readiness(
            self.readiness.clone(),
            self.membership.clone(),
            self.redis.clone(),
            token.clone(),
        ));
        let admin_stop = token.clone().cancelled_owned();
        let admin = tokio::spawn(async move {
            if let Err(e) = self.admin.run(admin_stop).await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
        let app = app::router(state, &self.config.cors_origins);
        let stop = token.clone().cancelled_owned();
        if let Err(e) = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "server failed");
        }
        token.cancel();
        let _ = readiness_task.await;
        let _ = admin.await;
        tracing::info!("gateway stopped");
    }
}

/// `/readyz`: Redis and Postgres both answer, and not shutting down.
async fn watch_readiness(
    readiness: Readiness,
    membership: Arc<Membership>,
    mut redis: redis::aio::ConnectionManager,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                readiness.set(false);
                return;
            }
            _ = tick.tick() => {
                let redis_ok = redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok();
                let pg_ok = membership.ping().await.is_ok();
                readiness.set(redis_ok && pg_ok);
            }
        }
    }
}
