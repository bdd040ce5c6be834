//! A throwaway certificate authority, generated at test time with `rcgen`,
//! and server certificates it signs for `localhost` / `127.0.0.1`: what the
//! TLS servers of the harness present and what the binaries are told to
//! trust (e.g. `REALTIME_REDIS_CA`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files written into a directory: the CA certificate and a server
/// certificate and key it signed for `localhost` and `127.0.0.1`.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA certificate (PEM): the bundle a client trusts.
    pub ca: PathBuf,
    /// The server certificate (PEM), signed by `ca`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
}

impl TestCerts {
    /// Generates a new CA named `name` and a server certificate, and writes
    /// them as `ca.pem`, `server.pem` and `server.key` into `dir`.
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).context("CA certificate")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().context("server key")?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .context("server params")?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test server"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .context("server certificate")?;

        let certs = Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        std::fs::write(&certs.ca, ca_cert.pem()).context("writing ca.pem")?;
        std::fs::write(&certs.server_cert, server_cert.pem()).context("writing server.pem")?;
        std::fs::write(&certs.server_key, server_key.serialize_pem())
            .context("writing server.key")?;
        Ok(certs)
    }
}
