use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::header::{HeaderName, FORWARDED};
use http::{HeaderMap, Request};
use ipnet::IpNet;

use super::peer::{no_peer_address, peer_addr};
use super::{IpPrefix, KeyError, KeyExtractor};

/// The client's IP address, taken from forwarding headers only when a trusted proxy sent them.
///
/// `X-Forwarded-For` and its kin are written by whoever sends the request: a client can put
/// anything there. A proxy you run appends the address it saw. So:
///
/// - if the TCP peer is not one of the trusted proxies, the peer *is* the client, and every
///   forwarding header is ignored;
/// - if it is, the forwarding chain is walked **from the right**, skipping trusted proxies, and
///   the first address that is not a trusted proxy is the client. The left-most entry is never
///   believed just for being first.
///
/// Forwarding headers are looked at in the order of [`headers`](Self::headers), by default
/// `Forwarded` (RFC 7239), then `X-Forwarded-For`, then `X-Real-IP`; the first present is used.
/// A trusted proxy that sends none of them is itself the client (health checks, say). A chain
/// whose deciding entry is not an IP address (`unknown`, an obfuscated `_name`, garbage) is
/// [invalid](super::KeyErrorKind::Invalid): answered with 400, never guessed around.
///
/// Addresses are grouped like [`PeerIp`](super::PeerIp)'s: IPv4-mapped IPv6 as IPv4, IPv6 by
/// prefix.
///
/// ```
/// use std::net::SocketAddr;
/// use http::Request;
/// use tollgate::key::{ClientIp, KeyExtractor};
///
/// let client_ip = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
/// let request = |peer: &str| {
///     let mut r = Request::get("/")
///         .header("x-forwarded-for", "6.6.6.6, 198.51.100.20, 10.0.0.9")
///         .body(())
///         .unwrap();
///     r.extensions_mut().insert(peer.parse::<SocketAddr>().unwrap());
///     r
/// };
/// // Through the trusted proxy: the right-most untrusted hop, not the forged left-most.
/// assert_eq!(client_ip.extract(&request("10.0.0.1:80")).unwrap().to_string(), "198.51.100.20");
/// // Straight from the internet: the header is the client's own, and ignored.
/// assert_eq!(client_ip.extract(&request("203.0.113.5:80")).unwrap().to_string(), "203.0.113.5");
/// ```
#[derive(Clone)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    sources: Vec<Forwarding>,
    prefix: IpPrefix,
}

/// A header that carries the chain of addresses a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Forwarding {
    /// `Forwarded: for=192.0.2.60, for="[2001:db8::17]:4711"` (RFC 7239).
    Forwarded,
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// `X-Real-IP: client` (one address, as nginx sets it).
    XRealIp,
}

/// A hop limit: a chain longer than this is refused rather than walked.
const MAX_HOPS: usize = 64;

impl ClientIp {
    /// Trusts proxies in the given networks, written as CIDRs (`10.0.0.0/8`, `fd00::/8`) or
    /// single addresses.
    ///
    /// # Errors
    ///
    /// [`InvalidProxy`] naming the first entry that is neither.
    pub fn trusting<S: AsRef<str>>(
        proxies: impl IntoIterator<Item = S>,
    ) -> Result<Self, InvalidProxy> {
        let trusted = proxies
            .into_iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| InvalidProxy(entry.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::new(trusted))
    }

    /// Trusts proxies in `trusted`. With none, it is the same as [`PeerIp`](super::PeerIp).
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self {
            trusted,
            sources: vec![
                Forwarding::Forwarded,
                Forwarding::XForwardedFor,
                Forwarding::XRealIp,
            ],
            prefix: IpPrefix::default(),
        }
    }

    /// Which forwarding headers to read, in order of preference.
    #[must_use]
    pub fn headers(mut self, sources: impl IntoIterator<Item = Forwarding>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }

    /// Groups IPv6 clients by another prefix (default /64).
    #[must_use]
    pub fn ipv6_prefix(mut self, prefix: IpPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// The trusted proxy networks.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client behind a trusted `peer`.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, KeyError> {
        for source in &self.sources {
            let name = source.header_name();
            let mut values = headers.get_all(&name).iter().peekable();
            if values.peek().is_none() {
                continue;
            }
            let mut hops = 0;
            for value in values.rev() {
                let value = value
                    .to_str()
                    .map_err(|_| KeyError::invalid(format!("{name} is not ASCII")))?;
                for node in source.nodes(value).rev() {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(KeyError::invalid(format!(
                            "{name} lists more than {MAX_HOPS} hops"
                        )));
                    }
                    let ip = parse_node(node).ok_or_else(|| {
                        KeyError::invalid(format!("{name} names a hop that is not an IP address"))
                    })?;
                    if !self.is_trusted(ip) {
                        return Ok(ip);
                    }
                }
            }
            // Every hop is a trusted proxy: the request started at one of them.
            return Ok(peer);
        }
        Ok(peer)
    }
}

