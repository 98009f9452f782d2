use std::borrow::Borrow;
use std::fmt;
use std::future::{poll_fn, Future};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::events::{emit, LimitEvent, LimitEventKind};
use super::future::ResponseFuture;
use super::layer::{MissingKey, Mode, Options};
use super::policy::{Cost, QuotaPolicy};
use super::respond::{RateLimited, Refusal, Respond};
use crate::key::{KeyExtractor, LoggedKey};
use crate::metrics::LimiterMetrics;
use crate::{Decision, Quotas, Store, StoreError};

/// The service made by [`RateLimitLayer`](super::RateLimitLayer).
///
/// # Clone
///
/// Clones share the configuration and the store; a clone starts without the reservation
/// (see [`poll_ready`](#method.poll_ready)) of the service it was cloned from.
pub struct RateLimit<Svc, K, Q, S, R, C> {
    inner: Svc,
    shared: Arc<Shared<K, Q, S, R, C>>,
    reservation: Reservation,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// What every service of one layer shares.
pub(crate) struct Shared<K, Q, S, R, C> {
    pub(crate) key: K,
    pub(crate) quotas: Q,
    pub(crate) store: S,
    pub(crate) respond: R,
    pub(crate) cost: C,
    pub(crate) options: Options,
    pub(crate) metrics: LimiterMetrics,
}

/// A slot taken in `poll_ready` for the next `call` (global limits in wait mode).
#[derive(Default)]
enum Reservation {
    #[default]
    None,
    /// A network store is deciding.
    Deciding(Mutex<Deciding>),
    /// A slot is reserved for the time the service's `sleep` ends.
    Waiting(Decision, Refund),
    /// The slot has come: `call` may go ahead.
    Ready(Decision, Refund),
    /// The next slot is further than the maximum wait: `call` refuses.
    Refused(Decision, Quotas),
    /// The store failed: `call` refuses.
    Failed(StoreError),
}

/// A network store's decision under way. (In a `Mutex` only to keep the service `Sync`: it is
/// reached through `&mut self`, so the lock is never contended.)
type Deciding = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

/// Gives a reserved slot back unless it is used.
pub(crate) struct Refund(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Refund {
    fn new<K, S>(store: &S, key: K, quotas: &Quotas, cost: u32) -> Self
    where
        S: Store<K>,
        K: Send + Sync + 'static,
    {
        let (store, quotas) = (store.clone(), quotas.clone());
        Self(Some(Box::new(move || store.refund(&key, &quotas, cost))))
    }

    /// The slot was used.
    fn used(mut self) {
        self.0 = None;
    }
}

impl Drop for Refund {
    fn drop(&mut self) {
        if let Some(refund) = self.0.take() {
            refund();
        }
    }
}

impl<Svc, K, Q, S, R, C> RateLimit<Svc, K, Q, S, R, C> {
    pub(crate) fn new(inner: Svc, shared: Arc<Shared<K, Q, S, R, C>>) -> Self {
        Self {
            inner,
            shared,
            reservation: Reservation::None,
            sleep: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The wrapped service.
    pub fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }
}

impl<Svc: Clone, K, Q, S, R, C> Clone for RateLimit<Svc, K, Q, S, R, C> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<Svc, K, Q, S, R, C> fmt::Debug for RateLimit<Svc, K, Q, S, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("name", &self.shared.options.name)
            .finish_non_exhaustive()
    }
}

impl<Svc, Req, K, Q, S, R, C> Service<Req> for RateLimit<Svc, K, Q, S, R, C>
where
    Svc: Service<Req> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Response: Send + 'static,
    Req: Send + 'static,
    K: KeyExtractor<Req>,
    Q: QuotaPolicy<K::Key, Req>,
    S: Store<K::Key>,
    R: Respond<Svc::Response, Svc::Error>,
    C: Cost<Req>,
{
    type Response = Svc::Response;
    type Error = R::Error;
    type Future = ResponseFuture<Svc::Future, R, Svc::Response, Svc::Error>;

    /// Ready when the inner service is, and, for a global limit in wait mode, when a slot is
    /// reserved for the next call: until then `Pending`, with a timer that wakes this task
    /// (each waiting clone has its own, so no waiter is lost). A reservation that no call
    /// uses is given back when the service is dropped.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Mode::Wait(max_wait) = self.shared.options.mode {
            ready!(self.reserve::<Req>(cx, max_wait));
        }
        self.inner.poll_ready(cx).map_err(R::inner_error)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &*self.shared;
        if !matches!(self.reservation, Reservation::None) {
            match std::mem::take(&mut self.reservation) {
                Reservation::Ready(decision, refund) => {
                    return shared.call_reserved(&mut self.inner, request, decision, refund);
                }
                Reservation::Refused(decision, quotas) => {
                    let limited = RateLimited::new(decision, quotas);
                    return shared.refuse::<Svc, Req>(Refusal::Limited(limited));
                }
                Reservation::Failed(error) => {
                    return shared.refuse::<Svc, Req>(Refusal::StoreFailed(error));
                }
                // `call` without a ready `poll_ready`: decide now (the reservation, dropped,
                // is given back).
                Reservation::None | Reservation::Deciding(_) | Reservation::Waiting(..) => {}
            }
        }
        let key = match shared.key.extract(&request) {
            Ok(key) => key,
            Err(error) => {
                let limiter = &*shared.options.name;
                if error.is_client_error() {
                    tracing::debug!(target: "tollgate::rate_limit", limiter, %error, "request without a key");
                } else {
                    tracing::warn!(target: "tollgate::rate_limit", limiter, %error, "request without a key");
                }
                return match shared.options.missing_key {
                    MissingKey::Allow => ResponseFuture::calling(self.inner.call(request), None),
                    MissingKey::Reject => shared.refuse::<Svc, Req>(Refusal::NoKey(error)),
                };
            }
        };
        let quotas = shared.quotas.quotas(&key, &request);
        let cost = shared.cost.cost(&request);
        shared.decide(
            &self.shared,
            &mut self.inner,
            request,
            key,
            quotas.borrow(),
            cost,
        )
    }
}

