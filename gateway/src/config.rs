//! The gateway's settings: environment variables and the same-named flags
//! (ARCHITECTURE.md §5). `realtime-gateway --help` lists them all with defaults.
//!
//! Secrets are the exception to "the same-named flag": they are read from
//! the environment only and must be at least [`MIN_SECRET_BYTES`] long
//! ([`Config::from_process`], [`Config::check_secrets`]).

use std::net::SocketAddr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use realtime_shared::config::{parse_key_prefix, parse_positive_duration};

/// Shortest secret accepted, in bytes: what `openssl rand -base64 32` or
/// `npx auth secret` print (32 random bytes, 43–44 characters) passes, a
/// word or a short phrase does not. An HS256 key or an HKDF input shorter
/// than the hash's 32 bytes can be guessed offline from one token.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// The secret settings: clap id, variable, flag. They are read from the
/// environment only: a flag's value is visible to every local user in
/// `ps` and `/proc/<pid>/cmdline`.
const SECRETS: [(&str, &str, &str); 7] = [
    ("auth_secret", "AUTH_SECRET", "--auth-secret"),
    ("nextauth_secret", "NEXTAUTH_SECRET", "--nextauth-secret"),
    ("auth_secret_1", "AUTH_SECRET_1", "--auth-secret-1"),
    ("auth_secret_2", "AUTH_SECRET_2", "--auth-secret-2"),
    ("auth_secret_3", "AUTH_SECRET_3", "--auth-secret-3"),
    ("jwt_secret", "REALTIME_JWT_SECRET", "--realtime-jwt-secret"),
    (
        "publish_key",
        "REALTIME_PUBLISH_KEY",
        "--realtime-publish-key",
    ),
];

const SECRETS_HELP: &str =
    "Secrets, from the environment only (never flags: a command line is visible in ps), \
each at least 32 bytes when set:
  AUTH_SECRET            Auth.js / NextAuth secret (session cookies)
  NEXTAUTH_SECRET        used when AUTH_SECRET is not set
  AUTH_SECRET_1..3       rotated secrets, tried after AUTH_SECRET
  REALTIME_JWT_SECRET    HS256 secret for `Authorization: Bearer` JWTs
  REALTIME_PUBLISH_KEY   Bearer key of POST /api/realtime/publish; unset: that endpoint is off";

/// A setting refused after parsing; the message is the one start-up line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{var}: secrets are read from the environment only, not from {flag} (a command line is visible to every user in ps)"
    )]
    SecretFlag {
        var: &'static str,
        flag: &'static str,
    },
    #[error(
        "{var}: too short ({len} bytes); use at least {MIN_SECRET_BYTES} random bytes, e.g. `openssl rand -base64 32`"
    )]
    ShortSecret { var: &'static str, len: usize },
}

