//! Credential verification: turns the credentials of a request into a verified user id.
//!
//! The order (ARCHITECTURE.md §3) is fixed and the first credential *present* wins; a bad one is not
//! skipped in favour of the next, so a client always learns why its credential failed:
//!
//! 1. `Authorization: Bearer <JWT>`: HS256 with `REALTIME_JWT_SECRET`, or RS*/PS*/ES256/
//!    ES384/EdDSA with a key from `REALTIME_JWKS_URL` (fetched on first use, cached).
//! 2. The Auth.js v5 session cookie (`__Secure-authjs.session-token`, then
//!    `authjs.session-token`, possibly chunked `.0`, `.1`, …): JWE `dir` + A256CBC-HS512.
//! 3. The NextAuth v4 session cookie (`__Secure-next-auth.session-token`, then
//!    `next-auth.session-token`): JWE `dir` + A256GCM.
//!
//! A session cookie that is not a compact JWE is an Auth.js *database* session token:
//! [`Verifier::verify`] returns [`Verification::LookUpSession`] and the caller looks it up in
//! Postgres. This module does no HTTP routing and no database access.
//!
//! Every token kind has the same claim policy: `sub` is the user id (a
//! non-empty string), `exp` is required and enforced with [`AuthConfig::leeway`], `nbf` is
//! honoured, `aud`/`iss` are not checked (tokens minted for other audiences by the same
//! issuer are accepted: the secret or key is what binds a token to this deployment).
//!
//! Invariant: no input panics or allocates without bound. Tokens longer than
//! [`MAX_TOKEN_LEN`] are rejected before any decoding, and messages never contain token
//! contents or secrets.

mod claims;
mod cookies;
mod error;
mod jwe;
mod jwks;
mod jwt;
mod secrets;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use cookies::credentials_from_headers;
pub use error::{AuthConfigError, AuthError};

use jwks::{Jwks, JwksSettings};
use secrets::SessionKeys;

/// Longest token (bearer JWT or joined session cookie) that is looked at, in bytes.
/// Auth.js chunks cookies above ~4 KB, so 16 KiB leaves room for four chunks.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Longest database session token passed on to the caller; Auth.js makes UUIDs or 64 hex
/// characters, so anything longer cannot match a row.
pub const MAX_SESSION_TOKEN_LEN: usize = 256;

/// Default clock-skew allowance for `exp` and `nbf` (ARCHITECTURE.md §3).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(15);

/// Auth.js v5 session cookie names, in the order they are tried.
pub const AUTHJS_V5_COOKIES: [&str; 2] = ["__Secure-authjs.session-token", "authjs.session-token"];

/// NextAuth v4 session cookie names, in the order they are tried.
pub const NEXTAUTH_V4_COOKIES: [&str; 2] = [
    "__Secure-next-auth.session-token",
    "next-auth.session-token",
];

/// Verified credential settings. Build it with [`AuthConfig::from_env_values`].
#[derive(Clone)]
pub struct AuthConfig {
    /// Session-cookie secrets: `AUTH_SECRET` (else `NEXTAUTH_SECRET`) first, then
    /// `AUTH_SECRET_1..3`. A JWE's `kid` picks one; without `kid` each is tried in order.
    pub secrets: Vec<Vec<u8>>,
    /// `REALTIME_JWT_SECRET`: the HS256 key for bearer tokens.
    pub jwt_secret: Option<Vec<u8>>,
    /// `REALTIME_JWKS_URL`: where the public keys for RS/PS/ES/EdDSA bearer tokens are.
    pub jwks_url: Option<String>,
    /// Clock-skew allowance for `exp` and `nbf`.
    pub leeway: Duration,
}

/// The raw values of the auth environment variables, as clap or the environment gives them.
/// Empty strings count as unset (an empty `env:` entry in Kubernetes is common).
#[derive(Clone, Default)]
pub struct AuthEnv {
    /// `AUTH_SECRET`
    pub auth_secret: Option<String>,
    /// `NEXTAUTH_SECRET`, used only when `AUTH_SECRET` is unset.
    pub nextauth_secret: Option<String>,
    /// `AUTH_SECRET_1`, `AUTH_SECRET_2`, `AUTH_SECRET_3`: rotated (older) secrets.
    pub auth_secret_rotated: [Option<String>; 3],
    /// `REALTIME_JWT_SECRET`
    pub jwt_secret: Option<String>,
    /// `REALTIME_JWKS_URL`
    pub jwks_url: Option<String>,
}

