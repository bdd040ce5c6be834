//! Why a credential or the auth configuration was refused.

use http::StatusCode;

/// Why a credential was refused. The `Display` text is safe to send to the client as the
/// `text/plain` body of the 401 and to log: it never contains token contents or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Longer than [`super::MAX_TOKEN_LEN`]; rejected before any decoding.
    #[error("token too large")]
    TooLarge,
    /// Not a well-formed token (parts, base64url, JSON, UTF-8, lengths).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Well-formed but using something not accepted here (`alg`, `enc`, `zip`, `crit`…).
    #[error("unsupported token: {0}")]
    Unsupported(&'static str),
    /// A session cookie whose name is not one of the known session cookies.
    #[error("unknown session cookie")]
    UnknownCookie,
    /// No configured secret or key matches the token's `kid` (or none is configured for it).
    #[error("no key matches the token")]
    UnknownKey,
    /// The signature, or the JWE authentication tag, does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` is past, beyond the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim is missing or has the wrong type or range.
    #[error("invalid token claims: {0}")]
    InvalidClaims(&'static str),
    /// This kind of credential is not configured on this gateway (e.g. no `AUTH_SECRET`).
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
    /// The JWKS could not be fetched and no key set is cached: the server's fault, not the
    /// client's, hence 503 (see [`AuthError::status`]).
    #[error("signing keys are unavailable")]
    KeysUnavailable,
}

impl AuthError {
    /// The HTTP status to answer with: 401 for every refused credential; 503 when the key
    /// set could not be fetched, so clients retry instead of sending the user to sign in.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A bad auth setting, naming the variable; meant for the one-line start-up error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct AuthConfigError {
    /// The environment variable at fault, e.g. `REALTIME_JWKS_URL`.
    pub variable: &'static str,
    /// Why, without the value when the value may be secret.
    pub reason: String,
}
