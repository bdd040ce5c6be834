//! In-process gateway replicas and bearer tokens for tests.

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::InProcess;
use realtime_gateway::{Config, Gateway};
use realtime_tests::TestContext;
use tokio::sync::Notify;

pub const JWT_SECRET: &str = "test-jwt-secret-with-enough-bytes";

/// An HS256 bearer token for `user`, valid for `ttl` (negative: expired).
pub fn token(user: &str, ttl_secs: i64) -> String {
    token_with(user, ttl_secs, JWT_SECRET)
}

pub fn token_with(user: &str, ttl_secs: i64, secret: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = serde_json::json!({"sub": user, "exp": now + ttl_secs, "iat": now});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

pub fn gateway_config(ctx: &TestContext) -> Config {
    let mut config = Config::new(ctx.database_url(), ctx.redis_url());
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin_listen = "127.0.0.1:0".parse().expect("addr");
    config.key_prefix = ctx.key_prefix().to_owned();
    config.jwt_secret = Some(JWT_SECRET.to_owned());
    config.auth_secret = Some("test-auth-secret-at-least-32-bytes-long".to_owned());
    config.heartbeat = Duration::from_secs(1);
    // Tests open many streams from one address and user; the protection
    // tests set their own limits.
    config.connect_rate = 0.0;
    config.max_connections_per_user = 100_000;
    config.max_connections_per_org = 100_000;
    config.drain = Duration::from_millis(500);
    config
}

pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    process: InProcess,
    /// Dropped after `process` (fields drop in order): the gateway stops
    /// before it gives its share of the metrics back.
    _metrics: MetricsUse,
}

impl RunningGateway {
    /// A gateway sharing the process's metrics with the other in-process
    /// gateways (waits while one runs alone, see [`RunningGateway::start_alone`]).
    pub async fn start(config: Config) -> Self {
        let metrics = MetricsUse::acquire(false).await;
        Self::start_with(config, metrics).await
    }

    /// A gateway that is the only in-process one while it runs: for a test
    /// that reads its `/metrics` as exact figures (e.g. waits for
    /// `realtime_gateway_connections` to be 0). Every test is in one process
    /// (tests/main.rs) and the metrics recorder is process-wide, so another
    /// test's gateway would count its streams in the same gauge. Waits until
    /// the in-process gateways of other tests are gone; gateways started
    /// meanwhile wait for this one to stop.
    pub async fn start_alone(config: Config) -> Self {
        let metrics = MetricsUse::acquire(true).await;
        Self::start_with(config, metrics).await
    }

    async fn start_with(config: Config, metrics: MetricsUse) -> Self {
        super::logs_when_asked();
        let gateway = Gateway::build(config).await.expect("gateway starts");
        let addr = gateway.local_addr();
        let admin = gateway.admin_addr();
        let process = InProcess::spawn(|rx| {
            gateway.run_until_stopped(async {
                let _ = rx.await;
            })
        });
        Self {
            addr,
            admin,
            process,
            _metrics: metrics,
        }
    }

    pub fn stream_url(&self, query: &str) -> String {
        format!("http://{}/api/realtime/stream?{query}", self.addr)
    }

    pub async fn stop(self) {
        self.process.stop("the gateway").await;
    }
}

/// The longest a gateway waits for its turn at the process's metrics: the
/// longest test that runs a gateway alone takes about a minute.
const METRICS_TURN: Duration = Duration::from_secs(600);

/// In-process gateways alive (sharing the metrics), and whether one runs
/// alone.
#[derive(Debug, Default)]
struct MetricsUsers {
    shared: usize,
    alone: bool,
}

fn metrics_users() -> &'static (Mutex<MetricsUsers>, Notify) {
    static USERS: OnceLock<(Mutex<MetricsUsers>, Notify)> = OnceLock::new();
    USERS.get_or_init(Default::default)
}

/// One in-process gateway's use of the process-wide metrics recorder:
/// shared, or alone (no other in-process gateway while it lives). Sharing
/// is granted whenever no gateway runs alone, even while one waits to run
/// alone (it waits for the count to reach zero), so a test holding a
/// gateway can always start a second one.
#[derive(Debug)]
struct MetricsUse {
    alone: bool,
}

impl MetricsUse {
    async fn acquire(alone: bool) -> Self {
        let (users, changed) = metrics_users();
        let turn = async {
            loop {
                let notified = changed.notified();
                let mut notified = std::pin::pin!(notified);
                // Registered before the check, so a release between the
                // check and the await still wakes this waiter.
                notified.as_mut().enable();
                {
                    let mut u = users.lock().unwrap_or_else(PoisonError::into_inner);
                    if !u.alone && (!alone || u.shared == 0) {
                        if alone {
                            u.alone = true;
                        } else {
                            u.shared += 1;
                        }
                        return Self { alone };
                    }
                }
                notified.await;
            }
        };
        tokio::time::timeout(METRICS_TURN, turn)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no turn at the in-process gateway metrics within {METRICS_TURN:?} (alone: {alone})"
                )
            })
    }
}

impl Drop for MetricsUse {
    fn drop(&mut self) {
        let (users, changed) = metrics_users();
        {
            let mut u = users.lock().unwrap_or_else(PoisonError::into_inner);
            if self.alone {
                u.alone = false;
            } else {
                u.shared = u.shared.saturating_sub(1);
            }
        }
        changed.notify_waiters();
    }
}
