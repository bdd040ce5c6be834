//! The client IP behind a request, for the per-IP connect rate limit
//! (ARCHITECTURE.md §3, `REALTIME_TRUSTED_PROXIES`).
//!
//! The TCP peer is the client unless it is a trusted proxy; then the
//! `X-Forwarded-For` chain (or, without it, `X-Real-IP`) is read from the
//! right, skipping trusted proxies, and the first untrusted address is the
//! client. Reading from the right matters: the left part of the chain is
//! whatever the client wrote. An item may carry a port (`ip:port`,
//! `[v6]:port`, as some proxies write it); an item that is not an address
//! at all ends the trusted chain, and the key is then the last trusted hop
//! (the proxy that wrote the item, or the peer): skipping it would hand the
//! key to the item on its left, which the client chose. IPv6 clients are
//! keyed by their /64, which one subscriber controls as a whole, so rotating
//! addresses does not evade the limit.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::Request;
use ipnet::IpNet;
use tower_governor::GovernorError;
use tower_governor::key_extractor::KeyExtractor;

/// Parses `REALTIME_TRUSTED_PROXIES` items: an address or a CIDR.
pub(crate) fn parse_trusted(items: &[String]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
        })
        .collect()
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ClientIp {
    trusted: Arc<[IpNet]>,
}

impl ClientIp {
    pub(crate) fn new(trusted: Vec<IpNet>) -> Self {
        ClientIp {
            trusted: trusted.into(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a request from `peer`.
    ///
    /// Walks `X-Forwarded-For` from the right while the hops are trusted;
    /// the first untrusted address is the client. An item that does not
    /// parse (or a header that is not text) stops the walk at the last
    /// trusted hop, which is then the key: never an address further left,
    /// which the client may have written itself.
    pub(crate) fn resolve(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let values = headers.get_all("x-forwarded-for");
        if values.iter().next().is_some() {
            // Header lines in order, each read right to left: walk the
            // lines from the last one.
            let mut hop = peer;
            for value in values.iter().rev() {
                let Ok(text) = value.to_str() else {
                    return hop;
                };
                for item in text.rsplit(',') {
                    match parse_hop(item) {
                        Some(ip) if self.is_trusted(ip) => hop = ip,
                        Some(ip) => return ip,
                        None => return hop,
                    }
                }
            }
            // Every hop trusted: the leftmost is as far as anyone vouches.
            return hop;
        }
        headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_hop)
            .unwrap_or(peer)
    }
}

/// One forwarded hop: `ip`, `ip:port`, `[v6]` or `[v6]:port`; `None` for
/// anything else (an empty item, `unknown`, an obfuscated name, garbage).
fn parse_hop(item: &str) -> Option<IpAddr> {
    let item = item.trim();
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = item.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    item.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|v6| v6.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The rate-limit key: the address, IPv6 cut to its /64.
pub(crate) fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or(GovernorError::UnableToExtractKey)?;
        Ok(limit_key(self.resolve(peer, req.headers())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

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
    fn untrusted_peers_cannot_forge_their_address() {
        let c = ClientIp::new(parse_trusted(&["10.0.0.0/8".into()]).unwrap());
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(c.resolve(peer, &h), peer);
    }

    #[test]
    fn trusted_proxy_chain_is_read_from_the_right() {
        let c = ClientIp::new(parse_trusted(&["10.0.0.0/8".into(), "192.0.2.1".into()]).unwrap());
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        // The client wrote 1.1.1.1 itself; 198.51.100.7 is what the first
        // trusted proxy saw.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 192.0.2.1")]);
        assert_eq!(
            c.resolve(peer, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-real-ip", "198.51.100.8")]);
        assert_eq!(
            c.resolve(peer, &h),
            "198.51.100.8".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "garbage")]);
        assert_eq!(c.resolve(peer, &h), peer);
    }

    #[test]
    fn hops_with_ports_are_their_address() {
        let c = ClientIp::new(parse_trusted(&["10.0.0.0/8".into()]).unwrap());
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        for (xff, client) in [
            ("1.1.1.1, 198.51.100.7:4711", "198.51.100.7"),
            ("1.1.1.1, [2001:db8::7]:4711", "2001:db8::7"),
            ("1.1.1.1, [2001:db8::8]", "2001:db8::8"),
            ("1.1.1.1, 198.51.100.9:4711, 10.0.0.2:80", "198.51.100.9"),
        ] {
            let h = headers(&[("x-forwarded-for", xff)]);
            assert_eq!(
                c.resolve(peer, &h),
                client.parse::<IpAddr>().unwrap(),
                "{xff}"
            );
        }
        let h = headers(&[("x-real-ip", "198.51.100.8:99")]);
        assert_eq!(
            c.resolve(peer, &h),
            "198.51.100.8".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_unparseable_hop_ends_the_trusted_chain() {
        let c = ClientIp::new(parse_trusted(&["10.0.0.0/8".into()]).unwrap());
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        // The client's own value (1.1.1.1) sits left of an item the
        // trusted proxy could not vouch for: the key is the last trusted
        // hop, never the client's choice.
        for (xff, key) in [
            ("1.1.1.1, unknown", "10.1.1.1"),
            ("1.1.1.1, garbage:port", "10.1.1.1"),
            ("1.1.1.1, , ", "10.1.1.1"),
            ("1.1.1.1, fe80::1%eth0, 10.0.0.3", "10.0.0.3"),
            ("1.1.1.1, [::1, 10.0.0.4:8080", "10.0.0.4"),
        ] {
            let h = headers(&[("x-forwarded-for", xff)]);
            assert_eq!(c.resolve(peer, &h), key.parse::<IpAddr>().unwrap(), "{xff}");
        }
        // Two header lines: the last line holds the nearest hops.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "_hidden, 10.0.0.5"),
        ]);
        assert_eq!(c.resolve(peer, &h), "10.0.0.5".parse::<IpAddr>().unwrap());
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "10.0.0.6"),
        ]);
        assert_eq!(c.resolve(peer, &h), "1.1.1.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a = limit_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = limit_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            limit_key("::ffff:192.0.2.5".parse().unwrap()),
            "192.0.2.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn bad_proxy_items_are_named() {
        let e = parse_trusted(&["10.0.0.0/8".into(), "nope".into()]).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        assert!(parse_trusted(&["".into()]).unwrap().is_empty());
    }
}
