//! Bearer JWT (compact JWS) verification.
//!
//! The key is chosen by the header's `alg` *before* looking at anything else, and the token
//! is then verified for that one `alg`: HS256 only ever uses `REALTIME_JWT_SECRET`, and the
//! asymmetric algorithms only ever use JWKS keys of the matching type (RSA for RS*/PS*,
//! P-256 for ES256, P-384 for ES384, Ed25519 for EdDSA), so neither `none` nor an HMAC token
//! keyed with a public key can pass. `crit` is refused (we understand no extensions).
//! Signatures are checked by `jsonwebtoken`; the claims by [`super::claims`], with
//! `jsonwebtoken`'s own time and audience checks switched off so that one policy covers all
//! token kinds (in particular: `aud` is not required and not rejected).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::AuthError;
use super::claims::{Claims, RawClaims};
use super::jwks::Jwks;

/// Most JWKS keys tried for a token without `kid` (each costs a signature check).
const MAX_KEYS_WITHOUT_KID: usize = 8;

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Verifies a bearer JWT and its claims at `now`.
pub(crate) async fn verify(
    token: &str,
    hs256: Option<&DecodingKey>,
    jwks: Option<&Jwks>,
    now: SystemTime,
    leeway: Duration,
) -> Result<Claims, AuthError> {
    let header = header(token)?;
    let alg = match header.alg.as_str() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(AuthError::Unsupported("JWT alg")),
    };
    let raw = if alg == Algorithm::HS256 {
        let key = hs256.ok_or(AuthError::NotConfigured(
            "HS256 bearer auth (REALTIME_JWT_SECRET)",
        ))?;
        decode(token, key, alg)?
    } else {
        let jwks = jwks.ok_or(AuthError::NotConfigured(
            "JWKS bearer auth (REALTIME_JWKS_URL)",
        ))?;
        let keys = jwks.keys_for(alg, header.kid.as_deref()).await?;
        try_keys(token, &keys, alg)?
    };
    raw.validate(now, leeway)
}

/// Parses the header ourselves first for precise errors (`jsonwebtoken` would call an
/// unknown `alg` a JSON error).
fn header(token: &str) -> Result<Header, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("a JWT has three parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("invalid base64url"))?;
    let header: Header = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("JWT header is not valid JSON"))?;
    if header.crit.is_some() {
        return Err(AuthError::Unsupported("JWT crit header"));
    }
    Ok(header)
}

fn try_keys(
    token: &str,
    keys: &[Arc<DecodingKey>],
    alg: Algorithm,
) -> Result<RawClaims, AuthError> {
    let mut last = AuthError::UnknownKey;
    for key in keys.iter().take(MAX_KEYS_WITHOUT_KID) {
        match decode(token, key, alg) {
            Ok(claims) => return Ok(claims),
            Err(e @ AuthError::BadSignature) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Signature check only: every claim check is off here and done by [`RawClaims::validate`].
fn decode(token: &str, key: &DecodingKey, alg: Algorithm) -> Result<RawClaims, AuthError> {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    jsonwebtoken::decode::<RawClaims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::Unsupported("JWT alg")
            }
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::RsaFailedSigning => AuthError::UnknownKey,
            ErrorKind::Json(_) => AuthError::Malformed("JWT payload is not a JSON object"),
            ErrorKind::Utf8(_) => AuthError::Malformed("JWT payload is not UTF-8"),
            ErrorKind::Base64(_) => AuthError::Malformed("invalid base64url"),
            _ => AuthError::Malformed("JWT"),
        })
}
