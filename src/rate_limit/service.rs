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

use super::future::ResponseFuture;
use super::layer::{MissingKey, Mode};
use super::policy::{Cost, QuotaPolicy};
use crate::headers::ietf::PartitionKey;
use crate::key::{KeyError, KeyExtractor};
use crate::limiter::{Admission, Admit, Admitted, Hold, Refusal, Settle};
use crate::respond::Refuse;
use crate::{Quotas, Store};

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
    pub(crate) respond: R,
    pub(crate) cost: C,
    pub(crate) mode: Mode,
    pub(crate) missing_key: MissingKey,
    /// The store and the reports: the admission path every decision takes.
    pub(crate) admission: Arc<Admission<S>>,
    /// Whether allowed responses carry rate-limit headers (not in shadow mode, unless asked).
    pub(crate) headers: bool,
    /// Whether a response's [`ActualCost`](super::ActualCost) settles its request's cost.
    pub(crate) settle: bool,
}

/// A slot taken in `poll_ready` for the next `call` (global limits in wait mode).
#[derive(Default)]
enum Reservation {
    #[default]
    None,
    /// A network store is deciding.
    Deciding(Mutex<Deciding>),
    /// A slot is reserved for the time the service's `sleep` ends.
    Waiting(Admitted),
    /// The slot has come: `call` may go ahead.
    Ready(Admitted),
    /// `call` refuses (over the limit, or the store failed).
    Refused(Refusal),
}

/// A network store's decision under way. (In a `Mutex` only to keep the service `Sync`: it is
/// reached through `&mut self`, so the lock is never contended.)
type Deciding = Pin<Box<dyn Future<Output = Result<Admitted, Refusal>> + Send>>;

impl<Svc, K, Q, S, R, C> RateLimit<Svc, K, Q, S, R, C> {
    service_ext_methods!();

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
            .field("name", &self.shared.admission.name)
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
    Q::Key: Hash + fmt::Debug + Clone + Send + Sync + 'static,
    S: Store<Q::Key>,
    R: Refuse<Req, Svc::Response, Svc::Error>,
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
        if let Mode::Wait(max_wait) = self.shared.mode {
            ready!(self.reserve::<Req>(cx, max_wait));
        }
        self.inner.poll_ready(cx).map_err(R::inner_error)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // Borrowed, not cloned: an `Arc` clone and drop per request were half of this
        // function's time (two locked instructions).
        let (shared, inner) = (&self.shared, &mut self.inner);
        if !matches!(self.reservation, Reservation::None) {
            match std::mem::take(&mut self.reservation) {
                Reservation::Ready(reserved) => {
                    return call_reserved(inner, shared, request, reserved)
                }
                Reservation::Refused(refusal) => {
                    // Decided in `poll_ready`, for the global key.
                    let partition =
                        (shared.key.global_key()).and_then(|key| shared.respond.partition(&key));
                    return shared.refuse::<Svc, Req>(refusal, &request, partition);
                }
                // `call` without a ready `poll_ready`: decide now (the reservation, dropped,
                // is given back).
                Reservation::None | Reservation::Deciding(_) | Reservation::Waiting(_) => {}
            }
        }
        let key = match shared.key.extract(&request) {
            Ok(key) => key,
            Err(error) => return without_key(inner, shared, request, error),
        };
        let quotas = shared.quotas.quotas(&key, &request);
        let quotas = quotas.borrow();
        let (charge, settle) = shared.charge(&request);
        // `None` at once unless the layer writes partition keys: no hash otherwise.
        let partition = shared.respond.partition(&key);
        let ask = Q::ask(&key, quotas)
            .with_cost(charge)
            .with_max_wait(shared.max_wait());
        let admit = (shared.admission).admit(
            ask,
            Hold {
                slot: false,
                settle,
            },
        );
        match admit {
            // The common case, here rather than in `proceed`: the request moves straight
            // into the inner call (passed through `proceed`, its 224 bytes were copied twice).
            Admit::Now(Ok(mut admitted)) if admitted.decision.wait().is_zero() => {
                let settle = settle_with(&mut admitted, None);
                let quotas = admitted.quotas(quotas);
                let note = shared.note(quotas, &admitted.decision, partition);
                ResponseFuture::settling(inner.call(request), note, settle)
            }
            admit => proceed(inner, shared, request, quotas, admit, None, partition),
        }
    }
}

