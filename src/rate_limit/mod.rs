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
//! shared by all clones, so no `BufferLayer` is needed either.

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
