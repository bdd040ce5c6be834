//! Compact JWE decryption for session cookies: `alg: dir` with A256GCM or A256CBC-HS512.
//!
//! The protected header must be `{"alg":"dir","enc":…}` plus optional `kid`/`typ`/`cty`;
//! `zip` (compression) and `crit` (extensions) are refused, since neither library sets them
//! and we implement neither. The encrypted-key part must be empty (`dir`). The AAD is the
//! ASCII of the header's base64url, as RFC 7516 §5.1 step 14 says.

use aes::Aes256;
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::AeadInOut as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cbc::cipher::{BlockModeDecrypt as _, KeyIvInit as _, block_padding::Pkcs7};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::Deserialize;
use sha2::Sha512;
use subtle::ConstantTimeEq as _;

use super::AuthError;
use super::secrets::{CookieFamily, Enc, SessionKeys};

/// Whether `value` has the shape of a compact JWE: five base64url parts. Anything else in a
/// session cookie is a database session token.
pub(crate) fn looks_like_jwe(value: &str) -> bool {
    value.bytes().filter(|&b| b == b'.').count() == 4
        && value
            .bytes()
            .all(|b| b == b'.' || b == b'-' || b == b'_' || b.is_ascii_alphanumeric())
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    enc: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    zip: Option<serde_json::Value>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Decrypts a session-cookie JWE with the keys for `family`/`cookie` and returns the
/// plaintext (the JWT claims). With a header `kid`, only the key with that thumbprint is
/// tried; without, every configured secret in order. The caller has bounded the length.
pub(crate) fn decrypt(
    token: &str,
    keys: &SessionKeys,
    family: CookieFamily,
    cookie: &str,
) -> Result<Vec<u8>, AuthError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(encrypted_key), Some(iv), Some(ciphertext), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(AuthError::Malformed("a JWE has five parts"));
    };
    let header: Header = serde_json::from_slice(&b64(header_b64)?)
        .map_err(|_| AuthError::Malformed("JWE header is not valid JSON"))?;
    if header.alg != "dir" {
        return Err(AuthError::Unsupported("JWE alg must be dir"));
    }
    if header.zip.is_some() {
        return Err(AuthError::Unsupported("compressed JWE"));
    }
    if header.crit.is_some() {
        return Err(AuthError::Unsupported("JWE crit header"));
    }
    let enc = Enc::from_header(&header.enc).ok_or(AuthError::Unsupported("JWE enc"))?;
    if family == CookieFamily::NextAuthV4 && enc != Enc::A256Gcm {
        return Err(AuthError::Unsupported("JWE enc"));
    }
    if !encrypted_key.is_empty() {
        return Err(AuthError::Malformed("dir JWE has an encrypted key"));
    }
    let (iv, ciphertext, tag) = (b64(iv)?, b64(ciphertext)?, b64(tag)?);
    let aad = header_b64.as_bytes();
    let mut any_key = false;
    for key in keys.candidates(family, cookie, enc, header.kid.as_deref()) {
        any_key = true;
        let plaintext = match enc {
            Enc::A256Gcm => decrypt_gcm(&key.key, aad, &iv, &ciphertext, &tag)?,
            Enc::A256CbcHs512 => decrypt_cbc_hs512(&key.key, aad, &iv, &ciphertext, &tag)?,
        };
        if let Some(plaintext) = plaintext {
            return Ok(plaintext);
        }
    }
    if !any_key {
        if keys.secret_count() == 0 {
            return Err(AuthError::NotConfigured(
                "session cookie secret (AUTH_SECRET)",
            ));
        }
        return Err(AuthError::UnknownKey);
    }
    Err(AuthError::BadSignature)
}

fn b64(part: &str) -> Result<Vec<u8>, AuthError> {
    // URL_SAFE_NO_PAD refuses padding and non-canonical trailing bits, so each token has
    // exactly one encoding and a flipped character is never silently ignored.
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed("invalid base64url"))
}

