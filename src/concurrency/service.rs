//! The service: a slot per call, given back however the call ends.

use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::events::{emit, ConcurrencyEvent, ConcurrencyEventKind, Hook};
use super::slots::{Held, Slots};
use crate::key::{KeyExtractor, LogKeys, LoggedKey};
use crate::limiter::NoSlot;
use crate::limiter::Refusal;
use crate::metrics::ConcurrencyMetrics;
use crate::respond::Refuse;

/// The service made by [`ConcurrencyLayer`](super::ConcurrencyLayer).
///
/// # Clone
///
/// Clones share the slots and the configuration.
pub struct Concurrency<S, K, R> {
    inner: S,
    shared: Arc<Shared<K, R>>,
}

/// What every service of one layer shares.
pub(crate) struct Shared<K, R> {
    pub(crate) key: K,
    pub(crate) limit: usize,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) slots: Arc<Slots>,
    pub(crate) name: Arc<str>,
    pub(crate) hook: Option<Hook>,
    pub(crate) log_keys: LogKeys,
    pub(crate) respond: R,
    pub(crate) metrics: ConcurrencyMetrics,
}

impl<S, K, R> Concurrency<S, K, R> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<K, R>>) -> Self {
        Self { inner, shared }
    }

    /// Whether no key has a request in flight or waiting (for tests).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.shared
            .slots
            .busy
            .lock()
            .is_ok_and(|busy| busy.is_empty())
    }
}

impl<S: Clone, K, R> Clone for Concurrency<S, K, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, K, R> fmt::Debug for Concurrency<S, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Concurrency")
            .field("name", &self.shared.name)
            .field("limit", &self.shared.limit)
            .finish_non_exhaustive()
    }
}

impl<K, R> Shared<K, R> {
    fn event<Key: std::hash::Hash + fmt::Debug>(
        &self,
        kind: ConcurrencyEventKind,
        key: &Key,
        waited: Duration,
    ) {
        match kind {
            ConcurrencyEventKind::Waiting => self.metrics.waited(),
            ConcurrencyEventKind::Refused => self.metrics.refused(),
        }
        emit(
            self.hook.as_ref(),
            &ConcurrencyEvent {
                kind,
                layer: &self.name,
                key: LoggedKey::new(key, self.log_keys),
                limit: self.limit,
                waited,
            },
        );
    }
}

impl<S, K, R, Req> Service<Req> for Concurrency<S, K, R>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
    K: KeyExtractor<Req>,
    R: Refuse<Req, S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, R::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), R::Error>> {
        self.inner.poll_ready(cx).map_err(R::inner_error)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let key = match shared.key.extract(&request) {
            Ok(key) => key,
            // Exempt: no slot taken.
            Err(error) if error.is_exempt() => {
                let future = self.inner.call(request);
                return Box::pin(async move { future.await.map_err(R::inner_error) });
            }
            Err(error) => {
                tracing::debug!(target: "tollgate::concurrency", layer = &*shared.name, %error, "request without a key");
                let answer = shared.respond.refuse(Refusal::NoKey(error), &request, None);
                return Box::pin(std::future::ready(answer));
            }
        };
        let hash = shared.slots.hasher.hash_one(&key);
        let semaphore = shared.slots.semaphore(hash, shared.limit);
        // A free slot: call now, on the service polled ready.
        if let Ok(permit) = Arc::clone(&semaphore).try_acquire_owned() {
            drop(semaphore);
            let held = Held::new(
                Some(permit),
                hash,
                Arc::clone(&shared.slots),
                &shared.metrics,
            );
            let future = self.inner.call(request);
            return Box::pin(async move {
                let result = future.await.map_err(R::inner_error);
                drop(held);
                result
            });
        }
        // Wait for a slot, in arrival order, then call a clone made ready again.
        shared.event(ConcurrencyEventKind::Waiting, &key, Duration::ZERO);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            // The key stays claimed while this request waits, and is forgotten after.
            let claim = Held::new(None, hash, Arc::clone(&shared.slots), &shared.metrics);
            let acquire = Arc::clone(&semaphore).acquire_owned();
            drop(semaphore);
            let permit = match shared.max_wait {
                None => acquire.await.ok(),
                Some(max) => match tokio::time::timeout(max, acquire).await {
                    Ok(permit) => permit.ok(),
                    Err(_) => {
                        drop(claim);
                        let waited = start.elapsed();
                        shared.event(ConcurrencyEventKind::Refused, &key, waited);
                        let busy = NoSlot {
                            limit: shared.limit,
                            waited,
                        };
                        return shared.respond.refuse(Refusal::Busy(busy), &request, None);
                    }
                },
            };
            drop(claim);
            let held = Held::new(permit, hash, Arc::clone(&shared.slots), &shared.metrics);
            std::future::poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(R::inner_error)?;
            let result = inner.call(request).await.map_err(R::inner_error);
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
    use crate::concurrency::ConcurrencyLayer;
    use crate::BoxError;
    use tower_layer::Layer;

    #[tokio::test(start_paused = true)]
    async fn holds_per_key_and_frees_on_completion_and_on_drop() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (now, max) = (Arc::clone(&in_flight), Arc::clone(&peak));
        let svc = ConcurrencyLayer::new(2)
            .key(|r: &(u32, u64)| Some(r.0))
            .errors()
            .layer(service_fn(move |(_, ms): (u32, u64)| {
                let (now, max) = (Arc::clone(&now), Arc::clone(&max));
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(ms)
                }
            }));
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
        assert!(svc.is_idle(), "idle keys are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_fails_with_no_slot() {
        let svc = ConcurrencyLayer::new(1)
            .key(|_: &u64| Some(()))
            .wait(Duration::from_millis(50))
            .errors()
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

    #[tokio::test(start_paused = true)]
    async fn without_a_key_one_limit_for_all_and_a_reconfigured_layer_has_its_own_slots() {
        let sleep = |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(ms)
        };
        let layer = ConcurrencyLayer::new(1).wait(Duration::ZERO).errors();
        let svc = layer.clone().layer(service_fn(sleep));
        let long = tokio::spawn(svc.clone().oneshot(1_000));
        tokio::task::yield_now().await;
        // Any request: the one slot of the layer is taken, and `wait(ZERO)` refuses at once.
        let refused = svc.clone().oneshot(1).await.unwrap_err();
        assert_eq!(
            refused.downcast_ref::<NoSlot>().unwrap().waited,
            Duration::ZERO
        );
        // A clone of the layer shares its slots; a layer changed by a setter does not.
        let shared = layer.clone().layer(service_fn(sleep));
        assert!(shared.oneshot(1).await.is_err());
        let renamed = layer.name("other").layer(service_fn(sleep));
        assert_eq!(renamed.oneshot(1).await.unwrap(), 1);
        long.await.unwrap().unwrap();
    }
}
