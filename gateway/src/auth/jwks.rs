//! The JWKS (public keys for bearer JWTs), fetched on first use and cached.
//!
//! Refresh policy, so an attacker sending random `kid`s cannot make us hammer the identity
//! provider, while key rotation still works:
//! - A token whose `kid` is not in the cached set triggers a refetch, at most once per
//!   [`JwksSettings::min_refetch_interval`] (60 s) per gateway replica; concurrent requests
//!   share one fetch.
//! - A set older than [`JwksSettings::max_age`] (5 min) is refreshed on next use, so keys the
//!   provider withdrew stop working. Requests that find their key in a stale set do not wait
//!   for a refresh already in progress.
//! - A failed fetch keeps the previous set (logged as a warning); with no set at all the
//!   request fails with [`AuthError::KeysUnavailable`].
//!
//! A fetch times out after 5 s, follows at most 3 redirects, and reads at most
//! [`MAX_JWKS_BYTES`]. Keys that do not parse, symmetric (`oct`) keys, and keys whose `use` is
//! not `sig` are skipped; at most [`MAX_KEYS`] are kept.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::{AuthConfigError, AuthError};

/// Largest JWKS response read, in bytes.
pub(crate) const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Most keys kept from one JWKS.
pub(crate) const MAX_KEYS: usize = 64;

/// Fetch and cache timing; the defaults are the documented policy, tests shorten them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JwksSettings {
    pub(crate) fetch_timeout: Duration,
    pub(crate) min_refetch_interval: Duration,
    pub(crate) max_age: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            fetch_timeout: Duration::from_secs(5),
            min_refetch_interval: Duration::from_secs(60),
            max_age: Duration::from_secs(300),
        }
    }
}

/// Which curve or key type a JWK holds; decides which `alg`s it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (Self::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Self::P256, ES256)
                | (Self::P384, ES384)
                | (Self::Ed25519, EdDSA)
        )
    }
}

struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one: the key is then used for that alg only.
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: Arc<DecodingKey>,
}

struct KeySet {
    keys: Vec<Key>,
    fetched_at: Instant,
}

impl KeySet {
    /// Keys that may verify a token with this `alg` and `kid` (any kid when the token has
    /// none).
    fn matching(&self, alg: Algorithm, kid: Option<&str>) -> Vec<Arc<DecodingKey>> {
        self.keys
            .iter()
            .filter(|k| k.kind.verifies(alg) && k.alg.is_none_or(|a| a == alg))
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .map(|k| Arc::clone(&k.key))
            .collect()
    }
}

pub(crate) struct Jwks {
    url: String,
    client: reqwest::Client,
    settings: JwksSettings,
    /// The current set; read on every request, replaced after a fetch. A std lock: it is
    /// never held across an await.
    current: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so concurrent misses share one fetch; holds the last attempt.
    fetch: tokio::sync::Mutex<Option<Instant>>,
}

pub(crate) fn validate_url(url: &str) -> Result<(), AuthConfigError> {
    let bad = |reason: &str| AuthConfigError {
        variable: "REALTIME_JWKS_URL",
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad("must be an http:// or https:// URL"));
    }
    Ok(())
}