/// A request without a key: exempt (no store call, no count), or missing, as the layer's
/// [`MissingKey`] policy says.
fn without_key<Svc, Req, K, Q, S, R, C>(
    inner: &mut Svc,
    shared: &Arc<Shared<K, Q, S, R, C>>,
    request: Req,
    error: KeyError,
) -> CallFuture<Svc, R, Req>
where
    Svc: Service<Req> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Response: Send + 'static,
    Req: Send + 'static,
    R: Refuse<Req, Svc::Response, Svc::Error>,
{
    if error.is_exempt() {
        return ResponseFuture::calling(inner.call(request), None);
    }
    let layer = &*shared.admission.name;
    if error.is_client_error() {
        tracing::debug!(target: "tollgate::rate_limit", layer, %error, "request without a key");
    } else {
        crate::logs::capped!(WARN, "tollgate::rate_limit", "request without a key"; layer, %error);
    }
    match shared.missing_key {
        MissingKey::Allow => ResponseFuture::calling(inner.call(request), None),
        MissingKey::Reject => shared.refuse::<Svc, Req>(Refusal::NoKey(error), &request, None),
    }
}

/// A call whose first unit was reserved in `poll_ready` (global key, fixed quotas).
fn call_reserved<Svc, Req, K, Q, S, R, C>(
    inner: &mut Svc,
    shared: &Arc<Shared<K, Q, S, R, C>>,
    request: Req,
    reserved: Admitted,
) -> CallFuture<Svc, R, Req>
where
    Svc: Service<Req> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Response: Send + 'static,
    Req: Send + 'static,
    K: KeyExtractor<Req>,
    Q: QuotaPolicy<K::Key, Req>,
    Q::Key: Hash + fmt::Debug + Clone + Send + Sync + 'static,
    S: Store<Q::Key>,
    R: Refuse<Req, Svc::Response, Svc::Error>,
    C: Cost<Req>,
{
    let (Some(key), Some(quotas)) = (shared.key.global_key(), shared.quotas.fixed()) else {
        // Reservations are made only for a global key and fixed quotas.
        return ResponseFuture::calling(inner.call(request), None);
    };
    let partition = shared.respond.partition(&key);
    match shared.cost.cost(&request) {
        // The reserved unit is the request's; a free request keeps it too when the response
        // settles the cost (it is the unit paid up front).
        cost @ (0 | 1) if cost == 1 || shared.settle => {
            let mut reserved = reserved;
            let mut settle = reserved.take_settle();
            if let Some(settle) = &mut settle {
                settle.estimate(cost);
            }
            let decision = reserved.use_slot();
            let note = shared.note(quotas, &decision, partition);
            ResponseFuture::settling(inner.call(request), note, settle)
        }
        // Free: the reserved unit is given back.
        0 => {
            drop(reserved);
            ResponseFuture::calling(inner.call(request), None)
        }
        // The reservation covers one unit; the rest is decided like any request, and the
        // reserved unit is given back if the rest is refused.
        cost => {
            if let Err(error) = quotas.check_cost(cost) {
                // Never passable, whatever was reserved (which is given back).
                drop(reserved);
                return shared.refuse::<Svc, Req>(Refusal::TooCostly(error), &request, partition);
            }
            let settle = shared.settle.then_some(cost - 1);
            let ask = Q::ask(&key, quotas)
                .with_cost(cost - 1)
                .with_max_wait(shared.max_wait());
            let admit = shared.admission.admit(
                ask,
                Hold {
                    slot: false,
                    settle,
                },
            );
            proceed(
                inner,
                shared,
                request,
                quotas,
                admit,
                Some(reserved),
                partition,
            )
        }
    }
}

