//! [`RateLimiter`]: the direct API.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::hash::Hash;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::admission::{Admission, Admit, Hold};
use super::events::LimitEvent;
use super::refusal::Refusal;
use crate::clock::Clock;
use crate::key::{Global, LogKeys};
use crate::metrics::LimiterMetrics;
use crate::store::{Ask, Reset, StoreError};
use crate::{Decision, MemoryStore, Quotas, Store};

/// The longest wait [`RateLimiter::acquire`] accepts by default: in effect, none is too long
/// (a network store's arithmetic stays exact below it).
const FOREVER: Duration = Duration::from_secs(1 << 31);

/// A rate limit used directly: `acquire().await` waits for a slot, `try_acquire().await`
/// refuses at once, and over the memory store [`check`](RateLimiter::check) decides without
/// a future.
///
/// A background job that calls a third-party API at 10 per second, bursts of 20, waiting when
/// over:
///
/// ```
/// use tollgate::{Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RateLimiter::new(Quota::per_second(10)?.with_burst(20)?);
/// for _ in 0..22 {
///     limiter.acquire().await?; // the first 20 at once, then one every 100 ms, in order
///     // call_the_api().await;
/// }
/// assert!(limiter.try_acquire().await.is_err()); // over the limit: refused at once...
/// let refused = limiter.try_acquire().await.unwrap_err();
/// assert!(refused.retry_after().unwrap().as_millis() <= 100); // ...saying when to come back
/// # Ok(()) }
/// ```
///
/// Per key, and over any [`Store`](crate::Store) (a `RedisStore`, with the `redis` feature, shares the
/// limit with every instance):
///
/// ```
/// use tollgate::{MemoryStore, Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let per_user = RateLimiter::keyed(Quota::per_minute(2)?).store(MemoryStore::new());
/// assert!(per_user.key("alice").try_acquire().await.is_ok());
/// assert!(per_user.key("alice").try_acquire().cost(2).await.is_err()); // 1 left, not 2
/// assert_eq!(per_user.key("bob").available().await?, 2);
/// per_user.key("alice").reset().await?;
/// assert_eq!(per_user.key("alice").available().await?, 2);
/// # Ok(()) }
/// ```
///
/// Every method is `async` because a network store answers over the network; over the memory
/// store the futures are ready at once.
///
///
/// `K` is the key type ([`Global`] for one limit over everything), `S` the [`Store`].
///
/// # Clone
///
/// Clones share the store, so they share one limit, and the configuration.
pub struct RateLimiter<K = Global, S = MemoryStore> {
    admission: Arc<Admission<S>>,
    quotas: Quotas,
    max_wait: Duration,
    _key: PhantomData<fn(K)>,
}

impl RateLimiter {
    /// One limit of `quotas` (a [`Quota`](crate::Quota) or [`Quotas`]) over everything, in a
    /// new [`MemoryStore`].
    pub fn new(quotas: impl Into<Quotas>) -> Self {
        RateLimiter::keyed(quotas)
    }
}

impl<K> RateLimiter<K> {
    /// A limit of `quotas` per key, in a new [`MemoryStore`]: [`key`](RateLimiter::key)
    /// names the key of each call.
    pub fn keyed(quotas: impl Into<Quotas>) -> Self {
        Self {
            admission: Arc::new(Admission::new(
                MemoryStore::new(),
                Arc::from("rate_limiter"),
                None,
                LogKeys::Hashed,
            )),
            quotas: quotas.into(),
            max_wait: FOREVER,
            _key: PhantomData,
        }
    }
}

impl<K, S> RateLimiter<K, S> {
    /// The same limit over another store: a [`MemoryStore`] you configured or keep a clone
    /// of, or a network store such as `RedisStore` (the `redis` feature). Everything else set
    /// before or after (name, hook, statistics) is kept.
    #[must_use]
    pub fn store<S2>(self, store: S2) -> RateLimiter<K, S2> {
        RateLimiter {
            admission: Arc::new(self.admission.with_store(store)),
            quotas: self.quotas,
            max_wait: self.max_wait,
            _key: PhantomData,
        }
    }

    /// The longest [`acquire`](Self::acquire) waits; a slot further off is refused at once
    /// with [`Refusal::Limited`]. Default: no limit.
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait.min(FOREVER);
        self
    }

    /// The quotas every call is decided against.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The store.
    pub fn store_ref(&self) -> &S {
        &self.admission.store
    }
}