impl AuthConfig {
    /// Builds the config from raw variable values, with [`DEFAULT_LEEWAY`].
    ///
    /// # Errors
    /// When `REALTIME_JWKS_URL` is not an `http://` or `https://` URL; the error names the
    /// variable. Missing secrets are not an error: that kind of credential is then refused.
    pub fn from_env_values(env: AuthEnv) -> Result<Self, AuthConfigError> {
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        let mut secrets = Vec::new();
        if let Some(primary) = set(env.auth_secret).or_else(|| set(env.nextauth_secret)) {
            secrets.push(primary.into_bytes());
        }
        for rotated in env.auth_secret_rotated.into_iter().filter_map(set) {
            secrets.push(rotated.into_bytes());
        }
        let jwks_url = set(env.jwks_url).map(|url| url.trim().to_owned());
        if let Some(url) = &jwks_url {
            jwks::validate_url(url)?;
        }
        Ok(Self {
            secrets,
            jwt_secret: set(env.jwt_secret).map(String::into_bytes),
            jwks_url,
            leeway: DEFAULT_LEEWAY,
        })
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "redacted"))
            .field("jwks_url", &self.jwks_url)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl fmt::Debug for AuthEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| v.as_ref().map(|_| "redacted");
        f.debug_struct("AuthEnv")
            .field("auth_secret", &shown(&self.auth_secret))
            .field("nextauth_secret", &shown(&self.nextauth_secret))
            .field(
                "auth_secret_rotated",
                &self.auth_secret_rotated.each_ref().map(shown),
            )
            .field("jwt_secret", &shown(&self.jwt_secret))
            .field("jwks_url", &self.jwks_url)
            .finish()
    }
}

/// A credential found in a request, borrowed from its headers where possible.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// The token of `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// A session cookie; `name` is the base name (no chunk suffix), `value` the chunks joined.
    SessionCookie {
        /// One of [`AUTHJS_V5_COOKIES`] or [`NEXTAUTH_V4_COOKIES`].
        name: &'a str,
        /// The cookie value, chunks joined in numeric order.
        value: String,
    },
}

impl fmt::Debug for Credential<'_> {
    /// Never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bearer(t) => write!(f, "Bearer(<{} bytes>)", t.len()),
            Self::SessionCookie { name, value } => {
                write!(f, "SessionCookie({name}, <{} bytes>)", value.len())
            }
        }
    }
}

/// Which kind of credential proved an [`Identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// `Authorization: Bearer` JWT.
    Bearer,
    /// Auth.js v5 JWE session cookie.
    AuthJsV5,
    /// NextAuth v4 JWE session cookie.
    NextAuthV4,
    /// Auth.js database session (built by the caller after its Postgres lookup).
    DatabaseSession,
}

/// A verified user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim (or the session row's `"userId"`).
    pub user_id: String,
    /// When the credential stops being valid (`exp`, without leeway); the stream closes then.
    pub expires_at: Option<SystemTime>,
    /// Which credential proved it.
    pub kind: IdentityKind,
}

/// The outcome of a successful [`Verifier::verify`]. `#[must_use]` and without a catch-all
/// so the database-session case cannot be forgotten.
#[must_use]
#[derive(Clone, PartialEq, Eq)]
pub enum Verification {
    /// The credential proved this identity.
    Identity(Identity),
    /// A session cookie that is not a JWE: look `token` up in `sessions."sessionToken"`
    /// (check `expires`), then build an [`Identity`] of kind [`IdentityKind::DatabaseSession`].
    LookUpSession {
        /// The raw cookie value (at most [`MAX_SESSION_TOKEN_LEN`] bytes).
        token: String,
    },
}

/// Verifies credentials. Cheap to clone (an `Arc` inside); all key derivation happens in
/// [`Verifier::new`], so a request costs one decryption or signature check and no HKDF.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    session_keys: SessionKeys,
    hs256: Option<jsonwebtoken::DecodingKey>,
    jwks: Option<Jwks>,
    leeway: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.inner.session_keys.secret_count())
            .field("hs256", &self.inner.hs256.is_some())
            .field("jwks", &self.inner.jwks.is_some())
            .field("leeway", &self.inner.leeway)
            .finish()
    }
}