impl<Svc, K, Q, S, R, C> RateLimit<Svc, K, Q, S, R, C> {
    /// Reserves the next call's slot: global key, fixed quotas, wait mode.
    fn reserve<Req>(&mut self, cx: &mut Context<'_>, max_wait: Duration) -> Poll<()>
    where
        K: KeyExtractor<Req>,
        Q: QuotaPolicy<K::Key, Req>,
        S: Store<K::Key>,
    {
        let shared = &*self.shared;
        let (Some(key), Some(quotas)) = (shared.key.global_key(), shared.quotas.fixed()) else {
            return Poll::Ready(());
        };
        loop {
            let decided = match &mut self.reservation {
                Reservation::None => match shared.store.decide_now(&key, quotas, 1, max_wait) {
                    Some(decided) => decided,
                    None => {
                        let deciding = shared.store.decide(&key, quotas, 1, max_wait);
                        self.reservation = Reservation::Deciding(Mutex::new(Box::pin(deciding)));
                        continue;
                    }
                },
                Reservation::Deciding(deciding) => {
                    let deciding = deciding.get_mut().unwrap_or_else(PoisonError::into_inner);
                    ready!(deciding.as_mut().poll(cx))
                }
                Reservation::Waiting(..) => {
                    if let Some(sleep) = &mut self.sleep {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    if let Reservation::Waiting(decision, refund) =
                        std::mem::take(&mut self.reservation)
                    {
                        self.reservation = Reservation::Ready(decision, refund);
                    }
                    return Poll::Ready(());
                }
                Reservation::Ready(..) | Reservation::Refused(..) | Reservation::Failed(_) => {
                    return Poll::Ready(());
                }
            };
            self.reservation = match decided {
                Err(error) => Reservation::Failed(error),
                Ok(decision) if !decision.is_allowed() => {
                    shared.event(LimitEventKind::Denied, &key, quotas, &decision);
                    Reservation::Refused(decision, quotas.clone())
                }
                Ok(decision) => {
                    let Some(slot_key) = shared.key.global_key() else {
                        return Poll::Ready(());
                    };
                    let refund = Refund::new(&shared.store, slot_key, quotas, 1);
                    if decision.wait().is_zero() {
                        Reservation::Ready(decision, refund)
                    } else {
                        shared.event(LimitEventKind::Waiting, &key, quotas, &decision);
                        let deadline = Instant::now() + decision.wait();
                        match &mut self.sleep {
                            Some(sleep) => sleep.as_mut().reset(deadline),
                            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
                        Reservation::Waiting(decision, refund)
                    }
                }
            };
        }
    }
}

/// The future of a [`RateLimit`] call.
type CallFuture<Svc, R, Req> = ResponseFuture<
    <Svc as Service<Req>>::Future,
    R,
    <Svc as Service<Req>>::Response,
    <Svc as Service<Req>>::Error,
>;

impl<K, Q, S, R, C> Shared<K, Q, S, R, C> {
    fn max_wait(&self) -> Duration {
        match self.options.mode {
            Mode::Reject => Duration::ZERO,
            Mode::Wait(max) => max,
        }
    }

    fn refuse<Svc, Req>(&self, refusal: Refusal) -> CallFuture<Svc, R, Req>
    where
        Svc: Service<Req>,
        R: Respond<Svc::Response, Svc::Error>,
    {
        ResponseFuture::answered(self.respond.refuse(refusal))
    }

    fn event<Key: Hash + fmt::Debug>(
        &self,
        kind: LimitEventKind,
        key: &Key,
        quotas: &Quotas,
        decision: &Decision,
    ) {
        let delay = match kind {
            LimitEventKind::Denied => {
                self.metrics.limited();
                decision.retry_after()
            }
            LimitEventKind::Waiting => {
                self.metrics.waited(decision.wait());
                decision.wait()
            }
        };
        emit(
            self.options.hook.as_ref(),
            &LimitEvent {
                kind,
                limiter: &self.options.name,
                key: LoggedKey::new(key, self.options.log_keys),
                delay,
                quota: &quotas.as_slice()[decision.quota_index()],
                decision,
            },
        );
    }

    #[inline]
    fn decide<Svc, Req>(
        &self,
        this: &Arc<Self>,
        inner: &mut Svc,
        request: Req,
        key: K::Key,
        quotas: &Quotas,
        cost: u32,
    ) -> CallFuture<Svc, R, Req>
    where
        Svc: Service<Req> + Clone + Send + 'static,
        Svc::Future: Send + 'static,
        Svc::Response: Send + 'static,
        Req: Send + 'static,
        K: KeyExtractor<Req>,
        Q: QuotaPolicy<K::Key, Req>,
        S: Store<K::Key>,
        R: Respond<Svc::Response, Svc::Error>,
        C: Cost<Req>,
    {
        if let Err(error) = quotas.check_cost(cost) {
            return self.refuse::<Svc, Req>(Refusal::TooCostly(error));
        }
        let max_wait = self.max_wait();
        match self.store.decide_now(&key, quotas, cost, max_wait) {
            Some(Ok(decision)) => self.decided(inner, request, key, quotas, cost, decision),
            Some(Err(error)) => self.refuse::<Svc, Req>(Refusal::StoreFailed(error)),
            None => {
                // A network store: the rest happens in a boxed future.
                let shared = Arc::clone(this);
                let deciding = self.store.decide(&key, quotas, cost, max_wait);
                let quotas = quotas.clone();
                let inner = take_ready(inner);
                ResponseFuture::waiting(Box::pin(async move {
                    let decision = match deciding.await {
                        Ok(decision) => decision,
                        Err(error) => return shared.respond.refuse(Refusal::StoreFailed(error)),
                    };
                    if !decision.is_allowed() {
                        shared.event(LimitEventKind::Denied, &key, &quotas, &decision);
                        return shared
                            .respond
                            .refuse(Refusal::Limited(RateLimited::new(decision, quotas)));
                    }
                    shared.metrics.allowed();
                    let refund = (!decision.wait().is_zero()).then(|| {
                        shared.event(LimitEventKind::Waiting, &key, &quotas, &decision);
                        Refund::new(&shared.store, key, &quotas, cost)
                    });
                    let note = shared.respond.note(&quotas, &decision);
                    call_at::<_, _, R>(inner, request, decision.wait(), refund, note).await
                }))
            }
        }
    }

    #[inline]
    fn decided<Svc, Req>(
        &self,
        inner: &mut Svc,
        request: Req,
        key: K::Key,
        quotas: &Quotas,
        cost: u32,
        decision: Decision,
    ) -> CallFuture<Svc, R, Req>
    where
        Svc: Service<Req> + Clone + Send + 'static,
        Svc::Future: Send + 'static,
        Svc::Response: Send + 'static,
        Req: Send + 'static,
        K: KeyExtractor<Req>,
        Q: QuotaPolicy<K::Key, Req>,
        S: Store<K::Key>,
        R: Respond<Svc::Response, Svc::Error>,
        C: Cost<Req>,
    {
        if !decision.is_allowed() {
            self.event(LimitEventKind::Denied, &key, quotas, &decision);
            return self
                .refuse::<Svc, Req>(Refusal::Limited(RateLimited::new(decision, quotas.clone())));
        }
        self.metrics.allowed();
        let note = self.respond.note(quotas, &decision);
        if decision.wait().is_zero() {
            return ResponseFuture::calling(inner.call(request), note);
        }
        self.event(LimitEventKind::Waiting, &key, quotas, &decision);
        let refund = Refund::new(&self.store, key, quotas, cost);
        ResponseFuture::waiting(Box::pin(call_at::<_, _, R>(
            take_ready(inner),
            request,
            decision.wait(),
            Some(refund),
            note,
        )))
    }

    /// A call with the slot reserved in `poll_ready` (for cost 1).
    fn call_reserved<Svc, Req>(
        &self,
        inner: &mut Svc,
        request: Req,
        decision: Decision,
        refund: Refund,
    ) -> CallFuture<Svc, R, Req>
    where
        Svc: Service<Req> + Clone + Send + 'static,
        Svc::Future: Send + 'static,
        Svc::Response: Send + 'static,
        Req: Send + 'static,
        K: KeyExtractor<Req>,
        Q: QuotaPolicy<K::Key, Req>,
        S: Store<K::Key>,
        R: Respond<Svc::Response, Svc::Error>,
        C: Cost<Req>,
    {
        refund.used();
        self.metrics.allowed();
        let (Some(quotas), Some(key)) = (self.quotas.fixed(), self.key.global_key()) else {
            // Reservations are only made for a global key and fixed quotas.
            return ResponseFuture::calling(inner.call(request), None);
        };
        match self.cost.cost(&request) {
            1 => {
                let note = self.respond.note(quotas, &decision);
                ResponseFuture::calling(inner.call(request), note)
            }
            0 => {
                self.store.refund(&key, quotas, 1);
                ResponseFuture::calling(inner.call(request), None)
            }
            // The reservation covered one unit; the rest is decided like any request.
            cost => {
                let max_wait = self.max_wait();
                match self.store.decide_now(&key, quotas, cost - 1, max_wait) {
                    Some(Ok(decision)) => {
                        self.decided(inner, request, key, quotas, cost - 1, decision)
                    }
                    Some(Err(error)) => self.refuse::<Svc, Req>(Refusal::StoreFailed(error)),
                    None => ResponseFuture::calling(inner.call(request), None),
                }
            }
        }
    }
}

/// The ready inner service, for a call made later; a clone takes its place, to be polled
/// ready again (see tower's guidance on `Clone` and `poll_ready`).
fn take_ready<Svc: Clone>(inner: &mut Svc) -> Svc {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Sleeps until the slot, then calls `inner` once it is ready.
async fn call_at<Svc, Req, R>(
    mut inner: Svc,
    request: Req,
    wait: Duration,
    refund: Option<Refund>,
    note: Option<R::Note>,
) -> Result<Svc::Response, R::Error>
where
    Svc: Service<Req>,
    R: Respond<Svc::Response, Svc::Error>,
{
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    if let Some(refund) = refund {
        refund.used();
    }
    poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(R::inner_error)?;
    let mut response = inner.call(request).await.map_err(R::inner_error)?;
    if let Some(note) = note {
        R::annotate(note, &mut response);
    }
    Ok(response)
}