impl<K, S: Clone> RateLimiter<K, S> {
    /// Names the limiter in events, logs and metrics (default `rate_limiter`).
    #[must_use]
    pub fn name(self, name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        self.reconfigure(|admission| {
            let watch = &admission.watch;
            admission.metrics = LimiterMetrics::new(
                &name,
                watch.shadow,
                watch.near_limit.is_some(),
                watch.block.is_some(),
            );
            admission.name = name;
        })
    }

    /// Calls `hook` for every denial and every wait (see [`LimitEvent`]).
    #[must_use]
    pub fn on_event(self, hook: impl Fn(&LimitEvent<'_>) + Send + Sync + 'static) -> Self {
        self.reconfigure(|admission| admission.hook = Some(Arc::new(hook)))
    }

    /// Counts what this limiter decides into `stats` (see
    /// [`RateLimitLayer::stats`](crate::RateLimitLayer::stats)).
    #[must_use]
    pub fn stats(self, stats: super::LimiterStats) -> Self {
        self.reconfigure(|admission| admission.watch.stats = Some(stats))
    }

    /// How keys are shown in events and logs (default: a keyed hash, see [`LogKeys`]).
    #[must_use]
    pub fn log_keys(self, shown: LogKeys) -> Self {
        self.reconfigure(|admission| admission.log_keys = shown)
    }

    /// Every setting goes through here: the limiter's clones keep the configuration they
    /// were made with, this one gets its own with `change` applied.
    fn reconfigure(mut self, change: impl FnOnce(&mut Admission<S>)) -> Self {
        if Arc::get_mut(&mut self.admission).is_none() {
            let store = self.admission.store.clone();
            self.admission = Arc::new(self.admission.with_store(store));
        }
        change(Arc::get_mut(&mut self.admission).expect("not shared"));
        self
    }
}

impl<K, S> RateLimiter<K, S>
where
    S: Store<K>,
    K: Hash + fmt::Debug + Clone + Send + Sync + 'static,
{
    /// The calls for `key`.
    pub fn key(&self, key: K) -> Keyed<'_, K, S> {
        Keyed { limiter: self, key }
    }
}

impl<S: Store<Global>> RateLimiter<Global, S> {
    /// Takes one unit now, or is refused (with [`Refusal::retry_after`]) without waiting;
    /// `.cost(n)` takes `n`.
    pub fn try_acquire(&self) -> Acquire<'_, Global, S> {
        self.key(Global).try_acquire()
    }

    /// Waits for a unit (in order with other waiters), then takes it; `.cost(n)` takes `n`.
    /// Dropping the future before it completes gives the reserved slot back.
    pub fn acquire(&self) -> Acquire<'_, Global, S> {
        self.key(Global).acquire()
    }

    /// How many units could be taken now.
    pub async fn available(&self) -> Result<u32, StoreError> {
        self.key(Global).available().await
    }

    /// The limit's state now (nothing is taken): read [`remaining`](Decision::remaining),
    /// [`reset_after`](Decision::reset_after) and [`limit`](Decision::limit). (A status is a
    /// request of cost 0, so its `is_allowed()` is always true: `remaining()` says whether a
    /// unit could be taken.)
    pub async fn status(&self) -> Result<Decision, StoreError> {
        self.key(Global).status().await
    }

    /// Fills the bucket again.
    pub async fn reset(&self) -> Result<(), StoreError>
    where
        S: Reset<Global>,
    {
        self.key(Global).reset().await
    }
}

impl<C: Clock> RateLimiter<Global, MemoryStore<C>> {
    /// Takes one unit now, or is refused without waiting: [`try_acquire`](Self::try_acquire)
    /// without a future, for a limiter in memory (governor's `check`, tokio's
    /// `Semaphore::try_acquire`).
    ///
    /// ```
    /// use tollgate::{Quota, RateLimiter};
    ///
    /// let limiter = RateLimiter::new(Quota::per_second(2)?);
    /// assert!(limiter.check().is_ok());
    /// assert!(limiter.check().is_ok());
    /// let refused = limiter.check().unwrap_err();
    /// assert!(refused.retry_after().unwrap().as_millis() <= 500);
    /// # Ok::<(), tollgate::QuotaError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Refusal::Limited`] over the limit.
    pub fn check(&self) -> Result<Decision, Refusal> {
        self.key(Global).check()
    }
}

impl<K, S: Clone> Clone for RateLimiter<K, S> {
    fn clone(&self) -> Self {
        Self {
            admission: Arc::clone(&self.admission),
            quotas: self.quotas.clone(),
            max_wait: self.max_wait,
            _key: PhantomData,
        }
    }
}

impl<K, S> fmt::Debug for RateLimiter<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.admission.name)
            .field("quotas", &self.quotas)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

