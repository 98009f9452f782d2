use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower_layer::Layer;

use super::policy::OnePerRequest;
use super::service::{RateLimit, Shared};
use crate::key::{Global, LogKeys};
use crate::limiter::{Admission, Block, Hook, LimitEvent, LimiterStats, NearLimit, Watch};
use crate::respond::{EmptyBody, Errors, Grpc, HeaderOptions, Http};
use crate::{MemoryStore, Quotas};

/// Applies rate limits to a tower service. See the [module docs](super) for a tour.
///
/// Built with [`RateLimitLayer::new`] and configured with methods that each return the
/// layer: [`key`](Self::key), [`quotas`](Self::quotas), [`store`](Self::store),
/// [`cost`](Self::cost), [`wait`](Self::wait), [`headers`](Self::headers), ...
///
/// # On clients, and services that are not HTTP
///
/// By default the layer answers refused requests itself with an HTTP response (429), which
/// it can only build for `http::Response<B>` with `B: Default` (axum's, tonic's and
/// tower-http's bodies). A hyper or reqwest client's response body has no `Default`, so on a
/// client call [`errors`](Self::errors): a refusal then fails the call with a
/// [`RateLimited`](super::RateLimited) error. Without it, the stack does not compile
/// ("`RateLimit<…>: Service<_>` is not satisfied"). Other non-HTTP services need it too.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tollgate::key::Destination;
/// use tollgate::{Quota, RateLimitLayer};
/// use tower::ServiceBuilder;
///
/// let client = ServiceBuilder::new()
///     .layer(
///         RateLimitLayer::new(Quota::per_second(10)?)
///             .key(Destination) // one limit per destination host
///             .wait(Duration::from_secs(5))
///             .errors(), // a client: refusals are errors
///     )
///     .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
/// # drop(client);
/// # Ok::<(), tollgate::QuotaError>(())
/// ```
///
/// # Clone
///
/// Cheap (a few `Arc`s). Every clone of the layer, and every service it makes, shares one
/// store: the limit holds however many times a framework clones the service.
#[must_use]
pub struct RateLimitLayer<K = Global, Q = Quotas, S = MemoryStore, R = Http, C = OnePerRequest> {
    key: K,
    quotas: Q,
    store: S,
    respond: R,
    cost: C,
    options: Options,
    /// What every service this layer makes shares, built on the first `layer` call and kept:
    /// frameworks call `layer` often (axum, for a handler's route served as a plain service,
    /// on every request), and the metrics' registration and the near-limit table are made
    /// once. Any change to the configuration starts a new one.
    shared: SharedOnce<K, Q, S, R, C>,
}

type SharedOnce<K, Q, S, R, C> = Arc<std::sync::OnceLock<Arc<Shared<K, Q, S, R, C>>>>;

/// What the layer does with a request whose key cannot be extracted
/// ([`RateLimitLayer::on_missing_key`]).
///
/// By default such a request is refused: 400 when the client caused it (a missing header, a
/// malformed forwarding chain), 500 when the server did (no peer address: the server was not
/// made with `into_make_service_with_connect_info`). Either way a `tracing` event says why,
/// at WARN for the server's mistakes and at DEBUG for the client's, so that a flood of bad
/// requests does not flood the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Refuse it: HTTP 400 when the client caused it (a missing header, a malformed chain),
    /// 500 when the server did (no peer address), or a [`KeyError`](crate::key::KeyError).
    /// The default.
    #[default]
    Reject,
    /// Let it through, unlimited.
    Allow,
}

/// Refuse over the limit, or wait for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Reject,
    Wait(Duration),
}

#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) mode: Mode,
    pub(crate) missing_key: MissingKey,
    pub(crate) hook: Option<Hook>,
    pub(crate) name: Arc<str>,
    pub(crate) log_keys: LogKeys,
    pub(crate) shadow: Shadow,
    /// Near-limit events at this percentage of the burst left, if any.
    pub(crate) near_limit: Option<u8>,
    /// Blocks: refusals tolerated, and how long a key that exceeds them is blocked.
    pub(crate) block: Option<(crate::Quota, Duration)>,
    pub(crate) stats: Option<LimiterStats>,
    /// Whether responses settle their request's cost ([`ActualCost`](super::ActualCost)).
    pub(crate) settle: bool,
}

