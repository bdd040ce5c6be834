//! Where a cookie-authenticated state-changing request comes from.
//!
//! A browser attaches the session cookie to a `POST`, `PUT` or `DELETE`
//! whichever page sends it; CORS only stops that page from *reading* the
//! answer. `SameSite=Lax` does not help against a sibling subdomain (same
//! site), so a page on `evil.example.com` could post activity, or close
//! streams, as a signed-in user of `app.example.com`. Browsers send
//! `Origin` on every such request (a page cannot forge it), so the gateway
//! acts on a cookie-authenticated change only when `Origin` (or, without
//! it, the origin of `Referer`) is in `REALTIME_CORS_ORIGINS` or is the
//! gateway's own origin: its `host:port` equals the request's `Host`, or,
//! when `Host` carries no port (a proxy forwarding nginx's `$host`), its
//! host name does. The scheme is not compared: behind a TLS-terminating
//! proxy the gateway cannot know it. A request with neither header is
//! refused too: every browser that sends cookies sends one of them. Bearer-authenticated requests are not
//! affected: a page cannot attach someone else's bearer token.

use axum::http::{HeaderMap, Uri, header};

/// The origins allowed to send cookie-authenticated changes, normalized
/// (`scheme://host[:port]`, lower case, no trailing slash).
#[derive(Debug, Clone, Default)]
pub(crate) struct Origins {
    allowed: Vec<String>,
}

impl Origins {
    /// From the `REALTIME_CORS_ORIGINS` items (blank items ignored).
    pub(crate) fn new(items: &[String]) -> Self {
        Origins {
            allowed: items
                .iter()
                .map(|o| normalize(o))
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// Whether the request's origin may change state with the caller's
    /// cookie: listed, or the gateway's own (same authority as the
    /// request's `Host`, or the URI's authority over HTTP/2).
    pub(crate) fn allows(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let Some(origin) = request_origin(headers) else {
            return false;
        };
        if self.allowed.contains(&origin) {
            return true;
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
            .map(|h| h.trim().to_ascii_lowercase());
        match (authority(&origin), host) {
            (Some(a), Some(h)) if !h.is_empty() => {
                a == h || (!has_port(&h) && strip_port(a) == h.as_str())
            }
            _ => false,
        }
    }
}

/// Whether an authority (`host`, `host:port`, `[v6]`, `[v6]:port`) has a port.
fn has_port(authority: &str) -> bool {
    match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    }
}

fn strip_port(authority: &str) -> &str {
    if !has_port(authority) {
        return authority;
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `Origin` (unless `null`, an opaque origin), else the scheme and
/// authority of `Referer`.
fn request_origin(headers: &HeaderMap) -> Option<String> {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(normalize)
        .filter(|o| !o.is_empty() && o != "null");
    if origin.is_some() {
        return origin;
    }
    let referer = headers.get(header::REFERER)?.to_str().ok()?.trim();
    let (scheme, rest) = referer.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if scheme.is_empty() || authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(normalize(&format!("{scheme}://{authority}")))
}

/// The `host[:port]` of a normalized origin.
fn authority(origin: &str) -> Option<&str> {
    origin
        .split_once("://")
        .map(|(_, a)| a)
        .filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn listed_and_same_origin_requests_pass_others_do_not() {
        let o = Origins::new(&["https://app.example.com/".into(), " ".into()]);
        let uri = Uri::from_static("/api/realtime/stream");
        let host = ("host", "rt.example.com");
        let ok = |pairs: &[(&str, &str)]| o.allows(&headers(pairs), &uri);
        assert!(ok(&[host, ("origin", "https://APP.example.com")]));
        assert!(ok(&[host, ("origin", "https://rt.example.com")]));
        assert!(ok(&[host, ("referer", "https://app.example.com/page?x=1")]));
        assert!(ok(&[host, ("referer", "https://rt.example.com")]));
        assert!(!ok(&[host, ("origin", "https://evil.example.com")]));
        assert!(!ok(&[host, ("origin", "null")]));
        assert!(!ok(&[
            host,
            ("origin", "null"),
            ("referer", "https://evil.example.com/")
        ]));
        assert!(!ok(&[
            host,
            ("referer", "https://app.example.com.evil.net/")
        ]));
        assert!(!ok(&[
            host,
            ("referer", "https://app.example.com@evil.net/")
        ]));
        assert!(!ok(&[host, ("referer", "not a url")]));
        assert!(!ok(&[host]));
        assert!(!ok(&[("origin", "https://rt.example.com")]));
        // A proxy that forwards `Host` without the port.
        let bare = ("host", "rt.example.com");
        assert!(ok(&[bare, ("origin", "https://rt.example.com:8443")]));
        assert!(!ok(&[bare, ("origin", "https://evil.example.com:8443")]));
        assert!(!ok(&[
            ("host", "rt.example.com:8080"),
            ("origin", "https://rt.example.com:9999")
        ]));
        let v6 = ("host", "[::1]");
        assert!(ok(&[v6, ("origin", "http://[::1]:8080")]));
        assert!(!ok(&[v6, ("origin", "http://[::2]:8080")]));
        // HTTP/2: the authority is in the URI.
        let h2 = Uri::from_static("https://rt.example.com/api/realtime/stream");
        let h = headers(&[("origin", "https://rt.example.com")]);
        assert!(o.allows(&h, &h2));
    }
}