/// The calls of a [`RateLimiter`] for one key: [`RateLimiter::key`].
pub struct Keyed<'a, K, S> {
    limiter: &'a RateLimiter<K, S>,
    key: K,
}

impl<'a, K, S> Keyed<'a, K, S>
where
    S: Store<K>,
    K: Hash + fmt::Debug + Clone + Send + Sync + 'static,
{
    /// Takes one unit now, or is refused without waiting; `.cost(n)` takes `n`.
    pub fn try_acquire(self) -> Acquire<'a, K, S> {
        Acquire {
            limiter: self.limiter,
            key: self.key,
            cost: 1,
            max_wait: Duration::ZERO,
        }
    }

    /// Waits for a unit (up to [`RateLimiter::max_wait`]), then takes it; `.cost(n)` takes
    /// `n`. Dropping the future before it completes gives the reserved slot back.
    pub fn acquire(self) -> Acquire<'a, K, S> {
        Acquire {
            limiter: self.limiter,
            key: self.key,
            cost: 1,
            max_wait: self.limiter.max_wait,
        }
    }

    /// How many units could be taken now.
    pub async fn available(self) -> Result<u32, StoreError> {
        Ok(self.status().await?.remaining())
    }

    /// The key's state now: remaining, reset, limit (nothing is taken).
    pub async fn status(self) -> Result<Decision, StoreError> {
        let store = &self.limiter.admission.store;
        let peek = Ask::new(&self.key, &self.limiter.quotas).with_cost(0);
        store.decide(&peek).await
    }

    /// Fills the key's bucket again.
    pub async fn reset(self) -> Result<(), StoreError>
    where
        S: Reset<K>,
    {
        let store = &self.limiter.admission.store;
        store.reset_key(&self.key, &self.limiter.quotas).await
    }
}

impl<K, C> Keyed<'_, K, MemoryStore<C>>
where
    C: Clock,
    K: Hash + fmt::Debug + Clone + Send + Sync + 'static,
{
    /// Takes one unit now, or is refused without waiting, without a future (see
    /// [`RateLimiter::check`]).
    ///
    /// # Errors
    ///
    /// [`Refusal::Limited`] over the limit.
    pub fn check(self) -> Result<Decision, Refusal> {
        let ask = Ask::new(&self.key, &self.limiter.quotas);
        match self.limiter.admission.admit(ask, Hold::default()) {
            Admit::Now(admitted) => admitted.map(|admitted| admitted.decision),
            // The memory store always answers at once; were it ever not to, say so.
            Admit::Later(_) => Err(Refusal::StoreFailed(StoreError::Backend(
                "the memory store did not answer at once".into(),
            ))),
        }
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Keyed<'_, K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("limiter", &self.limiter.admission.name)
            .finish_non_exhaustive()
    }
}

/// A call to [`try_acquire`](Keyed::try_acquire) or [`acquire`](Keyed::acquire), to
/// `.await`; [`cost`](Self::cost) sets how many units it takes.
///
/// It resolves to the store's [`Decision`] (what is left, when the bucket is full again), or
/// to a [`Refusal`]: [`Limited`](Refusal::Limited) over the limit (with its `retry_after`),
/// [`TooCostly`](Refusal::TooCostly) for a cost above a burst, which could never pass,
/// [`StoreFailed`](Refusal::StoreFailed) when a network store failed and its policy denies.
#[must_use = "does nothing until awaited"]
pub struct Acquire<'a, K, S> {
    limiter: &'a RateLimiter<K, S>,
    key: K,
    cost: u32,
    max_wait: Duration,
}

impl<K, S> Acquire<'_, K, S> {
    /// Takes `cost` units instead of one.
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Waits at most `max_wait` for this call, if that is shorter than the limiter's
    /// [`max_wait`](RateLimiter::max_wait) (for a caller with a deadline of its own).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = self.max_wait.min(max_wait);
        self
    }
}

impl<'a, K, S> IntoFuture for Acquire<'a, K, S>
where
    S: Store<K>,
    K: Hash + fmt::Debug + Clone + Send + Sync + 'static,
{
    type Output = Result<Decision, Refusal>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let ask = Ask::new(&self.key, &self.limiter.quotas)
            .with_cost(self.cost)
            .with_max_wait(self.max_wait);
        let admitted = self.limiter.admission.admit(ask, Hold::default());
        Box::pin(async move {
            let admitted = match admitted {
                Admit::Now(admitted) => admitted?,
                Admit::Later(deciding) => deciding.await?,
            };
            Ok(admitted.wait_for_slot().await)
        })
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Acquire<'_, K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("cost", &self.cost)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}
