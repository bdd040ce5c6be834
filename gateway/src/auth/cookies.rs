//! Finding the credential in request headers (no verification here).
//!
//! Precedence: an `Authorization: Bearer` header wins outright (even if its token turns out
//! bad: the client chose it). Otherwise the first session cookie present, in the order
//! `__Secure-authjs.session-token`, `authjs.session-token`, `__Secure-next-auth.session-token`,
//! `next-auth.session-token`. Each may be chunked (`<name>.0`, `<name>.1`, …, as Auth.js and
//! next-auth split values above ~4 KB); chunks are joined in numeric order, and an unchunked
//! cookie of the same name wins over chunks (the chunks are then leftovers of an older,
//! larger session).
//!
//! Parsing is byte-level and forgiving about *other* cookies: several `Cookie` headers,
//! optional spaces, `"quoted"` values, and bytes that are not UTF-8 elsewhere in the header
//! are all fine. Bounds: `Cookie` headers are read up to [`MAX_COOKIE_HEADER_BYTES`] in all
//! (reading stops at the first header that would cross the budget; none is cut), chunk
//! indexes from [`MAX_CHUNKS`] up are ignored, the first occurrence of a name wins, and values are not
//! percent-decoded (JWEs and session ids never contain `%`).

use std::collections::BTreeMap;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use super::{AUTHJS_V5_COOKIES, Credential, NEXTAUTH_V4_COOKIES};

/// Budget over all `Cookie` headers of a request, in bytes.
pub(crate) const MAX_COOKIE_HEADER_BYTES: usize = 32 * 1024;

/// Highest chunk count considered per cookie name.
pub(crate) const MAX_CHUNKS: usize = 64;

/// The session cookie names in precedence order.
const SESSION_COOKIES: [&str; 4] = [
    AUTHJS_V5_COOKIES[0],
    AUTHJS_V5_COOKIES[1],
    NEXTAUTH_V4_COOKIES[0],
    NEXTAUTH_V4_COOKIES[1],
];

/// Returns the request's credential in ARCHITECTURE.md §3 order, or `None` when it has none.
pub fn credentials_from_headers(headers: &HeaderMap) -> Option<Credential<'_>> {
    if let Some(token) = bearer(headers) {
        return Some(Credential::Bearer(token));
    }
    session_cookie(headers)
}

/// The first `Authorization` header with the `Bearer` scheme (case-insensitive); headers with
/// other schemes (e.g. `Basic` added by a proxy) are skipped.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(AUTHORIZATION).iter().find_map(|value| {
        let value = value.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

#[derive(Default)]
struct Found<'h> {
    whole: Option<&'h [u8]>,
    chunks: BTreeMap<usize, &'h [u8]>,
}

fn session_cookie(headers: &HeaderMap) -> Option<Credential<'static>> {
    let mut found: [Found<'_>; 4] = Default::default();
    let mut budget = MAX_COOKIE_HEADER_BYTES;
    for header in headers.get_all(COOKIE) {
        let bytes = header.as_bytes();
        let Some(rest) = budget.checked_sub(bytes.len()) else {
            break;
        };
        budget = rest;
        for pair in bytes.split(|&b| b == b';') {
            let Some((name, value)) = split_pair(pair) else {
                continue;
            };
            record(&mut found, name, value);
        }
    }
    for (name, found) in SESSION_COOKIES.into_iter().zip(found) {
        let value = match (found.whole, found.chunks.is_empty()) {
            (Some(whole), _) => whole.to_vec(),
            (None, false) => found.chunks.into_values().flatten().copied().collect(),
            (None, true) => continue,
        };
        // Values were checked to be cookie-octets (ASCII), so this cannot fail; skip if it did.
        let Ok(value) = String::from_utf8(value) else {
            continue;
        };
        return Some(Credential::SessionCookie { name, value });
    }
    None
}

/// `name=value` with optional whitespace around both and optional quotes around the value.
/// Pairs with a non-ASCII or control byte in the value are dropped.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    let name = pair[..eq].trim_ascii();
    let mut value = pair[eq + 1..].trim_ascii();
    if value.len() >= 2 && value.starts_with(b"\"") && value.ends_with(b"\"") {
        value = &value[1..value.len() - 1];
    }
    let cookie_octets = value
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    (!name.is_empty() && cookie_octets).then_some((name, value))
}

fn record<'h>(found: &mut [Found<'h>; 4], name: &[u8], value: &'h [u8]) {
    if value.is_empty() {
        return; // Auth.js clears chunks by setting them empty; an empty value is no cookie.
    }
    for (base, slot) in SESSION_COOKIES.iter().zip(found.iter_mut()) {
        let Some(suffix) = name.strip_prefix(base.as_bytes()) else {
            continue;
        };
        if suffix.is_empty() {
            slot.whole.get_or_insert(value);
        } else if let Some(index) = chunk_index(suffix) {
            slot.chunks.entry(index).or_insert(value);
        }
        // Note: no `return`: `__Secure-authjs…` does not start with `authjs…`, so at most one
        // base matches, but checking all four keeps this independent of the name list.
    }
}

