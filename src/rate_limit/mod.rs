//! The rate-limit middleware: [`RateLimitLayer`] and the [`RateLimit`] service it makes.
//!
//! ```
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use tollgate::key::Header;
//! use tollgate::rate_limit::RateLimitLayer;
//! use tollgate::Quota;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Two requests per minute per API key, answered by axum routes.
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(
//!     RateLimitLayer::new(Quota::per_minute(2).unwrap()).key(Header::new("x-api-key")),
//! );
//! let request = || Request::get("/").header("x-api-key", "k1").body(Body::empty()).unwrap();
//!
//! let first = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::OK);
//! assert_eq!(first.headers()["ratelimit"], "\"default\";r=1;t=30");
//! assert_eq!(first.headers()["ratelimit-policy"], "\"default\";q=2;w=60");
//!
//! app.clone().oneshot(request()).await.unwrap();
//! let third = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["retry-after"], "30");
//! # }
//! ```
//!
//! # What it does with a request
//!
//! 1. The [key extractor](crate::key) names the request's bucket; without a key, the request
//!    is refused (400 or 500) or let through ([`MissingKey`]).
//! 2. The quotas are picked ([`RateLimitLayer::quotas`]: the same for all, by
//!    [`Tiers`], [`LiveQuotas`] or a closure), and the [cost](RateLimitLayer::cost) says how
//!    many units the request takes (1 by default).
//! 3. The [store](crate::Store) decides, through the same admission path as a direct
//!    [`RateLimiter`]: allowed, allowed after a wait (wait mode), or
//!    denied.
//! 4. Allowed requests go to the inner service, and its response gets the rate-limit headers;
//!    denied ones are answered by the layer: 429 with `Retry-After` for HTTP,
//!    `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms` for gRPC ([`RateLimitLayer::grpc`]),
//!    a [`RateLimited`] error for other services ([`RateLimitLayer::errors`]).
//!
//! # Reject or wait
//!
//! In reject mode (the default) a request over the limit is refused at once. In wait mode
//! ([`RateLimitLayer::wait`]) it reserves the next slot of its key, in arrival order, and waits
//! for it, unless the slot is further off than the maximum wait. A global limit (the
//! [`Global`](crate::key::Global) key) with fixed quotas waits in `poll_ready`: the service
//! reports itself not ready until a slot is reserved, which is true backpressure for
//! `tower::buffer`, load balancers and clients. Keyed limits wait in the response future,
//! since there is no key before a request. A reserved slot that is never used (the service or
//! the future dropped) is given back.
//!
//! # With axum
//!
//! `Router::layer`, `Router::route_layer` and `MethodRouter::layer` all work as they are: the
//! layer answers refusals with responses, so no `HandleErrorLayer` is needed, and its state is
//! shared by all clones, so no `BufferLayer` is needed either. Serve the router with
//! `into_make_service_with_connect_info::<SocketAddr>()` so that [`PeerIp`](crate::key::PeerIp)
//! and [`ClientIp`](crate::key::ClientIp) can see the peer (the `axum` feature, on by default).
//!
//! # What you can configure
//!
//! - **Quotas** ([`quota`](crate::quota)): `Quota::per_second(10)` is ten per second, never
//!   "one every ten seconds"; `per_minute`, `per_hour`, `per_day`, `per(period, n)`, `every(interval)`
//!   for fractional rates; `.with_burst(n)`; `.named("login")` for the headers. Bad values are
//!   errors when the quota is built. [`Quotas`](crate::Quotas) applies several at once (10/s
//!   burst 20 *and* 1000/hour): a request passes only if all allow it, and a denial by one
//!   charges none.
//! - **Keys** ([`key`](crate::key)): [`Global`](crate::key::Global) (the default),
//!   [`PeerIp`](crate::key::PeerIp), [`ClientIp`](crate::key::ClientIp) behind proxies,
//!   [`Header`](crate::key::Header), [`Destination`](crate::key::Destination) (outbound
//!   clients, per `host:port`), or any closure `Fn(&Request) -> Option<Key>`;
//!   [`Exempt`](crate::key::Exempt) lets health checks, internal networks or allow-listed keys
//!   through without a store call and without a count, whatever [`MissingKey`] says.
//! - **Quotas per key**: [`quotas`](RateLimitLayer::quotas) with [`Tiers`] (free and paid API
//!   keys) or a closure `Fn(&Key, &Request) -> Quotas`.
//! - **Changing a quota while it runs**: [`RateLimitLayer::live`] with a [`LiveQuotas`]
//!   handle, then `limits.set(…)` from anywhere (an admin route, a config watcher): no restart,
//!   one atomic load per request, and each key's debt carried over, rescaled, so raising a
//!   limit does not forgive abusers and lowering one does not reset them. A resolver of your
//!   own does the same with [`Quotas::carry_over_from`](crate::Quotas::carry_over_from), on
//!   the memory store, Redis and Redis Cluster alike.
//! - **Several keys at once**: [`RateLimitLayer::scoped`] with [`Scopes`](crate::key::Scopes)
//!   (per user *and* global) decides every scope in one all-or-nothing decision, so a request
//!   the global limit refuses spends none of the user's tokens.
//! - **Costs**: [`cost`](RateLimitLayer::cost) charges more than one unit per request; a cost
//!   above a burst is refused with 400 (it could never pass) rather than kept waiting.
//!   [`settle_cost`](RateLimitLayer::settle_cost) charges an estimate up front and settles the
//!   [`ActualCost`] the response reports (LLM tokens, rows, bytes; or *count only failures*,
//!   failed logins).
//! - **Reject or wait**: see [below](#reject-or-wait).
//! - **Clients and non-HTTP services**: [`errors`](RateLimitLayer::errors) fails with a boxed
//!   [`RateLimited`] (with its `retry_after`) instead of answering 429. A hyper or reqwest
//!   client needs it: without it the stack does not compile (see [`RateLimitLayer`]).
//! - **Hooks and logs**: [`on_event`](RateLimitLayer::on_event) sees every denial and wait,
//!   with the key (hashed unless [`log_keys`](RateLimitLayer::log_keys) says otherwise) and the
//!   delay; a `tracing` event (target `tollgate::rate_limit`) is emitted for each as well, and
//!   the counters of [`metrics`](crate::metrics).
//! - **Status queries**: hand the layer a [`MemoryStore`](crate::MemoryStore) you keep a clone
//!   of, and call [`status`](crate::MemoryStore::status) (remaining, reset) or
//!   [`reset`](crate::MemoryStore::reset) on it.
//! - **Trying a limit first**: [`shadow`](RateLimitLayer::shadow) decides and records but lets
//!   everything through; [`near_limit`](RateLimitLayer::near_limit) reports keys close to their
//!   limit, once per window.
//! - **Statistics for an operator**: [`stats`](RateLimitLayer::stats) with a [`LimiterStats`]
//!   counts allowed, refused, waited, near-limit reports and blocks, and follows the most
//!   refused keys in a Space-Saving sketch of 64 entries (fixed memory whatever the key count;
//!   keys shown hashed as in logs). The example server serves them at `/admin/limits` on its
//!   [admin listener](crate::admin).
//! - **Blocks**: [`block`](RateLimitLayer::block) shuts out for a while a key refused too
//!   often, without asking the store.
//!
//! ```
//! use tollgate::key::{Global, Header, PeerIp, Scopes};
//! use tollgate::rate_limit::LiveQuotas;
//! use tollgate::{Quota, RateLimitLayer};
//!
//! # fn main() -> Result<(), tollgate::QuotaError> {
//! // A new, stricter limit, watched before it is enforced, with alerts at 80% use.
//! let trial = RateLimitLayer::new(Quota::per_second(2)?)
//!     .key(PeerIp::new())
//!     .name("search-trial")
//!     .shadow()
//!     .near_limit(20)
//!     .on_event(|event| {
//!         if event.shadow {
//!             println!("{} would have been refused ({:?})", event.key, event.kind);
//!         }
//!     });
//!
//! // A limit that an admin route can raise while it runs, keeping every key's debt.
//! let limits = LiveQuotas::new(Quota::per_minute(60)?);
//! let api = RateLimitLayer::live(limits.clone()).key(PeerIp::new());
//! limits.set(Quota::per_minute(120)?);
//!
//! // Ten a second per API key, and a thousand a second for everyone, in one decision.
//! let scopes = Scopes::<http::Request<axum::body::Body>>::new()
//!     .scope("user", Header::new("x-api-key"), Quota::per_second(10)?)
//!     .scope("global", Global, Quota::per_second(1000)?);
//! let both = RateLimitLayer::scoped(scopes);
//! # drop((trial, api, both)); Ok(()) }
//! ```
//!
//! # Decisions worth knowing
//!
//! These are the behaviours where rate limiters differ; here is what this layer does, and why.
//!
//! - **Headers** (draft-ietf-httpapi-ratelimit-headers-10): `RateLimit-Policy: "name";q=Q;w=W`
//!   with `Q` the burst and `W` the seconds an empty bucket takes to fill;
//!   `RateLimit: "name";r=R;t=T` with `R` the requests left and `T` the seconds until one
//!   more is available (the draft's "additional quota"), left out when the bucket is full.
//!   With several quotas, the policy lists them all and `RateLimit` reports the binding one
//!   (the one that denied, or the one with the fewest left). They are sent on allowed
//!   responses too; [`HeaderOptions`] turns that off, adds the quota unit (`qu`) or a
//!   partition key (`pk`), or the legacy fields.
//! - **`Retry-After`** is whole seconds rounded up, and never `0` when a wait is needed
//!   (tower_governor sends `0` for sub-second waits, and clients retry at once).
//! - **Legacy headers** (`X-RateLimit-Limit`, `-Remaining`, `-Reset`) are off by default;
//!   [`HeaderOptions::legacy`] with [`Reset::DeltaSeconds`] writes the reset as seconds from
//!   now, with [`Reset::EpochSeconds`] as a Unix time (GitHub's style). The reset is when the
//!   bucket is full.
//! - **Refusal bodies** are empty by default (`ResBody: Default`, as in tower-http, so any body
//!   type works, tonic's included); [`refuse_with`](RateLimitLayer::refuse_with) builds your
//!   own, and the layer still adds the headers.
//! - **Missing keys** are refused: 400 when the client caused it, 500 when the server did
//!   ([`MissingKey`]).
//! - **Memory is bounded without chores**: the memory store forgets refilled keys by itself,
//!   and a flood of new keys costs the flooder, not other users (see
//!   [`MemoryStore`](crate::MemoryStore#memory) and its [cap](crate::MemoryStore#at-the-cap)).
//! - **Keys are secrets in logs**: events and logs show a key as `key#` and 48 bits of a
//!   keyed hash, so one client can be followed but its key cannot be read
//!   ([`LogKeys`](crate::key::LogKeys)).
//! - **Rounding**: a quota is never stricter than written
//!   ([arithmetic](crate::quota#arithmetic)).
//! - **Clocks**: the memory store reads the CPU's time-stamp counter; tests that pause
//!   tokio's clock give it a [`TokioClock`](crate::clock::TokioClock) ([`clock`](crate::clock)).
//!
//! # gRPC
//!
//! [`grpc`](RateLimitLayer::grpc) answers a refused call with a gRPC status instead of HTTP
//! 429; no feature is needed, as the layer speaks gRPC's status headers over plain `http`
//! types. Over the limit, the call ends with `RESOURCE_EXHAUSTED` and `grpc-retry-pushback-ms`
//! (plus `retry-after` and the `RateLimit` fields) in a trailers-only response; a missing key
//! is `INVALID_ARGUMENT`, a failed store `UNAVAILABLE`. With the `tonic` feature,
//! [`PeerIp`](crate::key::PeerIp) and [`ClientIp`](crate::key::ClientIp) read the
//! `TcpConnectInfo` tonic's server records, so `.key(PeerIp::new())` limits per peer as it
//! does on axum; without it they answer `INTERNAL` with a message naming the feature.
//!
//! ```rust,ignore
//! # use tollgate::{key, Quota, RateLimitLayer};
//! # use tonic::transport::Server;
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let (_reporter, health_service) = tonic_health::server::health_reporter();
//! Server::builder()
//!     .layer(RateLimitLayer::new(Quota::per_second(100)?).key(key::Header::new("x-api-key")).grpc())
//!     .add_service(health_service)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! (Compiled in CI as a doc test of `tests-integration`, which has the tonic and reqwest
//! dependencies this crate's own doc tests go without.)
//!
//! A tonic client retries with [`RetryLayer::grpc`](crate::RetryLayer::grpc) (see
//! [`retry`](crate::retry#grpc)). `tests-integration/tests/grpc.rs` runs both ends on loopback.
//!
//! # Order in a stack
//!
//! Layers listed outermost first. Each row is a test in `tests-integration/tests/composition.rs` (or the file
//! named) that runs in CI.
//!
//! | stack | why | test |
//! | --- | --- | --- |
//! | `RetryLayer` → `TimeoutLayer` → `RateLimitLayer` (per host, wait mode) → client | The timeout is per attempt, and a retry gets a fresh one; the rate limit paces every attempt, retries included, so retries cannot break the host's limit. | `client_retry_then_timeout_then_rate_limit_spends_a_token_on_every_attempt` |
//! | `RateLimitLayer` → `RetryLayer` → client (avoid) | The limiter sees one call; its retries reach the server unmetered, in a burst. | `a_rate_limit_outside_the_retry_counts_calls_and_lets_retries_through_unmetered` |
//! | `TimeoutLayer` outside a wait-mode `RateLimitLayer` | The wait for a slot counts against the attempt's timeout: a long wait times out, and the retry above comes back when the slot is free. Put the timeout inside the limiter to time only the call. | `the_timeout_bounds_the_wait_for_a_slot_and_the_retry_tries_again` |
//! | `RetryLayer` → `LearnLayer` → `TimeoutLayer` → `RateLimitLayer` → client | The learned limit sees every attempt and its wait is not cut short by the per-attempt timeout; `.wait(max)` bounds it. | `examples/client.rs`, `tests-integration/tests/learn.rs` |
//! | `RetryLayer` → circuit breaker → client | Each attempt is one call the breaker counts. Once it opens, attempts fail at once with its error, which is not retryable: retries stop hammering the upstream. | `tests-integration/tests/retry.rs`: `a_breaker_inside_the_retry_opens_and_retries_stop_hammering` |
//! | circuit breaker → `RetryLayer` → client | The breaker counts calls, each after all its retries: it opens later (a call with three failed attempts is one failure), and once open no call reaches the retry at all. | `a_breaker_outside_the_retry_counts_calls_and_when_open_stops_them_before_any_retry` |
//! | `Router::layer(RateLimitLayer)` | Every request to the router, matched or not, is counted: 404s spend tokens. | `router_layer_counts_every_request_404s_included` |
//! | `Router::route_layer(RateLimitLayer)` / `MethodRouter::layer` | Only requests to matched routes (or to that route) are counted; each route can have its own limit. | `route_layer_counts_only_requests_that_match_a_route` |
//! | `ConcurrencyLayer` → `RateLimitLayer` → client | At most n in flight per key, and within the rate; slots are released on completion or cancellation. | `at_most_three_in_flight_per_token_under_load_within_the_rate`, `a_cancelled_call_gives_its_slot_back` |

mod future;
mod layer;
mod policy;
mod service;

pub use crate::headers::ietf::QuotaUnit;
pub use crate::headers::legacy::Reset;
pub use crate::limiter::{
    Acquire, Keyed, LimitEvent, LimitEventKind, LimiterStats, RateLimited, RateLimiter, Refusal,
    Stats,
};
pub use crate::respond::{ActualCost, HeaderOptions};
pub use layer::{MissingKey, RateLimitLayer};
pub use policy::{LiveQuotas, Tiers};
pub use service::RateLimit;
