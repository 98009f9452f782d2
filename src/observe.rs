//! The frame every layer reports through: one event type per layer under one trait, a hook
//! set with `on_event`, `tracing` events, and metrics labelled `layer` with the layer's name.
//!
//! | layer | event | `tracing` target | metrics |
//! | --- | --- | --- | --- |
//! | [`RateLimitLayer`](crate::RateLimitLayer), [`RateLimiter`](crate::RateLimiter) | [`LimitEvent`](crate::rate_limit::LimitEvent): denied, waiting | `tollgate::rate_limit` | `tollgate_rate_limit_*` |
//! | [`RetryLayer`](crate::RetryLayer) | [`RetryEvent`](crate::retry::RetryEvent): retry, gave up | `tollgate::retry` | `tollgate_retry_*` |
//! | [`LearnLayer`](crate::learn::LearnLayer) | [`LearnEvent`](crate::learn::LearnEvent): waiting, refused, learned | `tollgate::learn` | `tollgate_learn_*` |
//! | [`ConcurrencyLayer`](crate::concurrency::ConcurrencyLayer) | [`ConcurrencyEvent`](crate::concurrency::ConcurrencyEvent): waiting, refused | `tollgate::concurrency` | `tollgate_concurrency_*` |
//!
//! A hook can be written once for every layer, through [`Event`]:
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::{Arc, Mutex};
//!
//! use http::{Request, Response, StatusCode};
//! use tollgate::observe::Event;
//! use tollgate::retry::{ReplayBody, RetryLayer};
//! use tollgate::{Quota, RateLimitLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! // One log for every layer: each event says its layer's name and what happened.
//! fn logger(log: &Arc<Mutex<Vec<String>>>) -> impl Fn(&dyn Event) + Send + Sync + 'static {
//!     let log = Arc::clone(log);
//!     move |event| log.lock().unwrap().push(format!("{}: {}", event.layer(), event.kind()))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let log = Arc::new(Mutex::new(Vec::new()));
//!
//! // A server limit of one request a minute.
//! let hook = logger(&log);
//! let api = RateLimitLayer::new(Quota::per_minute(1)?)
//!     .name("api")
//!     .on_event(move |event| hook(event))
//!     .layer(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
//! api.clone().oneshot(Request::new(())).await?;
//! let refused = api.oneshot(Request::new(())).await?;
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//!
//! // A client whose upstream fails once with 503.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = service_fn(move |_: Request<ReplayBody<String>>| {
//!     let status = if calls.fetch_add(1, Ordering::SeqCst) == 0 { 503 } else { 200 };
//!     async move { Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap()) }
//! });
//! let hook = logger(&log);
//! let payments = RetryLayer::new()
//!     .name("payments")
//!     .jitter(|| 0.0)
//!     .on_event(move |event| hook(event))
//!     .layer(upstream);
//! let paid = payments.oneshot(Request::get("http://pay.example/").body(String::new())?).await?;
//! assert_eq!(paid.status(), StatusCode::OK);
//!
//! assert_eq!(*log.lock().unwrap(), ["api: denied", "payments: retry"]);
//! # Ok(())
//! # }
//! ```
//!
//! Keys in events are [`LoggedKey`](crate::key::LoggedKey)s: a keyed hash unless a layer is
//! told otherwise. No metric takes a key as a label.
//!
//! # One frame for every layer
//!
//! [`RateLimitLayer`](crate::RateLimitLayer) (and [`RateLimiter`](crate::RateLimiter)),
//! [`RetryLayer`](crate::RetryLayer), [`LearnLayer`](crate::learn::LearnLayer) and
//! [`ConcurrencyLayer`](crate::concurrency::ConcurrencyLayer) share their conventions, so that
//! a stack of them reads as one thing:
//!
//! - **Builders** take the layer by value and return it (or, where the choice changes a type,
//!   as `.key`, `.store`, `.errors` and `.grpc` do, a layer of the new type). Configure a
//!   layer before you use it: a `LearnLayer` reconfigured starts with nothing learned, a
//!   `ConcurrencyLayer` with slots of its own. `.name("…")` names the layer in events, logs
//!   and metrics; `.key(…)` where a layer has keys; `.wait(max)` where a layer can make a
//!   request wait (the longest wait, after which the request is refused); `.on_event(|event| …)`
//!   sees what the layer did.
//! - **Events** are one type per layer under one trait, [`Event`], so a single hook can serve
//!   every layer; each is also a `tracing` event and a metric labelled `layer` (the table
//!   above).
//! - **Keys in events and logs** are a keyed hash unless
//!   `.log_keys(LogKeys::Clear)` ([`LogKeys`](crate::key::LogKeys)).
//! - **Answers**: the server-side layers (`RateLimitLayer`, `ConcurrencyLayer`) answer HTTP
//!   with responses (no `HandleErrorLayer` on axum), gRPC with `.grpc()`, and anything else
//!   with `.errors()`; the client-side layers (`RetryLayer`, `LearnLayer`) fail with errors,
//!   as their callers expect. Errors say when to come back where it is known
//!   ([`RateLimited::retry_after`](crate::RateLimited::retry_after),
//!   [`Refusal::retry_after`](crate::rate_limit::Refusal::retry_after),
//!   [`ServerLimit::retry_after`](crate::learn::ServerLimit::retry_after)).
//! - **Accounting that must be given back** (a reserved slot, an in-flight count, a
//!   concurrency slot) is held by a guard that gives it back on drop: a cancelled request
//!   never leaks it.

use std::fmt;

/// What the events of every layer have in common.
pub trait Event: fmt::Debug {
    /// The name of the layer that emitted it (set with `name`): the `layer` label of its
    /// metrics.
    fn layer(&self) -> &str;

    /// What happened, as a short word that does not change between versions: `denied`,
    /// `waiting`, `near_limit`, `blocked` (rate limits); `retry`, `gave_up` (retries);
    /// `waiting`, `refused`, `learned` (learned limits); `waiting`, `refused` (concurrency).
    fn kind(&self) -> &'static str;
}
