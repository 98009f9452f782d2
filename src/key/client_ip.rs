use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::HeaderName;
use http::{HeaderMap, Request};
use ipnet::{IpNet, Ipv4Net};

use super::peer::{no_peer_address, peer_addr};
use super::{IpPrefix, KeyError, KeyExtractor};

/// The client's IP address behind proxies you run, read from the **one** forwarding header
/// your proxy writes, and only when a trusted proxy sent it.
///
/// Forwarding headers are written by whoever sends the request. A proxy rewrites or appends
/// to the one header it is configured to write and passes every other one through exactly as
/// the client wrote it. So:
///
/// - if the TCP peer is not one of the trusted proxies, the peer *is* the client, and every
///   forwarding header is ignored;
/// - if it is, only the header named by [`header`](Self::header) is read (by default
///   [`X-Forwarded-For`](Forwarding::XForwardedFor)); any other forwarding header is ignored,
///   whatever it says;
/// - a chain (`X-Forwarded-For`, `Forwarded`) is walked **from the right**, skipping trusted
///   proxies; the first address that is not a trusted proxy is the client. The left-most
///   entry is never believed just for being first. `X-Real-IP` is a single address.
///
/// Which header to name, for common proxies:
///
/// | proxy | configuration | header |
/// | --- | --- | --- |
/// | nginx | `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;` | [`XForwardedFor`](Forwarding::XForwardedFor) |
/// | nginx | `proxy_set_header X-Real-IP $remote_addr;` (and no `X-Forwarded-For`) | [`XRealIp`](Forwarding::XRealIp) |
/// | HAProxy | `option forwardfor` | [`XForwardedFor`](Forwarding::XForwardedFor) |
/// | HAProxy | `http-request set-header Forwarded for=%[src]` | [`Forwarded`](Forwarding::Forwarded) |
/// | Envoy | `use_remote_address: true` (appends to `x-forwarded-for`) | [`XForwardedFor`](Forwarding::XForwardedFor) |
/// | AWS ALB, Google Cloud LB, Azure Front Door | append the peer to `X-Forwarded-For` | [`XForwardedFor`](Forwarding::XForwardedFor) |
///
/// `X-Forwarded-For` is the default because nearly every proxy and load balancer appends to
/// it, and the walk from the right is then correct whatever the client sent. Name another
/// header only if your proxy writes that one: a header your proxy does not write is the
/// client's to choose, and nothing warns about it (nginx writing only `X-Real-IP` to a server
/// left at the default lets a client pick its address with `X-Forwarded-For`).
///
/// List only the proxies themselves in the trusted networks. Any connection from a trusted
/// address is taken for a proxy, so a client that can connect *from* a trusted address (a
/// process on the proxy's own host, or anything inside a trusted CIDR wider than the proxies)
/// is believed when it writes the chain: behind nginx on 127.0.0.1 with
/// `TRUSTED_PROXIES=127.0.0.1`, a local process that sends `X-Forwarded-For: 6.6.6.6` to nginx
/// is counted as 6.6.6.6. Where local clients are a concern, have the proxy *replace* the
/// header (`X-Real-IP $remote_addr`, read with [`Forwarding::XRealIp`]) rather than append to
/// it.
///
/// Every hop is normalised before the trust check: IPv4-mapped IPv6 addresses become IPv4,
/// IPv6 zone ids (`fe80::1%eth0`) are dropped, ports (`192.0.2.1:8080`, `[2001:db8::1]:443`)
/// must be 0 to 65535. A chain from a trusted proxy whose deciding entry is not an address
/// (`unknown`, an obfuscated `_name`, garbage), that lists more than 32 hops, or an
/// `X-Real-IP` with more than one address, is invalid: the
/// layer answers 400 with the reason in its `tracing` event, never guessing around it.
/// `Forwarded` is read by RFC 7239's grammar: an unclosed quote, a stray character, a
/// parameter repeated within an element or an element of more than 8 parameters is
/// invalid too (a quote left open once swallowed the element nginx appended after it). A
/// trusted proxy that sends no forwarding header is itself the client (health checks, say);
/// since all its clients would then share one limit, it is warned about (WARN) once a minute
/// and counted in `tollgate_client_ip_header_missing_total` ([`metrics`](crate::metrics)).
///
/// `tests-integration/tests/proxy.rs` runs a real nginx in front of a real server in each configuration of the
/// table above and attacks it with forged `Forwarded`, `X-Forwarded-For` and `X-Real-IP`:
/// exactly the limit passes, and honest clients behind the proxy keep their own buckets. The
/// example server takes the trusted proxies and the header from its environment:
///
/// ```text
/// TRUSTED_PROXIES=127.0.0.1 cargo run --example server                            # nginx: $proxy_add_x_forwarded_for
/// TRUSTED_PROXIES=10.0.0.0/8 CLIENT_IP_HEADER=x-real-ip cargo run --example server  # nginx: X-Real-IP $remote_addr only
/// ```
///
/// Behind a proxy, every request reaches the server from the proxy's address, so a route
/// guarded by "loopback only" answers the world: serve operator routes as the
/// [`admin`](crate::admin) module says.
///
/// Addresses are grouped like [`PeerIp`](super::PeerIp)'s: IPv6 by prefix (/64 by default).
///
/// ```
/// use std::net::SocketAddr;
/// use http::Request;
/// use tollgate::key::{ClientIp, Forwarding, KeyExtractor};
///
/// let client_ip = ClientIp::trusting(["10.0.0.0/8"]).unwrap(); // reads X-Forwarded-For
/// let request = |peer: &str| {
///     let mut r = Request::get("/")
///         .header("x-forwarded-for", "6.6.6.6, 198.51.100.20, 10.0.0.9")
///         .header("forwarded", "for=7.7.7.7") // not the header the proxy writes: ignored
///         .body(())
///         .unwrap();
///     r.extensions_mut().insert(peer.parse::<SocketAddr>().unwrap());
///     r
/// };
/// // Through the trusted proxy: the right-most untrusted hop, not the forged left-most.
/// assert_eq!(client_ip.extract(&request("10.0.0.1:80")).unwrap().to_string(), "198.51.100.20");
/// // Straight from the internet: the headers are the client's own, and ignored.
/// assert_eq!(client_ip.extract(&request("203.0.113.5:80")).unwrap().to_string(), "203.0.113.5");
/// // A deployment whose proxy writes `Forwarded` names it.
/// let rfc7239 = ClientIp::trusting(["10.0.0.0/8"]).unwrap().header(Forwarding::Forwarded);
/// assert_eq!(rfc7239.extract(&request("10.0.0.1:80")).unwrap().to_string(), "7.7.7.7");
/// ```
#[derive(Clone)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: Forwarding,
    prefix: IpPrefix,
}