/// `.N` with N a canonical decimal below [`MAX_CHUNKS`].
fn chunk_index(suffix: &[u8]) -> Option<usize> {
    let digits = suffix.strip_prefix(b".")?;
    let canonical = !digits.is_empty()
        && digits.len() <= 2
        && digits.iter().all(u8::is_ascii_digit)
        && (digits == b"0" || digits[0] != b'0');
    if !canonical {
        return None;
    }
    let index = digits
        .iter()
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    (index < MAX_CHUNKS).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(list: &[(&http::HeaderName, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in list {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn cookie(value: &str) -> Option<(String, String)> {
        match credentials_from_headers(&headers(&[(&COOKIE, value.as_bytes())]))? {
            Credential::SessionCookie { name, value } => Some((name.to_owned(), value)),
            Credential::Bearer(_) => panic!("no bearer here"),
        }
    }

    #[test]
    fn bearer_wins_and_scheme_is_case_insensitive() {
        let map = headers(&[
            (&COOKIE, b"authjs.session-token=abc"),
            (&AUTHORIZATION, b"Basic dXNlcjpwdw=="),
            (&AUTHORIZATION, b"bearer   tok.en.x  "),
        ]);
        assert_eq!(
            credentials_from_headers(&map),
            Some(Credential::Bearer("tok.en.x"))
        );
        let map = headers(&[
            (&AUTHORIZATION, b"Basic dXNlcjpwdw=="),
            (&COOKIE, b"authjs.session-token=abc"),
        ]);
        assert!(matches!(
            credentials_from_headers(&map),
            Some(Credential::SessionCookie { .. })
        ));
        let map = headers(&[(&AUTHORIZATION, b"Bearer")]);
        assert_eq!(credentials_from_headers(&map), Some(Credential::Bearer("")));
        assert_eq!(credentials_from_headers(&HeaderMap::new()), None);
    }

    #[test]
    fn precedence_between_cookie_names() {
        let all = "next-auth.session-token=d; __Secure-next-auth.session-token=c; \
                   authjs.session-token=b; __Secure-authjs.session-token=a";
        assert_eq!(
            cookie(all),
            Some(("__Secure-authjs.session-token".into(), "a".into()))
        );
        assert_eq!(
            cookie("next-auth.session-token=d;__Secure-next-auth.session-token=c"),
            Some(("__Secure-next-auth.session-token".into(), "c".into()))
        );
        assert_eq!(
            cookie("next-auth.session-token=d"),
            Some(("next-auth.session-token".into(), "d".into()))
        );
        assert_eq!(
            cookie("other=1; authjs.session-token-x=2; xauthjs.session-token=3"),
            None
        );
    }

    #[test]
    fn chunks_join_in_numeric_order_and_whole_wins() {
        let chunked = "authjs.session-token.10=k; authjs.session-token.2=c; \
                       authjs.session-token.0=a; authjs.session-token.1=b";
        assert_eq!(cookie(chunked).unwrap().1, "abck");
        assert_eq!(
            cookie(&format!("{chunked}; authjs.session-token=whole"))
                .unwrap()
                .1,
            "whole"
        );
        // Non-canonical or out-of-range indexes are not chunks.
        assert_eq!(
            cookie("authjs.session-token.01=x; authjs.session-token.64=y; authjs.session-token.=z"),
            None
        );
        assert_eq!(cookie("authjs.session-token.63=y").unwrap().1, "y");
    }

    #[test]
    fn spaces_quotes_duplicates_and_empties() {
        assert_eq!(cookie("  authjs.session-token = \"q\" ").unwrap().1, "q");
        assert_eq!(
            cookie("authjs.session-token=first; authjs.session-token=second")
                .unwrap()
                .1,
            "first"
        );
        assert_eq!(
            cookie("authjs.session-token=; next-auth.session-token=v")
                .unwrap()
                .1,
            "v"
        );
        assert_eq!(cookie("authjs.session-token"), None);
        assert_eq!(cookie(";;;=;"), None);
    }

    #[test]
    fn several_cookie_headers_and_bad_bytes() {
        let map = headers(&[
            (&COOKIE, b"junk=\xff\xfe; authjs.session-token.1=b"),
            (&COOKIE, b"authjs.session-token.0=a"),
            (&COOKIE, b"next-auth.session-token=bad\xffvalue"),
        ]);
        assert_eq!(
            credentials_from_headers(&map),
            Some(Credential::SessionCookie {
                name: "authjs.session-token",
                value: "ab".into()
            })
        );
        let map = headers(&[(&COOKIE, b"next-auth.session-token=bad\xffvalue")]);
        assert_eq!(credentials_from_headers(&map), None);
    }

    #[test]
    fn header_budget() {
        let big = format!("pad={}", "x".repeat(MAX_COOKIE_HEADER_BYTES));
        let map = headers(&[
            (&COOKIE, big.as_bytes()),
            (&COOKIE, b"authjs.session-token=a"),
        ]);
        // The oversized header stops the scan: nothing after the budget is read.
        assert_eq!(credentials_from_headers(&map), None);
        let map = headers(&[
            (&COOKIE, b"authjs.session-token=a"),
            (&COOKIE, big.as_bytes()),
        ]);
        assert!(credentials_from_headers(&map).is_some());
    }
}
