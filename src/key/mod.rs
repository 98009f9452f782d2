//! How a request becomes a key: the bucket it is counted in.
//!
//! A [`KeyExtractor`] turns a request into a key, or says why it cannot. Closures
//! `Fn(&Request) -> Option<Key>` are extractors, and so are the built-ins:
//!
//! | extractor | key | for |
//! | --- | --- | --- |
//! | [`Global`] | one key for every request | a limit on the whole service (and `poll_ready` backpressure) |
//! | [`PeerIp`] | the TCP peer's address | servers reached directly |
//! | [`ClientIp`] | the client's address behind trusted proxies | servers behind load balancers |
//! | [`Header`] | a request header's value | API keys, tokens |
//! | [`Destination`] | the URI's `host:port` | outbound clients, one limit per destination |
//!
//! ```
//! use std::net::SocketAddr;
//! use http::Request;
//! use tollgate::key::{ClientIp, KeyExtractor};
//!
//! let extractor = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
//! let mut request = Request::get("/").header("x-forwarded-for", "203.0.113.9, 10.1.2.3").body(()).unwrap();
//! // What a hyper or axum server puts there: the TCP peer, here a trusted load balancer.
//! request.extensions_mut().insert("10.0.0.5:443".parse::<SocketAddr>().unwrap());
//! assert_eq!(extractor.extract(&request).unwrap().to_string(), "203.0.113.9");
//! ```
//!
//! Keys may be secrets: logs and events show them as a short keyed hash unless a layer is
//! told otherwise ([`LogKeys`]).
//!
//! When a key cannot be extracted (no peer address, a missing header, a malformed forwarded
//! chain), the extractor returns a [`KeyError`]; the rate-limit layer answers it (HTTP 400 for
//! the client's mistakes, 500 for the server's) and logs it, unless it is told to let such
//! requests through. It never panics.

pub(crate) mod client_ip;
mod destination;
mod exempt;
mod header;
mod logged;
mod peer;
#[cfg(feature = "redis")]
mod redis;
mod scopes;

use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;

pub use client_ip::{ClientIp, Forwarding, InvalidProxy};
pub use destination::Destination;
pub use exempt::Exempt;
pub use header::Header;
pub(crate) use logged::partition_hash;
pub use logged::{LogKeys, LoggedKey};
pub(crate) use peer::peer_addr;
pub(crate) use peer::IpPrefix;
pub use peer::PeerIp;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{KeyWriter, RedisKey};
pub(crate) use scopes::ScopedKeys;
pub use scopes::{ScopeKey, Scopes};

/// Turns a request into the key it is counted under.
///
/// Implemented by closures `Fn(&Req) -> Option<K>` (`None` is a missing
/// key) and by the extractors of this module.
pub trait KeyExtractor<Req>: Send + Sync + 'static {
    /// The key: hashed by the memory store, shown (with `Debug`) in hooks and logs.
    type Key: Hash + fmt::Debug + Send + Sync + 'static;

    /// The key of `request`, or why there is none.
    fn extract(&self, request: &Req) -> Result<Self::Key, KeyError>;

    /// The key of every request, when all share one: the rate-limit layer can then reserve a
    /// slot in `poll_ready`, before a request exists. Only [`Global`] has one.
    fn global_key(&self) -> Option<Self::Key> {
        None
    }
}

impl<Req, K, F> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    K: Hash + fmt::Debug + Send + Sync + 'static,
{
    type Key = K;

    fn extract(&self, request: &Req) -> Result<K, KeyError> {
        self(request).ok_or(KeyError::missing("the key extractor found no key"))
    }
}

/// One key for every request: a limit on the whole service.
///
/// It is zero-sized, so the memory store keeps its state in a few atomics instead of a map,
/// and the layer can apply backpressure in `poll_ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Global;

impl<Req> KeyExtractor<Req> for Global {
    type Key = Global;

    #[inline]
    fn extract(&self, _: &Req) -> Result<Global, KeyError> {
        Ok(Global)
    }

    fn global_key(&self) -> Option<Global> {
        Some(Global)
    }
}

/// Why a request has no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    kind: KeyErrorKind,
    detail: Cow<'static, str>,
}

/// Whose mistake a [`KeyError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyErrorKind {
    /// The request lacks what its key is made of (a header, say): the client's mistake.
    Missing,
    /// The request carries it, malformed (a forwarded chain that is not addresses): the
    /// client's mistake, or a proxy's.
    Invalid,
    /// The server cannot see it (no peer address in the request's extensions: axum's
    /// `into_make_service_with_connect_info` is missing): the server's mistake.
    Unavailable,
    /// Not a mistake: the request or its key is exempt from the limit
    /// ([`Exempt`]).
    /// The layer lets it through without a store call, whatever its
    /// [`MissingKey`](crate::rate_limit::MissingKey) policy.
    Exempt,
}

impl KeyError {
    /// The request lacks what its key is made of.
    pub fn missing(detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: KeyErrorKind::Missing,
            detail: detail.into(),
        }
    }

    /// The request carries it, malformed.
    pub fn invalid(detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: KeyErrorKind::Invalid,
            detail: detail.into(),
        }
    }

    /// The server cannot see it.
    pub fn unavailable(detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: KeyErrorKind::Unavailable,
            detail: detail.into(),
        }
    }

    /// The request or its key is exempt from the limit.
    pub fn exempt(detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: KeyErrorKind::Exempt,
            detail: detail.into(),
        }
    }

    /// Whether the request is exempt rather than missing a key.
    pub fn is_exempt(&self) -> bool {
        self.kind == KeyErrorKind::Exempt
    }

    /// Whose mistake it is.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> KeyErrorKind {
        self.kind
    }

    /// What was missing or wrong, for logs and response bodies.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Whether the client caused it (and a 4xx answer is due) rather than the server.
    pub fn is_client_error(&self) -> bool {
        self.kind != KeyErrorKind::Unavailable
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no rate-limit key: {}", self.detail)
    }
}

impl std::error::Error for KeyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closures_are_extractors() {
        let by_path = |req: &http::Request<()>| Some(req.uri().path().to_owned());
        let req = http::Request::get("/a/b").body(()).unwrap();
        assert_eq!(by_path.extract(&req).unwrap(), "/a/b");

        let never = |_: &http::Request<()>| None::<u32>;
        let err = never.extract(&req).unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Missing);
        assert!(err.is_client_error());
    }

    #[test]
    fn global_is_one_zero_sized_key() {
        assert_eq!(std::mem::size_of::<Global>(), 0);
        assert_eq!(
            <Global as KeyExtractor<()>>::global_key(&Global),
            Some(Global)
        );
        assert_eq!(Global.extract(&()), Ok(Global));
    }
}