/// The forwarding header a deployment's proxy writes: the only one [`ClientIp`] reads.
///
/// Parses from its header name, case-insensitively (`"x-forwarded-for"`, `"forwarded"`,
/// `"x-real-ip"`), for configuration read from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Forwarding {
    /// `X-Forwarded-For: client, proxy1, proxy2`, walked from the right. The default.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=192.0.2.60, for="[2001:db8::17]:4711"` (RFC 7239), walked from the
    /// right.
    Forwarded,
    /// `X-Real-IP: client`: one address, as nginx sets it with `$remote_addr`.
    XRealIp,
}

/// The longest forwarding chain read; a longer one is refused rather than walked.
pub(crate) const MAX_HOPS: usize = 32;

impl ClientIp {
    /// Trusts proxies in the given networks, written as CIDRs (`10.0.0.0/8`, `fd00::/8`) or
    /// single addresses, and reads `X-Forwarded-For` from them (see [`header`](Self::header)).
    ///
    /// # Errors
    ///
    /// [`InvalidProxy::Network`] naming the first entry that is neither.
    pub fn trusting<S: AsRef<str>>(
        proxies: impl IntoIterator<Item = S>,
    ) -> Result<Self, InvalidProxy> {
        let trusted = proxies
            .into_iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map_err(|_| InvalidProxy::Network(entry.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::new(trusted))
    }

    /// Trusts proxies in `trusted` and reads `X-Forwarded-For` from them. With none, it is the
    /// same as [`PeerIp`](super::PeerIp).
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self {
            trusted: trusted.into_iter().map(canonical_net).collect(),
            header: Forwarding::default(),
            prefix: IpPrefix::default(),
        }
    }

