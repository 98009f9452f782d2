//! The error of a request that got no slot.

use std::fmt;
use std::time::Duration;

/// No slot came free within the longest wait ([`ConcurrencyLayer::wait`]) of a
/// [`ConcurrencyLayer`]: what a layer made with [`errors`] fails
/// with, boxed (downcast to find it), and what the built-in answers turn into a 503 or
/// `UNAVAILABLE`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::concurrency::{ConcurrencyLayer, NoSlot};
/// use tollgate::BoxError;
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
/// [`ConcurrencyLayer`]: super::ConcurrencyLayer
/// [`ConcurrencyLayer::wait`]: super::ConcurrencyLayer::wait
/// [`errors`]: super::ConcurrencyLayer::errors
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
            "no slot among {} came free in {:?}",
            self.limit, self.waited
        )
    }
}

impl std::error::Error for NoSlot {}
