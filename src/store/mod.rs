//! Where the state of each key lives, and the [`Decision`] a store gives for an [`Ask`].
//!
//! A store applies the GCRA (the generic cell rate algorithm) to one theoretical arrival time (TAT) per key and
//! quota. [`MemoryStore`] is the embedded default: keyed, lock-free per key, bounded.
//! `RedisStore` (the `redis` feature) shares the states of a fleet. Every store implements
//! the [`Store`] trait: a decision, which may be ready at once (the memory store's always is)
//! or come later (a network store's), and a refund.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::store::{Ask, MemoryStore, Store};
//! use tollgate::{Quota, Quotas};
//!
//! let store = MemoryStore::new();
//! let quotas = Quotas::from(Quota::per_minute(2).unwrap());
//! let decide = |key: &&str| store.decide(&Ask::new(key, &quotas)).into_inner().unwrap();
//! assert_eq!(decide(&"alice").remaining(), 1);
//! decide(&"alice");
//! let third = decide(&"alice");
//! assert!(!third.is_allowed());
//! assert!(third.retry_after() > Duration::from_secs(29));
//! // Other keys have their own buckets.
//! assert!(decide(&"bob").is_allowed());
//! ```
//!
//! # Writing a store
//!
//! A store keeps one TAT (a `u64`, nanoseconds on its own monotonic clock, 0 for "none": a
//! full bucket) per key and [`Quota::id`](crate::Quota::id). To decide an [`Ask`], read the
//! TATs of its [`states`](Ask::states), call [`Ask::apply`], and write them all back, as one
//! atomic step; to refund, the same with [`Ask::give_back`]. The arithmetic, carried-over
//! quotas included, is the crate's: `tests-integration/tests/custom_store.rs` is a store on a `Mutex<HashMap>`
//! that passes the conformance scenario every store of the crate passes.

mod ask;
mod decision;
mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod table;

use std::future::Future;
use std::time::Duration;

pub(crate) use ask::carry_over;
pub use ask::Ask;
pub use decision::Decision;
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
pub use redis::{OnFailure, RedisStore, RedisStoreBuilder};

use crate::QuotaError;

