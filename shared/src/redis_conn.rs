//! The one way both binaries build their Redis client (ARCHITECTURE.md §5; README, TLS):
//! `redis://` or `rediss://` URLs, an ACL user and password in the URL
//! (`rediss://user:password@host:port`), and for `rediss://` either the
//! platform's trust store or the PEM bundle named by `REALTIME_REDIS_CA`
//! (private CAs: ElastiCache in-transit encryption, self-hosted Redis).
//!
//! Every Redis connection the ingestor and gateway open (publisher, commands,
//! pub/sub, caps, control, history) comes from a [`redis::Client`] built by
//! [`redis_client`], so TLS and credentials can never apply to some
//! connections and not to others.
//!
//! Errors name the setting to fix (`REDIS_URL` or `REALTIME_REDIS_CA`) and
//! never quote the URL, which may hold a password.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redis::{ConnectionAddr, ErrorKind, TlsCertificates};

/// The start-up variable naming the CA bundle.
pub const REDIS_CA_VAR: &str = "REALTIME_REDIS_CA";

/// A Redis setting that cannot work, found before any connection is made.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    /// The URL does not parse. The URL itself is not quoted: it may hold a
    /// password.
    #[error("REDIS_URL: not a usable Redis URL ({0})")]
    Url(String),
    /// `rediss://…#insecure` turns certificate checks off; this build never does.
    #[error(
        "REDIS_URL: '#insecure' (no certificate check) is not supported; give the server's CA in {REDIS_CA_VAR} instead"
    )]
    Insecure,
    /// A CA bundle only makes sense for TLS; a plain URL with one is almost
    /// certainly a forgotten `s` in `rediss://`, which would send the
    /// password in clear.
    #[error("{REDIS_CA_VAR}: set, but REDIS_URL is not a rediss:// (TLS) URL")]
    CaWithoutTls,
    #[error("{REDIS_CA_VAR}: cannot read {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{REDIS_CA_VAR}: {path} holds no usable PEM certificate{detail}")]
    BadCa { path: PathBuf, detail: String },
}

/// Why the first connection to Redis failed, worded for the one start-up
/// line: which setting to look at and why, never the password.
#[derive(Debug, thiserror::Error)]
pub enum RedisConnectError {
    /// Wrong password, unknown or disabled ACL user, or no credentials where
    /// the server requires them.
    #[error(
        "REDIS_URL: Redis refused the credentials (user name and password in the URL): {detail}"
    )]
    Auth { detail: String },
    /// The server's certificate does not chain to the configured CA bundle.
    #[error(
        "{REDIS_CA_VAR}: the Redis server's TLS certificate is not trusted by {path}: {reason}"
    )]
    UntrustedWithCa { path: PathBuf, reason: String },
    /// The server's certificate does not chain to the platform's roots.
    #[error(
        "REDIS_URL: the Redis server's TLS certificate is not trusted by the platform's CA roots: {reason}; for a private CA set {REDIS_CA_VAR} to its PEM bundle"
    )]
    UntrustedPlatform { reason: String },
    /// Anything else: unreachable, timed out, not speaking TLS…
    #[error("REDIS_URL: cannot connect to Redis: {0}")]
    Other(#[source] redis::RedisError),
}

/// Builds the Redis client for `url`, trusting `ca` (a PEM bundle) for
/// `rediss://` when given, the platform's roots otherwise.
///
/// Nothing is connected yet; a bad URL or CA file fails here, before any
/// connection, so start-up reports it as a configuration error.
pub fn redis_client(url: &str, ca: Option<&Path>) -> Result<redis::Client, RedisConfigError> {
    install_crypto_provider();
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| RedisConfigError::Url(describe_url_error(&e)))?;
    let tls = match info.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => return Err(RedisConfigError::Insecure),
        ConnectionAddr::TcpTls { .. } => true,
        _ => false,
    };
    match ca {
        None => {
            redis::Client::open(info).map_err(|e| RedisConfigError::Url(describe_url_error(&e)))
        }
        Some(_) if !tls => Err(RedisConfigError::CaWithoutTls),
        Some(path) => {
            let pem = read_ca(path)?;
            redis::Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| RedisConfigError::BadCa {
                path: path.to_owned(),
                detail: format!(": {e}"),
            })
        }
    }
}