impl Verifier {
    /// Derives every session key and builds the JWKS client (no request is made yet: the key
    /// set is fetched on first use).
    ///
    /// # Errors
    /// When the JWKS URL is invalid or the HTTP client cannot be built (TLS setup).
    pub fn new(config: AuthConfig) -> Result<Self, AuthConfigError> {
        Self::with_jwks_settings(config, JwksSettings::default())
    }

    fn with_jwks_settings(
        config: AuthConfig,
        settings: JwksSettings,
    ) -> Result<Self, AuthConfigError> {
        let jwks = match &config.jwks_url {
            Some(url) => Some(Jwks::new(url, settings)?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                session_keys: SessionKeys::derive(&config.secrets),
                hs256: config
                    .jwt_secret
                    .as_deref()
                    .map(jsonwebtoken::DecodingKey::from_secret),
                jwks,
                leeway: config.leeway,
            }),
        })
    }

    /// Verifies a credential now.
    ///
    /// # Errors
    /// An [`AuthError`] naming why the credential is refused (all map to 401 but
    /// [`AuthError::KeysUnavailable`]; see [`AuthError::status`]).
    pub async fn verify(&self, credential: &Credential<'_>) -> Result<Verification, AuthError> {
        self.verify_at(credential, SystemTime::now()).await
    }

    /// [`Verifier::verify`] with an explicit clock, for tests.
    pub(crate) async fn verify_at(
        &self,
        credential: &Credential<'_>,
        now: SystemTime,
    ) -> Result<Verification, AuthError> {
        let result = match credential {
            Credential::Bearer(token) => self.verify_bearer(token, now).await,
            Credential::SessionCookie { name, value } => self.verify_cookie(name, value, now),
        };
        if let Err(e) = &result {
            tracing::debug!(credential = credential.kind_name(), reason = %e, "credential refused");
        }
        result
    }

    async fn verify_bearer(&self, token: &str, now: SystemTime) -> Result<Verification, AuthError> {
        check_len(token)?;
        let inner = &*self.inner;
        let claims = jwt::verify(
            token,
            inner.hs256.as_ref(),
            inner.jwks.as_ref(),
            now,
            inner.leeway,
        )
        .await?;
        Ok(Verification::Identity(
            claims.into_identity(IdentityKind::Bearer),
        ))
    }

    fn verify_cookie(
        &self,
        name: &str,
        value: &str,
        now: SystemTime,
    ) -> Result<Verification, AuthError> {
        let family = secrets::CookieFamily::of(name).ok_or(AuthError::UnknownCookie)?;
        check_len(value)?;
        if !jwe::looks_like_jwe(value) {
            return database_session(value);
        }
        let payload = jwe::decrypt(value, &self.inner.session_keys, family, name)?;
        let claims = claims::Claims::from_json(&payload, now, self.inner.leeway)?;
        let kind = match family {
            secrets::CookieFamily::AuthJsV5 => IdentityKind::AuthJsV5,
            secrets::CookieFamily::NextAuthV4 => IdentityKind::NextAuthV4,
        };
        Ok(Verification::Identity(claims.into_identity(kind)))
    }
}

impl fmt::Debug for Verification {
    /// Never prints the session token: it is a bearer credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity(identity) => f.debug_tuple("Identity").field(identity).finish(),
            Self::LookUpSession { token } => write!(f, "LookUpSession(<{} bytes>)", token.len()),
        }
    }
}

impl Credential<'_> {
    fn kind_name(&self) -> &'static str {
        match self {
            Self::Bearer(_) => "bearer",
            Self::SessionCookie { .. } => "session-cookie",
        }
    }
}

fn check_len(token: &str) -> Result<(), AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLarge);
    }
    if token.is_empty() {
        return Err(AuthError::Malformed("empty token"));
    }
    Ok(())
}

/// A non-JWE cookie value is passed on only when it could be a session token: short and made
/// of cookie-safe printable ASCII, so the caller's query never sees arbitrary bytes.
fn database_session(value: &str) -> Result<Verification, AuthError> {
    let plausible = value.len() <= MAX_SESSION_TOKEN_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'));
    if !plausible {
        return Err(AuthError::Malformed("session token"));
    }
    Ok(Verification::LookUpSession {
        token: value.to_owned(),
    })
}