    /// The forwarding header your proxy writes; no other is read. Default
    /// [`Forwarding::XForwardedFor`].
    #[must_use]
    pub fn header(mut self, header: Forwarding) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by the first `bits` bits of their address (default 64: one client
    /// per /64, which a host is routinely given whole and could rotate through). At most 64:
    /// a longer prefix is taken as 64, so that no client escapes its limit by rotating within
    /// its /64.
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.prefix = IpPrefix::v6(bits.min(64)).unwrap_or_default();
        self
    }

    /// The trusted proxy networks.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// The forwarding header read from trusted proxies.
    pub fn forwarding(&self) -> Forwarding {
        self.header
    }

    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client behind a trusted `peer`.
    pub(crate) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, KeyError> {
        let name = self.header.header_name();
        let mut hops = Hops::default();
        for value in headers.get_all(&name) {
            let value = value
                .to_str()
                .map_err(|_| KeyError::invalid(format!("{name} is not visible ASCII")))?;
            self.header
                .nodes(value, &mut hops)
                .map_err(|problem| KeyError::invalid(format!("{name} {problem}")))?;
        }
        let hops = hops.as_slice();
        if hops.is_empty() {
            // No forwarding header: the request began at the proxy (a health check), or the
            // proxy writes another header than the one named here, and then every client
            // behind it shares the proxy's key. Said once a minute per proxy (and at most once a
            // second in all, bursts of ten), outside the log budget: a flood must not drown a
            // misconfiguration.
            crate::metrics::unforwarded(self.header.header_name_str());
            if UNFORWARDED.due(peer) {
                tracing::warn!(
                    target: "tollgate::key",
                    proxy = %peer,
                    header = self.header.header_name_str(),
                    "a trusted proxy sent a request without the forwarding header read: it is \
                     keyed as the proxy itself, and if the proxy forwards clients this way they \
                     all share its limit; make the proxy write that header, or name the header \
                     it writes (ClientIp::header; CLIENT_IP_HEADER in the example server). Said \
                     once a minute per proxy"
                );
            }
            return Ok(peer);
        }
        if self.header == Forwarding::XRealIp && hops.len() > 1 {
            return Err(KeyError::invalid(format!(
                "{name} carries {} addresses where the proxy sets one",
                hops.len()
            )));
        }
        let mut origin = peer;
        for node in hops.iter().rev() {
            let ip = parse_node(node).ok_or_else(|| {
                KeyError::invalid(format!("{name} names a hop that is not an IP address"))
            })?;
            if !self.is_trusted(ip) {
                return Ok(ip);
            }
            origin = ip;
        }
        // Every hop is a trusted proxy: the request began at the left-most of them.
        Ok(origin)
    }
}

/// The nodes of a forwarding chain, at most [`MAX_HOPS`]: no allocation however long the
/// header a client sends.
#[derive(Default)]
pub(crate) struct Hops<'a> {
    nodes: [&'a str; MAX_HOPS],
    len: usize,
}

impl<'a> Hops<'a> {
    /// Adds a node, unless the chain is already [`MAX_HOPS`] long.
    fn push(&mut self, node: &'a str) -> Result<(), Malformed> {
        let slot = self.nodes.get_mut(self.len).ok_or(Malformed::TooLong)?;
        *slot = node;
        self.len += 1;
        Ok(())
    }

    pub(crate) fn as_slice(&self) -> &[&'a str] {
        &self.nodes[..self.len]
    }
}

impl<B> KeyExtractor<Request<B>> for ClientIp {
    type Key = IpAddr;

    fn extract(&self, request: &Request<B>) -> Result<IpAddr, KeyError> {
        let peer = peer_addr(request)
            .ok_or_else(no_peer_address)?
            .to_canonical();
        let client = if self.is_trusted(peer) {
            self.client(peer, request.headers())?
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
            .field("header", &self.header)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Forwarding {
    fn header_name_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::XForwardedFor => "x-forwarded-for",
            Self::XRealIp => "x-real-ip",
        }
    }

    /// The header's name.
    pub fn header_name(self) -> HeaderName {
        HeaderName::from_static(self.header_name_str())
    }

    /// Adds the node names of one header value to `hops`, in order; what is wrong with the
    /// value otherwise.
    pub(crate) fn nodes<'a>(self, value: &'a str, hops: &mut Hops<'a>) -> Result<(), Malformed> {
        match self {
            Self::Forwarded => forwarded_for(value, hops),
            // Commas cannot be quoted in these headers: nothing can hide an element, and
            // every element right of the client is checked when the walk reaches it.
            Self::XForwardedFor | Self::XRealIp => {
                value.split(',').try_for_each(|node| hops.push(node.trim()))
            }
        }
    }
}

