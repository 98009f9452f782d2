//! The retry middleware: [`RetryLayer`] and the [`Retry`] service it makes.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tollgate::retry::{Attempts, Backoff, ReplayBody, RetryLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // An upstream that fails twice with 503, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = Arc::clone(&calls);
//! let upstream = service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| {
//!     let n = seen.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!         Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap())
//!     }
//! });
//! let client = RetryLayer::new().backoff(Backoff::standard()).jitter(|| 0.5).layer(upstream);
//!
//! let response = client.oneshot(Request::get("http://example/").body(Full::default()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
//! # }
//! ```
//!
//! # What is retried
//!
//! A [classifier](Classify) turns each attempt's outcome into a [`Classification`]:
//! [`HttpClassifier`] (the default) retries connection failures, timeouts, 408, 429, 502, 503
//! and 504, and a 403 that carries a server's delay (GitHub's rate limits); [`GrpcClassifier`] retries `UNAVAILABLE`, and `RESOURCE_EXHAUSTED` with pushback.
//! Only idempotent requests are retried (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`),
//! unless they carry an `Idempotency-Key` header or a [`Retryable`] extension.
//!
//! # When, and when not
//!
//! Waits grow exponentially with full jitter ([`Backoff`]), longer after throttling; a delay
//! the server sent (`Retry-After`, `RateLimit`, `X-RateLimit-Reset`, OpenAI's and GitHub's
//! fields, `grpc-retry-pushback-ms`: every dialect that [`LearnLayer`](crate::learn#what-it-reads)
//! reads, through the same reader; see [`Classification::pushback`]) replaces the computed one. The layer gives up ([`GiveUp`]) when the attempts are spent,
//! when the [`RetryBudget`] shared by all clones is (so that an outage is not multiplied by
//! the attempt count), when the deadline is too close, when the server's delay is longer than
//! the maximum, or when the body cannot be sent again. Every response carries the
//! [`Attempts`] it took; a final error is a [`RetryError`] saying the same.
//!
//! # Bodies
//!
//! The inner service receives `Request<ReplayBody<B>>`: bodies are recorded while sent (up to
//! 64 KiB by default, [`RetryLayer::body_cap`]) and replayed from the recording, so any body type works, not only
//! `Clone` ones, and a retry never sends a truncated body (see [`ReplayBody`]).
//!
//! # Order in a stack
//!
//! Outermost first, on a client: `RetryLayer` → `TimeoutLayer` (a limit per attempt) →
//! rate limit → the client. A circuit breaker goes *inside* the retry: each attempt is
//! then one call the breaker counts, and once it opens, the retries fail fast against it
//! instead of reaching the upstream.

mod attempts;
mod backoff;
mod body;
mod budget;
mod classify;
mod config;
mod events;
mod future;
mod layer;
mod service;

pub use backoff::Backoff;
pub use body::ReplayBody;
pub use budget::RetryBudget;
pub use classify::{Classification, Classify, GrpcClassifier, HttpClassifier, Outcome};
pub use events::{
    Attempts, DeadlineExceeded, GiveUp, RetryAction, RetryError, RetryEvent, Retryable,
};
pub use layer::RetryLayer;
pub use service::Retry;
