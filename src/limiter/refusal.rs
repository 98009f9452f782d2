//! Why a request was refused: over the limit, an impossible cost, a failed store, no key.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::key::KeyError;
use crate::{BoxError, Decision, Quota, QuotaError, Quotas, StoreError};

/// Why a request was refused: by a [`RateLimiter`](crate::RateLimiter), or by the layer,
/// which then answers it itself instead of passing it on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refusal {
    /// Over the limit.
    Limited(RateLimited),
    /// The request has no key, and [`MissingKey::Reject`](crate::rate_limit::MissingKey::Reject) applies.
    NoKey(KeyError),
    /// The request costs more than a quota's burst: it could never pass.
    TooCostly(QuotaError),
    /// The store could not decide (a network store down or slow).
    StoreFailed(StoreError),
    /// No slot of a [`ConcurrencyLayer`](crate::concurrency::ConcurrencyLayer) came free in
    /// time.
    Busy(NoSlot),
}

impl Refusal {
    /// When the request would pass, where that is known: over the limit, its retry-after.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Limited(limited) => Some(limited.retry_after()),
            _ => None,
        }
    }

    /// The status the built-in HTTP answer uses: 429 over the limit, 400 for a missing or
    /// malformed key or an impossible cost, 500 when the server cannot see the key (a setup
    /// mistake), 503 when the store failed or no concurrency slot came free.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NoKey(e) if e.is_client_error() => StatusCode::BAD_REQUEST,
            Self::NoKey(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TooCostly(_) => StatusCode::BAD_REQUEST,
            Self::StoreFailed(_) | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The refusal as an error, for services that answer with errors.
    pub fn into_error(self) -> BoxError {
        match self {
            Self::Limited(e) => Box::new(e),
            Self::NoKey(e) => Box::new(e),
            Self::TooCostly(e) => Box::new(e),
            Self::StoreFailed(e) => Box::new(e),
            Self::Busy(e) => Box::new(e),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Limited(e) => e.fmt(f),
            Self::NoKey(e) => e.fmt(f),
            Self::TooCostly(e) => e.fmt(f),
            Self::StoreFailed(e) => e.fmt(f),
            Self::Busy(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Limited(e) => Some(e),
            Self::NoKey(e) => Some(e),
            Self::TooCostly(e) => Some(e),
            Self::StoreFailed(e) => Some(e),
            Self::Busy(e) => Some(e),
        }
    }
}

/// The error of a request refused for being over the limit: [`retry_after`](Self::retry_after)
/// says when it would pass.
///
/// Services that answer with errors ([`RateLimitLayer::errors`](crate::RateLimitLayer::errors))
/// return it boxed; downcast to find it.
#[derive(Debug, Clone)]
pub struct RateLimited {
    /// Boxed: a refusal is the rare answer, and an allowed one should not carry its size.
    refused: Box<(Decision, Quotas)>,
}

impl RateLimited {
    pub(crate) fn new(decision: Decision, quotas: Quotas) -> Self {
        Self {
            refused: Box::new((decision, quotas)),
        }
    }

    /// How long until the request would pass.
    pub fn retry_after(&self) -> Duration {
        self.refused.0.retry_after()
    }

    /// The quota that refused.
    pub fn quota(&self) -> &Quota {
        &self.quotas().as_slice()[self.refused.0.quota_index()]
    }

    /// All the quotas that applied.
    pub fn quotas(&self) -> &Quotas {
        &self.refused.1
    }

    /// The store's decision.
    pub fn decision(&self) -> &Decision {
        &self.refused.0
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limited by quota {:?}; retry after {}",
            self.quota().name(),
            crate::human::Human(self.retry_after())
        )
    }
}

impl std::error::Error for RateLimited {}

/// No slot came free within the longest wait ([`ConcurrencyLayer::wait`]) of a
/// [`ConcurrencyLayer`]: what a layer made with [`errors`] fails
/// with, boxed (downcast to find it), and what the built-in answers turn into a 503 or
/// `UNAVAILABLE`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::concurrency::{ConcurrencyLayer, NoSlot};
/// use tower::BoxError;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // One call at a time, waiting at most 50 ms for a turn.
/// let slow = ConcurrencyLayer::new(1)
///     .wait(Duration::from_millis(50))
///     .errors()
///     .layer(service_fn(|ms: u64| async move {
///         tokio::time::sleep(Duration::from_millis(ms)).await;
///         Ok::<_, BoxError>(ms)
///     }));
/// let first = tokio::spawn(slow.clone().oneshot(1_000));
/// tokio::task::yield_now().await;
/// let error = slow.oneshot(1).await.unwrap_err();
/// let no_slot = error.downcast_ref::<NoSlot>().unwrap();
/// assert_eq!(no_slot.limit, 1);
/// assert!(no_slot.waited >= Duration::from_millis(50));
/// first.await.unwrap().unwrap();
/// # }
/// ```
///
/// [`ConcurrencyLayer`]: crate::concurrency::ConcurrencyLayer
/// [`ConcurrencyLayer::wait`]: crate::concurrency::ConcurrencyLayer::wait
/// [`errors`]: crate::concurrency::ConcurrencyLayer::errors
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NoSlot {
    /// The limit per key.
    pub limit: usize,
    /// How long the request waited.
    pub waited: Duration,
}

impl fmt::Display for NoSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no slot among {} came free in {}",
            self.limit,
            crate::human::Human(self.waited)
        )
    }
}

impl std::error::Error for NoSlot {}