/// Which trusted proxies were last warned about for sending no forwarding header, and when:
/// 256 slots picked by the proxy's address, so that a fleet of proxies is told about once a
/// minute each (more often only when two share a slot, and the budget caps that).
static UNFORWARDED: Unforwarded = Unforwarded {
    slots: [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 256],
    every: 60_000_000_000,
    any: crate::logs::Budget::new(1, 10),
};

struct Unforwarded {
    /// (a hash of the proxy's address, when it was last warned about plus one).
    slots: [(AtomicU64, AtomicU64); 256],
    every: u64,
    /// At most one warning a second whatever the proxies, bursts of ten.
    any: crate::logs::Budget,
}

impl Unforwarded {
    /// Whether `proxy` is to be warned about now: not within a minute (unless another proxy
    /// took its slot since), and within the budget, which is asked first so that a proxy
    /// the budget turns away is not marked as told.
    fn due(&self, proxy: IpAddr) -> bool {
        let now = crate::logs::now();
        !self.told(proxy, now) && self.any.take(now) && self.mark(proxy, now)
    }

    fn slot(proxy: IpAddr) -> (u64, usize) {
        let bits = match proxy {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        let hash = ((bits as u64) ^ ((bits >> 64) as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (hash, (hash >> 56) as usize)
    }

    /// Whether `proxy` was warned about within the last minute.
    fn told(&self, proxy: IpAddr, now: u64) -> bool {
        let (hash, slot) = Self::slot(proxy);
        let (owner, last) = &self.slots[slot];
        let seen = last.load(Ordering::Relaxed);
        owner.load(Ordering::Relaxed) == hash && seen != 0 && now.saturating_sub(seen) < self.every
    }

    /// Marks `proxy` as warned about at `now`; false when another thread just did.
    fn mark(&self, proxy: IpAddr, now: u64) -> bool {
        let (hash, slot) = Self::slot(proxy);
        let (owner, last) = &self.slots[slot];
        let seen = last.load(Ordering::Relaxed);
        owner.store(hash, Ordering::Relaxed);
        last.compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl FromStr for Forwarding {
    type Err = InvalidProxy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let name = name.trim();
        [Self::XForwardedFor, Self::Forwarded, Self::XRealIp]
            .into_iter()
            .find(|header| header.header_name().as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| InvalidProxy::Header(name.to_owned()))
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.header_name().as_str())
    }
}

/// What is wrong with a forwarding header, for the 400's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    TooLong,
    Unterminated,
    BadEscape,
    Stray(u8),
    NoValue,
    Repeated,
    TooManyPairs,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong => write!(f, "lists more than {MAX_HOPS} hops"),
            Self::Unterminated => f.write_str("has a quoted-string that is never closed"),
            Self::BadEscape => f.write_str("has a backslash that escapes nothing"),
            Self::Stray(b) => write!(f, "has a stray {:?} where it cannot be", char::from(*b)),
            Self::NoValue => f.write_str("has a parameter without `=value`"),
            Self::Repeated => f.write_str("repeats a parameter within one element"),
            Self::TooManyPairs => f.write_str("has an element of more than 8 parameters"),
        }
    }
}

