//! Credential parsing and verification (`gateway/src/auth`): cookie and
//! `Authorization` headers, bearer JWTs and session-cookie JWEs. Any input
//! is a credential or none, and verifying it gives an identity, a
//! database-session lookup or an error, at once (no JWKS is configured, so
//! nothing may wait). Modes 3 to 5 wrap the fuzzed bytes in a token that
//! is validly signed or encrypted under the configured keys, so the claims
//! and header parsing behind the signature check are fuzzed too.
//!
//! The keys are those of the committed fixtures
//! (`gateway/tests/fixtures/auth/tokens.json`), so the fixtures' real
//! Auth.js, NextAuth and JWT tokens are the seed corpus.

use std::sync::OnceLock;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut as _, KeyInit as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt as _;
use hmac::{Hmac, Mac as _};
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use realtime_gateway::auth::{
    AUTHJS_V5_COOKIES, AuthConfig, AuthEnv, Credential, NEXTAUTH_V4_COOKIES, Verification,
    Verifier, credentials_from_headers,
};
use sha2::Sha256;

const FIXTURES: &str = include_str!("../../../gateway/tests/fixtures/auth/tokens.json");

const COOKIE_NAMES: [&str; 4] = [
    AUTHJS_V5_COOKIES[0],
    AUTHJS_V5_COOKIES[1],
    NEXTAUTH_V4_COOKIES[0],
    NEXTAUTH_V4_COOKIES[1],
];

struct Keys {
    verifier: Verifier,
    jwt_secret: Vec<u8>,
    /// The NextAuth v4 content key of the primary secret (A256GCM).
    v4_key: Vec<u8>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let fixtures: serde_json::Value = serde_json::from_str(FIXTURES).unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let primary = text(&fixtures["secrets"]["primary"]);
        let jwt_secret = text(&fixtures["jwt_secret"]);
        let env = AuthEnv {
            auth_secret: Some(primary.clone()),
            auth_secret_rotated: [Some(text(&fixtures["secrets"]["rotated"])), None, None],
            jwt_secret: Some(jwt_secret.clone()),
            ..AuthEnv::default()
        };
        let verifier = AuthConfig::from_env_values(env)
            .and_then(Verifier::new)
            .unwrap_or_else(|e| panic!("fixture auth config: {e}"));
        let mut v4_key = vec![0u8; 32];
        let _ = hkdf::Hkdf::<Sha256>::new(Some(b""), primary.as_bytes())
            .expand(b"NextAuth.js Generated Encryption Key", &mut v4_key);
        Keys {
            verifier,
            jwt_secret: jwt_secret.into_bytes(),
            v4_key,
        }
    })
}

/// Input: a mode byte, then its bytes.
/// - 0: header lines (`\n`-separated), each a selector byte (even:
///   `Cookie`, odd: `Authorization`) and the value;
/// - 1: a bearer token; 2: a session cookie (name from the next byte);
/// - 3: HS256 JWT claims, signed with the configured secret;
/// - 4: NextAuth v4 JWE plaintext, encrypted with the configured key;
/// - 5: a JWE protected header, `\n`, its plaintext, encrypted likewise.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 6 {
        0 => {
            let mut headers = HeaderMap::new();
            for line in rest.split(|&b| b == b'\n') {
                let Some((&which, value)) = line.split_first() else {
                    continue;
                };
                let name = if which & 1 == 0 {
                    COOKIE
                } else {
                    AUTHORIZATION
                };
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    headers.append(name, value);
                }
            }
            if let Some(credential) = credentials_from_headers(&headers) {
                verify(&credential);
            }
        }
        1 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                verify(&Credential::Bearer(token));
            }
        }
        2 => {
            let Some((&which, value)) = rest.split_first() else {
                return;
            };
            if let Ok(value) = std::str::from_utf8(value) {
                verify(&Credential::SessionCookie {
                    name: COOKIE_NAMES[usize::from(which % 4)],
                    value: value.to_owned(),
                });
            }
        }
        3 => {
            let token = hs256(&keys().jwt_secret, rest);
            verify(&Credential::Bearer(&token));
        }
        4 => {
            let token = jwe(br#"{"alg":"dir","enc":"A256GCM"}"#, rest);
            verify(&Credential::SessionCookie {
                name: NEXTAUTH_V4_COOKIES[1],
                value: token,
            });
        }
        _ => {
            let (header, plaintext) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let token = jwe(header, plaintext);
            verify(&Credential::SessionCookie {
                name: NEXTAUTH_V4_COOKIES[0],
                value: token,
            });
        }
    }
}

fn verify(credential: &Credential<'_>) {
    match keys().verifier.verify(credential).now_or_never() {
        Some(Ok(Verification::Identity(identity))) => {
            assert!(!identity.user_id.is_empty(), "an identity without a user");
        }
        Some(Ok(Verification::LookUpSession { token })) => {
            assert!(
                token.len() <= realtime_gateway::auth::MAX_SESSION_TOKEN_LEN,
                "a session token longer than any Auth.js makes"
            );
        }
        Some(Err(_)) => {}
        None => panic!("verification waited, with no JWKS configured"),
    }
}

/// A compact JWS over `claims` (raw bytes, JSON or not) with
/// `{"alg":"HS256","typ":"JWT"}`.
fn hs256(secret: &[u8], claims: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(e) => panic!("HMAC key: {e}"),
    };
    mac.update(signing_input.as_bytes());
    let signature = mac.finalize().into_bytes();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A compact `dir` JWE: `header` (raw bytes) as the protected header,
/// `plaintext` encrypted with A256GCM under the NextAuth v4 key.
fn jwe(header: &[u8], plaintext: &[u8]) -> String {
    let header_b64 = URL_SAFE_NO_PAD.encode(header);
    let iv = [7u8; 12];
    let cipher = match Aes256Gcm::new_from_slice(&keys().v4_key) {
        Ok(cipher) => cipher,
        Err(e) => panic!("A256GCM key: {e}"),
    };
    let mut buf = plaintext.to_vec();
    let tag = match cipher.encrypt_inout_detached(
        &iv.into(),
        header_b64.as_bytes(),
        buf.as_mut_slice().into(),
    ) {
        Ok(tag) => tag,
        Err(e) => panic!("A256GCM: {e}"),
    };
    format!(
        "{header_b64}..{}.{}.{}",
        URL_SAFE_NO_PAD.encode(iv),
        URL_SAFE_NO_PAD.encode(buf),
        URL_SAFE_NO_PAD.encode(tag)
    )
}