impl<B> KeyExtractor<Request<B>> for ClientIp {
    type Key = IpAddr;

    fn extract(&self, request: &Request<B>) -> Result<IpAddr, KeyError> {
        let peer = canonical(peer_addr(request).ok_or_else(no_peer_address)?);
        let client = if self.is_trusted(peer) {
            canonical(self.client(peer, request.headers())?)
        } else {
            peer
        };
        Ok(self.prefix.group(client))
    }
}

impl fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIp")
            .field(
                "trusted",
                &self
                    .trusted
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field("sources", &self.sources)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Forwarding {
    fn header_name(self) -> HeaderName {
        match self {
            Self::Forwarded => FORWARDED,
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::XRealIp => HeaderName::from_static("x-real-ip"),
        }
    }

    /// The node names of one header value, in order.
    fn nodes(self, value: &str) -> Box<dyn DoubleEndedIterator<Item = &str> + '_> {
        match self {
            Self::Forwarded => Box::new(forwarded_for(value).into_iter()),
            Self::XForwardedFor => Box::new(value.split(',').map(str::trim)),
            Self::XRealIp => Box::new(std::iter::once(value.trim())),
        }
    }
}

/// The `for=` values of a `Forwarded` field value, one per element (an element without one
/// yields `""`, which is not an address). Commas and semicolons inside quoted strings are
/// data, not separators.
fn forwarded_for(value: &str) -> Vec<&str> {
    let mut fors = Vec::new();
    for element in split_unquoted(value, b',') {
        let found = split_unquoted(element, b';').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("for")
                .then_some(value.trim())
        });
        fors.push(found.unwrap_or(""));
    }
    fors
}

fn split_unquoted(s: &str, separator: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, b) in s.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == separator && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// An address from a forwarding node: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`, possibly quoted. `None` for anything else.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    if let Some(bracketed) = node.strip_prefix('[') {
        let (v6, port) = bracketed.split_once(']')?;
        if !(port.is_empty() || port.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Ipv6Addr::from_str(v6).ok().map(IpAddr::V6);
    }
    if let Ok(ip) = IpAddr::from_str(node) {
        return Some(ip);
    }
    let (v4, port) = node.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    Ipv4Addr::from_str(v4).ok().map(IpAddr::V4)
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A trusted-proxy entry that is neither a CIDR nor an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidProxy(pub String);

impl fmt::Display for InvalidProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trusted proxy {:?} is neither a CIDR (10.0.0.0/8) nor an IP address",
            self.0
        )
    }
}

