//! Limits learned from the responses: an outbound client that keeps to what each server says,
//! so that it slows down before the server has to answer 429.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::learn::LearnLayer;
//! use tollgate::Quota;
//!
//! // Wait (up to 30 s) when a host says to; 10 per second to hosts that say nothing.
//! let layer = LearnLayer::new()
//!     .max_wait(Duration::from_secs(30))
//!     .default_quota(Quota::per_second(10).unwrap());
//! # drop(layer);
//! ```
//!
//! # What it reads
//!
//! Per destination (the URI's authority), from every response:
//!
//! - `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10): the item with the fewest requests
//!   left, its `r` and `t`; `RateLimit-Policy`'s `q` as the limit it comes back to;
//! - the older draft's `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`;
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (Unix seconds, Unix
//!   milliseconds or a delay, told apart by size);
//! - `Retry-After` on a 429 or a 503: the host is cooled down until then.
//!
//! After "0 left, reset in 30 s", the next request to that host waits until the reset (in
//! wait mode, the default) or is refused locally with a [`ServerLimit`] error (in reject mode)
//! instead of being sent and refused by the server. Requests still in flight count against
//! what the server said is left, so the client never sends more than the server allows.
//!
//! Malformed values are ignored, and no value can make a request wait longer than
//! [`max_wait`](LearnLayer::max_wait): past it, the request is refused locally.
//!
//! # Hosts that say nothing
//!
//! They get the [default quota](LearnLayer::default_quota), if one is set, or, in
//! [adaptive](LearnLayer::adaptive) mode, a rate that halves after every 429 or 503 and grows
//! by a step after every success, between a floor and a ceiling (additive increase,
//! multiplicative decrease, as AWS's adaptive retry mode treats throttling).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderMap, Request, Response, StatusCode};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::TokioClock;
use crate::headers::server;
use crate::key::{Authority as AuthorityKey, KeyExtractor};
use crate::limiter::Refusal;
use crate::{BoxError, MemoryStore, Quotas, RateLimiter};

/// The most destinations remembered; past it, hosts whose state has lapsed are forgotten.
const MAX_HOSTS: usize = 4096;

/// How often a request waiting for news of its host (spent, next reset unknown) looks again.
const NEWS_POLL: Duration = Duration::from_millis(100);

/// Keeps an outbound client to the limits its servers state. See the [module docs](self).
///
/// # Clone
///
/// Clones, and the services they make, share what was learned.
#[derive(Clone)]
#[must_use]
pub struct LearnLayer {
    shared: Arc<Shared>,
}

/// Additive increase, multiplicative decrease of a host's rate, in requests per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    /// The rate to start at.
    pub start: f64,
    /// Never slower than this.
    pub floor: f64,
    /// Never faster than this.
    pub ceiling: f64,
    /// Added after each success.
    pub step: f64,
    /// Multiplied in after each 429 or 503 (0.5: halved).
    pub decrease: f64,
}

impl Default for Aimd {
    /// From 10 per second, between 1 and 100, +1 per success, halved on throttling.
    fn default() -> Self {
        Self {
            start: 10.0,
            floor: 1.0,
            ceiling: 100.0,
            step: 1.0,
            decrease: 0.5,
        }
    }
}

struct Shared {
    hosts: Mutex<HashMap<Authority, Host>>,
    settings: Settings,
    /// Hosts that said nothing, under the default quota: the crate's one admission path.
    default_limiter: Option<RateLimiter<Authority, MemoryStore<TokioClock>>>,
}

/// What the builder methods set.
#[derive(Debug, Clone)]
struct Settings {
    wait: bool,
    max_wait: Duration,
    default_quota: Option<Quotas>,
    aimd: Option<Aimd>,
}

/// What was learned of one host.
#[derive(Debug, Clone, Default)]
struct Host {
    /// Requests the server still allows before `reset_at`, minus those sent since.
    remaining: Option<u64>,
    /// When the server's allowance comes back.
    reset_at: Option<Instant>,
    /// What it comes back to, when the server said.
    limit: Option<u64>,
    /// No request before this (a `Retry-After`).
    cooled_until: Option<Instant>,
    /// Requests sent and not yet answered.
    in_flight: u64,
    /// The server has sent limits.
    told: bool,
    /// Adaptive mode: the rate, and the time of the next free slot.
    rate: f64,
    next_slot: Option<Instant>,
}

