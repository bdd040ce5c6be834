//! The replication connection: DATABASE_URL → pgwire-replication config.

use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationConfig, TlsConfig};
use tokio_postgres::config::{Host, SslMode};

use crate::setup::SetupError;

/// Session settings pinned on the replication connection so that pgoutput's
/// text values have one format: timestamps in UTC and ISO style, floats
/// with round-trip precision.
const SESSION_OPTIONS: &str =
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3";

/// Builds the replication config from an ordinary Postgres URL. Streaming
/// starts at the slot's confirmed position (`start_lsn` 0).
pub fn config_from_url(
    url: &str,
    slot: &str,
    publication: &str,
    status_interval: Duration,
) -> Result<ReplicationConfig, SetupError> {
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| SetupError::BadUrl(e.to_string()))?;
    let user = pg
        .get_user()
        .ok_or_else(|| SetupError::BadUrl("no user name".into()))?
        .to_owned();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = pg.get_dbname().unwrap_or(&user).to_owned();
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let tls = match pg.get_ssl_mode() {
        SslMode::Require => TlsConfig::require(),
        _ => TlsConfig::disabled(),
    };
    Ok(
        ReplicationConfig::new(host, user, password, database, slot, publication)
            .with_port(port)
            .with_tls(tls)
            .with_start_lsn(Lsn::ZERO)
            .with_status_interval(status_interval)
            .with_wakeup_interval(status_interval)
            .with_options(SESSION_OPTIONS)
            .with_application_name("realtime-ingestor"),
    )
}