impl std::error::Error for InvalidProxy {}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::key::KeyErrorKind;

    fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        request
    }

    fn client(ip: &ClientIp, peer: &str, headers: &[(&str, &str)]) -> Result<String, KeyErrorKind> {
        ip.extract(&request(peer, headers))
            .map(|ip| ip.to_string())
            .map_err(|e| e.kind())
    }

    fn trusting_lan() -> ClientIp {
        ClientIp::trusting(["10.0.0.0/8", "192.168.1.1", "fd00::/8"]).unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let ip = trusting_lan();
        for header in ["x-forwarded-for", "x-real-ip"] {
            assert_eq!(
                client(&ip, "203.0.113.5:1", &[(header, "1.1.1.1")]),
                Ok("203.0.113.5".into())
            );
        }
        assert_eq!(
            client(&ip, "203.0.113.5:1", &[("forwarded", "for=1.1.1.1")]),
            Ok("203.0.113.5".into())
        );
    }

    #[test]
    fn the_chain_is_walked_from_the_right() {
        let ip = trusting_lan();
        let xff = [(
            "x-forwarded-for",
            "1.1.1.1, 198.51.100.2, 10.9.9.9, 192.168.1.1",
        )];
        assert_eq!(client(&ip, "10.0.0.1:1", &xff), Ok("198.51.100.2".into()));
        // Split over several header lines, in order.
        let split = [
            ("x-forwarded-for", "1.1.1.1, 198.51.100.2"),
            ("x-forwarded-for", "10.9.9.9"),
        ];
        assert_eq!(client(&ip, "10.0.0.1:1", &split), Ok("198.51.100.2".into()));
        // All trusted: the request began at a proxy.
        assert_eq!(
            client(&ip, "10.0.0.1:1", &[("x-forwarded-for", "10.1.1.1")]),
            Ok("10.0.0.1".into())
        );
        // No header from a trusted proxy: the proxy itself.
        assert_eq!(client(&ip, "10.0.0.1:1", &[]), Ok("10.0.0.1".into()));
    }

    #[test]
    fn forwarded_header_forms() {
        let ip = trusting_lan();
        let cases = [
            ("for=198.51.100.17", "198.51.100.17"),
            ("for=\"198.51.100.17:8080\";proto=https", "198.51.100.17"),
            ("For=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::"),
            ("for=192.0.2.43, for=10.0.0.2;by=10.0.0.3", "192.0.2.43"),
            (
                "proto=http;for=\"[fd00::1]\", for=203.0.113.1, for=10.1.1.1",
                "203.0.113.1",
            ),
            ("for=1.2.3.4;host=\"a,b;c\", for=10.0.0.7", "1.2.3.4"),
        ];
        for (value, expected) in cases {
            assert_eq!(
                client(&ip, "10.0.0.1:1", &[("forwarded", value)]),
                Ok(expected.into()),
                "{value}"
            );
        }
        // Forwarded wins over X-Forwarded-For by default; the order can be changed.
        let both = [
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
        ];
        assert_eq!(client(&ip, "10.0.0.1:1", &both), Ok("198.51.100.1".into()));
        let xff_first = trusting_lan().headers([Forwarding::XForwardedFor, Forwarding::Forwarded]);
        assert_eq!(
            client(&xff_first, "10.0.0.1:1", &both),
            Ok("198.51.100.2".into())
        );
    }

    #[test]
    fn malformed_chains_are_invalid_never_guessed() {
        let ip = trusting_lan();
        for (header, value) in [
            ("x-forwarded-for", "1.1.1.1, garbage"),
            ("x-forwarded-for", "unknown"),
            ("forwarded", "for=_hidden"),
            ("forwarded", "for=unknown, for=10.0.0.3"),
            ("forwarded", "proto=https"),
            ("x-real-ip", "1.1.1.1.1"),
            ("x-forwarded-for", "[::1"),
            ("x-forwarded-for", "1.1.1.1:99999999"),
        ] {
            assert_eq!(
                client(&ip, "10.0.0.1:1", &[(header, value)]),
                Err(KeyErrorKind::Invalid),
                "{value}"
            );
        }
        // Garbage left of the client does not matter.
        assert_eq!(
            client(
                &ip,
                "10.0.0.1:1",
                &[("x-forwarded-for", "garbage, 198.51.100.9")]
            ),
            Ok("198.51.100.9".into())
        );
        let long = vec!["10.0.0.1"; 100].join(",");
        assert_eq!(
            client(&ip, "10.0.0.1:1", &[("x-forwarded-for", &long)]),
            Err(KeyErrorKind::Invalid)
        );
    }

    #[test]
    fn bad_proxy_lists_are_errors() {
        assert_eq!(
            ClientIp::trusting(["10.0.0.0/8", "not-a-net"]).unwrap_err(),
            InvalidProxy("not-a-net".into())
        );
        assert!(ClientIp::trusting(["10.0.0.0/33"]).is_err());
        assert!(ClientIp::trusting::<&str>([]).unwrap().trusted().is_empty());
    }

    #[test]
    fn mapped_peers_match_ipv4_proxies() {
        let ip = trusting_lan();
        assert_eq!(
            client(&ip, "[::ffff:10.0.0.1]:1", &[("x-real-ip", "198.51.100.3")]),
            Ok("198.51.100.3".into())
        );
    }
}
