//! Requests and keys a limit does not apply to: health checks, internal networks, allow-listed
//! API keys. An exempt request passes without a store call, and without being counted.
//!
//! ```
//! use std::net::IpAddr;
//! use tollgate::key::{Exempt, PeerIp};
//! use tollgate::{Quota, RateLimitLayer};
//!
//! let internal: ipnet::IpNet = "10.0.0.0/8".parse().unwrap();
//! let key = Exempt::keys(PeerIp::new(), move |ip: &IpAddr| internal.contains(ip));
//! let key = Exempt::requests(key, |request: &http::Request<axum::body::Body>| {
//!     request.uri().path() == "/healthz"
//! });
//! let layer = RateLimitLayer::new(Quota::per_second(5).unwrap()).key(key);
//! # drop(layer);
//! ```

use std::marker::PhantomData;

use super::{KeyError, KeyExtractor};

/// The keys of an extractor, except for the requests ([`Exempt::requests`]) or the keys
/// ([`Exempt::keys`]) a predicate exempts: those pass the limit without a store call and are
/// not counted, whatever the layer's [`MissingKey`](crate::rate_limit::MissingKey) policy.
///
/// A [`Scopes`](super::Scopes) request is exempt when one of its scopes' extractors is.
pub struct Exempt<E, P, On> {
    inner: E,
    exempt: P,
    _on: PhantomData<fn(On)>,
}

/// What an [`Exempt`] predicate looks at.
mod on {
    /// The request, before its key is extracted.
    #[derive(Debug)]
    pub struct Requests;
    /// The key, once extracted.
    #[derive(Debug)]
    pub struct Keys;
}

impl<E, P> Exempt<E, P, on::Requests> {
    /// The keys of `inner`, except for requests where `exempt(request)` holds: those pass the
    /// limit without a store call (health checks, say). The predicate runs before the key is
    /// extracted.
    pub fn requests(inner: E, exempt: P) -> Self {
        Self {
            inner,
            exempt,
            _on: PhantomData,
        }
    }
}

impl<E, P> Exempt<E, P, on::Keys> {
    /// The keys of `inner`, except those for which `exempt(key)` holds: their requests pass
    /// the limit without a store call (internal networks, allow-listed API keys).
    pub fn keys(inner: E, exempt: P) -> Self {
        Self {
            inner,
            exempt,
            _on: PhantomData,
        }
    }
}

impl<E: Clone, P: Clone, On> Clone for Exempt<E, P, On> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            exempt: self.exempt.clone(),
            _on: PhantomData,
        }
    }
}

impl<E: std::fmt::Debug, P, On> std::fmt::Debug for Exempt<E, P, On> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exempt")
            .field("inner", &self.inner)
            .field("on", &std::any::type_name::<On>())
            .finish_non_exhaustive()
    }
}

impl<Req, E, P> KeyExtractor<Req> for Exempt<E, P, on::Requests>
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

impl<Req, E, P> KeyExtractor<Req> for Exempt<E, P, on::Keys>
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