impl Jwks {
    pub(crate) fn new(url: &str, settings: JwksSettings) -> Result<Self, AuthConfigError> {
        validate_url(url)?;
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("realtime-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AuthConfigError {
                variable: "REALTIME_JWKS_URL",
                reason: format!("cannot build the HTTP client: {}", e.without_url()),
            })?;
        Ok(Self {
            url: url.to_owned(),
            client,
            settings,
            current: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(None),
        })
    }

    /// The keys that may verify a token with `alg` and `kid`, fetching the set as the policy
    /// above allows.
    pub(crate) async fn keys_for(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<DecodingKey>>, AuthError> {
        if let Some(set) = self.snapshot() {
            let found = set.matching(alg, kid);
            let fresh = set.fetched_at.elapsed() < self.settings.max_age;
            if !found.is_empty() && fresh {
                return Ok(found);
            }
            if !found.is_empty() {
                // Stale but usable: refresh only if nobody else is, and never wait for it.
                if let Ok(mut last) = self.fetch.try_lock() {
                    self.refresh(&mut last).await;
                    return self.lookup(alg, kid);
                }
                return Ok(found);
            }
        }
        let mut last = self.fetch.lock().await;
        // Someone may have fetched while we waited.
        if let Some(set) = self.snapshot() {
            let found = set.matching(alg, kid);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        self.refresh(&mut last).await;
        drop(last);
        self.lookup(alg, kid)
    }

    fn lookup(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<DecodingKey>>, AuthError> {
        let set = self.snapshot().ok_or(AuthError::KeysUnavailable)?;
        let found = set.matching(alg, kid);
        if found.is_empty() {
            Err(AuthError::UnknownKey)
        } else {
            Ok(found)
        }
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Fetches unless the last attempt was too recent; keeps the old set on failure.
    async fn refresh(&self, last_attempt: &mut Option<Instant>) {
        if last_attempt.is_some_and(|t| t.elapsed() < self.settings.min_refetch_interval) {
            return;
        }
        *last_attempt = Some(Instant::now());
        match self.fetch_set().await {
            Ok(set) => {
                tracing::debug!(keys = set.keys.len(), "fetched JWKS");
                let set = Some(Arc::new(set));
                match self.current.write() {
                    Ok(mut guard) => *guard = set,
                    Err(poisoned) => *poisoned.into_inner() = set,
                }
            }
            Err(reason) => tracing::warn!(%reason, "JWKS fetch failed; keeping the cached keys"),
        }
    }

    async fn fetch_set(&self) -> Result<KeySet, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(
                http::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err("response too large".into());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("response too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        parse_set(&body).ok_or_else(|| "response is not a JWK set".into())
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS, skipping keys we cannot or must not use; `None` when it is not a JWKS.
fn parse_set(body: &[u8]) -> Option<KeySet> {
    let raw: RawSet = serde_json::from_slice(body).ok()?;
    let keys = raw
        .keys
        .into_iter()
        .filter_map(parse_key)
        .take(MAX_KEYS)
        .collect();
    Some(KeySet {
        keys,
        fetched_at: Instant::now(),
    })
}

fn parse_key(value: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        // Symmetric keys never come from a JWKS: that would let anyone who can read the
        // JWKS mint tokens. Other types we do not verify.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(algorithm(a)?),
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        kind,
        key: Arc::new(key),
    })
}

/// A JWK `alg` as a signature algorithm; `None` (skip the key) for anything else.
fn algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_skips_unusable_keys() {
        let body = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"sym"},
            {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"ec","use":"sig"},
            {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"enc","use":"enc"},
            {"kty":"EC","crv":"secp256k1","x":"AA","y":"AA","kid":"k1"},
            {"kty":"OKP","crv":"X25519","x":"AA","kid":"x"},
            {"kty":"RSA","n":"AQAB","e":"AQAB","kid":"rsa","alg":"RSA-OAEP"},
            {"kty":"WAT"},
            42
        ]}"#;
        let set = parse_set(body).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("ec")]);
        assert_eq!(set.matching(Algorithm::ES256, Some("ec")).len(), 1);
        assert_eq!(set.matching(Algorithm::ES256, None).len(), 1);
        assert!(set.matching(Algorithm::ES384, Some("ec")).is_empty());
        assert!(set.matching(Algorithm::RS256, None).is_empty());
        assert!(parse_set(b"[]").is_none());
        assert!(parse_set(b"{\"keys\":{}}").is_none());
    }

    #[test]
    fn url_must_be_http() {
        assert!(validate_url("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(validate_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(validate_url("file:///etc/passwd").is_err());
        assert!(validate_url("jwks.json").is_err());
    }
}