/// The membership query of ARCHITECTURE.md §6: `$1` user id, `$2` organization id;
/// one row with the organization's name when the user is a member.
pub(crate) const DEFAULT_MEMBERSHIP_QUERY: &str = "SELECT o.name FROM organization_members m JOIN organizations o ON o.id = m.\"organizationId\" WHERE m.\"userId\" = $1 AND m.\"organizationId\" = $2";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "realtime-gateway",
    version,
    about = "Serves per-organization realtime events over Server-Sent Events.",
    long_about = None,
    after_help = SECRETS_HELP
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

    /// Redis URL: history streams and live channels. redis:// or rediss:// (TLS), with an ACL user as rediss://user:password@host:port; several comma-separated seed URLs mean a Redis Cluster.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM bundle of the CA(s) that sign the Redis server's certificate, for rediss:// with a private CA (the platform's roots otherwise).
    #[arg(
        long = "realtime-redis-ca",
        env = "REALTIME_REDIS_CA",
        value_name = "REALTIME_REDIS_CA"
    )]
    pub redis_ca: Option<std::path::PathBuf>,

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
        hide = true,
        env = "AUTH_SECRET",
        value_name = "AUTH_SECRET",
        hide_env_values = true
    )]
    pub auth_secret: Option<String>,

    /// Used when AUTH_SECRET is not set.
    #[arg(
        long = "nextauth-secret",
        hide = true,
        env = "NEXTAUTH_SECRET",
        value_name = "NEXTAUTH_SECRET",
        hide_env_values = true
    )]
    pub nextauth_secret: Option<String>,

    /// Rotated secrets, tried after AUTH_SECRET.
    #[arg(
        long = "auth-secret-1",
        hide = true,
        env = "AUTH_SECRET_1",
        value_name = "AUTH_SECRET_1",
        hide_env_values = true
    )]
    pub auth_secret_1: Option<String>,
    #[arg(
        long = "auth-secret-2",
        hide = true,
        env = "AUTH_SECRET_2",
        value_name = "AUTH_SECRET_2",
        hide_env_values = true
    )]
    pub auth_secret_2: Option<String>,
    #[arg(
        long = "auth-secret-3",
        hide = true,
        env = "AUTH_SECRET_3",
        value_name = "AUTH_SECRET_3",
        hide_env_values = true
    )]
    pub auth_secret_3: Option<String>,

    /// HS256 secret for `Authorization: Bearer` JWTs.
    #[arg(
        long = "realtime-jwt-secret",
        hide = true,
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

    /// How often the streams opened with an Auth.js database session check
    /// that their session row still exists and has not expired: a sign-out
    /// or a ban deletes it, and the stream ends within this interval.
    #[arg(long = "realtime-session-recheck", env = "REALTIME_SESSION_RECHECK", value_name = "REALTIME_SESSION_RECHECK", default_value = "30s", value_parser = parse_positive_duration)]
    pub session_recheck: Duration,

    /// Frames queued per connection before it counts as lagging and is
    /// caught up from history instead.
    #[arg(long = "realtime-client-buffer", env = "REALTIME_CLIENT_BUFFER", value_name = "REALTIME_CLIENT_BUFFER", default_value_t = 256, value_parser = clap::value_parser!(u64).range(8..=65_536))]
    pub client_buffer: u64,

    /// How long open streams are closed over after SIGTERM (paced, each
    /// with a jittered `retry:`); the process exits within it.
    #[arg(long = "realtime-drain", env = "REALTIME_DRAIN", value_name = "REALTIME_DRAIN", default_value = "20s", value_parser = parse_positive_duration)]
    pub drain: Duration,

    /// New streams per second per client IP, fractions allowed (`0.5`: one
    /// every two seconds); 0: no limit.
    #[arg(long = "realtime-connect-rate", env = "REALTIME_CONNECT_RATE", value_name = "REALTIME_CONNECT_RATE", default_value_t = 10.0, value_parser = parse_rate)]
    pub connect_rate: f64,

    /// Burst of new streams per client IP above the rate.
    #[arg(long = "realtime-connect-burst", env = "REALTIME_CONNECT_BURST", value_name = "REALTIME_CONNECT_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_burst: u32,

    /// Comma-separated proxy addresses or CIDRs whose X-Forwarded-For /
    /// Forwarded headers are trusted for the client IP; empty: none.
    #[arg(
        long = "realtime-trusted-proxies",
        env = "REALTIME_TRUSTED_PROXIES",
        value_name = "REALTIME_TRUSTED_PROXIES",
        default_value = "",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// Open streams per user across all replicas.
    #[arg(long = "realtime-max-connections-per-user", env = "REALTIME_MAX_CONNECTIONS_PER_USER", value_name = "REALTIME_MAX_CONNECTIONS_PER_USER", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_user: u32,

    /// Open streams per organization across all replicas.
    #[arg(long = "realtime-max-connections-per-org", env = "REALTIME_MAX_CONNECTIONS_PER_ORG", value_name = "REALTIME_MAX_CONNECTIONS_PER_ORG", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_org: u32,

    /// Lease of a stream's place in the caps: a crashed replica's streams
    /// stop counting within it; leases are renewed every third of it.
    #[arg(long = "realtime-connection-lease", env = "REALTIME_CONNECTION_LEASE", value_name = "REALTIME_CONNECTION_LEASE", default_value = "30s", value_parser = parse_positive_duration)]
    pub connection_lease: Duration,

    /// Bearer key of `POST /api/realtime/publish`; unset: that endpoint is off.
    #[arg(
        long = "realtime-publish-key",
        hide = true,
        env = "REALTIME_PUBLISH_KEY",
        value_name = "REALTIME_PUBLISH_KEY",
        hide_env_values = true
    )]
    pub publish_key: Option<String>,

    /// Wrong publish keys tolerated per client IP: past them, that IP's
    /// `POST /api/realtime/publish` gets 429 (without the key being
    /// compared) until the count has drained.
    #[arg(long = "realtime-publish-key-failures", env = "REALTIME_PUBLISH_KEY_FAILURES", value_name = "REALTIME_PUBLISH_KEY_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub publish_key_failures: u32,

    /// How fast the count of wrong publish keys drains: one failure is
    /// forgotten per period.
    #[arg(long = "realtime-publish-key-lockout", env = "REALTIME_PUBLISH_KEY_LOCKOUT", value_name = "REALTIME_PUBLISH_KEY_LOCKOUT", default_value = "1m", value_parser = parse_positive_duration)]
    pub publish_key_lockout: Duration,

    /// `POST`, `PUT`, `DELETE` requests per second per client IP (the
    /// stream route's activity and control calls and the publish API),
    /// fractions allowed; 0: no limit.
    #[arg(long = "realtime-request-rate", env = "REALTIME_REQUEST_RATE", value_name = "REALTIME_REQUEST_RATE", default_value_t = 20.0, value_parser = parse_rate)]
    pub request_rate: f64,

    /// Burst of `POST`, `PUT`, `DELETE` requests per client IP above the rate.
    #[arg(long = "realtime-request-burst", env = "REALTIME_REQUEST_BURST", value_name = "REALTIME_REQUEST_BURST", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub request_burst: u32,

    /// Largest body accepted by the publish endpoints, in bytes.
    #[arg(long = "realtime-max-publish-bytes", env = "REALTIME_MAX_PUBLISH_BYTES", value_name = "REALTIME_MAX_PUBLISH_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(64..=8_388_608))]
    pub max_publish_bytes: u32,

    /// `user.activity` posts per second per user (`POST /api/realtime/stream`).
    #[arg(long = "realtime-activity-rate", env = "REALTIME_ACTIVITY_RATE", value_name = "REALTIME_ACTIVITY_RATE", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub activity_rate: u32,

    /// Burst of `user.activity` posts per user above the rate.
    #[arg(long = "realtime-activity-burst", env = "REALTIME_ACTIVITY_BURST", value_name = "REALTIME_ACTIVITY_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub activity_burst: u32,

    /// How long a client has to send a whole request head on the public
    /// listener: from the connection's accept, and on an idle keep-alive
    /// connection from the end of its previous response. A connection that
    /// has not sent one by then is closed, whether it sent nothing, half a
    /// head or a byte at a time; so a half-open socket holds its file
    /// descriptor and its memory for at most this long.
    #[arg(long = "realtime-head-timeout", env = "REALTIME_HEAD_TIMEOUT", value_name = "REALTIME_HEAD_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub head_timeout: Duration,

    /// Open connections on the public listener of this replica (streams,
    /// other requests and connections still sending their head); 0: derived
    /// from the open-files limit (which the gateway raises to its hard
    /// limit at start), leaving room for Postgres, Redis and the admin
    /// listener; a larger value is lowered to that too. At the cap a new
    /// connection takes the place of the one that has waited longest for
    /// its request head; when every connection has sent its head, the new
    /// one is closed at once (`realtime_gateway_sockets_refused_total`).
    #[arg(
        long = "realtime-max-connections",
        env = "REALTIME_MAX_CONNECTIONS",
        value_name = "REALTIME_MAX_CONNECTIONS",
        default_value_t = 0
    )]
    pub max_connections: u32,

    /// Timeout for connecting to and hearing back from Postgres and Redis.
    #[arg(long = "realtime-io-timeout", env = "REALTIME_IO_TIMEOUT", value_name = "REALTIME_IO_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub io_timeout: Duration,
}

