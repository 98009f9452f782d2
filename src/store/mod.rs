//! Where the state of each key lives, and the [`Decision`] a store gives for a request.
//!
//! A store applies the [GCRA](crate::gcra) to one theoretical arrival time per key and quota.
//! [`MemoryStore`] is the embedded default: keyed, lock-free per key, bounded. Other stores
//! (a network store such as Redis) implement the same [`Store`] trait and answer through a
//! future; the memory store's future is ready at once, so the layer pays nothing for the
//! generality.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{MemoryStore, Quota, Quotas};
//!
//! let store = MemoryStore::new();
//! let quotas = Quotas::from(Quota::per_minute(2).unwrap());
//! let first = store.check(&"alice", &quotas, 1).unwrap();
//! assert!(first.is_allowed());
//! assert_eq!(first.remaining(), 1);
//! store.check(&"alice", &quotas, 1).unwrap();
//! let third = store.check(&"alice", &quotas, 1).unwrap();
//! assert!(!third.is_allowed());
//! assert!(third.retry_after() > Duration::from_secs(29));
//! // Other keys have their own buckets.
//! assert!(store.check(&"bob", &quotas, 1).unwrap().is_allowed());
//! ```

mod decision;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub(crate) mod table;

use std::future::Future;
use std::time::Duration;

pub use decision::Decision;
pub use memory::{MemoryStore, MemoryStoreBuilder, DEFAULT_MAX_KEYS};
#[cfg(feature = "redis")]
pub use redis::{OnFailure, RedisKey, RedisStore, RedisStoreBuilder};

use crate::{QuotaError, Quotas};

/// A place that keeps GCRA state per key and decides requests against it.
///
/// Implementations must give the answers of [`crate::gcra`]: every quota of the set is checked,
/// all are charged or none, and a denial changes nothing.
pub trait Store<K: ?Sized>: Clone + Send + Sync + 'static {
    /// The answer to [`decide`](Store::decide).
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Decides at once when the store can do so without waiting (the memory store always
    /// can; a network store can when it answers from a local cache). `None` sends the caller
    /// to [`decide`](Store::decide).
    fn decide_now(
        &self,
        key: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Option<Result<Decision, StoreError>> {
        let _ = (key, quotas, cost, max_wait);
        None
    }

    /// Decides a request of `cost` for `key` against every quota of `quotas`.
    ///
    /// With `max_wait` above zero, a request whose slot comes within `max_wait` is allowed
    /// with [`Decision::wait`] set, and its slot is reserved; the caller sleeps that long
    /// before going ahead, or calls [`refund`](Store::refund) if it gives up.
    fn decide(&self, key: &K, quotas: &Quotas, cost: u32, max_wait: Duration) -> Self::Future;

    /// Gives back the cost of an allowed request that never went ahead (a reservation that was
    /// dropped). Best effort: a network store may do it in the background.
    fn refund(&self, key: &K, quotas: &Quotas, cost: u32);

    /// The state of `key` under `quotas`, without consuming anything: a decision of cost 0.
    fn status(&self, key: &K, quotas: &Quotas) -> Self::Future {
        self.decide(key, quotas, 0, Duration::ZERO)
    }

    /// Forgets `key`'s state under `quotas`: its buckets are full again.
    fn reset(&self, key: &K, quotas: &Quotas) -> ResetFuture;

    /// [`decide_parts`](Store::decide_parts) at once, when the store can (the memory store
    /// always can).
    fn decide_parts_now(
        &self,
        parts: &[(K, Quotas)],
        cost: u32,
        max_wait: Duration,
    ) -> Option<Result<(usize, Decision), StoreError>>
    where
        K: Sized,
    {
        let _ = (parts, cost, max_wait);
        None
    }

    /// Decides a request of `cost` against several keys at once, each with its own quotas
    /// (per user *and* per route *and* global): allowed only if every part allows it, and a
    /// refusal by one part spends nothing of the others. Answers the index of the part whose
    /// numbers the decision gives ([`Decision::of_parts`]).
    ///
    /// The memory store and a single Redis decide all parts in one atomic step. This default,
    /// which a Redis Cluster uses too (the parts' keys may live on different nodes), charges
    /// the parts in order and gives back what the earlier parts were charged when a later one
    /// refuses: no part keeps a charge for a refused request, but between the two, a
    /// concurrent request may find an earlier part's tokens spent. A key and quota listed in two
    /// parts is charged once by the memory store and a single Redis, once per part by this
    /// default ([`Scopes`](crate::key::Scopes) never lists one twice: each scope's quota is
    /// named after it).
    ///
    /// `parts` are shared with the caller, which keeps them to give the cost back.
    fn decide_parts(
        &self,
        parts: std::sync::Arc<[(K, Quotas)]>,
        cost: u32,
        max_wait: Duration,
    ) -> PartsFuture
    where
        K: Sized + Send + Sync + 'static,
    {
        let store = self.clone();
        Box::pin(async move { in_order(&store, &parts, cost, max_wait).await })
    }

    /// Gives back the cost of a request allowed by [`decide_parts`](Store::decide_parts) that
    /// never went ahead, on every part.
    fn refund_parts(&self, parts: &[(K, Quotas)], cost: u32)
    where
        K: Sized,
    {
        for (key, quotas) in parts {
            self.refund(key, quotas, cost);
        }
    }
}

/// The answer to [`Store::reset`].
pub type ResetFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// The answer to [`Store::decide_parts`]: the binding part's index, and the decision.
pub type PartsFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<(usize, Decision), StoreError>> + Send>>;

/// The most quotas a decision across several keys holds, all parts together.
pub const MAX_PART_QUOTAS: usize = crate::quota::MAX_QUOTAS;

/// [`Store::decide_parts`] by charging each part in order and giving back the earlier parts'
/// charges when a later one refuses.
pub(crate) async fn in_order<K, S: Store<K>>(
    store: &S,
    parts: &[(K, Quotas)],
    cost: u32,
    max_wait: Duration,
) -> Result<(usize, Decision), StoreError> {
    check_parts(parts, cost)?;
    let mut decisions = Vec::with_capacity(parts.len());
    for (i, (key, quotas)) in parts.iter().enumerate() {
        let decided = match store.decide_now(key, quotas, cost, max_wait) {
            Some(decided) => decided,
            None => store.decide(key, quotas, cost, max_wait).await,
        };
        match decided {
            Ok(decision) if decision.is_allowed() => decisions.push(decision),
            refused => {
                if cost > 0 {
                    for (key, quotas) in &parts[..i] {
                        store.refund(key, quotas, cost);
                    }
                }
                return refused.map(|decision| (i, decision));
            }
        }
    }
    Ok(Decision::of_parts(&decisions))
}

/// Checks a decision across parts: at least one, at most [`MAX_PART_QUOTAS`] quotas in all,
/// and a cost every part can pass.
pub(crate) fn check_parts<K>(parts: &[(K, Quotas)], cost: u32) -> Result<(), QuotaError> {
    let quotas: usize = parts.iter().map(|(_, quotas)| quotas.len()).sum();
    if parts.is_empty() {
        return Err(QuotaError::Empty);
    }
    if quotas > MAX_PART_QUOTAS {
        return Err(QuotaError::TooMany(quotas));
    }
    parts
        .iter()
        .try_for_each(|(_, quotas)| quotas.check_cost(cost))
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
            Self::Timeout(after) => write!(f, "the rate-limit store did not answer in {after:?}"),
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