/// A request refused locally because its host said to wait, and the wait is not allowed
/// (reject mode, or longer than the maximum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimit {
    /// The host.
    pub host: String,
    /// How long until the host would accept it.
    pub retry_after: Duration,
}

impl fmt::Display for ServerLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} asked to wait {:?} before the next request",
            self.host, self.retry_after
        )
    }
}

impl std::error::Error for ServerLimit {}

impl LearnLayer {
    /// Learns from responses, waits up to 60 s when told to, and leaves hosts that say nothing
    /// unlimited.
    pub fn new() -> Self {
        Self::with_settings(Settings {
            wait: true,
            max_wait: Duration::from_secs(60),
            default_quota: None,
            aimd: None,
        })
    }

    fn with_settings(settings: Settings) -> Self {
        let default_limiter = settings.default_quota.clone().map(|quotas| {
            let max_wait = if settings.wait {
                settings.max_wait
            } else {
                Duration::ZERO
            };
            RateLimiter::keyed(quotas)
                .store(MemoryStore::builder().clock(TokioClock::new()).build())
                .max_wait(max_wait)
                .name("learn_default")
        });
        Self {
            shared: Arc::new(Shared {
                hosts: Mutex::new(HashMap::new()),
                settings,
                default_limiter,
            }),
        }
    }

    /// A layer with changed settings (and nothing learned yet).
    fn change(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings.clone();
        change(&mut settings);
        Self::with_settings(settings)
    }

    /// The longest a request may wait for its host (default 60 s); beyond, it is refused with
    /// [`ServerLimit`]. It also caps what a hostile header can ask for.
    pub fn max_wait(self, max_wait: Duration) -> Self {
        self.change(|s| s.max_wait = max_wait)
    }

    /// Refuses at once, with [`ServerLimit`], instead of waiting.
    pub fn reject(self) -> Self {
        self.change(|s| s.wait = false)
    }

    /// Limits hosts that send no rate-limit headers to `quota`, until they do.
    pub fn default_quota(self, quota: impl Into<Quotas>) -> Self {
        let quotas = quota.into();
        self.change(|s| s.default_quota = Some(quotas))
    }

    /// Paces hosts that send no rate-limit headers with an adaptive rate (see [`Aimd`]).
    pub fn adaptive(self, aimd: Aimd) -> Self {
        self.change(|s| s.aimd = Some(aimd))
    }

    /// The rate adaptive mode has settled on for `host`, if it paces it.
    pub fn adaptive_rate(&self, host: &Authority) -> Option<f64> {
        let hosts = self
            .shared
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        hosts
            .get(host)
            .filter(|h| !h.told && self.shared.settings.aimd.is_some())
            .map(|h| h.rate)
    }
}

impl Default for LearnLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LearnLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LearnLayer")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for LearnLayer {
    type Service = Learn<S>;

    fn layer(&self, inner: S) -> Learn<S> {
        Learn {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`LearnLayer`].
#[derive(Clone)]
pub struct Learn<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for Learn<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Learn").finish_non_exhaustive()
    }
}

/// What admission decided.
enum Admit {
    /// Go now, holding this place.
    Now(Place),
    /// Go after this wait: the place (an adaptive slot) is booked.
    After(Duration, Place),
    /// Not before this wait; nothing was taken.
    Refuse(Duration),
}

/// A request's place with its host: counted in flight, and, in adaptive mode, the slot booked
/// for it. Dropping it gives back the count, and the booked slot if the request was never sent
/// (a request dropped while it waited).
struct Place {
    shared: Arc<Shared>,
    host: Authority,
    /// The booked adaptive slot: when, and the interval it took.
    booked: Option<(Instant, Duration)>,
}