/// Whether the layer enforces its limits, or only watches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Shadow {
    /// Enforce: refuse over the limit, make requests wait.
    #[default]
    Off,
    /// Decide and report, let everything through at once; headers only if asked.
    On { headers: bool },
}

impl RateLimitLayer {
    /// A global limit of `quotas` (a [`Quota`](crate::Quota) or [`Quotas`]) in the memory
    /// store, refusing with 429 and IETF rate-limit headers.
    pub fn new(quotas: impl Into<Quotas>) -> Self {
        Self {
            key: Global,
            quotas: quotas.into(),
            store: MemoryStore::new(),
            respond: Http::new(),
            cost: OnePerRequest,
            options: Options {
                mode: Mode::Reject,
                missing_key: MissingKey::Reject,
                hook: None,
                name: Arc::from("rate_limit"),
                log_keys: LogKeys::Hashed,
                shadow: Shadow::Off,
                near_limit: None,
                block: None,
                stats: None,
                settle: false,
            },
            shared: Arc::default(),
        }
    }

    /// One decision across several keys per request, each with its own quota: per user *and*
    /// per route *and* global, all or nothing (see [`Scopes`](crate::key::Scopes)). The
    /// quotas are the scopes'; otherwise as [`new`](Self::new).
    pub fn scoped<Req: 'static>(
        scopes: crate::key::Scopes<Req>,
    ) -> RateLimitLayer<crate::key::Scopes<Req>, super::policy::ScopedQuotas> {
        let first =
            scopes.quotas().next().cloned().unwrap_or_else(|| {
                Quotas::from(crate::Quota::per_second(1).expect("a valid quota"))
            });
        Self::new(first.clone())
            .key(scopes)
            .quotas(super::policy::ScopedQuotas { first })
    }

    /// A global limit whose quotas can change while it runs, through `limits` or any clone
    /// of it (see [`LiveQuotas`](super::LiveQuotas)); otherwise as [`new`](Self::new).
    pub fn live(limits: super::LiveQuotas) -> RateLimitLayer<Global, super::LiveQuotas> {
        Self::new(limits.get()).quotas(limits)
    }
}

impl<K, Q, S, R, C> RateLimitLayer<K, Q, S, R, C> {
    /// Every setting goes through here: a change to the configuration starts a new shared
    /// state for the services the layer makes from now on.
    fn change(mut self, set: impl FnOnce(&mut Self)) -> Self {
        set(&mut self);
        self.shared = Arc::default();
        self
    }

    /// The same layer with its parts replaced by `map`'s (a setter that changes a type), and
    /// a new shared state.
    fn rebuild<K2, Q2, S2, R2, C2>(
        self,
        map: impl FnOnce(K, Q, S, R, C) -> (K2, Q2, S2, R2, C2),
    ) -> RateLimitLayer<K2, Q2, S2, R2, C2> {
        let (key, quotas, store, respond, cost) =
            map(self.key, self.quotas, self.store, self.respond, self.cost);
        RateLimitLayer {
            key,
            quotas,
            store,
            respond,
            cost,
            options: self.options,
            shared: Arc::default(),
        }
    }

    /// How requests become keys: a [`KeyExtractor`](crate::key::KeyExtractor) such as
    /// [`PeerIp`](crate::key::PeerIp), or a closure `Fn(&Request) -> Option<Key>`.
    pub fn key<K2>(self, key: K2) -> RateLimitLayer<K2, Q, S, R, C> {
        self.rebuild(|_, quotas, store, respond, cost| (key, quotas, store, respond, cost))
    }

    /// Which quotas apply: the same for every request ([`Quotas`]), by tier
    /// ([`Tiers`](super::Tiers)), or from a closure `Fn(&Key, &Request) -> Quotas`.
    pub fn quotas<Q2>(self, quotas: Q2) -> RateLimitLayer<K, Q2, S, R, C> {
        self.rebuild(|key, _, store, respond, cost| (key, quotas, store, respond, cost))
    }

    /// Where the state lives: the [`MemoryStore`] by default (give it your own to configure
    /// it, or to query it), or any [`Store`](crate::Store).
    pub fn store<S2>(self, store: S2) -> RateLimitLayer<K, Q, S2, R, C> {
        self.rebuild(|key, quotas, _, respond, cost| (key, quotas, store, respond, cost))
    }

