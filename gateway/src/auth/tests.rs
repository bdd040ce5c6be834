//! Tests against tokens minted by the real libraries (`gateway/tests/fixtures/auth`, made by
//! `mint.mjs` with next-auth v4, @auth/core and jose), plus hand-made edge cases.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::AeadInOut as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cbc::cipher::{BlockModeEncrypt as _, KeyIvInit as _, block_padding::Pkcs7};
use hmac::KeyInit as _;
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::jwks::JwksSettings;
use super::secrets::{CookieFamily, Enc, SessionKeys};
use super::*;

const FIXTURES: &str = include_str!("../../tests/fixtures/auth/tokens.json");

fn fixtures() -> Value {
    serde_json::from_str(FIXTURES).unwrap()
}

fn secret(f: &Value, which: &str) -> Vec<u8> {
    f["secrets"][which].as_str().unwrap().as_bytes().to_vec()
}

fn config(secrets: Vec<Vec<u8>>) -> AuthConfig {
    let f = fixtures();
    AuthConfig {
        secrets,
        jwt_secret: Some(f["jwt_secret"].as_str().unwrap().as_bytes().to_vec()),
        jwks_url: None,
        leeway: DEFAULT_LEEWAY,
    }
}

/// Both fixture secrets, primary first: what a deployment mid-rotation has.
fn verifier() -> Verifier {
    let f = fixtures();
    Verifier::new(config(vec![secret(&f, "primary"), secret(&f, "rotated")])).unwrap()
}

fn session<'f>(f: &'f Value, id: &str) -> &'f Value {
    f["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()
}

fn jwt<'f>(f: &'f Value, id: &str) -> &'f str {
    let all = f["jwts"].as_array().unwrap();
    all.iter().find(|j| j["id"] == id).unwrap()["token"]
        .as_str()
        .unwrap()
}

fn cookie<'a>(name: &'a str, value: &str) -> Credential<'a> {
    Credential::SessionCookie {
        name,
        value: value.to_owned(),
    }
}

fn identity(result: Result<Verification, AuthError>) -> Identity {
    match result {
        Ok(Verification::Identity(identity)) => identity,
        other => panic!("expected an identity, got {other:?}"),
    }
}

fn kind_of(family: &str) -> IdentityKind {
    match family {
        "authjs-v5" => IdentityKind::AuthJsV5,
        "nextauth-v4" => IdentityKind::NextAuthV4,
        other => panic!("unknown kind {other}"),
    }
}

// === Session cookies from the real libraries ===

#[tokio::test]
async fn every_session_fixture_verifies_or_is_expired() {
    let f = fixtures();
    let v = verifier();
    let valid_exp = UNIX_EPOCH + Duration::from_secs(f["valid_exp"].as_u64().unwrap());
    let sessions = f["sessions"].as_array().unwrap();
    assert!(sessions.len() >= 10);
    for s in sessions {
        let cred = cookie(s["cookie"].as_str().unwrap(), s["token"].as_str().unwrap());
        let result = v.verify(&cred).await;
        match s["expect"].as_str().unwrap() {
            "valid" => {
                let id = identity(result);
                assert_eq!(id.user_id, s["sub"].as_str().unwrap(), "{}", s["id"]);
                assert_eq!(id.kind, kind_of(s["kind"].as_str().unwrap()), "{}", s["id"]);
                assert_eq!(id.expires_at, Some(valid_exp), "{}", s["id"]);
            }
            "expired" => assert_eq!(result, Err(AuthError::Expired), "{}", s["id"]),
            other => panic!("unexpected expectation {other}"),
        }
    }
}

