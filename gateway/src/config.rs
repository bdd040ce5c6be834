//! The gateway's settings: environment variables and the same-named flags
//! (DESIGN §5). `realtime-gateway --help` lists them all with defaults.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use realtime_shared::config::{parse_key_prefix, parse_positive_duration};

/// The membership query of DESIGN §6: `$1` user id, `$2` organization id;
/// one row with the organization's name when the user is a member.
pub const DEFAULT_MEMBERSHIP_QUERY: &str = "SELECT o.name FROM organization_members m JOIN organizations o ON o.id = m.\"organizationId\" WHERE m.\"userId\" = $1 AND m.\"organizationId\" = $2";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "realtime-gateway",
    version,
    about = "Serves per-organization realtime events over Server-Sent Events.",
    long_about = None
)]
pub struct Config {
    /// Postgres URL: membership queries and database sessions.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Redis URL: history streams and live channels.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Address of the public API (the SSE stream).
    #[arg(
        long = "realtime-listen",
        env = "REALTIME_LISTEN",
        value_name = "REALTIME_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long = "realtime-admin-listen",
        env = "REALTIME_ADMIN_LISTEN",
        value_name = "REALTIME_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: SocketAddr,

    /// Prefix of every Redis key (the ingestor's must match).
    #[arg(long = "realtime-key-prefix", env = "REALTIME_KEY_PREFIX", value_name = "REALTIME_KEY_PREFIX", default_value = "rt", value_parser = parse_key_prefix)]
    pub key_prefix: String,

    /// Interval of `: heartbeat` comments on idle streams.
    #[arg(long = "realtime-heartbeat", env = "REALTIME_HEARTBEAT", value_name = "REALTIME_HEARTBEAT", default_value = "30s", value_parser = parse_positive_duration)]
    pub heartbeat: Duration,

    /// Reconnection delay suggested to clients (`retry:`).
    #[arg(long = "realtime-retry", env = "REALTIME_RETRY", value_name = "REALTIME_RETRY", default_value = "3s", value_parser = parse_positive_duration)]
    pub retry: Duration,

    /// Comma-separated origins allowed by CORS (with credentials); empty: no CORS.
    #[arg(
        long = "realtime-cors-origins",
        env = "REALTIME_CORS_ORIGINS",
        value_name = "REALTIME_CORS_ORIGINS",
        default_value = "",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Auth.js / NextAuth secret (session cookies).
    #[arg(
        long = "auth-secret",
        env = "AUTH_SECRET",
        value_name = "AUTH_SECRET",
        hide_env_values = true
    )]
    pub auth_secret: Option<String>,

    /// Used when AUTH_SECRET is not set.
    #[arg(
        long = "nextauth-secret",
        env = "NEXTAUTH_SECRET",
        value_name = "NEXTAUTH_SECRET",
        hide_env_values = true
    )]
    pub nextauth_secret: Option<String>,

    /// Rotated secrets, tried after AUTH_SECRET.
    #[arg(
        long = "auth-secret-1",
        env = "AUTH_SECRET_1",
        value_name = "AUTH_SECRET_1",
        hide_env_values = true
    )]
    pub auth_secret_1: Option<String>,
    #[arg(
        long = "auth-secret-2",
        env = "AUTH_SECRET_2",
        value_name = "AUTH_SECRET_2",
        hide_env_values = true
    )]
    pub auth_secret_2: Option<String>,
    #[arg(
        long = "auth-secret-3",
        env = "AUTH_SECRET_3",
        value_name = "AUTH_SECRET_3",
        hide_env_values = true
    )]
    pub auth_secret_3: Option<String>,

    /// HS256 secret for `Authorization: Bearer` JWTs.
    #[arg(
        long = "realtime-jwt-secret",
        env = "REALTIME_JWT_SECRET",
        value_name = "REALTIME_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// JWKS URL for RS256/ES256/EdDSA bearer JWTs.
    #[arg(
        long = "realtime-jwks-url",
        env = "REALTIME_JWKS_URL",
        value_name = "REALTIME_JWKS_URL"
    )]
    pub jwks_url: Option<String>,

    /// Membership query: $1 = user id, $2 = organization id; returns the organization's name.
    #[arg(long = "realtime-membership-query", env = "REALTIME_MEMBERSHIP_QUERY", value_name = "REALTIME_MEMBERSHIP_QUERY", default_value = DEFAULT_MEMBERSHIP_QUERY)]
    pub membership_query: String,

    /// How long a membership answer is cached (a member.leave event drops it at once).
    #[arg(long = "realtime-membership-ttl", env = "REALTIME_MEMBERSHIP_TTL", value_name = "REALTIME_MEMBERSHIP_TTL", default_value = "30s", value_parser = parse_positive_duration)]
    pub membership_ttl: Duration,

    /// Auth.js database sessions table (`"sessionToken"`, `"userId"`, `expires`).
    #[arg(
        long = "realtime-sessions-table",
        env = "REALTIME_SESSIONS_TABLE",
        value_name = "REALTIME_SESSIONS_TABLE",
        default_value = "sessions"
    )]
    pub sessions_table: String,

    /// Frames queued per connection before it counts as lagging and is
    /// caught up from history instead.
    #[arg(long = "realtime-client-buffer", env = "REALTIME_CLIENT_BUFFER", value_name = "REALTIME_CLIENT_BUFFER", default_value_t = 256, value_parser = clap::value_parser!(u64).range(8..=65_536))]
    pub client_buffer: u64,

    /// Timeout for connecting to and hearing back from Postgres and Redis.
    #[arg(long = "realtime-io-timeout", env = "REALTIME_IO_TIMEOUT", value_name = "REALTIME_IO_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub io_timeout: Duration,
}

impl Config {
    /// A configuration for tests and embedding, with every default.
    pub fn new(database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        let mut config = Config::parse_from(["realtime-gateway", "--database-url", "x"]);
        config.database_url = database_url.into();
        config.redis_url = redis_url.into();
        config
    }
}