    /// What a request costs: a closure `Fn(&Request) -> u32` (1 per request by default).
    pub fn cost<C2>(self, cost: C2) -> RateLimitLayer<K, Q, S, R, C2> {
        self.rebuild(|key, quotas, store, respond, _| (key, quotas, store, respond, cost))
    }

    /// Answer with errors instead of HTTP responses: for services that are not HTTP. A refused
    /// request fails with a boxed [`RateLimited`](super::RateLimited), and the inner errors are
    /// boxed too.
    pub fn errors(self) -> RateLimitLayer<K, Q, S, Errors, C> {
        self.rebuild(|key, quotas, store, _, cost| (key, quotas, store, Errors, cost))
    }

    /// Wait mode: a request over the limit waits for its slot, in arrival order per key, if
    /// the slot comes within `max_wait`; past that it is refused as in reject mode.
    ///
    /// With the global key and fixed quotas the wait happens in `poll_ready` (backpressure:
    /// the service is not ready until a slot is reserved); otherwise in the response future.
    /// Waiting needs a tokio runtime's timer.
    pub fn wait(self, max_wait: Duration) -> Self {
        self.change(|layer| {
            layer.options.mode = Mode::Wait(max_wait);
        })
    }

    /// Reject mode, the default: a request over the limit is refused at once.
    pub fn reject(self) -> Self {
        self.change(|layer| {
            layer.options.mode = Mode::Reject;
        })
    }

    /// What to do with requests whose key cannot be extracted (default:
    /// [`MissingKey::Reject`]). Either way, a `tracing` event says why.
    pub fn on_missing_key(self, policy: MissingKey) -> Self {
        self.change(|layer| {
            layer.options.missing_key = policy;
        })
    }