#[tokio::test]
async fn wrong_secret_is_refused() {
    let f = fixtures();
    let v = Verifier::new(config(vec![b"not-the-secret".to_vec()])).unwrap();
    for id in ["v5-secure", "v5-plain", "v5-rotated"] {
        let s = session(&f, id);
        let cred = cookie(s["cookie"].as_str().unwrap(), s["token"].as_str().unwrap());
        // Auth.js sets `kid`, so the mismatch is known before any decryption.
        assert_eq!(v.verify(&cred).await, Err(AuthError::UnknownKey), "{id}");
    }
    for id in ["v5-rotated-no-kid", "v4-secure", "v4-plain", "v4-rotated"] {
        let s = session(&f, id);
        let cred = cookie(s["cookie"].as_str().unwrap(), s["token"].as_str().unwrap());
        assert_eq!(v.verify(&cred).await, Err(AuthError::BadSignature), "{id}");
    }
    let none = Verifier::new(config(vec![])).unwrap();
    let s = session(&f, "v4-plain");
    let cred = cookie(s["cookie"].as_str().unwrap(), s["token"].as_str().unwrap());
    assert!(matches!(
        none.verify(&cred).await,
        Err(AuthError::NotConfigured(_))
    ));
}

#[tokio::test]
async fn rotated_secret_works_with_and_without_kid() {
    let f = fixtures();
    // Through the environment mapping: the rotated secret as AUTH_SECRET_2.
    let env = AuthEnv {
        auth_secret: Some(f["secrets"]["primary"].as_str().unwrap().into()),
        auth_secret_rotated: [
            None,
            Some(f["secrets"]["rotated"].as_str().unwrap().into()),
            None,
        ],
        ..AuthEnv::default()
    };
    let v = Verifier::new(AuthConfig::from_env_values(env).unwrap()).unwrap();
    for id in [
        "v5-rotated",
        "v5-rotated-no-kid",
        "v4-rotated",
        "v5-plain",
        "v4-plain",
    ] {
        let s = session(&f, id);
        let cred = cookie(s["cookie"].as_str().unwrap(), s["token"].as_str().unwrap());
        assert_eq!(
            identity(v.verify(&cred).await).user_id,
            f["sub"].as_str().unwrap(),
            "{id}"
        );
    }
    // Only the primary configured: the rotated tokens fail.
    let primary_only = Verifier::new(config(vec![secret(&f, "primary")])).unwrap();
    let s = session(&f, "v5-rotated");
    let cred = cookie(s["cookie"].as_str().unwrap(), s["token"].as_str().unwrap());
    assert_eq!(primary_only.verify(&cred).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn v5_kid_is_the_sha512_thumbprint_of_the_derived_key() {
    let f = fixtures();
    let s = session(&f, "v5-secure");
    let header_b64 = s["token"].as_str().unwrap().split('.').next().unwrap();
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap();
    let keys = SessionKeys::derive(&[secret(&f, "primary")]);
    let cookie = s["cookie"].as_str().unwrap();
    let key = keys
        .candidates(CookieFamily::AuthJsV5, cookie, Enc::A256CbcHs512, None)
        .next()
        .unwrap();
    assert_eq!(header["kid"].as_str(), Some(key.kid.as_str()));
    assert_eq!(header["enc"], "A256CBC-HS512");
    assert_eq!(header["alg"], "dir");
}

#[tokio::test]
async fn a_token_only_verifies_under_its_own_cookie_name() {
    let f = fixtures();
    let v = verifier();
    let token = |id| session(&f, id)["token"].as_str().unwrap();
    // v5 salt is the cookie name: the `kid` no longer matches any key for the other name.
    let err = v
        .verify(&cookie("authjs.session-token", token("v5-secure")))
        .await;
    assert_eq!(err, Err(AuthError::UnknownKey));
    let err = v
        .verify(&cookie(
            "__Secure-authjs.session-token",
            token("v5-rotated-no-kid"),
        ))
        .await;
    assert_eq!(err, Err(AuthError::BadSignature));
    // A v4 token (A256GCM) in a v5 cookie: v5 accepts A256GCM, but with its own keys.
    let err = v
        .verify(&cookie("authjs.session-token", token("v4-plain")))
        .await;
    assert_eq!(err, Err(AuthError::BadSignature));
    // A v5 token in a v4 cookie: v4 only does A256GCM.
    let err = v
        .verify(&cookie("next-auth.session-token", token("v5-plain")))
        .await;
    assert!(matches!(err, Err(AuthError::Unsupported(_))), "{err:?}");
    // v4 keys do not depend on the cookie name.
    assert!(
        v.verify(&cookie(
            "__Secure-next-auth.session-token",
            token("v4-plain")
        ))
        .await
        .is_ok()
    );
    // Unknown cookie names are refused.
    let err = v.verify(&cookie("session", token("v4-plain"))).await;
    assert_eq!(err, Err(AuthError::UnknownCookie));
}

/// Applies `edit` to the decoded bytes of part `index` and re-encodes the token.
fn tamper(token: &str, index: usize, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut bytes = URL_SAFE_NO_PAD.decode(&parts[index]).unwrap();
    edit(&mut bytes);
    parts[index] = URL_SAFE_NO_PAD.encode(bytes);
    parts.join(".")
}

#[tokio::test]
async fn tampering_is_detected() {
    let f = fixtures();
    let v = verifier();
    for id in ["v5-secure", "v5-rotated-no-kid", "v4-secure"] {
        let s = session(&f, id);
        let (name, token) = (s["cookie"].as_str().unwrap(), s["token"].as_str().unwrap());
        let check = |t: String| {
            let v = v.clone();
            async move { v.verify(&cookie(name, &t)).await }
        };
        for (part, what) in [(2, "iv"), (3, "ciphertext"), (4, "tag")] {
            for at in [0usize, 5] {
                let bad = tamper(token, part, |b| b[at] ^= 0x01);
                assert_eq!(
                    check(bad).await,
                    Err(AuthError::BadSignature),
                    "{id}: {what}[{at}]"
                );
            }
        }
        // A header that is still valid JSON but different changes the AAD.
        let bad = tamper(token, 0, |b| {
            let mut h: Value = serde_json::from_slice(b).unwrap();
            h["typ"] = json!("JWT");
            *b = serde_json::to_vec(&h).unwrap();
        });
        assert_eq!(
            check(bad).await,
            Err(AuthError::BadSignature),
            "{id}: header"
        );
        // Truncated or extended parts.
        let bad = tamper(token, 3, |b| b.truncate(b.len() - 1));
        assert!(check(bad).await.is_err(), "{id}: short ciphertext");
        let bad = tamper(token, 4, |b| b.push(0));
        assert!(
            matches!(check(bad).await, Err(AuthError::Malformed(_))),
            "{id}: long tag"
        );
        // A character flip that base64url would decode "the same" (trailing bits) is refused.
        let mut chars: Vec<char> = token.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        assert!(
            check(chars.into_iter().collect()).await.is_err(),
            "{id}: last char"
        );
    }
}

#[tokio::test]
async fn chunked_cookies_are_reassembled_from_the_cookie_header() {
    let f = fixtures();
    let v = verifier();
    for c in f["chunked"].as_array().unwrap() {
        let chunks = c["chunks"].as_array().unwrap();
        assert!(chunks.len() >= 3);
        // Out of order, spread over two Cookie headers, among other cookies.
        let pair = |ch: &Value| {
            format!(
                "{}={}",
                ch["name"].as_str().unwrap(),
                ch["value"].as_str().unwrap()
            )
        };
        let mut headers = HeaderMap::new();
        let first = format!("theme=dark; {}; other=\"x\"", pair(&chunks[2]));
        let rest: Vec<String> = chunks.iter().take(2).rev().map(pair).collect();
        headers.append(COOKIE, first.parse().unwrap());
        headers.append(
            COOKIE,
            format!("{};  lang=en", rest.join("; ")).parse().unwrap(),
        );
        let cred = credentials_from_headers(&headers).unwrap();
        let joined: String = chunks
            .iter()
            .map(|ch| ch["value"].as_str().unwrap())
            .collect();
        assert_eq!(
            cred,
            Credential::SessionCookie {
                name: c["cookie"].as_str().unwrap(),
                value: joined
            },
            "{}",
            c["id"]
        );
        let id = identity(v.verify(&cred).await);
        assert_eq!(id.user_id, c["sub"].as_str().unwrap());
        assert_eq!(id.kind, kind_of(c["kind"].as_str().unwrap()));
        // A missing chunk breaks the token.
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            format!("{}; {}", pair(&chunks[0]), pair(&chunks[2]))
                .parse()
                .unwrap(),
        );
        assert!(
            v.verify(&credentials_from_headers(&headers).unwrap())
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn a_non_jwe_cookie_is_looked_up_as_a_database_session() {
    let v = verifier();
    let mut headers = HeaderMap::new();
    headers.append(
        COOKIE,
        "authjs.session-token=0f0e4b1c-7c8a-4bbb-9d1e-1234567890ab"
            .parse()
            .unwrap(),
    );
    let cred = credentials_from_headers(&headers).unwrap();
    assert_eq!(
        v.verify(&cred).await,
        Ok(Verification::LookUpSession {
            token: "0f0e4b1c-7c8a-4bbb-9d1e-1234567890ab".into()
        })
    );
    // Not plausible as a session id: refused rather than sent to the database.
    let long = "a".repeat(MAX_SESSION_TOKEN_LEN + 1);
    assert!(matches!(
        v.verify(&cookie("next-auth.session-token", &long)).await,
        Err(AuthError::Malformed(_))
    ));
    // A JWS-shaped value is not a JWE either, so it is a (non-matching) session token.
    assert!(matches!(
        v.verify(&cookie("next-auth.session-token", "a.b.c")).await,
        Ok(Verification::LookUpSession { .. })
    ));
    // Five parts: a JWE, decrypted and refused, never looked up.
    assert!(
        v.verify(&cookie("next-auth.session-token", "a.b.c.d.e"))
            .await
            .is_err()
    );
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        v.verify(&cookie("next-auth.session-token", &huge)).await,
        Err(AuthError::TooLarge)
    );
}

// === Hand-made JWEs, for what the libraries will not produce ===

fn v5_key(secret: &[u8], cookie: &str, enc: Enc) -> Vec<u8> {
    let keys = SessionKeys::derive(&[secret.to_vec()]);
    let family = CookieFamily::of(cookie).unwrap();
    keys.candidates(family, cookie, enc, None)
        .next()
        .unwrap()
        .key
        .clone()
}

/// Encrypts `payload` as compact JWE `dir` with the given protected header.
fn encrypt(key: &[u8], header: &Value, payload: &[u8]) -> String {
    let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
    let aad = header_b64.as_bytes();
    let (iv, ciphertext, tag) = match header["enc"].as_str().unwrap() {
        "A256GCM" => {
            let iv = [7u8; 12];
            let cipher = aes_gcm::Aes256Gcm::new_from_slice(key).unwrap();
            let mut buf = payload.to_vec();
            let tag = cipher
                .encrypt_inout_detached(&iv.into(), aad, buf.as_mut_slice().into())
                .unwrap();
            (iv.to_vec(), buf, tag.to_vec())
        }
        _ => {
            let iv = [9u8; 16];
            let ct = cbc::Encryptor::<aes::Aes256>::new_from_slices(&key[32..], &iv)
                .unwrap()
                .encrypt_padded_vec::<Pkcs7>(payload);
            let tag = jwe::cbc_hs512_tag(&key[..32], aad, &iv, &ct).unwrap();
            (iv.to_vec(), ct, tag.to_vec())
        }
    };
    format!(
        "{header_b64}..{}.{}.{}",
        URL_SAFE_NO_PAD.encode(iv),
        URL_SAFE_NO_PAD.encode(ciphertext),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

const NAME: &str = "authjs.session-token";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[tokio::test]
async fn hand_made_jwe_edge_cases() {
    let v = verifier();
    let secret = secret(&fixtures(), "primary");
    let cbc = v5_key(&secret, NAME, Enc::A256CbcHs512);
    let gcm = v5_key(&secret, NAME, Enc::A256Gcm);
    let cbc_header = json!({"alg": "dir", "enc": "A256CBC-HS512"});
    let claims = json!({"sub": "u1", "exp": 1000}).to_string();
    let check = |token: String, now: u64| {
        let v = v.clone();
        async move { v.verify_at(&cookie(NAME, &token), at(now)).await }
    };

    // Round trip and the 15 s leeway, both ways.
    let token = encrypt(&cbc, &cbc_header, claims.as_bytes());
    assert_eq!(identity(check(token.clone(), 1015).await).user_id, "u1");
    assert_eq!(check(token, 1016).await, Err(AuthError::Expired));
    let nbf = json!({"sub": "u1", "exp": 5000, "nbf": 2000}).to_string();
    let token = encrypt(&cbc, &cbc_header, nbf.as_bytes());
    assert!(check(token.clone(), 1985).await.is_ok());
    assert_eq!(check(token, 1984).await, Err(AuthError::NotYetValid));

    // @auth/core's decode also accepts A256GCM under the v5 derivation (32-byte key).
    let token = encrypt(
        &gcm,
        &json!({"alg": "dir", "enc": "A256GCM"}),
        claims.as_bytes(),
    );
    assert!(check(token, 0).await.is_ok());

    // Headers we refuse.
    for (header, expect) in [
        (
            json!({"alg": "dir", "enc": "A256CBC-HS512", "zip": "DEF"}),
            "compressed JWE",
        ),
        (
            json!({"alg": "dir", "enc": "A256CBC-HS512", "crit": ["exp"]}),
            "JWE crit header",
        ),
        (
            json!({"alg": "A256KW", "enc": "A256CBC-HS512"}),
            "JWE alg must be dir",
        ),
        (json!({"alg": "dir", "enc": "A128CBC-HS256"}), "JWE enc"),
    ] {
        let token = encrypt(&cbc, &header, claims.as_bytes());
        assert_eq!(check(token, 0).await, Err(AuthError::Unsupported(expect)));
    }
    let token = encrypt(&cbc, &cbc_header, claims.as_bytes()).replacen("..", ".AAAA.", 1);
    assert!(matches!(
        check(token, 0).await,
        Err(AuthError::Malformed(_))
    ));

    // Authentic ciphertext with bad contents.
    for payload in [
        &b"not json"[..],
        b"[1,2]",
        b"{\"exp\": 1000}",
        b"{\"sub\": 7, \"exp\": 1000}",
        b"{\"sub\":\"u\",\"exp\":1e999}",
    ] {
        let token = encrypt(&cbc, &cbc_header, payload);
        let result = check(token, 0).await;
        assert!(
            matches!(
                result,
                Err(AuthError::Malformed(_) | AuthError::InvalidClaims(_))
            ),
            "{result:?}"
        );
    }
    // Bad header JSON and wrong IV lengths.
    let token = encrypt(&cbc, &cbc_header, claims.as_bytes());
    let bad = tamper(&token, 0, |b| *b = b"{\"alg\":".to_vec());
    assert!(matches!(check(bad, 0).await, Err(AuthError::Malformed(_))));
    let bad = tamper(&token, 2, |b| b.truncate(8));
    assert!(matches!(check(bad, 0).await, Err(AuthError::Malformed(_))));
}

// === Bearer JWTs ===

#[tokio::test]
async fn hs256_bearer_tokens() {
    let f = fixtures();
    let v = verifier();
    let check = |id: &str| {
        let (v, token) = (v.clone(), jwt(&f, id).to_owned());
        async move { v.verify(&Credential::Bearer(&token)).await }
    };
    let id = identity(check("hs256").await);
    assert_eq!(
        (id.user_id.as_str(), id.kind),
        (f["sub"].as_str().unwrap(), IdentityKind::Bearer)
    );
    // `aud` and `iss` are accepted, not required.
    assert!(check("hs256-aud-iss").await.is_ok());
    assert_eq!(check("hs256-expired").await, Err(AuthError::Expired));
    assert_eq!(
        check("hs256-no-exp").await,
        Err(AuthError::InvalidClaims("exp is missing"))
    );
    assert_eq!(
        check("hs256-no-sub").await,
        Err(AuthError::InvalidClaims("sub is missing"))
    );
    assert_eq!(check("hs256-nbf-future").await, Err(AuthError::NotYetValid));
    assert_eq!(
        check("hs256-wrong-secret").await,
        Err(AuthError::BadSignature)
    );
    // Algorithm confusion: an HMAC keyed with the RSA public key only meets the HS256 secret.
    assert_eq!(
        check("hs256-with-rsa-public-key").await,
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        check("alg-none").await,
        Err(AuthError::Unsupported("JWT alg"))
    );
    // Asymmetric tokens with no JWKS configured.
    assert!(matches!(
        check("rs256").await,
        Err(AuthError::NotConfigured(_))
    ));
    // No HS256 secret configured.
    let no_secret = Verifier::new(AuthConfig {
        jwt_secret: None,
        ..config(vec![])
    })
    .unwrap();
    let token = jwt(&f, "hs256");
    assert!(matches!(
        no_secret.verify(&Credential::Bearer(token)).await,
        Err(AuthError::NotConfigured(_))
    ));
    // Bad shapes.
    for token in ["", "a.b", "a.b.c.d", "a.b.c.d.e", "!!.b.c", "eyJ9.b.c"] {
        assert!(
            v.verify(&Credential::Bearer(token)).await.is_err(),
            "{token}"
        );
    }
    let crit = format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","crit":["b64"],"b64":false}"#),
        URL_SAFE_NO_PAD.encode(br#"{"sub":"u","exp":4102444800}"#)
    );
    assert_eq!(
        v.verify(&Credential::Bearer(&crit)).await,
        Err(AuthError::Unsupported("JWT crit header"))
    );
}

/// A minimal HTTP server for the JWKS: answers every request with the current
/// `(status, body)` and closes the connection; counts requests.
struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    response: Arc<Mutex<(u16, String)>>,
}

async fn jwks_server(status: u16, body: String) -> JwksServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let response = Arc::new(Mutex::new((status, body)));
    let (h, r) = (Arc::clone(&hits), Arc::clone(&response));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let (status, body) = r.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if status == 0 {
                    // Never answer: for the timeout test.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    JwksServer {
        url: format!("http://{addr}/.well-known/jwks.json"),
        hits,
        response,
    }
}

fn jwks_verifier(url: &str, settings: JwksSettings) -> Verifier {
    let config = AuthConfig {
        jwks_url: Some(url.to_owned()),
        ..config(vec![])
    };
    Verifier::with_jwks_settings(config, settings).unwrap()
}

#[tokio::test]
async fn jwks_bearer_tokens() {
    let f = fixtures();
    let server = jwks_server(200, f["jwks"].to_string()).await;
    let v = jwks_verifier(&server.url, JwksSettings::default());
    let check = |id: &str| {
        let (v, token) = (v.clone(), jwt(&f, id).to_owned());
        async move { v.verify(&Credential::Bearer(&token)).await }
    };
    for alg in ["rs256", "es256", "eddsa"] {
        let id = identity(check(alg).await);
        assert_eq!(id.user_id, f["sub"].as_str().unwrap(), "{alg}");
        assert_eq!(id.kind, IdentityKind::Bearer);
        assert!(
            check(&format!("{alg}-no-kid")).await.is_ok(),
            "{alg} without kid"
        );
        assert_eq!(
            check(&format!("{alg}-expired")).await,
            Err(AuthError::Expired),
            "{alg}"
        );
    }
    assert_eq!(check("rs256-wrong-key").await, Err(AuthError::BadSignature));
    // An HS256 token naming an RSA kid is checked with the HS256 secret only.
    assert_eq!(
        check("hs256-with-rsa-public-key").await,
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "one fetch serves every token"
    );

    // Unknown kids do not hammer the provider: no refetch within the minimum interval.
    for _ in 0..20 {
        assert_eq!(check("rs256-unknown-kid").await, Err(AuthError::UnknownKey));
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn jwks_unknown_kid_refetches_at_most_once_per_interval() {
    let f = fixtures();
    // Start with an empty set, as if the provider had not published the new key yet.
    let server = jwks_server(200, r#"{"keys":[]}"#.into()).await;
    let settings = JwksSettings {
        min_refetch_interval: Duration::from_millis(300),
        ..JwksSettings::default()
    };
    let v = jwks_verifier(&server.url, settings);
    let token = jwt(&f, "rs256");
    assert_eq!(
        v.verify(&Credential::Bearer(token)).await,
        Err(AuthError::UnknownKey)
    );
    *server.response.lock().unwrap() = (200, f["jwks"].to_string());
    // Many concurrent requests within the interval: still just the one fetch.
    let attempts = (0..10).map(|_| {
        let (v, token) = (v.clone(), token.to_owned());
        async move { v.verify(&Credential::Bearer(&token)).await }
    });
    for result in futures_join(attempts).await {
        assert_eq!(result, Err(AuthError::UnknownKey));
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    // After the interval, an unknown kid refetches and the rotated-in key works.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(v.verify(&Credential::Bearer(token)).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn jwks_stale_set_is_refreshed_and_withdrawn_keys_stop_working() {
    let f = fixtures();
    let server = jwks_server(200, f["jwks"].to_string()).await;
    let settings = JwksSettings {
        min_refetch_interval: Duration::ZERO,
        max_age: Duration::from_millis(100),
        ..JwksSettings::default()
    };
    let v = jwks_verifier(&server.url, settings);
    let token = jwt(&f, "es256");
    assert!(v.verify(&Credential::Bearer(token)).await.is_ok());
    // The provider withdraws every key but the RSA one.
    let mut jwks = f["jwks"].clone();
    jwks["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kty"] == "RSA");
    *server.response.lock().unwrap() = (200, jwks.to_string());
    assert!(
        v.verify(&Credential::Bearer(token)).await.is_ok(),
        "fresh cache, no refetch"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        v.verify(&Credential::Bearer(token)).await,
        Err(AuthError::UnknownKey)
    );
    // A failing provider keeps the cached keys.
    *server.response.lock().unwrap() = (500, String::new());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        v.verify(&Credential::Bearer(jwt(&f, "rs256")))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn jwks_unavailable() {
    let f = fixtures();
    let token = jwt(&f, "rs256");
    let too_big = format!(
        r#"{{"keys":[],"pad":"{}"}}"#,
        "x".repeat(jwks::MAX_JWKS_BYTES)
    );
    for (status, body) in [
        (500, String::new()),
        (200, "not json".to_owned()),
        (200, too_big),
    ] {
        let server = jwks_server(status, body).await;
        let v = jwks_verifier(&server.url, JwksSettings::default());
        assert_eq!(
            v.verify(&Credential::Bearer(token)).await,
            Err(AuthError::KeysUnavailable)
        );
        assert_eq!(
            AuthError::KeysUnavailable.status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // A provider that never answers: the fetch times out.
    let server = jwks_server(0, String::new()).await;
    let settings = JwksSettings {
        fetch_timeout: Duration::from_millis(200),
        ..JwksSettings::default()
    };
    let v = jwks_verifier(&server.url, settings);
    let started = std::time::Instant::now();
    assert_eq!(
        v.verify(&Credential::Bearer(token)).await,
        Err(AuthError::KeysUnavailable)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Runs futures concurrently (no extra dependency).
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

// === Configuration ===

#[test]
fn config_from_env_values() {
    let env = AuthEnv {
        auth_secret: Some(String::new()),
        nextauth_secret: Some("legacy".into()),
        auth_secret_rotated: [Some("r1".into()), None, Some("r3".into())],
        jwt_secret: Some(String::new()),
        jwks_url: Some(" https://idp.example/jwks ".into()),
    };
    let config = AuthConfig::from_env_values(env.clone()).unwrap();
    assert_eq!(
        config.secrets,
        [b"legacy".to_vec(), b"r1".to_vec(), b"r3".to_vec()]
    );
    assert_eq!(config.jwt_secret, None);
    assert_eq!(config.jwks_url.as_deref(), Some("https://idp.example/jwks"));
    assert_eq!(config.leeway, Duration::from_secs(15));
    let printed = format!("{config:?} {env:?}");
    assert!(
        !printed.contains("legacy") && !printed.contains("r1"),
        "{printed}"
    );

    let env = AuthEnv {
        auth_secret: Some("new".into()),
        nextauth_secret: Some("legacy".into()),
        ..AuthEnv::default()
    };
    assert_eq!(
        AuthConfig::from_env_values(env).unwrap().secrets,
        [b"new".to_vec()]
    );

    let env = AuthEnv {
        jwks_url: Some("ftp://idp.example/jwks".into()),
        ..AuthEnv::default()
    };
    let err = AuthConfig::from_env_values(env).unwrap_err();
    assert_eq!(err.variable, "REALTIME_JWKS_URL");
    assert!(err.to_string().starts_with("REALTIME_JWKS_URL: "));

    let v = Verifier::new(AuthConfig::from_env_values(AuthEnv::default()).unwrap()).unwrap();
    assert!(!format!("{v:?}").is_empty());
    let cred = Credential::Bearer("secret.token.value");
    assert!(!format!("{cred:?}").contains("secret"));
}

#[test]
fn verifier_is_shareable_and_its_future_is_send() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let v = verifier();
    assert_send_sync(&v);
    let cred = Credential::Bearer("x");
    let future = v.verify(&cred);
    assert_send(&future);
    drop(future);
}

// === No input panics ===

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Valid tokens of every kind, as (cookie name or None for bearer, token).
fn seeds() -> Vec<(Option<String>, String)> {
    let f = fixtures();
    let mut out: Vec<(Option<String>, String)> = f["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                Some(s["cookie"].as_str().unwrap().to_owned()),
                s["token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.extend(["hs256", "hs256-aud-iss"].map(|id| (None, jwt(&f, id).to_owned())));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_tokens_never_panic(token in ".{0,600}", dots in "[.a-zA-Z0-9_-]{0,400}", bearer in any::<bool>()) {
        let v = verifier();
        let rt = runtime();
        for t in [&token, &dots] {
            let cred = if bearer { Credential::Bearer(t) } else { cookie(NAME, t) };
            let _ = rt.block_on(v.verify(&cred));
        }
    }

    #[test]
    fn mangled_real_tokens_never_verify_or_panic(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
    ) {
        let seeds = seeds();
        let (name, original) = &seeds[seed.index(seeds.len())];
        let mut bytes = original.clone().into_bytes();
        for (at, op, byte) in edits {
            let i = at.index(bytes.len().max(1)).min(bytes.len());
            let byte = b"ABCxyz019-_.=+/ \x00"[usize::from(byte) % 17];
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 if i < bytes.len() => { bytes.remove(i); }
                _ => bytes.truncate(i),
            }
        }
        let mangled = String::from_utf8(bytes).unwrap();
        let v = verifier();
        let cred = match name {
            Some(name) => cookie(name, &mangled),
            None => Credential::Bearer(&mangled),
        };
        let result = runtime().block_on(v.verify(&cred));
        if mangled != *original {
            // Changing base64url text changes the decoded bytes, so it cannot verify, except
            // a non-JWE value in a cookie, which becomes a database-session lookup.
            prop_assert!(!matches!(result, Ok(Verification::Identity(_))), "{result:?}");
        }
    }

    #[test]
    fn random_headers_never_panic(
        cookies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..4),
        auth in prop::collection::vec(any::<u8>(), 0..100),
        names in prop::collection::vec((0usize..4, prop::option::of(0u8..70), "[a-zA-Z0-9._-]{0,20}"), 0..6),
    ) {
        let mut headers = HeaderMap::new();
        for c in &cookies {
            if let Ok(value) = http::HeaderValue::from_bytes(c) {
                headers.append(COOKIE, value);
            }
        }
        // Plausible session-cookie fragments mixed in.
        let crafted: Vec<String> = names
            .iter()
            .map(|(i, chunk, v)| {
                let base = [AUTHJS_V5_COOKIES[0], AUTHJS_V5_COOKIES[1], NEXTAUTH_V4_COOKIES[0], NEXTAUTH_V4_COOKIES[1]][*i];
                match chunk {
                    Some(n) => format!("{base}.{n}={v}"),
                    None => format!("{base}={v}"),
                }
            })
            .collect();
        if let Ok(value) = http::HeaderValue::from_str(&crafted.join("; ")) {
            headers.append(COOKIE, value);
        }
        if let Ok(value) = http::HeaderValue::from_bytes(&auth) {
            headers.append(AUTHORIZATION, value);
        }
        if let Some(cred) = credentials_from_headers(&headers) {
            let _ = runtime().block_on(verifier().verify(&cred));
        }
    }
}
