//! The one claim policy shared by bearer JWTs and session JWEs.
//!
//! `sub`: required, a non-empty string of at most [`MAX_SUB_LEN`] bytes (it becomes the user
//! id in Redis keys and events). `exp`: required; a token without an expiry would be valid
//! forever and a stream could never be closed on time, so it is refused. `nbf`: honoured
//! when present. Both are NumericDates (seconds, integer or fraction) within
//! `0..=MAX_NUMERIC_DATE`, compared with the leeway. Other claims are ignored.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::{AuthError, Identity, IdentityKind};

/// Longest accepted `sub`, in bytes.
pub(crate) const MAX_SUB_LEN: usize = 512;

/// 9999-12-31T23:59:59Z: later dates are treated as malformed, not as "never".
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// Claims after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) sub: String,
    pub(crate) exp: SystemTime,
}

/// The registered claims we read. The payload must be a JSON object (serde's derive would
/// also take an array); other members are skipped without being stored, and a repeated
/// `sub`/`exp`/`nbf` is refused rather than resolved either way. `Value` keeps type errors
/// ours (a numeric `sub` is an [`AuthError::InvalidClaims`]).
#[derive(Default)]
pub(crate) struct RawClaims {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
}

impl<'de> Deserialize<'de> for RawClaims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawClaims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawClaims, A::Error> {
                let mut raw = RawClaims::default();
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "sub" => &mut raw.sub,
                        "exp" => &mut raw.exp,
                        "nbf" => &mut raw.nbf,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(raw)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

impl Claims {
    /// Parses a JWE payload and validates it at `now`.
    pub(crate) fn from_json(
        payload: &[u8],
        now: SystemTime,
        leeway: Duration,
    ) -> Result<Self, AuthError> {
        let raw: RawClaims = serde_json::from_slice(payload)
            .map_err(|_| AuthError::Malformed("payload is not a JSON object"))?;
        raw.validate(now, leeway)
    }

    pub(crate) fn into_identity(self, kind: IdentityKind) -> Identity {
        Identity {
            user_id: self.sub,
            expires_at: Some(self.exp),
            kind,
        }
    }
}

impl RawClaims {
    pub(crate) fn validate(self, now: SystemTime, leeway: Duration) -> Result<Claims, AuthError> {
        let sub = match self.sub {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUB_LEN => s,
            Some(Value::String(s)) if !s.is_empty() => {
                return Err(AuthError::InvalidClaims("sub is too long"));
            }
            None | Some(Value::Null) => return Err(AuthError::InvalidClaims("sub is missing")),
            Some(_) => return Err(AuthError::InvalidClaims("sub must be a non-empty string")),
        };
        let exp = match self.exp {
            None | Some(Value::Null) => return Err(AuthError::InvalidClaims("exp is missing")),
            Some(v) => numeric_date(&v).ok_or(AuthError::InvalidClaims("exp is not a date"))?,
        };
        if now > exp.checked_add(leeway).unwrap_or(exp) {
            return Err(AuthError::Expired);
        }
        match self.nbf {
            None | Some(Value::Null) => {}
            Some(v) => {
                let nbf = numeric_date(&v).ok_or(AuthError::InvalidClaims("nbf is not a date"))?;
                if nbf > now.checked_add(leeway).unwrap_or(now) {
                    return Err(AuthError::NotYetValid);
                }
            }
        }
        Ok(Claims { sub, exp })
    }
}

/// A NumericDate (RFC 7519 §2) as a time, or `None` when not a number in range.
fn numeric_date(value: &Value) -> Option<SystemTime> {
    let secs = value.as_f64()?;
    if !(0.0..=MAX_NUMERIC_DATE).contains(&secs) {
        return None;
    }
    // Finite and in range (checked above), so the conversion and the addition both succeed.
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LEEWAY: Duration = Duration::from_secs(15);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn check(v: Value, now: u64) -> Result<Claims, AuthError> {
        Claims::from_json(v.to_string().as_bytes(), at(now), LEEWAY)
    }

    #[test]
    fn exp_is_enforced_with_leeway() {
        let ok = check(json!({"sub": "u", "exp": 1000}), 1015).unwrap();
        assert_eq!(
            ok,
            Claims {
                sub: "u".into(),
                exp: at(1000)
            }
        );
        assert_eq!(
            check(json!({"sub": "u", "exp": 1000}), 1016),
            Err(AuthError::Expired)
        );
        assert_eq!(
            check(json!({"sub": "u", "exp": 1000.5}), 1015)
                .unwrap()
                .exp
                .duration_since(UNIX_EPOCH)
                .unwrap(),
            Duration::from_millis(1_000_500)
        );
    }

    #[test]
    fn nbf_is_honoured_with_leeway() {
        assert!(check(json!({"sub": "u", "exp": 5000, "nbf": 1015}), 1000).is_ok());
        assert_eq!(
            check(json!({"sub": "u", "exp": 5000, "nbf": 1016}), 1000),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn required_claims_and_types() {
        let invalid = |v| matches!(check(v, 0), Err(AuthError::InvalidClaims(_)));
        assert!(invalid(json!({"exp": 10})));
        assert!(invalid(json!({"sub": "", "exp": 10})));
        assert!(invalid(json!({"sub": 42, "exp": 10})));
        assert!(invalid(
            json!({"sub": "x".repeat(MAX_SUB_LEN + 1), "exp": 10})
        ));
        assert!(invalid(json!({"sub": "u"})));
        assert!(invalid(json!({"sub": "u", "exp": "10"})));
        assert!(invalid(json!({"sub": "u", "exp": -1})));
        assert!(invalid(json!({"sub": "u", "exp": 1e300})));
        assert!(invalid(json!({"sub": "u", "exp": u64::MAX})));
        assert!(invalid(json!({"sub": "u", "exp": 10, "nbf": true})));
    }

    #[test]
    fn malformed_payloads() {
        for payload in [
            &b"[]"[..],
            b"null",
            b"{",
            b"\xff",
            b"{\"sub\":\"a\",\"sub\":\"b\",\"exp\":1}",
            b"{\"exp\":1e999}",
        ] {
            assert!(
                matches!(
                    Claims::from_json(payload, at(0), LEEWAY),
                    Err(AuthError::Malformed(_))
                ),
                "{payload:?}"
            );
        }
    }
}
