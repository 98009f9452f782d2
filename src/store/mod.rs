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
}

/// The answer to [`Store::reset`].
pub type ResetFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

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
