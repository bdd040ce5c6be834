//! TLS for every Postgres connection, with libpq's `sslmode` / `sslrootcert`
//! semantics, shared by the ingestor and the gateway.
//!
//! # Why this module exists
//!
//! `tokio_postgres::Config` parses `sslmode` but only knows `disable`,
//! `prefer` and `require`, rejects `verify-ca`, `verify-full` and
//! `sslrootcert` as unknown, and never checks a certificate itself: that is
//! the job of the `MakeTlsConnect` it is given. Managed Postgres (Neon, RDS
//! with `rds.force_ssl`, Supabase, Cloud SQL) requires TLS, and an operator
//! copies the URL their provider shows, in either form libpq accepts. So
//! [`parse`] takes `sslmode` and `sslrootcert` out of the URL (URI query
//! `?sslmode=verify-full&sslrootcert=/ca.pem` or key=value
//! `sslmode=verify-full sslrootcert=/ca.pem`), hands the rest to
//! tokio-postgres, and [`PgTls::connector`] builds the rustls connector that
//! enforces the mode. The ingestor's replication connection (pgwire-replication)
//! maps the same [`PgTls`] onto its own `TlsConfig`, so every connection of
//! both binaries follows one reading of the URL.
//!
//! # Modes (the contract; README "TLS" repeats it for operators)
//!
//! | `sslmode` | encrypted | chain checked | host name checked | plaintext fallback |
//! |---|---|---|---|---|
//! | `disable` | no | – | – | – |
//! | `prefer` (default) | if the server agrees | no | no | yes, when the server refuses TLS |
//! | `require` | yes | no (yes with `sslrootcert`, as libpq) | no | no |
//! | `verify-ca` | yes | yes | no | no |
//! | `verify-full` | yes | yes | yes (DNS name or IP SAN) | no |
//!
//! Roots: the PEM bundle named by `sslrootcert`, else the Mozilla roots
//! compiled in (`webpki-roots`, the same set pgwire-replication uses, so the
//! replication connection and the SQL connections accept exactly the same
//! certificates). libpq's default `~/.postgresql/root.crt` is not read; name
//! the file. `allow` (plaintext first) is refused: tokio-postgres cannot
//! retry with TLS after a plaintext refusal, and silently changing the mode
//! would be worse. Client certificates (`sslcert`/`sslkey`) are not
//! supported yet and are rejected by tokio-postgres as unknown options.
//! SCRAM channel binding is not offered (`channel_binding=require` fails).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Why a Postgres URL's TLS settings cannot be used. Each message names the
/// parameter; callers prefix the variable (`DATABASE_URL: …`).
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error(
        "sslmode={0:?} is not supported (use disable, prefer, require, verify-ca or verify-full)"
    )]
    UnknownSslMode(String),
    #[error("not a valid Postgres URL: {0}")]
    BadUrl(String),
    #[error("sslrootcert {path:?}: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error("building the TLS configuration: {0}")]
    Rustls(String),
}

/// libpq's `sslmode`, as written in the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, PgTlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(PgTlsError::UnknownSslMode(other.to_owned())),
        })
    }

    /// The URL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error` and all its sources on one line (`a: b: c`). tokio-postgres's
/// errors print only their kind ("error performing TLS handshake", "db
/// error"); the cause, which says *which* certificate check failed or that
/// pg_hba wants encryption, is in the source chain.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = e.source();
    }
    line.replace('\n', " ")
}

/// The TLS half of a Postgres URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    mode: SslMode,
    root_cert: Option<PathBuf>,
}