/// A rate: a finite, non-negative number.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a non-negative number")),
    }
}

impl Config {
    /// The process's flags and environment, as
    /// [`parse_args`](realtime_shared::config::parse_args) reads them (one
    /// line and exit code 2 for a bad value), refusing a secret given as a
    /// flag: naming the variable is the whole fix, so nothing is inferred.
    pub fn from_process() -> Result<Self, std::process::ExitCode> {
        let parsed = Self::command()
            .try_get_matches()
            .and_then(|matches| Self::from_arg_matches(&matches).map(|c| (c, matches)));
        let (config, matches) = match parsed {
            Ok(parsed) => parsed,
            Err(e) if !e.use_stderr() => e.exit(),
            Err(e) => {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("invalid settings");
                eprintln!("error: {}", first.trim_start_matches("error: "));
                return Err(std::process::ExitCode::from(2));
            }
        };
        if let Err(e) = secrets_only_from_env(&matches) {
            eprintln!("error: {e}");
            return Err(std::process::ExitCode::from(2));
        }
        Ok(config)
    }

    /// Refuses a secret shorter than [`MIN_SECRET_BYTES`]. An empty value
    /// counts as unset (as a Kubernetes secret key left `""` does).
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        let values = [
            &self.auth_secret,
            &self.nextauth_secret,
            &self.auth_secret_1,
            &self.auth_secret_2,
            &self.auth_secret_3,
            &self.jwt_secret,
            &self.publish_key,
        ];
        for ((_, var, _), value) in SECRETS.iter().zip(values) {
            let len = value.as_deref().map_or(0, str::len);
            if len > 0 && len < MIN_SECRET_BYTES {
                return Err(ConfigError::ShortSecret { var, len });
            }
        }
        Ok(())
    }

    /// A configuration for tests and embedding, with every default.
    pub fn new(database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        let mut config = Config::parse_from(["realtime-gateway", "--database-url", "x"]);
        config.database_url = database_url.into();
        config.redis_url = redis_url.into();
        config
    }
}

