//! A limit on requests in flight per key: at most `n` at once for each API token, host or
//! client, the others waiting their turn in arrival order.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::concurrency::ConcurrencyLayer;
//! use tollgate::key::Header;
//!
//! // At most 3 calls in flight per API token (as the Autotask API demands); a call waits at
//! // most 30 s for its turn.
//! let layer = ConcurrencyLayer::new(3, Header::new("authorization")).max_wait(Duration::from_secs(30));
//! # drop(layer);
//! ```
//!
//! A slot is taken before the call and given back when the response future completes or is
//! dropped (a cancelled request frees its slot at once). For HTTP, that is when the response
//! head arrives, not when its body ends. It composes with [`RateLimitLayer`](crate::RateLimitLayer)
//! (a rate and a concurrency on the same key), in either order.
//!
//! Keys with nothing in flight are forgotten, so the map holds only busy keys. As in the
//! memory store, a key is held as a 64-bit keyed hash: two keys would share their slots only
//! on a hash collision, which makes them stricter, never looser.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use crate::key::{KeyError, KeyExtractor};
use crate::BoxError;

/// Limits the requests in flight per key. See the [module docs](self).
///
/// # Clone
///
/// Clones, and the services they make, share the slots.
#[must_use]
pub struct ConcurrencyLayer<K> {
    key: K,
    limit: usize,
    max_wait: Option<Duration>,
    slots: Arc<Slots>,
}

/// The semaphores of the keys with requests in flight or waiting, by key hash.
struct Slots {
    busy: Mutex<HashMap<u64, Arc<Semaphore>>>,
    hasher: RandomState,
}

/// No slot came free within the maximum wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl<K> ConcurrencyLayer<K> {
    /// At most `limit` requests in flight per key of `key` (at least 1).
    pub fn new(limit: usize, key: K) -> Self {
        Self {
            key,
            limit: limit.max(1),
            max_wait: None,
            slots: Arc::new(Slots {
                busy: Mutex::new(HashMap::new()),
                hasher: RandomState::new(),
            }),
        }
    }

    /// How long a request may wait for a slot before failing with [`NoSlot`] (default: as long
    /// as it takes).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }
}

impl<K: Clone> Clone for ConcurrencyLayer<K> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            limit: self.limit,
            max_wait: self.max_wait,
            slots: Arc::clone(&self.slots),
        }
    }
}

impl<K> fmt::Debug for ConcurrencyLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLayer")
            .field("limit", &self.limit)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S, K: Clone> Layer<S> for ConcurrencyLayer<K> {
    type Service = Concurrency<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Concurrency {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ConcurrencyLayer`].
pub struct Concurrency<S, K> {
    inner: S,
    layer: ConcurrencyLayer<K>,
}

impl<S: Clone, K: Clone> Clone for Concurrency<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, K> fmt::Debug for Concurrency<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Concurrency")
            .field("limit", &self.layer.limit)
            .finish_non_exhaustive()
    }
}

/// A slot held for one request; dropping it frees the slot, and forgets the key when nothing
/// else is in flight for it.
struct Held {
    permit: Option<OwnedSemaphorePermit>,
    key: u64,
    slots: Arc<Slots>,
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut busy = self
            .slots
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the map holds the semaphore: no permit out, nobody waiting.
        if busy
            .get(&self.key)
            .is_some_and(|semaphore| Arc::strong_count(semaphore) == 1)
        {
            busy.remove(&self.key);
        }
    }
}

impl Slots {
    /// The semaphore of the key whose hash is `key`, made on first use.
    fn semaphore(&self, key: u64, limit: usize) -> Arc<Semaphore> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            busy.entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(limit))),
        )
    }
}

impl<S, K, Req> Service<Req> for Concurrency<S, K>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    K: KeyExtractor<Req> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = match self.layer.key.extract(&request) {
            Ok(key) => self.layer.slots.hasher.hash_one(&key),
            Err(error) => {
                return Box::pin(std::future::ready(Err::<_, BoxError>(
                    Box::<KeyError>::new(error),
                )))
            }
        };
        let semaphore = self.layer.slots.semaphore(key, self.layer.limit);
        let slots = Arc::clone(&self.layer.slots);
        // A free slot: call now, on the service polled ready.
        if let Ok(permit) = Arc::clone(&semaphore).try_acquire_owned() {
            drop(semaphore);
            let held = Held {
                permit: Some(permit),
                key,
                slots,
            };
            let future = self.inner.call(request);
            return Box::pin(async move {
                let result = future.await.map_err(Into::into);
                drop(held);
                result
            });
        }
        // Wait for a slot, in arrival order, then call a clone made ready again.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (limit, max_wait) = (self.layer.limit, self.layer.max_wait);
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            let acquire = Arc::clone(&semaphore).acquire_owned();
            drop(semaphore);
            let permit = match max_wait {
                None => acquire.await.ok(),
                Some(max) => match tokio::time::timeout(max, acquire).await {
                    Ok(permit) => permit.ok(),
                    Err(_) => {
                        let held = Held {
                            permit: None,
                            key,
                            slots,
                        };
                        drop(held);
                        return Err(Box::new(NoSlot {
                            limit,
                            waited: start.elapsed(),
                        }) as BoxError);
                    }
                },
            };
            let held = Held { permit, key, slots };
            std::future::poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let result = inner.call(request).await.map_err(Into::into);
            drop(held);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::{service_fn, ServiceExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_per_key_and_frees_on_completion_and_on_drop() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (now, max) = (Arc::clone(&in_flight), Arc::clone(&peak));
        let svc = ConcurrencyLayer::new(2, |r: &(u32, u64)| Some(r.0)).layer(service_fn(
            move |(_, ms): (u32, u64)| {
                let (now, max) = (Arc::clone(&now), Arc::clone(&max));
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(ms)
                }
            },
        ));
        let calls: Vec<_> = (0..10)
            .map(|_| tokio::spawn(svc.clone().oneshot((7, 100))))
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);

        // A cancelled request frees its slot.
        let mut a = tokio_test::task::spawn(svc.clone().oneshot((8, 1_000)));
        let mut b = tokio_test::task::spawn(svc.clone().oneshot((8, 1_000)));
        let mut c = tokio_test::task::spawn(svc.clone().oneshot((8, 10)));
        assert!(a.poll().is_pending() && b.poll().is_pending() && c.poll().is_pending());
        drop(a);
        assert!(c.poll().is_pending(), "c got a's slot and calls");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(c.poll().is_ready());
        drop(b);
        assert!(
            svc.layer.slots.busy.lock().unwrap().is_empty(),
            "idle keys are forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_fails_with_no_slot() {
        let svc = ConcurrencyLayer::new(1, |_: &u64| Some(()))
            .max_wait(Duration::from_millis(50))
            .layer(service_fn(|ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, BoxError>(ms)
            }));
        let long = tokio::spawn(svc.clone().oneshot(1_000));
        tokio::task::yield_now().await;
        let error = svc.clone().oneshot(1).await.unwrap_err();
        assert_eq!(error.downcast_ref::<NoSlot>().unwrap().limit, 1);
        long.await.unwrap().unwrap();
    }
}