/// Adds the `for=` value of each element of a `Forwarded` field value to `hops` (`""` for an
/// element without one, which is not an address), reading the whole value by RFC 7239's
/// grammar: `element *( "," element )`, `element = [pair] *( ";" [pair] )`,
/// `pair = token "=" ( token / quoted-string )`, with optional spaces around `,` and `;`.
///
/// Anything the grammar does not allow is refused, never guessed around: a quoted-string left
/// open (`for=6.6.6.6;by="`) would otherwise swallow the element a proxy appended after it,
/// and the client would pick its own address. Empty elements are skipped (nginx's
/// `"$http_forwarded, for=$remote_addr"` begins with one when the client sent none).
/// Unquoted values may hold `:`, `[` and `]` besides token characters (`for=[2001:db8::1]:80`,
/// as some proxies write it unquoted): none of them can end an element.
fn forwarded_for<'a>(value: &'a str, hops: &mut Hops<'a>) -> Result<(), Malformed> {
    let bytes = value.as_bytes();
    let mut at = 0;
    loop {
        // One element: pairs separated by `;`, up to a `,` or the end.
        let mut for_value = None;
        let mut names_seen: [&str; 8] = [""; 8];
        let mut names = 0;
        let mut empty = true;
        loop {
            at = skip_spaces(bytes, at);
            if at < bytes.len() && bytes[at] != b';' && bytes[at] != b',' {
                empty = false;
                let name_start = at;
                while at < bytes.len() && is_tchar(bytes[at]) {
                    at += 1;
                }
                let name = &value[name_start..at];
                if name.is_empty() {
                    return Err(Malformed::Stray(bytes[at]));
                }
                if bytes.get(at) != Some(&b'=') {
                    return Err(match bytes.get(at) {
                        None | Some(b';' | b',' | b' ' | b'\t') => Malformed::NoValue,
                        Some(&b) => Malformed::Stray(b),
                    });
                }
                at += 1;
                let (pair_value, next) = pair_value(value, at)?;
                at = next;
                if names_seen[..names]
                    .iter()
                    .any(|seen| seen.eq_ignore_ascii_case(name))
                {
                    return Err(Malformed::Repeated);
                }
                // Past eight names a repeat went unseen, and a second `for` replaced the
                // first (found by the fuzz target `forwarded`): an element of more pairs than
                // are remembered is refused (RFC 7239 defines four parameters).
                let slot = names_seen.get_mut(names).ok_or(Malformed::TooManyPairs)?;
                *slot = name;
                names += 1;
                if name.eq_ignore_ascii_case("for") {
                    for_value = Some(pair_value);
                }
                at = skip_spaces(bytes, at);
            }
            match bytes.get(at) {
                Some(b';') => at += 1,
                Some(b',') | None => break,
                Some(&b) => return Err(Malformed::Stray(b)),
            }
        }
        if !empty {
            hops.push(for_value.unwrap_or(""))?;
        }
        match bytes.get(at) {
            Some(b',') => at += 1,
            _ => return Ok(()),
        }
    }
}

/// The value of a pair starting at `at` (a token, or the inside of a quoted-string), and
/// where it ends.
fn pair_value(value: &str, mut at: usize) -> Result<(&str, usize), Malformed> {
    let bytes = value.as_bytes();
    if bytes.get(at) != Some(&b'"') {
        let start = at;
        while at < bytes.len() && (is_tchar(bytes[at]) || matches!(bytes[at], b':' | b'[' | b']')) {
            at += 1;
        }
        return match (at == start, bytes.get(at)) {
            (true, Some(&b)) if !matches!(b, b';' | b',' | b' ' | b'\t') => {
                Err(Malformed::Stray(b))
            }
            (true, _) => Err(Malformed::NoValue),
            _ => Ok((&value[start..at], at)),
        };
    }
    let start = at + 1;
    at = start;
    loop {
        match bytes.get(at) {
            None => return Err(Malformed::Unterminated),
            Some(b'"') => return Ok((&value[start..at], at + 1)),
            Some(b'\\') => match bytes.get(at + 1) {
                Some(&b) if b == b'\t' || (b' '..=b'~').contains(&b) => at += 2,
                _ => return Err(Malformed::BadEscape),
            },
            Some(&b) if b == b'\t' || (b' '..=b'~').contains(&b) => at += 1,
            Some(&b) => return Err(Malformed::Stray(b)),
        }
    }
}

fn skip_spaces(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    at
}

/// A token character (RFC 9110's `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An address from a forwarding node, normalised: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`, `fe80::1%eth0` (a `Forwarded` value comes here
/// unquoted). IPv4-mapped IPv6 becomes IPv4; zone ids are dropped. `None` for anything else,
/// a port above 65535 included.
pub(crate) fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    let ip = if let Some(bracketed) = node.strip_prefix('[') {
        let (v6, port) = bracketed.split_once(']')?;
        if !(port.is_empty() || port.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        IpAddr::V6(parse_v6(v6)?)
    } else if node.bytes().filter(|&b| b == b':').count() > 1 {
        // Bare IPv6 has at least two colons; `v4:port` has one.
        IpAddr::V6(parse_v6(node)?)
    } else {
        let (v4, port) = match node.split_once(':') {
            Some((v4, port)) => (v4, Some(port)),
            None => (node, None),
        };
        if port.is_some_and(|port| !is_port(port)) {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from_str(v4).ok()?)
    };
    Some(ip.to_canonical())
}