/// Reads the CA bundle at `path`. The redis crate skips a PEM file with no
/// certificate in it and would then trust nothing: say so now instead of
/// failing every handshake later.
pub(crate) fn read_ca(path: &Path) -> Result<Vec<u8>, RedisConfigError> {
    let pem = std::fs::read(path).map_err(|source| RedisConfigError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(RedisConfigError::BadCa {
            path: path.to_owned(),
            detail: String::new(),
        });
    }
    Ok(pem)
}

/// Words a failed first connection for the start-up line (see
/// [`RedisConnectError`]); `ca` is the configured bundle, if any.
pub fn explain_connect_error(error: redis::RedisError, ca: Option<&Path>) -> RedisConnectError {
    if is_auth_error(&error) {
        // The AUTH reply is only "failed"; the server tells no more (on
        // purpose: it would help guessing).
        let detail = if error.kind() == ErrorKind::AuthenticationFailed {
            "wrong password, or unknown or disabled user".to_owned()
        } else {
            error.to_string()
        };
        return RedisConnectError::Auth { detail };
    }
    if let Some(reason) = certificate_error(&error) {
        return match ca {
            Some(path) => RedisConnectError::UntrustedWithCa {
                path: path.to_owned(),
                reason,
            },
            None => RedisConnectError::UntrustedPlatform { reason },
        };
    }
    RedisConnectError::Other(error)
}

/// Authentication refused: the AUTH at connect (`AuthenticationFailed`), or
/// a command refused for want of it (`NOAUTH`, `WRONGPASS`, `NOPERM`).
fn is_auth_error(error: &redis::RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// The certificate-verification failure inside a TLS handshake error, if
/// that is what `error` is.
fn certificate_error(error: &redis::RedisError) -> Option<String> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => Some(tls.to_string()),
                _ => None,
            };
        }
        // `io::Error::source` and `Arc::source` skip the error they wrap
        // (the redis crate keeps its I/O error in an `Arc`); look inside.
        source = if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io.get_ref().map(|inner| inner as _)
        } else if let Some(arc) = e.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            Some(&**arc as _)
        } else {
            e.source()
        };
    }
    None
}

/// The URL parse error without the URL (the redis crate never quotes it,
/// but its detail may; only the kind and description are kept).
pub(crate) fn describe_url_error(error: &redis::RedisError) -> String {
    match error.kind() {
        ErrorKind::InvalidClientConfig => error
            .to_string()
            .split(" - ")
            .next()
            .unwrap_or("invalid")
            .to_owned(),
        _ => "invalid".to_owned(),
    }
}

/// rustls needs one process-wide crypto provider, and this workspace builds
/// both `ring` (pgwire-replication) and `aws-lc-rs` (reqwest), so none is
/// picked by default and the redis crate's `ClientConfig::builder()` would
/// panic. `ring` is installed unless some provider already is (installing
/// is first-come; pgwire-replication also asks for `ring`).
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_tls_urls_with_acl_users_build() {
        assert!(redis_client("redis://127.0.0.1:6379", None).is_ok());
        assert!(redis_client("rediss://app:s3cret@127.0.0.1:6380", None).is_ok());
        let info = redis_client("rediss://app:s3cret@127.0.0.1:6380", None)
            .unwrap_or_else(|e| panic!("{e}"));
        let redis = info.get_connection_info().redis_settings();
        assert_eq!(redis.username(), Some("app"));
        assert_eq!(redis.password(), Some("s3cret"));
    }

    #[test]
    fn bad_settings_name_the_variable_and_hide_the_password() {
        let e = redis_client("http://app:s3cret@host", None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("REDIS_URL: "), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = redis_client("rediss://app:s3cret@host#insecure", None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("REDIS_URL: ") && !e.contains("s3cret"), "{e}");
        let missing = Path::new("/nonexistent/ca.pem");
        let e = redis_client("rediss://host", Some(missing))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("REALTIME_REDIS_CA: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let e = redis_client("redis://host", Some(missing))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("REALTIME_REDIS_CA: ") && e.contains("rediss://"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("redis-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
        let e = redis_client("rediss://host", Some(&junk))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("REALTIME_REDIS_CA: ") && e.contains("no usable PEM"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