/// Refuses a secret that came from the command line.
fn secrets_only_from_env(matches: &clap::ArgMatches) -> Result<(), ConfigError> {
    for (id, var, flag) in SECRETS {
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            return Err(ConfigError::SecretFlag { var, flag });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(args: &[&str]) -> clap::ArgMatches {
        Config::command()
            .try_get_matches_from(args)
            .expect("parses")
    }

    #[test]
    fn secrets_given_as_flags_are_refused_by_name() {
        for (_, var, flag) in SECRETS {
            let long = format!("{flag}=0123456789abcdef0123456789abcdef");
            let m = matches(&["realtime-gateway", "--database-url", "x", &long]);
            let e = secrets_only_from_env(&m).unwrap_err();
            assert!(e.to_string().starts_with(&format!("{var}: ")), "{e}");
            assert!(e.to_string().contains(flag), "{e}");
        }
        let m = matches(&["realtime-gateway", "--database-url", "x"]);
        assert!(secrets_only_from_env(&m).is_ok());
    }

    #[test]
    fn secrets_are_hidden_from_the_flag_list_but_named_in_help() {
        let help = Config::command().render_long_help().to_string();
        assert!(!help.contains("--auth-secret"), "{help}");
        assert!(!help.contains("--realtime-publish-key "), "{help}");
        for (_, var, _) in SECRETS {
            let named = var.strip_suffix("_1").map_or(var, |_| "AUTH_SECRET_1..3");
            if var.ends_with("_2") || var.ends_with("_3") {
                continue;
            }
            assert!(help.contains(named), "{var} missing from --help:\n{help}");
        }
    }

    #[test]
    fn short_secrets_are_refused_by_name() {
        let mut c = Config::new("postgres://x", "redis://x");
        assert!(c.check_secrets().is_ok());
        c.auth_secret = Some(String::new());
        c.publish_key = Some("a".repeat(MIN_SECRET_BYTES));
        assert!(c.check_secrets().is_ok());
        c.auth_secret_2 = Some("short".into());
        let e = c.check_secrets().unwrap_err().to_string();
        assert!(e.starts_with("AUTH_SECRET_2: too short (5 bytes)"), "{e}");
        c.auth_secret_2 = None;
        c.jwt_secret = Some("x".repeat(MIN_SECRET_BYTES - 1));
        let e = c.check_secrets().unwrap_err().to_string();
        assert!(e.starts_with("REALTIME_JWT_SECRET: "), "{e}");
    }
}