/// An IPv6 address without its zone id (`%eth0`, or `%25eth0` as in URIs).
fn parse_v6(text: &str) -> Option<Ipv6Addr> {
    let (address, zone) = text.split_once('%').unwrap_or((text, ""));
    if text.contains('%') && zone.is_empty() {
        return None;
    }
    Ipv6Addr::from_str(address).ok()
}

fn is_port(port: &str) -> bool {
    port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}

/// IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) as the IPv4 networks they are, so that
/// normalised hops match them.
fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// A proxy setting that is not valid, naming the value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidProxy {
    /// A trusted-proxy entry that is neither a CIDR nor an IP address.
    Network(String),
    /// A forwarding header name that is none of `x-forwarded-for`, `forwarded`, `x-real-ip`.
    Header(String),
}

impl fmt::Display for InvalidProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network(entry) => write!(
                f,
                "trusted proxy {entry:?} is neither a CIDR (10.0.0.0/8) nor an IP address"
            ),
            Self::Header(name) => write!(
                f,
                "forwarding header {name:?} is none of x-forwarded-for, forwarded, x-real-ip"
            ),
        }
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
        for header in [
            Forwarding::XForwardedFor,
            Forwarding::XRealIp,
            Forwarding::Forwarded,
        ] {
            let ip = trusting_lan().header(header);
            let headers = [
                ("x-forwarded-for", "1.1.1.1"),
                ("x-real-ip", "1.1.1.1"),
                ("forwarded", "for=1.1.1.1"),
            ];
            assert_eq!(
                client(&ip, "203.0.113.5:1", &headers),
                Ok("203.0.113.5".into())
            );
        }
    }

    #[test]
    fn only_the_named_header_is_read() {
        // What a client behind nginx sends: nginx appends to X-Forwarded-For and passes the
        // client's own Forwarded and X-Real-IP through untouched.
        let through_nginx = [
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "7.7.7.7"),
            ("x-forwarded-for", "8.8.8.8, 198.51.100.7"),
        ];
        let xff = trusting_lan();
        assert_eq!(xff.forwarding(), Forwarding::XForwardedFor);
        assert_eq!(
            client(&xff, "10.0.0.1:1", &through_nginx),
            Ok("198.51.100.7".into())
        );
        // A proxy that writes only X-Real-IP: the client's X-Forwarded-For is ignored.
        let real_ip = trusting_lan().header(Forwarding::XRealIp);
        let only_real_ip = [
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "8.8.8.8"),
            ("x-real-ip", "198.51.100.8"),
        ];
        assert_eq!(
            client(&real_ip, "10.0.0.1:1", &only_real_ip),
            Ok("198.51.100.8".into())
        );
        // The named header absent: the proxy itself, not another header's claim.
        assert_eq!(
            client(&real_ip, "10.0.0.1:1", &[("x-forwarded-for", "8.8.8.8")]),
            Ok("10.0.0.1".into())
        );
    }

    #[test]
    fn header_names_parse() {
        assert_eq!("X-Forwarded-For".parse(), Ok(Forwarding::XForwardedFor));
        assert_eq!(" forwarded".parse(), Ok(Forwarding::Forwarded));
        assert_eq!("x-real-ip".parse(), Ok(Forwarding::XRealIp));
        assert_eq!(
            "x-client-ip".parse::<Forwarding>(),
            Err(InvalidProxy::Header("x-client-ip".into()))
        );
        assert_eq!(Forwarding::XRealIp.to_string(), "x-real-ip");
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
        // All trusted: the request began at the left-most proxy.
        assert_eq!(
            client(
                &ip,
                "10.0.0.1:1",
                &[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]
            ),
            Ok("10.1.1.1".into())
        );
        // No header from a trusted proxy: the proxy itself.
        assert_eq!(client(&ip, "10.0.0.1:1", &[]), Ok("10.0.0.1".into()));
    }

    #[test]
    fn hops_are_normalised_before_the_trust_check() {
        let ip = trusting_lan();
        // A trusted proxy written as IPv4-mapped IPv6, or with a port, is still trusted.
        for proxy in ["::ffff:10.9.9.9", "10.9.9.9:8080", "[::ffff:10.9.9.9]:1"] {
            let xff = format!("198.51.100.2, {proxy}");
            assert_eq!(
                client(&ip, "10.0.0.1:1", &[("x-forwarded-for", &xff)]),
                Ok("198.51.100.2".into()),
                "{proxy}"
            );
        }
        // Zone ids are dropped, IPv6 grouped by /64.
        assert_eq!(
            client(
                &ip,
                "10.0.0.1:1",
                &[("x-forwarded-for", "2001:db8::1%eth0")]
            ),
            Ok("2001:db8::".into())
        );
        assert_eq!(
            client(
                &ip,
                "10.0.0.1:1",
                &[("x-forwarded-for", "fd00::1%25eth0, 198.51.100.3")]
            ),
            Ok("198.51.100.3".into())
        );
        // Trusted networks written as mapped IPv6 match IPv4 hops.
        let mapped = ClientIp::trusting(["::ffff:10.0.0.0/104"]).unwrap();
        assert_eq!(mapped.trusted()[0].to_string(), "10.0.0.0/8");
        assert_eq!(
            client(
                &mapped,
                "10.0.0.1:1",
                &[("x-forwarded-for", "198.51.100.4")]
            ),
            Ok("198.51.100.4".into())
        );
    }

    #[test]
    fn forwarded_header_forms() {
        let ip = trusting_lan().header(Forwarding::Forwarded);
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
    }

    #[test]
    fn malformed_chains_are_invalid_never_guessed() {
        for (header, value) in [
            (Forwarding::XForwardedFor, "1.1.1.1, garbage"),
            (Forwarding::XForwardedFor, "unknown"),
            (Forwarding::XForwardedFor, ""),
            (Forwarding::XForwardedFor, "1.1.1.1,"),
            (Forwarding::Forwarded, "for=_hidden"),
            (Forwarding::Forwarded, "for=unknown, for=10.0.0.3"),
            (Forwarding::Forwarded, "proto=https"),
            (Forwarding::XRealIp, "1.1.1.1.1"),
            (Forwarding::XRealIp, "1.1.1.1, 2.2.2.2"),
            (Forwarding::XForwardedFor, "[::1"),
            (Forwarding::XForwardedFor, "1.1.1.1:99999999"),
            (Forwarding::XForwardedFor, "1.1.1.1:65536"),
            (Forwarding::XForwardedFor, "[2001:db8::1]:70000"),
            (Forwarding::XForwardedFor, "1.1.1.1:"),
            (Forwarding::XForwardedFor, "1.1.1.1:-1"),
            (Forwarding::XForwardedFor, "fe80::1%"),
        ] {
            let ip = trusting_lan().header(header);
            assert_eq!(
                client(&ip, "10.0.0.1:1", &[(header.header_name().as_str(), value)]),
                Err(KeyErrorKind::Invalid),
                "{value}"
            );
        }
        let ip = trusting_lan();
        // Ports up to 65535 are fine.
        assert_eq!(
            client(
                &ip,
                "10.0.0.1:1",
                &[("x-forwarded-for", "198.51.100.9:65535")]
            ),
            Ok("198.51.100.9".into())
        );
        // Garbage left of the client does not matter.
        assert_eq!(
            client(
                &ip,
                "10.0.0.1:1",
                &[("x-forwarded-for", "garbage, 198.51.100.9")]
            ),
            Ok("198.51.100.9".into())
        );
        // Two X-Real-IP lines: not what a proxy sends.
        let real_ip = trusting_lan().header(Forwarding::XRealIp);
        assert_eq!(
            client(
                &real_ip,
                "10.0.0.1:1",
                &[("x-real-ip", "1.1.1.1"), ("x-real-ip", "2.2.2.2")]
            ),
            Err(KeyErrorKind::Invalid)
        );
    }

    #[test]
    fn forwarded_is_read_by_its_grammar_or_refused() {
        let ip = trusting_lan().header(Forwarding::Forwarded);
        // What nginx's `"$http_forwarded, for=$remote_addr"` makes of what clients send: the
        // proxy's element must never be swallowed by the client's.
        for (value, expected) in [
            (", for=198.51.100.1", Ok("198.51.100.1")),
            ("for=6.6.6.6, for=198.51.100.1", Ok("198.51.100.1")),
            ("for=6.6.6.1;by=\", for=198.51.100.1", Err("never closed")),
            ("for=\"6.6.6.1, for=198.51.100.1", Err("never closed")),
            (
                "for=6.6.6.1;proto=\"http\\\", for=198.51.100.1",
                Err("never closed"),
            ),
            (
                "for=6.6.6.1, for=\"[::1, for=198.51.100.1",
                Err("never closed"),
            ),
            ("for=6.6.6.1;proto=\"a\\", Err("escapes nothing")),
            ("for=6.6.6.1\"x\", for=198.51.100.1", Err("stray")),
            ("for=\"6.6.6.1\"x, for=198.51.100.1", Err("stray")),
            ("for=6.6.6.1 for=7.7.7.7, for=198.51.100.1", Err("stray")),
            ("for=6.6.6.1;for=7.7.7.7, for=198.51.100.1", Err("repeats")),
            // Found by the fuzz target `forwarded`: a repeat after eight names went unseen,
            // and the second `for` was taken.
            (
                "a=1;b=2;c=3;d=4;e=5;f=6;g=7;h=8;for=1.1.1.1;for=2.2.2.2",
                Err("more than 8 parameters"),
            ),
            (
                "a=1;b=2;c=3;d=4;e=5;f=6;g=7;for=198.51.100.1",
                Ok("198.51.100.1"),
            ),
            ("for, for=198.51.100.1", Err("without")),
            ("for=, for=198.51.100.1", Err("without")),
            ("=x, for=198.51.100.1", Err("stray")),
            (
                "for=6.6.6.1;;proto=http , for=198.51.100.1",
                Ok("198.51.100.1"),
            ),
            ("for=\"a\\\"b\", for=198.51.100.1", Ok("198.51.100.1")),
            ("for=[2001:db8::1]:80", Ok("2001:db8::")),
            (" , ,for=198.51.100.2 ,", Ok("198.51.100.2")),
        ] {
            let got = ip.extract(&request("10.0.0.1:1", &[("forwarded", value)]));
            match (got, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got.to_string(), expected, "{value}"),
                (Err(error), Err(reason)) => {
                    assert_eq!(error.kind(), KeyErrorKind::Invalid, "{value}");
                    assert!(error.detail().contains(reason), "{value}: {error}");
                }
                (got, expected) => panic!("{value}: {got:?}, expected {expected:?}"),
            }
        }
        // Quotes are Forwarded's alone: a quoted X-Forwarded-For hop is no address.
        let xff = trusting_lan();
        assert_eq!(
            client(
                &xff,
                "10.0.0.1:1",
                &[("x-forwarded-for", "\"198.51.100.3\"")]
            ),
            Err(KeyErrorKind::Invalid)
        );
    }

    #[test]
    fn long_chains_are_refused() {
        let ip = trusting_lan();
        let fits = vec!["198.51.100.1"; MAX_HOPS].join(",");
        assert_eq!(
            client(&ip, "10.0.0.1:1", &[("x-forwarded-for", &fits)]),
            Ok("198.51.100.1".into())
        );
        let long = vec!["198.51.100.1"; MAX_HOPS + 1].join(",");
        let error = ip
            .extract(&request("10.0.0.1:1", &[("x-forwarded-for", &long)]))
            .unwrap_err();
        assert_eq!(error.kind(), KeyErrorKind::Invalid);
        assert!(error.detail().contains("more than 32 hops"), "{error}");
        // Over several lines too.
        let half = vec!["198.51.100.1"; MAX_HOPS / 2 + 1].join(",");
        assert_eq!(
            client(
                &ip,
                "10.0.0.1:1",
                &[("x-forwarded-for", &half), ("x-forwarded-for", &half)]
            ),
            Err(KeyErrorKind::Invalid)
        );
    }

    #[test]
    fn bad_proxy_lists_are_errors() {
        assert_eq!(
            ClientIp::trusting(["10.0.0.0/8", "not-a-net"]).unwrap_err(),
            InvalidProxy::Network("not-a-net".into())
        );
        assert!(ClientIp::trusting(["10.0.0.0/33"]).is_err());
        assert!(ClientIp::trusting::<&str>([]).unwrap().trusted().is_empty());
    }

    #[test]
    fn mapped_peers_match_ipv4_proxies() {
        let ip = trusting_lan().header(Forwarding::XRealIp);
        assert_eq!(
            client(&ip, "[::ffff:10.0.0.1]:1", &[("x-real-ip", "198.51.100.3")]),
            Ok("198.51.100.3".into())
        );
    }
}
