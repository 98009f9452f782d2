//! Requests and keys a limit does not apply to: health checks, internal networks, allow-listed
//! API keys. An exempt request passes without a store call, and without being counted.
//!
//! ```
//! use std::net::IpAddr;
//! use tollgate::key::{self, PeerIp};
//! use tollgate::{Quota, RateLimitLayer};
//!
//! let internal: ipnet::IpNet = "10.0.0.0/8".parse().unwrap();
//! let key = key::exempt_keys(PeerIp::new(), move |ip: &IpAddr| internal.contains(ip));
//! let key = key::exempt_requests(key, |request: &http::Request<axum::body::Body>| {
//!     request.uri().path() == "/healthz"
//! });
//! let layer = RateLimitLayer::new(Quota::per_second(5).unwrap()).key(key);
//! # drop(layer);
//! ```

use super::{KeyError, KeyExtractor};

/// Exempts the requests for which a predicate holds; see [`exempt_requests`].
#[derive(Debug, Clone)]
pub struct ExemptRequests<E, P> {
    inner: E,
    exempt: P,
}

/// Exempts the keys for which a predicate holds; see [`exempt_keys`].
#[derive(Debug, Clone)]
pub struct ExemptKeys<E, P> {
    inner: E,
    exempt: P,
}

/// The keys of `inner`, except for requests where `exempt(request)` holds: those pass the
/// limit without a store call (health checks, say). The predicate runs before the key is
/// extracted.
pub fn exempt_requests<E, P>(inner: E, exempt: P) -> ExemptRequests<E, P> {
    ExemptRequests { inner, exempt }
}

/// The keys of `inner`, except those for which `exempt(key)` holds: their requests pass the
/// limit without a store call (internal networks, allow-listed API keys).
pub fn exempt_keys<E, P>(inner: E, exempt: P) -> ExemptKeys<E, P> {
    ExemptKeys { inner, exempt }
}

impl<Req, E, P> KeyExtractor<Req> for ExemptRequests<E, P>
where
    E: KeyExtractor<Req>,
    P: Fn(&Req) -> bool + Send + Sync + 'static,
{
    type Key = E::Key;

    fn extract(&self, request: &Req) -> Result<E::Key, KeyError> {
        if (self.exempt)(request) {
            return Err(KeyError::exempt("the request is exempt"));
        }
        self.inner.extract(request)
    }

    // No `global_key`: a slot reserved before the request exists could not be exempted.
}

impl<Req, E, P> KeyExtractor<Req> for ExemptKeys<E, P>
where
    E: KeyExtractor<Req>,
    P: Fn(&E::Key) -> bool + Send + Sync + 'static,
{
    type Key = E::Key;

    fn extract(&self, request: &Req) -> Result<E::Key, KeyError> {
        let key = self.inner.extract(request)?;
        if (self.exempt)(&key) {
            return Err(KeyError::exempt("the key is exempt"));
        }
        Ok(key)
    }
}