impl PgTls {
    /// The mode as written (`prefer` when absent).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The mode enforced: `require` with an `sslrootcert` checks the chain
    /// like `verify-ca` (libpq's rule for an existing root file).
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }

    /// The `sslrootcert` file, if named.
    pub fn root_cert(&self) -> Option<&Path> {
        self.root_cert.as_deref()
    }

    /// For messages: `sslmode=verify-full, sslrootcert=/ca.pem`.
    pub fn describe(&self) -> String {
        match &self.root_cert {
            Some(path) => format!("sslmode={}, sslrootcert={}", self.mode, path.display()),
            None => format!("sslmode={}", self.mode),
        }
    }

    /// The rustls connector for tokio-postgres (and deadpool-postgres)
    /// enforcing [`Self::effective_mode`]. Reads `sslrootcert` now, so an
    /// unreadable or empty file is a start-up error, not a connect-time one.
    pub fn connector(&self) -> Result<MakeRustlsConnect, PgTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgTlsError::Rustls(e.to_string()))?;
        let mode = self.effective_mode();
        let config = match mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification { algorithms }))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(self.root_store()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| PgTlsError::Rustls(e.to_string()))?;
                let verifier: Arc<dyn ServerCertVerifier> = if mode == SslMode::VerifyCa {
                    Arc::new(ChainOnly { inner: webpki })
                } else {
                    webpki
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect {
            config: Arc::new(config),
            describe: Arc::from(self.describe()),
        })
    }

    fn root_store(&self) -> Result<RootCertStore, PgTlsError> {
        let mut roots = RootCertStore::empty();
        let Some(path) = &self.root_cert else {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            return Ok(roots);
        };
        let bad = |reason: String| PgTlsError::RootCert {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(format!("cannot read it: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(bad("holds no usable CA certificate".into()));
        }
        Ok(roots)
    }
}

/// Splits a Postgres URL (URI or key=value form) into the tokio-postgres
/// config, whose `ssl_mode` is set to match, and its [`PgTls`].
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, PgTls), PgTlsError> {
    let (rest, mode, root) = strip_tls_params(url)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| PgTlsError::BadUrl(e.to_string()))?;
    let tls = PgTls {
        mode: mode
            .as_deref()
            .map(SslMode::parse)
            .transpose()?
            .unwrap_or_default(),
        root_cert: root.filter(|r| !r.is_empty()).map(PathBuf::from),
    };
    config.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok((config, tls))
}

type Stripped = (String, Option<String>, Option<String>);

/// The URL without its `sslmode` and `sslrootcert` parameters, and their
/// values (decoded). Follows tokio-postgres's own parsers: the URI form
/// when the URL starts with `postgres://` or `postgresql://`, else
/// key=value pairs; the last occurrence of a key wins.
fn strip_tls_params(url: &str) -> Result<Stripped, PgTlsError> {
    let is_uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_uri {
        strip_uri(url)
    } else {
        strip_key_value(url)
    }
}

fn strip_uri(url: &str) -> Result<Stripped, PgTlsError> {
    // tokio-postgres reads credentials up to the first '@', so a '?' in a
    // password is part of it; parameters start at the first '?' after that.
    let after_credentials = url.find('@').map_or(0, |at| at + 1);
    let Some(query) = url[after_credentials..]
        .find('?')
        .map(|q| q + after_credentials)
    else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in url[query + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|e| PgTlsError::BadUrl(e.to_string()))
        };
        match decode(key)?.as_str() {
            "sslmode" => mode = Some(decode(value)?),
            "sslrootcert" => root = Some(decode(value)?),
            _ => kept.push(pair),
        }
    }
    let mut rest = url[..query].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, mode, root))
}

fn strip_key_value(url: &str) -> Result<Stripped, PgTlsError> {
    let (mut mode, mut root) = (None, None);
    let mut kept: Vec<&str> = Vec::new();
    let chars: Vec<(usize, char)> = url.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(url.len(), |&(o, _)| o);
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let start = i;
        while at(i).is_some_and(|c| !c.is_whitespace() && c != '=') {
            i += 1;
        }
        if i == start {
            break;
        }
        let key = &url[offset(start)..offset(i)];
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            return Err(PgTlsError::BadUrl(format!("expected `=` after {key:?}")));
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i) {
                    None => {
                        return Err(PgTlsError::BadUrl(
                            "unterminated quoted connection parameter value".into(),
                        ));
                    }
                    Some('\'') => break,
                    Some('\\') => {
                        i += 1;
                        value.extend(at(i));
                    }
                    Some(c) => value.push(c),
                }
                i += 1;
            }
            i += 1;
        } else {
            while let Some(c) = at(i).filter(|c| !c.is_whitespace()) {
                if c == '\\' {
                    i += 1;
                    value.extend(at(i));
                } else {
                    value.push(c);
                }
                i += 1;
            }
        }
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(&url[offset(start)..offset(i)]),
        }
    }
    Ok((kept.join(" "), mode, root))
}

