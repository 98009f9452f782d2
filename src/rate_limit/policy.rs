use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::key::{ScopeKey, ScopedKeys};
use crate::store::Ask;
use crate::Quotas;

/// Picks the quotas that apply to a request: the same for all ([`Quotas`]), by tier
/// ([`Tiers`]), or anything a closure `Fn(&Key, &Request) -> Quotas` decides.
pub trait QuotaPolicy<K, Req>: Send + Sync + 'static {
    /// The quotas handed out: borrowed when they are fixed, owned when computed.
    type Quotas<'a>: Borrow<Quotas>
    where
        Self: 'a;

    /// The key the store counts under: the request's key itself, or (for
    /// [`Scopes`](crate::key::Scopes)) each of its scopes' keys.
    type Key;

    /// The quotas for `request`, whose key is `key`.
    fn quotas<'a>(&'a self, key: &K, request: &Req) -> Self::Quotas<'a>;

    /// What a request of key `key` under `quotas` asks of the store: one part, the key with
    /// its quotas, unless the policy says otherwise.
    fn ask<'k>(key: &'k K, quotas: &'k Quotas) -> Ask<'k, Self::Key>;

    /// The quotas every request gets, when they never vary. A global limit in wait mode needs
    /// them to reserve a slot in `poll_ready`, before there is a request.
    fn fixed(&self) -> Option<&Quotas> {
        None
    }
}

impl<K, Req> QuotaPolicy<K, Req> for Quotas {
    type Quotas<'a> = &'a Quotas;
    type Key = K;

    #[inline]
    fn ask<'k>(key: &'k K, quotas: &'k Quotas) -> Ask<'k, K> {
        Ask::new(key, quotas)
    }

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
    type Key = K;

    fn quotas(&self, key: &K, request: &Req) -> Quotas {
        self(key, request)
    }

    fn ask<'k>(key: &'k K, quotas: &'k Quotas) -> Ask<'k, K> {
        Ask::new(key, quotas)
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
///
/// # Changing tiers
///
/// A key that moves to another tier (an upgrade, a downgrade) keeps what it has spent: its
/// state under a quota of one tier carries over to the quota *of the same name* in the other,
/// rescaled so that the same fraction of the burst stays spent (see
/// [`Quotas::carry_over_from`]). Name a tier's quota differently to give it buckets of its
/// own. Carrying over takes the stores' general path, a few nanoseconds slower per decision
/// than a lone quota that carries nothing (`BENCHMARKS.md`).
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
        self.link();
        self
    }

    /// Lets every set carry states over from the others (see [Changing tiers](Self#changing-tiers)).
    fn link(&mut self) {
        let plain: Vec<Quotas> = std::iter::once(&self.default)
            .chain(self.tiers.iter().map(|(_, quotas)| quotas))
            .map(|quotas| {
                Quotas::new(quotas.as_slice().iter().cloned()).unwrap_or_else(|_| quotas.clone())
            })
            .collect();
        let others = |i: usize| {
            plain
                .iter()
                .enumerate()
                .filter(move |(j, _)| *j != i)
                .flat_map(|(_, quotas)| quotas.as_slice())
        };
        self.default = plain[0].clone().carrying(others(0));
        for (i, (_, quotas)) in self.tiers.iter_mut().enumerate() {
            *quotas = plain[i + 1].clone().carrying(others(i + 1));
        }
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
    type Key = K;

    fn quotas<'a>(&'a self, key: &K, _: &Req) -> &'a Quotas {
        self.for_key(key)
    }

    fn ask<'k>(key: &'k K, quotas: &'k Quotas) -> Ask<'k, K> {
        Ask::new(key, quotas)
    }
}

/// Quotas that can be changed while the layer runs, from any clone of this handle: no
/// restart, and no lock on the request path (each request reads the quotas in force with one
/// atomic load).
///
/// A change carries each key's state over ([`Quotas::carry_over_from`]): the fraction of the
/// burst a key has spent stays spent, rescaled to the new quota, so raising a limit does not
/// forgive the keys that spent theirs and lowering one does not reset them. Quotas are
/// matched by name. A request already deciding when the change lands is decided under the
/// quotas it read; what it is charged later moves over on its key's next decision. A key idle
/// through more than 8 changes starts afresh.
///
/// ```
/// use axum::{routing::get, Router};
/// use tollgate::key::PeerIp;
/// use tollgate::rate_limit::LiveQuotas;
/// use tollgate::{Quota, RateLimitLayer};
///
/// let limits = LiveQuotas::new(Quota::per_minute(60).unwrap());
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(RateLimitLayer::live(limits.clone()).key(PeerIp::new()));
/// // Later, from an admin route or a configuration watcher:
/// limits.set(Quota::per_minute(120).unwrap());
/// assert_eq!(limits.get().as_slice()[0].burst(), 120);
/// ```
///
/// # Clone
///
/// Clones share the quotas: a change made through one is seen by every layer built with any.
///
/// A layer whose quotas can change gets no slot reserved in `poll_ready` for a global key in
/// wait mode: its requests wait in their response futures.
#[derive(Clone)]
pub struct LiveQuotas {
    current: Arc<ArcSwap<Quotas>>,
}

impl LiveQuotas {
    /// A handle whose quotas are `quotas` until [`set`](Self::set) changes them.
    pub fn new(quotas: impl Into<Quotas>) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(quotas.into())),
        }
    }

    /// The quotas in force (with what they carry over from).
    pub fn get(&self) -> Quotas {
        Quotas::clone(&self.current.load())
    }

    /// Puts `next` in force for the requests that follow, carrying each key's state over from
    /// the quotas it replaces.
    pub fn set(&self, next: impl Into<Quotas>) {
        let next = next.into();
        self.current
            .rcu(|current| Arc::new(next.clone().carry_over_from(current)));
    }
}

impl fmt::Debug for LiveQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LiveQuotas")
            .field(&**self.current.load())
            .finish()
    }
}

/// The quotas a [`LiveQuotas`] had in force when a request read them.
pub struct CurrentQuotas(arc_swap::Guard<Arc<Quotas>>);

impl Borrow<Quotas> for CurrentQuotas {
    #[inline]
    fn borrow(&self) -> &Quotas {
        &self.0
    }
}

impl fmt::Debug for CurrentQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl<K, Req> QuotaPolicy<K, Req> for LiveQuotas {
    type Quotas<'a> = CurrentQuotas;
    type Key = K;

    #[inline]
    fn ask<'k>(key: &'k K, quotas: &'k Quotas) -> Ask<'k, K> {
        Ask::new(key, quotas)
    }

    #[inline]
    fn quotas(&self, _: &K, _: &Req) -> CurrentQuotas {
        CurrentQuotas(self.current.load())
    }
}

/// The policy of [`RateLimitLayer::scoped`](super::RateLimitLayer::scoped): each scope's key
/// under its own quotas, in one ask. The layer's own quotas (the first scope's) describe a
/// refusal made before any scope was decided.
#[derive(Debug, Clone)]
pub struct ScopedQuotas {
    pub(crate) first: Quotas,
}

impl<Req> QuotaPolicy<ScopedKeys, Req> for ScopedQuotas {
    type Quotas<'a> = &'a Quotas;
    type Key = ScopeKey;

    fn quotas<'a>(&'a self, _: &ScopedKeys, _: &Req) -> &'a Quotas {
        &self.first
    }

    fn ask<'k>(key: &'k ScopedKeys, _: &'k Quotas) -> Ask<'k, ScopeKey> {
        Ask::across(key.parts())
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