/// `Ok(None)` when the tag does not verify under this key (try the next one); `Err` when the
/// token's shape is wrong whatever the key.
fn decrypt_gcm(
    key: &[u8],
    aad: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Option<Vec<u8>>, AuthError> {
    let nonce = iv
        .try_into()
        .map_err(|_| AuthError::Malformed("A256GCM IV must be 96 bits"))?;
    let tag = tag
        .try_into()
        .map_err(|_| AuthError::Malformed("A256GCM tag must be 128 bits"))?;
    let cipher =
        Aes256Gcm::new_from_slice(key).map_err(|_| AuthError::Malformed("A256GCM key length"))?;
    let mut buffer = ciphertext.to_vec();
    match cipher.decrypt_inout_detached(nonce, aad, buffer.as_mut_slice().into(), tag) {
        Ok(()) => Ok(Some(buffer)),
        Err(_) => Ok(None),
    }
}

/// RFC 7518 §5.2.2.2: MAC_KEY is the first half of the key, ENC_KEY the second; the tag is
/// the first 32 bytes of HMAC-SHA-512(MAC_KEY, AAD ‖ IV ‖ ciphertext ‖ AL), AL being the AAD
/// length in bits as a big-endian u64. The tag is checked (in constant time) before any
/// decryption, so there is no padding oracle.
fn decrypt_cbc_hs512(
    key: &[u8],
    aad: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Option<Vec<u8>>, AuthError> {
    if iv.len() != 16 {
        return Err(AuthError::Malformed("A256CBC-HS512 IV must be 128 bits"));
    }
    if tag.len() != 32 {
        return Err(AuthError::Malformed("A256CBC-HS512 tag must be 256 bits"));
    }
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(AuthError::Malformed("A256CBC-HS512 ciphertext length"));
    }
    let (mac_key, enc_key) = key.split_at(32);
    let expected = cbc_hs512_tag(mac_key, aad, iv, ciphertext)?;
    if !bool::from(expected.ct_eq(tag)) {
        return Ok(None);
    }
    let decryptor = cbc::Decryptor::<Aes256>::new_from_slices(enc_key, iv)
        .map_err(|_| AuthError::Malformed("A256CBC-HS512 key length"))?;
    // Authentic ciphertext with bad padding means the issuer is broken; refuse it all the same.
    decryptor
        .decrypt_padded_vec::<Pkcs7>(ciphertext)
        .map(Some)
        .map_err(|_| AuthError::Malformed("A256CBC-HS512 padding"))
}

pub(crate) fn cbc_hs512_tag(
    mac_key: &[u8],
    aad: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<[u8; 32], AuthError> {
    let mut mac = <Hmac<Sha512>>::new_from_slice(mac_key)
        .map_err(|_| AuthError::Malformed("A256CBC-HS512 key length"))?;
    let aad_bits = (aad.len() as u64).saturating_mul(8);
    mac.update(aad);
    mac.update(iv);
    mac.update(ciphertext);
    mac.update(&aad_bits.to_be_bytes());
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; 32];
    tag.copy_from_slice(&full[..32]);
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwe_shape() {
        assert!(looks_like_jwe("a..b.c.d"));
        assert!(looks_like_jwe("...."));
        assert!(!looks_like_jwe("a.b.c"));
        assert!(!looks_like_jwe("a.b.c.d.e.f"));
        assert!(!looks_like_jwe("a..b.c.d="));
        assert!(!looks_like_jwe("0f0e4b1c-7c8a-4bbb-9d1e-1234567890ab"));
    }

    /// RFC 7518 Appendix B.3 (AES_256_CBC_HMAC_SHA_512) test vector.
    #[test]
    fn cbc_hs512_rfc7518_b3() {
        let key: Vec<u8> = (0x00..=0x3f).collect();
        let iv = hex("1af38c2dc2b96ffdd86694092341bc04");
        let aad = hex(
            "546865207365636f6e64207072696e6369706c65206f66204175677573746520\
             4b6572636b686f666673",
        );
        let ciphertext = hex(
            "4affaaadb78c31c5da4b1b590d10ffbd3dd8d5d302423526912da037ecbcc7bd\
             822c301dd67c373bccb584ad3e9279c2e6d12a1374b77f077553df829410446b\
             36ebd97066296ae6427ea75c2e0846a11a09ccf5370dc80bfecbad28c73f09b3\
             a3b75e662a2594410ae496b2e2e6609e31e6e02cc837f053d21f37ff4f51950b\
             be2638d09dd7a4930930806d0703b1f6",
        );
        let tag = hex("4dd3b4c088a7f45c216839645b2012bf2e6269a8c56a816dbc1b267761955bc5");
        let pt = decrypt_cbc_hs512(&key, &aad, &iv, &ciphertext, &tag)
            .unwrap()
            .unwrap();
        assert!(pt.starts_with(b"A cipher system must not be required to be secret"));
        let mut bad = tag.clone();
        bad[31] ^= 1;
        assert_eq!(
            decrypt_cbc_hs512(&key, &aad, &iv, &ciphertext, &bad),
            Ok(None)
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