/// The `MakeTlsConnect` built by [`PgTls::connector`]: cheap to clone, one
/// rustls config shared by every connection of a pool.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
    describe: Arc<str>,
}

impl fmt::Debug for MakeRustlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeRustlsConnect")
            .field("tls", &self.describe)
            .finish_non_exhaustive()
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    /// `domain` is the URL's host ("" for a Unix socket, where the server
    /// refuses TLS anyway): an invalid name only fails if TLS is attempted.
    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned()).ok(),
            describe: self.describe.clone(),
        })
    }
}

/// One connection's handshake (see [`MakeRustlsConnect`]).
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
    describe: Arc<str>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.ok_or_else(|| {
                io::Error::other(format!("no valid host name for TLS ({})", self.describe))
            })?;
            tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
                .map_err(|e| io::Error::new(e.kind(), format!("{e} ({})", self.describe)))
        })
    }
}

/// A TLS stream to Postgres.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No channel binding: SCRAM runs without `-PLUS` (see the module doc).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// `prefer` / `require` without a root: encrypt, accept any certificate
/// (libpq's behaviour), but still check the handshake signatures so the
/// session key really belongs to the certificate presented.
#[derive(Debug)]
struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root (and be valid now),
/// the name is not checked. webpki checks the chain before the name, so a
/// name error means the chain already passed.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<String>, Option<String>) {
        strip_tls_params(url).expect("parses")
    }

    #[test]
    fn uri_form_loses_only_the_tls_parameters() {
        let (rest, mode, root) = split(
            "postgres://u:p%3F@db.example.com:5433/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        );
        assert_eq!(
            rest,
            "postgres://u:p%3F@db.example.com:5433/app?application_name=x&connect_timeout=5"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, ..) = split("postgresql://u@h/db?sslmode=require");
        assert_eq!(rest, "postgresql://u@h/db");
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, mode, _) = split("postgres://u:a?b@h/db?sslmode=disable");
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert_eq!(mode.as_deref(), Some("disable"));
    }

    #[test]
    fn key_value_form_with_quotes_and_escapes() {
        let (rest, mode, root) = split(
            "host=localhost sslmode = verify-ca password='a b\\'c' sslrootcert='/x y/ca.pem' dbname=app",
        );
        assert_eq!(rest, "host=localhost password='a b\\'c' dbname=app");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/x y/ca.pem"));
        let (config, _) = parse(&format!("{rest} user=u")).expect("tokio parses the rest");
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn modes_follow_libpq() {
        let tls = |url: &str| parse(url).expect("parses").1;
        assert_eq!(tls("postgres://u@h/db").mode(), SslMode::Prefer);
        let require_with_root = tls("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem");
        assert_eq!(require_with_root.effective_mode(), SslMode::VerifyCa);
        assert_eq!(
            tls("host=h user=u sslmode=require").effective_mode(),
            SslMode::Require
        );
        let (config, _) = parse("postgres://u@h/db?sslmode=verify-full").expect("parses");
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let err = parse("postgres://u@h/db?sslmode=allow").expect_err("allow is refused");
        assert!(err.to_string().contains("sslmode=\"allow\""), "{err}");
    }

    #[test]
    fn an_unreadable_root_file_fails_when_the_connector_is_built() {
        let (_, tls) =
            parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .expect("parses");
        let err = tls.connector().expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
