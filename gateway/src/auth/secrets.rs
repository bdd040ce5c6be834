//! Session-cookie keys, derived once per secret (and, for Auth.js v5, per cookie name).
//!
//! - Auth.js v5 (`@auth/core/jwt`): `HKDF-SHA256(ikm = secret, salt = cookie name,
//!   info = "Auth.js Generated Encryption Key (<cookie name>)")`, 64 bytes for A256CBC-HS512
//!   (what it issues) and 32 bytes for A256GCM (which its `decode` also accepts). The salt is
//!   the base cookie name, so a token only decrypts under the cookie it was issued for.
//! - NextAuth v4 (`next-auth/jwt`): `HKDF-SHA256(ikm = secret, salt = "",
//!   info = "NextAuth.js Generated Encryption Key")`, 32 bytes, A256GCM; one key for both
//!   cookie names.
//!
//! Each key also carries its `kid`: the RFC 7638 thumbprint of the key as an `oct` JWK,
//! base64url. @auth/core hashes with SHA-`8 × key length`, i.e. **SHA-512 for the 64-byte
//! key** and SHA-256 for 32-byte keys; we do the same (checked against its tokens).
//! next-auth v4 sets no `kid`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use sha2::{Digest, Sha256, Sha512};

use super::{AUTHJS_V5_COOKIES, NEXTAUTH_V4_COOKIES};

/// Which library issued a session cookie, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieFamily {
    AuthJsV5,
    NextAuthV4,
}

impl CookieFamily {
    pub(crate) fn of(cookie_name: &str) -> Option<Self> {
        if AUTHJS_V5_COOKIES.contains(&cookie_name) {
            Some(Self::AuthJsV5)
        } else if NEXTAUTH_V4_COOKIES.contains(&cookie_name) {
            Some(Self::NextAuthV4)
        } else {
            None
        }
    }
}

/// JWE content encryption algorithms we decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enc {
    /// AES-256-GCM: 32-byte key, 96-bit IV, 128-bit tag.
    A256Gcm,
    /// AES-256-CBC + HMAC-SHA-512/256 (RFC 7518 §5.2.5): 64-byte key, 128-bit IV, 256-bit tag.
    A256CbcHs512,
}

impl Enc {
    pub(crate) fn from_header(enc: &str) -> Option<Self> {
        match enc {
            "A256GCM" => Some(Self::A256Gcm),
            "A256CBC-HS512" => Some(Self::A256CbcHs512),
            _ => None,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::A256Gcm => 32,
            Self::A256CbcHs512 => 64,
        }
    }
}

/// One derived content-encryption key.
pub(crate) struct DerivedKey {
    pub(crate) family: CookieFamily,
    /// The cookie name used as salt (v5); `None` for v4, whose key serves both names.
    pub(crate) cookie: Option<&'static str>,
    pub(crate) enc: Enc,
    pub(crate) key: Vec<u8>,
    /// RFC 7638 thumbprint, as the JWE `kid` carries it.
    pub(crate) kid: String,
}

/// Every derived key, for every configured secret, in secret order (primary first).
pub(crate) struct SessionKeys {
    keys: Vec<DerivedKey>,
    secrets: usize,
}

impl SessionKeys {
    pub(crate) fn derive(secrets: &[Vec<u8>]) -> Self {
        let mut keys = Vec::with_capacity(secrets.len() * 5);
        for secret in secrets {
            for cookie in AUTHJS_V5_COOKIES {
                let info = format!("Auth.js Generated Encryption Key ({cookie})");
                for enc in [Enc::A256CbcHs512, Enc::A256Gcm] {
                    let key =
                        hkdf_sha256(secret, cookie.as_bytes(), info.as_bytes(), enc.key_len());
                    let kid = oct_thumbprint(&key);
                    keys.push(DerivedKey {
                        family: CookieFamily::AuthJsV5,
                        cookie: Some(cookie),
                        enc,
                        key,
                        kid,
                    });
                }
            }
            let key = hkdf_sha256(secret, b"", b"NextAuth.js Generated Encryption Key", 32);
            let kid = oct_thumbprint(&key);
            keys.push(DerivedKey {
                family: CookieFamily::NextAuthV4,
                cookie: None,
                enc: Enc::A256Gcm,
                key,
                kid,
            });
        }
        Self {
            keys,
            secrets: secrets.len(),
        }
    }

    pub(crate) fn secret_count(&self) -> usize {
        self.secrets
    }

    /// The keys that may decrypt a token of `family`/`enc` sent under `cookie`, primary
    /// secret first. With a `kid`, only the key with that thumbprint.
    pub(crate) fn candidates<'a>(
        &'a self,
        family: CookieFamily,
        cookie: &'a str,
        enc: Enc,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a DerivedKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.family == family
                && k.enc == enc
                && k.cookie.is_none_or(|c| c == cookie)
                && kid.is_none_or(|kid| constant_time_str_eq(kid, &k.kid))
        })
    }
}

/// The kid is public, but comparing it in constant time costs nothing and avoids arguing.
fn constant_time_str_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let mut okm = vec![0u8; len];
    // `len` is 32 or 64, far below HKDF-SHA256's 255 × 32 limit, so expand cannot fail;
    // an all-zero key would then only fail to decrypt anything.
    let _ = Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut okm);
    okm
}

/// RFC 7638 thumbprint of `{"k":…,"kty":"oct"}` (members in lexicographic order, no
/// whitespace), hashed as @auth/core does: SHA-512 for 64-byte keys, else SHA-256.
pub(crate) fn oct_thumbprint(key: &[u8]) -> String {
    let jwk = format!(r#"{{"k":"{}","kty":"oct"}}"#, URL_SAFE_NO_PAD.encode(key));
    if key.len() == 64 {
        URL_SAFE_NO_PAD.encode(Sha512::digest(jwk.as_bytes()))
    } else {
        URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hkdf_matches_rfc5869_test_case_1() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let okm = hkdf_sha256(&ikm, &salt, &info, 42);
        assert_eq!(
            okm,
            [
                0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36,
                0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56,
                0xec, 0xc4, 0xc5, 0xbf, 0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65
            ]
        );
    }

    #[test]
    fn keys_per_secret_and_cookie() {
        let keys = SessionKeys::derive(&[b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(keys.secret_count(), 2);
        let v5 = |cookie| {
            keys.candidates(CookieFamily::AuthJsV5, cookie, Enc::A256CbcHs512, None)
                .map(|k| k.key.clone())
                .collect::<Vec<_>>()
        };
        let (secure, plain) = (v5(AUTHJS_V5_COOKIES[0]), v5(AUTHJS_V5_COOKIES[1]));
        assert_eq!((secure.len(), plain.len()), (2, 2));
        assert_ne!(secure, plain, "the cookie name is the salt");
        assert!(secure.iter().all(|k| k.len() == 64));
        let v4: Vec<_> = keys
            .candidates(
                CookieFamily::NextAuthV4,
                NEXTAUTH_V4_COOKIES[1],
                Enc::A256Gcm,
                None,
            )
            .collect();
        assert_eq!(v4.len(), 2);
        let kid = v4[1].kid.clone();
        let by_kid: Vec<_> = keys
            .candidates(
                CookieFamily::NextAuthV4,
                NEXTAUTH_V4_COOKIES[0],
                Enc::A256Gcm,
                Some(&kid),
            )
            .collect();
        assert_eq!(by_kid.len(), 1);
        assert_eq!(by_kid[0].key, v4[1].key);
    }
}