/// Calls the inner service for an admitted request (after its wait), or answers a refused
/// one; `reserved`, a unit reserved earlier, is used or given back with it. `partition` is the
/// key's partition key, when the answer writes one.
#[inline(never)]
fn proceed<Svc, Req, K, Q, S, R, C>(
    inner: &mut Svc,
    shared: &Arc<Shared<K, Q, S, R, C>>,
    request: Req,
    quotas: &Quotas,
    admit: Admit,
    reserved: Option<Admitted>,
    partition: Option<PartitionKey>,
) -> CallFuture<Svc, R, Req>
where
    Svc: Service<Req> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Response: Send + 'static,
    Req: Send + 'static,
    K: KeyExtractor<Req>,
    Q: QuotaPolicy<K::Key, Req>,
    Q::Key: Hash + fmt::Debug + Clone + Send + Sync + 'static,
    S: Store<Q::Key>,
    R: Refuse<Req, Svc::Response, Svc::Error>,
    C: Cost<Req>,
{
    match admit {
        Admit::Now(Ok(mut admitted)) if admitted.decision.wait().is_zero() => {
            let settle = settle_with(&mut admitted, reserved);
            let quotas = admitted.quotas(quotas);
            let note = shared.note(quotas, &admitted.decision, partition);
            ResponseFuture::settling(inner.call(request), note, settle)
        }
        Admit::Now(Ok(mut admitted)) => {
            let settle = settle_with(&mut admitted, reserved);
            let quotas = admitted.quotas(quotas);
            let note = shared.note(quotas, &admitted.decision, partition);
            let inner = take_ready(inner);
            ResponseFuture::waiting(Box::pin(call_at::<_, _, R>(
                inner, request, admitted, note, settle,
            )))
        }
        Admit::Now(Err(refusal)) => {
            drop(reserved);
            shared.refuse::<Svc, Req>(refusal, &request, partition)
        }
        Admit::Later(deciding) => {
            // A network store: the rest happens in a boxed future.
            let (shared, quotas) = (Arc::clone(shared), quotas.clone());
            let inner = take_ready(inner);
            ResponseFuture::waiting(Box::pin(async move {
                let mut admitted = match deciding.await {
                    Ok(admitted) => admitted,
                    Err(refusal) => {
                        drop(reserved);
                        return shared.respond.refuse(refusal, &request, partition);
                    }
                };
                let settle = settle_with(&mut admitted, reserved);
                let quotas = admitted.quotas(&quotas);
                let note = shared.note(quotas, &admitted.decision, partition);
                call_at::<_, _, R>(inner, request, admitted, note, settle).await
            }))
        }
    }
}