impl Place {
    /// The request is sent: its slot is spent, whatever happens next.
    fn sent(&mut self) {
        self.booked = None;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut hosts = self.shared.lock();
        if let Some(state) = hosts.get_mut(&self.host) {
            state.in_flight = state.in_flight.saturating_sub(1);
            if let Some((slot, interval)) = self.booked {
                // Only the last slot booked can be given back without moving another's.
                if state.next_slot == Some(slot + interval) {
                    state.next_slot = Some(slot);
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Authority, Host>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for one request to `host`, or says how long until there is one (taking
    /// nothing then).
    fn admit(self: &Arc<Self>, host: &Authority, now: Instant) -> Admit {
        let mut hosts = self.lock();
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(host) {
            hosts.retain(|_, h| {
                h.in_flight > 0
                    || h.cooled_until.is_some_and(|t| t > now)
                    || h.reset_at.is_some_and(|t| t > now)
            });
        }
        let state = hosts.entry(host.clone()).or_insert_with(|| Host {
            rate: self.settings.aimd.map_or(0.0, |a| a.start),
            ..Host::default()
        });
        let mut wait = Duration::ZERO;
        if let Some(until) = state.cooled_until {
            if until > now {
                wait = until - now;
            } else {
                state.cooled_until = None;
            }
        }
        match state.reset_at {
            Some(reset) if reset <= now => {
                // The server's window came back: to its limit if it said one, else unknown.
                state.reset_at = None;
                state.remaining = state.limit;
            }
            Some(reset) if state.remaining == Some(0) => wait = wait.max(reset - now),
            // Spent, and the next reset unknown until an answer in flight says it: look again
            // shortly.
            None if state.remaining == Some(0) && state.in_flight > 0 => wait = wait.max(NEWS_POLL),
            _ => {}
        }
        if !wait.is_zero() {
            return Admit::Refuse(wait);
        }
        let place = |booked| Place {
            shared: Arc::clone(self),
            host: host.clone(),
            booked,
        };
        let mut booked = None;
        if !state.told {
            if let Some(aimd) = self.settings.aimd {
                let slot = state.next_slot.map_or(now, |s| s.max(now));
                let rate = state
                    .rate
                    .clamp(aimd.floor.max(1e-3), aimd.ceiling.max(aimd.floor.max(1e-3)));
                let interval = Duration::from_secs_f64(1.0 / rate);
                let wait = slot - now;
                let may_wait = self.settings.wait && wait <= self.settings.max_wait;
                if !(wait.is_zero() || may_wait) {
                    return Admit::Refuse(wait);
                }
                // The slot is taken: this request goes at `slot`.
                state.next_slot = Some(slot + interval);
                state.in_flight += 1;
                booked = Some((slot, interval));
                if !wait.is_zero() {
                    return Admit::After(wait, place(booked));
                }
            }
        }
        if let Some(remaining) = &mut state.remaining {
            *remaining = remaining.saturating_sub(1);
        }
        if booked.is_none() {
            state.in_flight += 1;
        }
        Admit::Now(place(booked))
    }

    /// Records what a response says of its host.
    fn learn(&self, host: &Authority, status: StatusCode, headers: &HeaderMap, now: Instant) {
        let mut hosts = self.lock();
        let Some(state) = hosts.get_mut(host) else {
            return;
        };
        let throttled =
            status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
        let cap = |d: Duration| d.min(self.settings.max_wait);
        let said = server::read(headers);
        if let Some(limits) = said.limits {
            state.told = true;
            // Other requests still in flight will spend from what is left.
            let others = state.in_flight.saturating_sub(1);
            state.remaining = Some(limits.remaining.saturating_sub(others));
            state.reset_at = limits.reset.map(|r| now + cap(r));
            if limits.limit.is_some() {
                state.limit = limits.limit;
            }
        }
        if throttled {
            // The same delay the retry layer reads: the later of every field.
            if let Some(delay) = said.delay {
                let until = now + cap(delay);
                state.cooled_until = Some(state.cooled_until.map_or(until, |t| t.max(until)));
            }
            if let Some(aimd) = self.settings.aimd {
                state.rate = (state.rate * aimd.decrease).max(aimd.floor);
            }
        } else if status.is_success() {
            if let Some(aimd) = self.settings.aimd {
                state.rate = (state.rate + aimd.step).min(aimd.ceiling);
            }
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Learn<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let Ok(host) = AuthorityKey.extract(&request) else {
            // No destination to learn about: pass it on.
            let future = self.inner.call(request);
            return Box::pin(async move { future.await.map_err(Into::into) });
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let start = Instant::now();
            let mut place = loop {
                let now = Instant::now();
                match shared.admit(&host, now) {
                    Admit::Now(place) => break place,
                    Admit::After(wait, place) => {
                        // Dropped while waiting, the place and its slot are given back.
                        tokio::time::sleep(wait).await;
                        break place;
                    }
                    Admit::Refuse(wait) => {
                        let waited = now - start;
                        if !shared.settings.wait || waited + wait > shared.settings.max_wait {
                            return Err(Box::new(ServerLimit {
                                host: host.to_string(),
                                retry_after: wait,
                            }) as BoxError);
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            };
            // Hosts that said nothing, under the default quota.
            if let Some(limiter) = &shared.default_limiter {
                let told = shared.lock().get(&host).is_some_and(|h| h.told);
                if !told {
                    let admitted = match shared.settings.wait {
                        true => limiter.key(host.clone()).acquire().await,
                        false => limiter.key(host.clone()).try_acquire().await,
                    };
                    match admitted {
                        Ok(_) => {}
                        Err(Refusal::Limited(limited)) => {
                            return Err(Box::new(ServerLimit {
                                host: host.to_string(),
                                retry_after: limited.retry_after(),
                            }) as BoxError);
                        }
                        Err(refusal) => return Err(Box::new(refusal) as BoxError),
                    }
                }
            }
            place.sent();
            send(&shared, &mut inner, request, host, place).await
        })
    }
}

async fn send<S, ReqB, ResB>(
    shared: &Shared,
    inner: &mut S,
    request: Request<ReqB>,
    host: Authority,
    place: Place,
) -> Result<Response<ResB>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = inner.call(request).await.map_err(Into::into)?;
    shared.learn(&host, response.status(), response.headers(), Instant::now());
    drop(place);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_limits(headers: &HeaderMap) -> Option<server::Limits> {
        server::read(headers).limits
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn reads_every_dialect() {
        let ietf = read_limits(&headers(&[
            ("ratelimit", "\"a\";r=5;t=10, \"b\";r=2;t=30"),
            ("ratelimit-policy", "\"a\";q=100;w=60, \"b\";q=10;w=60"),
        ]))
        .unwrap();
        assert_eq!(
            (ietf.remaining, ietf.reset, ietf.limit),
            (2, Some(Duration::from_secs(30)), Some(10))
        );
        let draft = read_limits(&headers(&[
            ("ratelimit-limit", "10"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "7"),
        ]))
        .unwrap();
        assert_eq!(
            (draft.remaining, draft.reset, draft.limit),
            (0, Some(Duration::from_secs(7)), Some(10))
        );
        let x = read_limits(&headers(&[
            ("x-ratelimit-remaining", "3"),
            ("x-ratelimit-reset", "12"),
        ]))
        .unwrap();
        assert_eq!((x.remaining, x.reset), (3, Some(Duration::from_secs(12))));
        assert!(read_limits(&headers(&[])).is_none());
    }

    #[test]
    fn hostile_values_are_ignored() {
        for pairs in [
            &[("x-ratelimit-remaining", "-1")][..],
            &[("x-ratelimit-remaining", "lots")],
            &[("ratelimit", "\"a\";r=-2;t=4")],
            &[("ratelimit-remaining", "99999999999999999999999")],
        ] {
            assert!(read_limits(&headers(pairs)).is_none(), "{pairs:?}");
        }
        let far = read_limits(&headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "99999999999"),
        ]))
        .unwrap();
        assert!(
            far.reset.unwrap() > Duration::from_secs(1_000_000),
            "read, then capped by the layer"
        );
    }
}
