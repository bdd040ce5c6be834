//! In-process gateway replicas and bearer tokens for tests.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::InProcess;
use realtime_gateway::{Config, Gateway};
use realtime_tests::TestContext;

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
}

impl RunningGateway {
    pub async fn start(config: Config) -> Self {
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
        }
    }

    pub fn stream_url(&self, query: &str) -> String {
        format!("http://{}/api/realtime/stream?{query}", self.addr)
    }

    pub async fn stop(self) {
        self.process.stop("the gateway").await;
    }
}
