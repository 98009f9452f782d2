use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::Request;

use super::{KeyError, KeyExtractor};

/// The TCP peer's IP address, for servers that clients reach directly.
///
/// The address is read from the request's extensions, where servers put it: axum's
/// `ConnectInfo<SocketAddr>` (with the `axum` feature, on by default; serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), tonic's `TcpConnectInfo` (with the
/// `tonic` feature; tonic's server records it by itself), or a plain `SocketAddr` (insert it
/// in a hyper `service_fn`, as the tests do). IPv4-mapped IPv6 addresses count as IPv4, and
/// IPv6 addresses are grouped by a prefix ([`ipv6_prefix`](PeerIp::ipv6_prefix), a /64 by default), since one subscriber
/// is given at least a /64 and could otherwise rotate through 2⁶⁴ addresses.
///
/// Without an address the key is unavailable: a server
/// setup mistake, answered with 500 by the layer.
///
/// Behind a proxy every request has the proxy's address: use [`ClientIp`](super::ClientIp).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIp {
    prefix: IpPrefix,
}

impl PeerIp {
    /// Peer addresses, IPv6 grouped by /64.
    pub fn new() -> Self {
        Self::default()
    }

    /// Groups IPv6 peers by the first `bits` bits of their address (default 64: one client
    /// per /64, which a host is routinely given whole and could rotate through). At most 64:
    /// a longer prefix is taken as 64, so that no client escapes its limit by rotating within
    /// its /64.
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.prefix = IpPrefix::v6(bits.min(64)).unwrap_or_default();
        self
    }
}

impl<B> KeyExtractor<Request<B>> for PeerIp {
    type Key = IpAddr;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Result<IpAddr, KeyError> {
        peer_addr(request)
            .map(|ip| self.prefix.group(ip))
            .ok_or_else(no_peer_address)
    }
}

/// The peer address a server recorded in the request's extensions.
#[inline]
pub(crate) fn peer_addr<B>(request: &Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    #[cfg(feature = "tonic")]
    if let Some(addr) = extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
    {
        return Some(addr.ip());
    }
    extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

pub(crate) fn no_peer_address() -> KeyError {
    KeyError::unavailable(match (cfg!(feature = "axum"), cfg!(feature = "tonic")) {
        (true, true) => {
            "the request carries no peer address: on axum, serve with \
             into_make_service_with_connect_info::<SocketAddr>(); on tonic, serve over TCP; \
             elsewhere, insert a SocketAddr extension"
        }
        (true, false) => {
            "the request carries no peer address: on axum, serve with \
             into_make_service_with_connect_info::<SocketAddr>(); on tonic, enable tollgate's \
             `tonic` feature; elsewhere, insert a SocketAddr extension"
        }
        (false, true) => {
            "the request carries no peer address: on tonic, serve over TCP; on axum, enable \
             tollgate's `axum` feature; elsewhere, insert a SocketAddr extension"
        }
        (false, false) => {
            "the request carries no peer address: insert a SocketAddr extension, or enable \
             tollgate's `axum` or `tonic` feature to read theirs"
        }
    })
}

/// How many leading bits of an IPv6 address make one client: 0 to 64, 64 by default.
///
/// Longer prefixes are refused: a host is routinely given a whole /64, and could rotate
/// through it to escape a per-address limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpPrefix(u8);

impl IpPrefix {
    /// The default: one client per /64.
    pub(crate) const SUBNET_64: IpPrefix = IpPrefix(64);

    /// A prefix of `bits` bits, if `bits` is at most 64.
    pub(crate) const fn v6(bits: u8) -> Option<Self> {
        if bits <= 64 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// Maps an address to its client key: IPv4 (also when mapped into IPv6) as it is, IPv6
    /// truncated to the prefix.
    #[inline]
    pub(crate) fn group(self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(self.0)).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(v6.to_bits() & mask))
                }
            },
        }
    }
}

impl Default for IpPrefix {
    fn default() -> Self {
        Self::SUBNET_64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(addr: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(addr.parse::<SocketAddr>().unwrap());
        request
    }

    #[test]
    fn reads_the_socket_address_extension() {
        let key = PeerIp::new()
            .extract(&request_from("192.0.2.7:5555"))
            .unwrap();
        assert_eq!(key, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[cfg(feature = "axum")]
    #[test]
    fn reads_axum_connect_info() {
        let mut request = Request::new(());
        let addr: SocketAddr = "198.51.100.1:80".parse().unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        assert_eq!(PeerIp::new().extract(&request).unwrap(), addr.ip());
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn reads_tonic_connect_info() {
        let mut request = Request::new(());
        let addr: SocketAddr = "198.51.100.2:80".parse().unwrap();
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(addr),
            });
        assert_eq!(PeerIp::new().extract(&request).unwrap(), addr.ip());
    }

    #[test]
    fn no_address_is_the_servers_mistake() {
        let err = PeerIp::new().extract(&Request::new(())).unwrap_err();
        assert!(!err.is_client_error());
    }

    #[test]
    fn ipv6_is_grouped_by_prefix_and_mapped_ipv4_is_ipv4() {
        let peer = PeerIp::new();
        let a = peer
            .extract(&request_from("[2001:db8:1:2:aaaa::1]:1"))
            .unwrap();
        let b = peer
            .extract(&request_from("[2001:db8:1:2:ffff::9]:1"))
            .unwrap();
        let c = peer.extract(&request_from("[2001:db8:1:3::1]:1")).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::");
        let mapped = peer.extract(&request_from("[::ffff:192.0.2.1]:1")).unwrap();
        assert_eq!(mapped.to_string(), "192.0.2.1");
        let wide = PeerIp::new().ipv6_prefix(48);
        assert_eq!(
            wide.extract(&request_from("[2001:db8:1:3::1]:1"))
                .unwrap()
                .to_string(),
            "2001:db8:1::"
        );
        assert_eq!(IpPrefix::v6(0).unwrap().group(a).to_string(), "::");
        assert_eq!(IpPrefix::v6(65), None);
    }
}
