//! The replication connection: DATABASE_URL → pgwire-replication config.

use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationConfig, TlsConfig};
use realtime_shared::postgres_tls::{self, PgTls, SslMode};
use tokio_postgres::config::Host;

use crate::setup::SetupError;

/// Session settings pinned on the replication connection so that pgoutput's
/// text values have one format: timestamps in UTC and ISO style, floats
/// with round-trip precision.
const SESSION_OPTIONS: &str =
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3";

/// Builds the replication config from an ordinary Postgres URL. Streaming
/// starts at the slot's confirmed position (`start_lsn` 0).
pub(crate) fn config_from_url(
    url: &str,
    slot: &str,
    publication: &str,
    status_interval: Duration,
) -> Result<ReplicationConfig, SetupError> {
    let (pg, tls) = postgres_tls::parse(url).map_err(crate::setup::bad_url)?;
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
    let tls = replication_tls(&tls, &host)?;
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

/// The URL's TLS settings on pgwire-replication's `TlsConfig`, with the same
/// meaning as on the SQL connections (see [`realtime_shared::postgres_tls`]):
/// pgwire-replication implements all five modes with rustls (`prefer` falls
/// back to plaintext only when the server answers the SSLRequest with `N`;
/// `require` without a root accepts any certificate; `verify-ca` checks the
/// chain, not the name) and reads `sslrootcert` itself, falling back to the
/// Mozilla roots like the SQL side.
///
/// Two adjustments keep it equal to libpq: `require` with a root file is
/// `verify-ca`; and `verify-full` to an IP address, which pgwire-replication
/// refuses outright as a likely mistake, is checked against the
/// certificate's IP SANs (as libpq and the SQL connections do) by naming the
/// address as the TLS server name. The root file is also read once here, so
/// an unusable one stops start-up with the same message as on the SQL side.
fn replication_tls(tls: &PgTls, host: &str) -> Result<TlsConfig, SetupError> {
    if tls.effective_mode() != SslMode::Disable {
        // Builds (and throws away) the SQL connector: validates sslrootcert.
        tls.connector()?;
    }
    let root = tls.root_cert().map(ToOwned::to_owned);
    Ok(match tls.effective_mode() {
        SslMode::Disable => TlsConfig::disabled(),
        SslMode::Prefer => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            ..TlsConfig::disabled()
        },
        SslMode::Require => TlsConfig::require(),
        SslMode::VerifyCa => TlsConfig::verify_ca(root),
        SslMode::VerifyFull if host.parse::<std::net::IpAddr>().is_ok() => {
            TlsConfig::verify_full(root).with_sni_hostname(host)
        }
        SslMode::VerifyFull => TlsConfig::verify_full(root),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_of(url: &str) -> TlsConfig {
        config_from_url(url, "s", "p", Duration::from_secs(10))
            .expect("valid")
            .tls
    }

    #[test]
    fn modes_map_onto_pgwire_replication() {
        use pgwire_replication::SslMode as P;
        assert_eq!(tls_of("postgres://u@h/db").mode, P::Prefer);
        assert_eq!(tls_of("postgres://u@h/db?sslmode=disable").mode, P::Disable);
        assert_eq!(tls_of("postgres://u@h/db?sslmode=require").mode, P::Require);
        let full = tls_of("postgres://u@db.example.com/db?sslmode=verify-full");
        assert_eq!((full.mode, full.sni_hostname), (P::VerifyFull, None));
        let ip = tls_of("postgres://u@127.0.0.1/db?sslmode=verify-full");
        assert_eq!(ip.sni_hostname.as_deref(), Some("127.0.0.1"));
    }
}