    /// Calls `hook` for every denied request and every request made to wait, with its key
    /// (shown as [`log_keys`](Self::log_keys) says) and delay. A `tracing` event (target
    /// `tollgate::rate_limit`, level DEBUG) is emitted either way.
    pub fn on_event(self, hook: impl Fn(&LimitEvent<'_>) + Send + Sync + 'static) -> Self {
        self.change(|layer| layer.options.hook = Some(Arc::new(hook)))
    }

    /// How keys are shown in `tracing` events and hook events: a short keyed hash by default,
    /// since keys may be secrets; [`LogKeys::Clear`] for keys that are not (client IPs).
    pub fn log_keys(self, shown: LogKeys) -> Self {
        self.change(|layer| {
            layer.options.log_keys = shown;
        })
    }

    /// Shadow mode: the layer decides and records as usual (the store's state, events with
    /// [`shadow`](LimitEvent::shadow) set, `tracing`, metrics with `shadow="true"`), but lets
    /// every request through at once and writes no rate-limit headers: how to try a new
    /// limit on real traffic (Envoy's `shadow_mode`, nginx's `limit_req_dry_run`). A request
    /// over the limit is let through uncharged and one that would have waited is charged
    /// where it would have waited, so the store holds what enforcement would have left and
    /// the counters say how many requests would have been refused
    /// (`tollgate_rate_limit_limited_total{shadow="true"}`, or
    /// [`LimitEventKind::Denied`](crate::rate_limit::LimitEventKind::Denied) events).
    /// [`shadow_headers`](Self::shadow_headers) writes the headers too.
    pub fn shadow(self) -> Self {
        self.change(|layer| {
            layer.options.shadow = Shadow::On { headers: false };
        })
    }

    /// Shadow mode ([`shadow`](Self::shadow)) that still writes the rate-limit headers, so
    /// that clients can be seen to react before the limit is enforced.
    pub fn shadow_headers(self) -> Self {
        self.change(|layer| {
            layer.options.shadow = Shadow::On { headers: true };
        })
    }

    /// Reports a key whose remaining share falls to `percent_left` of its burst or below
    /// (1–100; 20 is Envoy's near-limit ratio, "alert at 80% usage"): a
    /// [`LimitEventKind::NearLimit`](crate::rate_limit::LimitEventKind::NearLimit) event,
    /// an INFO `tracing` event and `tollgate_rate_limit_near_limit_total`, at most once per
    /// key and quota per window (the time the bucket takes to refill), so that a hot key does
    /// not flood the hook. Off by default, and free when off.
    pub fn near_limit(self, percent_left: u8) -> Self {
        self.change(|layer| {
            layer.options.near_limit = Some(percent_left);
        })
    }

    /// Blocks a key refused faster than `refusals` allows (`Quota::per_minute(10)`: more than
    /// ten refusals a minute) for `duration`: its requests are then refused at once, without
    /// asking the store, with a `Retry-After` of the block's end (rate-limiter-flexible's
    /// `blockDuration`). A client hammering past its limit costs the store nothing and learns
    /// to stop. A [`LimitEventKind::Blocked`](crate::rate_limit::LimitEventKind::Blocked)
    /// event, a WARN log and `tollgate_rate_limit_blocked_total` mark each block. Blocks are
    /// kept per layer in this process (a bounded table), also over a network store. Not in
    /// shadow mode.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::key::PeerIp;
    /// use tollgate::{Quota, RateLimitLayer};
    ///
    /// // 5 logins a minute; past 10 refusals a minute, no login for 15 minutes.
    /// let login = RateLimitLayer::new(Quota::per_minute(5)?)
    ///     .key(PeerIp::new())
    ///     .block(Quota::per_minute(10)?, Duration::from_secs(15 * 60));
    /// # drop(login);
    /// # Ok::<(), tollgate::QuotaError>(())
    /// ```
    pub fn block(self, refusals: crate::Quota, duration: Duration) -> Self {
        self.change(|layer| {
            layer.options.block = Some((refusals, duration));
        })
    }

    /// Counts what this layer decides into `stats` (allowed, refused, waited, near-limit
    /// reports, blocks, and the most refused keys), for an operator to read with
    /// [`LimiterStats::snapshot`]. Every service the layer makes counts into it. Off by
    /// default: a layer without it pays nothing.
    pub fn stats(self, stats: LimiterStats) -> Self {
        self.change(|layer| {
            layer.options.stats = Some(stats);
        })
    }

    /// Settles each request's cost from its response: the cost charged up front (one, or what
    /// [`cost`](Self::cost) says) is an estimate, and when the response carries an
    /// [`ActualCost`](super::ActualCost) in its extensions, the difference is charged (even
    /// past the limit: the debt is real, and later requests wait or are refused for it) or
    /// given back. For costs known only after the work: LLM tokens, rows, bytes. A response
    /// without one keeps the estimate.
    ///
    /// Up front, a request pays its estimate and at least one unit, so that a key with
    /// nothing left is refused; what its response does not use is given back.
    ///
    /// *Count only failures* (failed logins) is an estimate of zero: `.cost(|_| 0)`, and the
    /// handler answers a failure with `ActualCost(1)`. A success is then free (its unit is
    /// given back), and a key that has failed its burst is refused until it refills.
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use axum::routing::post;
    /// use tollgate::key::PeerIp;
    /// use tollgate::rate_limit::ActualCost;
    /// use tollgate::{Quota, RateLimitLayer};
    ///
    /// async fn login() -> axum::response::Response {
    ///     let failed = true; // a wrong password, say
    ///     let mut response = "wrong password".into_response();
    ///     if failed {
    ///         response.extensions_mut().insert(ActualCost(1));
    ///     }
    ///     response
    /// }
    ///
    /// // Five failed logins a minute per client; successful ones are free.
    /// let app = axum::Router::<()>::new().route("/login", post(login)).layer(
    ///     RateLimitLayer::new(Quota::per_minute(5)?)
    ///         .key(PeerIp::new())
    ///         .cost(|_: &http::Request<axum::body::Body>| 0)
    ///         .settle_cost(),
    /// );
    /// # drop(app);
    /// # Ok::<(), tollgate::QuotaError>(())
    /// ```
    pub fn settle_cost(self) -> Self {
        self.change(|layer| {
            layer.options.settle = true;
        })
    }

    /// Names the limiter in events and logs (default `rate_limit`).
    pub fn name(self, name: impl Into<Arc<str>>) -> Self {
        self.change(|layer| {
            layer.options.name = name.into();
        })
    }

    /// The store, to query or reset keys.
    pub fn store_ref(&self) -> &S {
        &self.store
    }
}

impl<K, Q, S, F, C> RateLimitLayer<K, Q, S, Http<F>, C> {
    /// Which rate-limit headers to send (default: IETF `RateLimit` and `RateLimit-Policy`, on
    /// every response).
    pub fn headers(self, options: HeaderOptions) -> Self {
        self.change(|layer| {
            layer.respond.set_headers(options);
        })
    }

