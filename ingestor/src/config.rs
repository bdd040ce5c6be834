//! The ingestor's settings: environment variables and the same-named flags
//! (ARCHITECTURE.md §5). `realtime-ingestor --help` lists them all with defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use realtime_shared::config::{parse_bool, parse_key_prefix, parse_positive_duration};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "realtime-ingestor",
    version,
    about = "Streams Postgres logical replication (pgoutput) into per-organization Redis events.",
    long_about = None
)]
pub struct Config {
    /// Postgres connection URL (a user with the REPLICATION attribute, or a superuser).
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Redis URL: redis:// or rediss:// (TLS), with an ACL user as rediss://user:password@host:port; several comma-separated seed URLs mean a Redis Cluster.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM bundle of the CA(s) that sign the Redis server's certificate, for `rediss://` with a private CA (the platform's roots otherwise). Put the user and password in REDIS_URL: rediss://user:password@host:port.
    #[arg(
        long = "realtime-redis-ca",
        env = "REALTIME_REDIS_CA",
        value_name = "REALTIME_REDIS_CA"
    )]
    pub redis_ca: Option<PathBuf>,

    /// Name of the persistent logical replication slot (created when missing).
    #[arg(long = "realtime-slot", env = "REALTIME_SLOT", value_name = "REALTIME_SLOT", default_value = "realtime", value_parser = parse_identifier)]
    pub slot: String,

    /// Name of the publication (created when missing; its table list is kept equal to the routed tables when this role owns it; another role's publication is used as it is and must hold every routed table).
    #[arg(long = "realtime-publication", env = "REALTIME_PUBLICATION", value_name = "REALTIME_PUBLICATION", default_value = "realtime", value_parser = parse_identifier)]
    pub publication: String,

    /// Routing config (TOML). Without it, the built-in Oikion routes are used.
    #[arg(
        long = "realtime-routes",
        env = "REALTIME_ROUTES",
        value_name = "REALTIME_ROUTES"
    )]
    pub routes: Option<PathBuf>,

    /// Set REPLICA IDENTITY FULL on routed tables that lack it (else refuse to start).
    #[arg(long = "realtime-manage-replica-identity", env = "REALTIME_MANAGE_REPLICA_IDENTITY", value_name = "REALTIME_MANAGE_REPLICA_IDENTITY", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub manage_replica_identity: bool,

    /// Events kept per history stream (MAXLEN ~).
    #[arg(long = "realtime-history-len", env = "REALTIME_HISTORY_LEN", value_name = "REALTIME_HISTORY_LEN", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub history_len: u64,

    /// Prefix of every Redis key.
    #[arg(long = "realtime-key-prefix", env = "REALTIME_KEY_PREFIX", value_name = "REALTIME_KEY_PREFIX", default_value = "rt", value_parser = parse_key_prefix)]
    pub key_prefix: String,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long = "realtime-admin-listen",
        env = "REALTIME_ADMIN_LISTEN",
        value_name = "REALTIME_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: SocketAddr,

    /// How often a heartbeat message is written to the WAL, so that an idle
    /// publication never pins WAL.
    #[arg(long = "realtime-wal-heartbeat", env = "REALTIME_WAL_HEARTBEAT", value_name = "REALTIME_WAL_HEARTBEAT", default_value = "30s", value_parser = parse_positive_duration)]
    pub wal_heartbeat: Duration,

    /// How often the acknowledged position is reported to Postgres.
    #[arg(long = "realtime-status-interval", env = "REALTIME_STATUS_INTERVAL", value_name = "REALTIME_STATUS_INTERVAL", default_value = "1s", value_parser = parse_positive_duration)]
    pub status_interval: Duration,

    /// Longest wait between reconnection attempts (exponential backoff with jitter).
    #[arg(long = "realtime-reconnect-max", env = "REALTIME_RECONNECT_MAX", value_name = "REALTIME_RECONNECT_MAX", default_value = "10s", value_parser = parse_positive_duration)]
    pub reconnect_max: Duration,

    /// Timeout for connecting to and hearing back from Postgres and Redis.
    #[arg(long = "realtime-io-timeout", env = "REALTIME_IO_TIMEOUT", value_name = "REALTIME_IO_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub io_timeout: Duration,

    /// Largest number of events sent to Redis in one pipeline.
    #[arg(long = "realtime-publish-batch", env = "REALTIME_PUBLISH_BATCH", value_name = "REALTIME_PUBLISH_BATCH", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub publish_batch: u64,

    /// Past this many events of one organization and one table in one transaction, they are replaced by one data.sync {entityType, operation: "bulk", count} (membership and user-addressed notification events never are). 0: never.
    #[arg(long = "realtime-bulk-threshold", env = "REALTIME_BULK_THRESHOLD", value_name = "REALTIME_BULK_THRESHOLD", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub bulk_threshold: u64,

    /// Largest event (its Redis envelope, in bytes): a larger one loses its row values (`changes`, `data`) for "truncated": true, so clients refetch that entity.
    #[arg(long = "realtime-max-event-bytes", env = "REALTIME_MAX_EVENT_BYTES", value_name = "REALTIME_MAX_EVENT_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1_024..=64 * 1024 * 1024))]
    pub max_event_bytes: u64,
}

/// A Postgres identifier we interpolate into replication commands: lower-case
/// letters, digits and `_`, starting with a letter or `_`, at most 63 bytes.
fn parse_identifier(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(s.to_owned())
    } else {
        Err("use 1-63 lower-case letters, digits and _, not starting with a digit".into())
    }
}

impl Config {
    /// A configuration for tests and embedding, with every default.
    pub fn new(database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        let mut config = Config::parse_from(["realtime-ingestor", "--database-url", "x"]);
        config.database_url = database_url.into();
        config.redis_url = redis_url.into();
        config
    }
}
