use std::borrow::Borrow;

use crate::Quotas;

/// Picks the quotas that apply to a request: the same for all ([`Quotas`]), by tier
/// ([`Tiers`]), or anything a closure `Fn(&Key, &Request) -> Quotas` decides.
pub trait QuotaPolicy<K, Req>: Send + Sync + 'static {
    /// The quotas handed out: borrowed when they are fixed, owned when computed.
    type Quotas<'a>: Borrow<Quotas>
    where
        Self: 'a;

    /// The quotas for `request`, whose key is `key`.
    fn quotas<'a>(&'a self, key: &K, request: &Req) -> Self::Quotas<'a>;

    /// The quotas every request gets, when they never vary. A global limit in wait mode needs
    /// them to reserve a slot in `poll_ready`, before there is a request.
    fn fixed(&self) -> Option<&Quotas> {
        None
    }
}

impl<K, Req> QuotaPolicy<K, Req> for Quotas {
    type Quotas<'a> = &'a Quotas;

    #[inline]
    fn quotas<'a>(&'a self, _: &K, _: &Req) -> &'a Quotas {
        self
    }

    fn fixed(&self) -> Option<&Quotas> {
        Some(self)
    }
}

impl<K, Req, F> QuotaPolicy<K, Req> for F
where
    F: Fn(&K, &Req) -> Quotas + Send + Sync + 'static,
{
    type Quotas<'a> = Quotas;

    fn quotas(&self, key: &K, request: &Req) -> Quotas {
        self(key, request)
    }
}

/// Quotas by key: keys equal to a tier's value get that tier's quotas, all others the
/// default. For the free-versus-paid API keys of most APIs.
///
/// ```
/// use tollgate::rate_limit::Tiers;
/// use tollgate::{Quota, Quotas};
///
/// let free = Quotas::from(Quota::per_minute(2).unwrap());
/// let paid = Quotas::from(Quota::per_minute(100).unwrap());
/// let tiers = Tiers::new(free).tier("premium-demo", paid);
/// assert_eq!(tiers.for_key(&"premium-demo").as_slice()[0].burst(), 100);
/// assert_eq!(tiers.for_key(&"someone-else").as_slice()[0].burst(), 2);
/// ```
///
/// Tiers are looked up in order; for many keys, use a closure over your own map.
#[derive(Debug, Clone)]
pub struct Tiers<T> {
    default: Quotas,
    tiers: Vec<(T, Quotas)>,
}

impl<T> Tiers<T> {
    /// Every key gets `default` until tiers are added.
    pub fn new(default: impl Into<Quotas>) -> Self {
        Self {
            default: default.into(),
            tiers: Vec::new(),
        }
    }

    /// Keys equal to `value` get `quotas`.
    #[must_use]
    pub fn tier(mut self, value: T, quotas: impl Into<Quotas>) -> Self {
        self.tiers.push((value, quotas.into()));
        self
    }

    /// The quotas of `key`.
    pub fn for_key<K: PartialEq<T> + ?Sized>(&self, key: &K) -> &Quotas {
        self.tiers
            .iter()
            .find(|(value, _)| key == value)
            .map_or(&self.default, |(_, quotas)| quotas)
    }
}

impl<K, Req, T> QuotaPolicy<K, Req> for Tiers<T>
where
    K: PartialEq<T>,
    T: Send + Sync + 'static,
{
    type Quotas<'a> = &'a Quotas;

    fn quotas<'a>(&'a self, key: &K, _: &Req) -> &'a Quotas {
        self.for_key(key)
    }
}

/// What a request costs, in quota units: 1 each by default ([`OnePerRequest`]), or anything a
/// closure `Fn(&Request) -> u32` says (bytes, rows, weights). A cost above a quota's burst can
/// never pass and is refused as such, not kept waiting.
pub trait Cost<Req>: Send + Sync + 'static {
    /// The cost of `request`.
    fn cost(&self, request: &Req) -> u32;
}

/// Every request costs one unit.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnePerRequest;

impl<Req> Cost<Req> for OnePerRequest {
    #[inline]
    fn cost(&self, _: &Req) -> u32 {
        1
    }
}

impl<Req, F> Cost<Req> for F
where
    F: Fn(&Req) -> u32 + Send + Sync + 'static,
{
    fn cost(&self, request: &Req) -> u32 {
        self(request)
    }
}