    /// The status of a response over the limit (default 429 Too Many Requests).
    pub fn refusal_status(self, status: StatusCode) -> Self {
        self.change(|layer| {
            layer.respond.status = status;
        })
    }

    /// Builds refusals with `build` instead of an empty body; the layer still adds
    /// `Retry-After` (unless set) and the rate-limit headers.
    ///
    /// ```
    /// use axum::body::Body;
    /// use http::{Response, StatusCode};
    /// use tollgate::rate_limit::{RateLimitLayer, Refusal};
    /// use tollgate::Quota;
    ///
    /// let layer = RateLimitLayer::new(Quota::per_second(5).unwrap()).refuse_with(|refusal: &Refusal| {
    ///     Response::builder()
    ///         .status(refusal.status())
    ///         .header("content-type", "text/plain")
    ///         .body(Body::from(format!("{refusal}\n")))
    ///         .unwrap()
    /// });
    /// # drop(layer);
    /// ```
    pub fn refuse_with<G>(self, build: G) -> RateLimitLayer<K, Q, S, Http<G>, C> {
        self.rebuild(|key, quotas, store, respond, cost| {
            (key, quotas, store, respond.replace_body(build), cost)
        })
    }

    /// Answers gRPC calls (tonic servers among them): a refusal is a trailers-only response,
    /// HTTP 200 with a gRPC status, never an HTTP 429 that gRPC clients would report as a
    /// transport failure. The rate-limit fields go along as metadata.
    ///
    /// | refusal | `grpc-status` |
    /// | --- | --- |
    /// | over the limit | 8, `RESOURCE_EXHAUSTED`, with `grpc-retry-pushback-ms` (and `retry-after`) |
    /// | no key, the client's mistake | 3, `INVALID_ARGUMENT` |
    /// | no key, the server's mistake | 13, `INTERNAL` |
    /// | a cost above the burst | 3, `INVALID_ARGUMENT` |
    /// | the store failed | 14, `UNAVAILABLE` |
    pub fn grpc(self) -> RateLimitLayer<K, Q, S, Grpc, C> {
        self.rebuild(|key, quotas, store, respond, cost| {
            let grpc = Grpc::new(respond.replace_body(EmptyBody));
            (key, quotas, store, grpc, cost)
        })
    }

    /// Refusals with an empty body again.
    pub fn empty_refusals(self) -> RateLimitLayer<K, Q, S, Http<EmptyBody>, C> {
        self.refuse_with(EmptyBody)
    }
}

impl<Svc, K, Q, S, R, C> Layer<Svc> for RateLimitLayer<K, Q, S, R, C>
where
    K: Clone,
    Q: Clone,
    S: Clone,
    R: Clone,
    C: Clone,
{
    type Service = RateLimit<Svc, K, Q, S, R, C>;

    fn layer(&self, inner: Svc) -> Self::Service {
        let shared = self.shared.get_or_init(|| {
            Arc::new(Shared {
                key: self.key.clone(),
                quotas: self.quotas.clone(),
                respond: self.respond.clone(),
                cost: self.cost.clone(),
                mode: self.options.mode,
                missing_key: self.options.missing_key,
                admission: Arc::new(
                    Admission::new(
                        self.store.clone(),
                        Arc::clone(&self.options.name),
                        self.options.hook.clone(),
                        self.options.log_keys,
                    )
                    .watching(Watch {
                        shadow: self.options.shadow != Shadow::Off,
                        near_limit: self.options.near_limit.map(NearLimit::new),
                        block: (self.options.block.as_ref()).map(|(refusals, duration)| {
                            Block::new(refusals, *duration, Arc::clone(&self.options.name))
                        }),
                        stats: self.options.stats.clone(),
                    }),
                ),
                headers: !matches!(self.options.shadow, Shadow::On { headers: false }),
                settle: self.options.settle,
            })
        });
        RateLimit::new(inner, Arc::clone(shared))
    }
}

impl<K: Clone, Q: Clone, S: Clone, R: Clone, C: Clone> Clone for RateLimitLayer<K, Q, S, R, C> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            quotas: self.quotas.clone(),
            store: self.store.clone(),
            respond: self.respond.clone(),
            cost: self.cost.clone(),
            options: self.options.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, Q, S, R, C> fmt::Debug for RateLimitLayer<K, Q, S, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.options.name)
            .field("mode", &self.options.mode)
            .field("missing_key", &self.options.missing_key)
            .finish_non_exhaustive()
    }
}