/// A place that keeps GCRA state per key and decides [`Ask`]s against it.
///
/// # The contract
///
/// - **All or nothing.** An ask is allowed only if every quota of every part allows it, and
///   then every one is charged its cost; refused, none is. Its [`Decision`] gives the binding
///   quota's numbers ([`Decision::quota_index`], [`Decision::part`]).
/// - **Cost 0 is a peek**: allowed, nothing changes, the numbers say what is left. A cost
///   above a burst can never pass: answer [`StoreError::Quota`].
/// - **Waits.** With a [`max_wait`](Ask::max_wait) above zero, a request whose slot comes
///   within it is allowed with [`Decision::wait`] set and its slot reserved (the TAT moves
///   forward, in arrival order per key); the caller sleeps, then goes ahead, or gives the slot
///   back with [`refund`](Store::refund).
/// - **Carried-over quotas.** A [`Quotas`](crate::Quotas) set built with
///   [`carry_over_from`](crate::Quotas::carry_over_from) (a live change, a tier move) names
///   earlier quotas ([`Ask::states`] lists their states after the set's own): a key's debt
///   under them moves to the new quota of the same name, rescaled, before deciding.
///   [`Ask::apply`] does this.
/// - **Answers at once or later.** [`decide`](Store::decide) returns a future; a store that
///   can answer without waiting (from memory, from a cache) returns one that is ready on its
///   first poll, which callers take without a task switch.
///
/// Status and reset are not part of the trait: each store has inherent methods for them
/// ([`MemoryStore::status`], [`MemoryStore::reset`]).
pub trait Store<K>: Clone + Send + Sync + 'static {
    /// The answer to [`decide`](Store::decide): ready at once when the store can answer so.
    type Future: Future<Output = Result<Decision, StoreError>> + Unpin + Send + 'static;

    /// Decides `ask`, charging it when allowed (see [the contract](Store#the-contract)).
    fn decide(&self, ask: &Ask<'_, K>) -> Self::Future;

    /// Gives back `cost` on every quota of every part of an allowed `ask` that did not use
    /// it all (a reservation dropped, a cost settled lower). Best effort: a network store may
    /// do it in the background.
    fn refund(&self, ask: &Ask<'_, K>, cost: u32);
}

/// Stores whose keys the direct limiter can reset ([`RateLimiter::reset`](crate::RateLimiter::reset)):
/// the crate's own. Sealed: a store of yours resets keys through inherent methods.
pub(crate) use sealed::Reset;

mod sealed {
    use std::future::Future;

    use super::StoreError;
    use crate::Quotas;

    /// Forgets a key's states: its buckets are full again.
    pub trait Reset<K> {
        /// Forgets `key`'s states under `quotas`.
        fn reset_key(
            &self,
            key: &K,
            quotas: &Quotas,
        ) -> impl Future<Output = Result<(), StoreError>> + Send;
    }

    impl<K: std::hash::Hash, C: crate::clock::Clock> Reset<K> for super::MemoryStore<C> {
        fn reset_key(
            &self,
            key: &K,
            quotas: &Quotas,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            self.reset(key, quotas);
            std::future::ready(Ok(()))
        }
    }

    #[cfg(feature = "redis")]
    impl<K> Reset<K> for super::RedisStore
    where
        K: crate::key::RedisKey + std::hash::Hash + Sync,
    {
        fn reset_key(
            &self,
            key: &K,
            quotas: &Quotas,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            self.reset(key, quotas)
        }
    }
}

/// The decision of `ask` as a series of one-part asks, in order, giving back the earlier
/// parts' charges when a later one refuses: for a store whose parts' keys may live in places
/// that cannot decide together (a Redis Cluster's nodes).
#[cfg(feature = "redis")]
pub(crate) async fn in_order<K, S: Store<K>>(
    store: &S,
    ask: &Ask<'_, K>,
) -> Result<Decision, StoreError> {
    ask.check()?;
    let mut decisions = [Decision::empty(); crate::quota::MAX_QUOTAS];
    for (i, (key, quotas)) in ask.parts().enumerate() {
        let part = Ask::new(key, quotas)
            .with_cost(ask.cost())
            .with_max_wait(ask.max_wait());
        match store.decide(&part).await {
            Ok(decision) if decision.is_allowed() => decisions[i] = decision,
            refused => {
                if ask.cost() > 0 {
                    for j in 0..i {
                        let (key, quotas) = ask.part(j);
                        store.refund(&Ask::new(key, quotas), ask.cost());
                    }
                }
                return refused.map(|decision| Decision::of_parts_refused(i, decision));
            }
        }
    }
    Ok(Decision::of_parts(&decisions[..ask.len()]))
}

/// Why a store could not decide.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The request can never pass these quotas (its cost exceeds a burst).
    Quota(QuotaError),
    /// The store did not answer in time.
    Timeout(Duration),
    /// The store failed: a network or protocol error.
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The store cannot be used as configured (found at start-up): what is wrong.
    Unusable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quota(e) => e.fmt(f),
            Self::Timeout(after) => write!(
                f,
                "the rate-limit store did not answer in {}",
                crate::human::Human(*after)
            ),
            Self::Backend(e) => write!(f, "the rate-limit store failed: {e}"),
            Self::Unusable(what) => write!(f, "the rate-limit store cannot be used: {what}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Quota(e) => Some(e),
            Self::Timeout(_) | Self::Unusable(_) => None,
            Self::Backend(e) => Some(&**e),
        }
    }
}

impl From<QuotaError> for StoreError {
    fn from(e: QuotaError) -> Self {
        Self::Quota(e)
    }
}