impl<Svc, K, Q, S, R, C> RateLimit<Svc, K, Q, S, R, C> {
    /// Reserves the next call's slot: global key, fixed quotas, wait mode.
    fn reserve<Req>(&mut self, cx: &mut Context<'_>, max_wait: Duration) -> Poll<()>
    where
        K: KeyExtractor<Req>,
        Q: QuotaPolicy<K::Key, Req>,
        Q::Key: Hash + fmt::Debug + Clone + Send + Sync + 'static,
        S: Store<Q::Key>,
    {
        let shared = &*self.shared;
        let (Some(_), Some(quotas)) = (shared.key.global_key(), shared.quotas.fixed()) else {
            return Poll::Ready(());
        };
        loop {
            let admitted = match &mut self.reservation {
                Reservation::None => match shared.key.global_key().map(|key| {
                    let ask = Q::ask(&key, quotas).with_max_wait(max_wait);
                    let settle = shared.settle.then_some(1);
                    shared.admission.admit(ask, Hold { slot: true, settle })
                }) {
                    None => return Poll::Ready(()),
                    Some(Admit::Now(admitted)) => admitted,
                    Some(Admit::Later(deciding)) => {
                        self.reservation = Reservation::Deciding(Mutex::new(deciding));
                        continue;
                    }
                },
                Reservation::Deciding(deciding) => {
                    let deciding = deciding.get_mut().unwrap_or_else(PoisonError::into_inner);
                    ready!(deciding.as_mut().poll(cx))
                }
                Reservation::Waiting(_) => {
                    if let Some(sleep) = &mut self.sleep {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    if let Reservation::Waiting(admitted) = std::mem::take(&mut self.reservation) {
                        self.reservation = Reservation::Ready(admitted);
                    }
                    return Poll::Ready(());
                }
                Reservation::Ready(_) | Reservation::Refused(_) => return Poll::Ready(()),
            };
            self.reservation = match admitted {
                Err(refusal) => Reservation::Refused(refusal),
                Ok(admitted) if admitted.decision.wait().is_zero() => Reservation::Ready(admitted),
                Ok(admitted) => {
                    let deadline = Instant::now() + admitted.decision.wait();
                    match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    Reservation::Waiting(admitted)
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
    /// The headers of an allowed response, unless the layer is a quiet shadow.
    #[inline(always)]
    fn note<Req, T, E>(
        &self,
        quotas: &Quotas,
        decision: &crate::Decision,
        partition: Option<PartitionKey>,
    ) -> Option<<R as crate::respond::Respond<T, E>>::Note>
    where
        R: Refuse<Req, T, E>,
    {
        if self.headers {
            self.respond.note(quotas, decision, partition)
        } else {
            None
        }
    }

    /// What a request is charged up front, and the estimate its response settles, if it does.
    /// Settling from the response, a request pays at least one unit up front, so that a key
    /// with nothing left is refused even when the estimate is zero (counting only failures);
    /// what the response does not use is given back.
    #[inline]
    fn charge<Req>(&self, request: &Req) -> (u32, Option<u32>)
    where
        C: Cost<Req>,
    {
        let cost = self.cost.cost(request);
        match self.settle {
            true => (cost.max(1), Some(cost)),
            false => (cost, None),
        }
    }

    #[inline]
    fn max_wait(&self) -> Duration {
        match self.mode {
            Mode::Reject => Duration::ZERO,
            Mode::Wait(max) => max,
        }
    }

    fn refuse<Svc, Req>(
        &self,
        refusal: Refusal,
        request: &Req,
        partition: Option<PartitionKey>,
    ) -> CallFuture<Svc, R, Req>
    where
        Svc: Service<Req>,
        R: Refuse<Req, Svc::Response, Svc::Error>,
    {
        ResponseFuture::answered(self.respond.refuse(refusal, request, partition))
    }
}

/// The ready inner service, for a call made later; a clone takes its place, to be polled
/// ready again (see tower's guidance on `Clone` and `poll_ready`).
fn take_ready<Svc: Clone>(inner: &mut Svc) -> Svc {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Uses a unit reserved earlier (if any) with `admitted`, and returns the settlement of
/// both: the reserved unit is part of the estimate.
#[inline(always)]
fn settle_with(admitted: &mut Admitted, reserved: Option<Admitted>) -> Option<Settle> {
    let mut settle = admitted.take_settle();
    if let Some(mut reserved) = reserved {
        if let (Some(settle), Some(_)) = (&mut settle, reserved.take_settle()) {
            settle.covers_one_more();
        }
        reserved.use_slot();
    }
    settle
}

/// Sleeps until the admitted slot, then calls `inner` once it is ready.
async fn call_at<Svc, Req, R>(
    mut inner: Svc,
    request: Req,
    admitted: Admitted,
    note: Option<R::Note>,
    settle: Option<Settle>,
) -> Result<Svc::Response, R::Error>
where
    Svc: Service<Req>,
    R: Refuse<Req, Svc::Response, Svc::Error>,
{
    admitted.wait_for_slot().await;
    poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(R::inner_error)?;
    let mut response = inner.call(request).await.map_err(R::inner_error)?;
    if let Some(settle) = settle {
        settle.finish(R::actual_cost(&response));
    }
    if let Some(note) = note {
        R::annotate(note, &mut response);
    }
    Ok(response)
}
