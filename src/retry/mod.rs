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
//! unless they carry an `Idempotency-Key` header or a [`Retryable`] extension, or never
//! reached the server: a request of any method is retried (within the budget and the
//! attempts) when its error shows that no byte of it was sent, as hyper-util's legacy client,
//! Finagle and gRPC do: a refused connection, and with the `hyper` feature a connect error of
//! hyper-util's legacy client (`is_connect()`, which is also what reqwest's `is_connect()`
//! reads), a request hyper gave back unsent because its connection closed first, or an
//! HTTP/2 stream refused before processing (`REFUSED_STREAM`). A reset, a timeout or a closed
//! connection after the request was written is not that: the server may have acted on it.
//! The layer reads this from the error itself, whatever the classifier, which still decides
//! whether the error is retried at all ([`Classification::of_error`] retries all of these).
//! Such a request's body is kept unread until it is sent, never recorded, so this costs no
//! memory for bodies (a copy of the request's head, as for every retried request); a body that
//! began to be sent is never sent again.
//!
//! Connection failures include `tower::timeout`'s elapsed error and, with the `hyper`
//! feature, HTTP/2 refused streams and graceful GOAWAYs; everything else is final. Any closure
//! `Fn(Outcome<'_, Response>) -> Classification` can decide instead
//! ([`classify`](RetryLayer::classify)); [`Classification::pushback`] and
//! [`Classification::of_error`] give it the built-in readings of a server's delay and of an
//! error.
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
//! instead of reaching the upstream. The rate-limit module's
//! [ordering guide](crate::rate_limit#order-in-a-stack) names the test that proves each.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tollgate::retry::{Backoff, ReplayBody, RetryLayer};
//! use tower::ServiceBuilder;
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new().backoff(Backoff::standard()).deadline(Duration::from_secs(10)))
//!     .timeout(Duration::from_secs(2)) // per attempt
//!     .service(client);
//! # drop(client);
//! ```
//!
//! # With reqwest
//!
//! reqwest's `Client` is a tower `Service` of `reqwest::Request`; the layers speak
//! `http::Request`, so the adapter is one conversion each way:
//!
//! ```rust,ignore
//! # use std::time::Duration;
//! # use bytes::Bytes;
//! # use http_body_util::Full;
//! # use tollgate::key::Destination;
//! # use tollgate::learn::LearnLayer;
//! # use tollgate::retry::{ReplayBody, RetryLayer};
//! # use tollgate::{Quota, RateLimitLayer};
//! # use tower::BoxError;
//! # use tower::ServiceBuilder;
//! # fn main() -> Result<(), BoxError> {
//! # let max = Duration::from_secs(5);
//! let reqwest = reqwest::Client::new();
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new())
//!     .layer(LearnLayer::new())
//!     .layer(RateLimitLayer::new(Quota::per_second(20)?).key(Destination).wait(max).errors())
//!     .service(tower::service_fn(move |request: http::Request<ReplayBody<Full<Bytes>>>| {
//!         let reqwest = reqwest.clone();
//!         async move {
//!             let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap))?;
//!             Ok::<_, BoxError>(http::Response::from(reqwest.execute(request).await?))
//!         }
//!     }));
//! # drop(client);
//! # Ok(()) }
//! ```
//!
//! (Compiled in CI as a doc test of `tests-integration`, which has the tonic and reqwest
//! dependencies this crate's own doc tests go without.)
//!
//! `tests-integration/examples/reqwest_client.rs` runs it against a local API that allows 3 requests a second
//! (CI runs it): 8 requests, each in one attempt, none refused.
//!
//! # gRPC
//!
//! A tonic client retries with [`RetryLayer::grpc`]: `UNAVAILABLE`, and `RESOURCE_EXHAUSTED`
//! only when the server sent pushback, which it honours (a negative pushback means: do not
//! retry). gRPC calls are all `POST`s, so this layer retries any method, as gRPC's own retry
//! policy does; keep calls that must never run twice on a channel without it. The layer hands
//! the channel a [`ReplayBody`], which `tonic::body::Body::new` turns back into tonic's body:
//!
//! ```rust,ignore
//! # use tollgate::retry::{ReplayBody, RetryLayer};
//! # use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//! # use tower::ServiceBuilder;
//! # async fn call() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect().await?;
//! let channel = ServiceBuilder::new()
//!     .layer(RetryLayer::grpc())
//!     .map_request(|r: http::Request<ReplayBody<tonic::body::Body>>| r.map(tonic::body::Body::new))
//!     .service(channel);
//! let mut client = HealthClient::new(channel);
//! client.check(HealthCheckRequest { service: String::new() }).await?;
//! # Ok(()) }
//! ```
//!
//! (Compiled in CI as a doc test of `tests-integration`, which has the tonic and reqwest
//! dependencies this crate's own doc tests go without.)
//!
//! The server side is the rate-limit layer's [`grpc`](crate::RateLimitLayer::grpc) (see
//! [`rate_limit`](crate::rate_limit#grpc)); `tests-integration/tests/grpc.rs` runs both ends on loopback.
//!
//! # Try it
//!
//! The example client (`RetryLayer` → `LearnLayer` → `TimeoutLayer` → a per-host
//! `RateLimitLayer` in wait mode → hyper-util's client) prints a line per attempt and a
//! summary per request, e.g. `request 1: attempt 1: 503 Service Unavailable (Transient) →
//! retry in 44ms`:
//!
//! ```text
//! cargo run --example flaky_server &   # 127.0.0.1:3001: /flaky (503, 503, 200), /throttle, /down
//! cargo run --example client -- --requests 3 http://127.0.0.1:3001/flaky        # retries, then 200
//! cargo run --example client -- --requests 2 http://127.0.0.1:3001/throttle     # waits Retry-After
//! cargo run --example client -- --method POST http://127.0.0.1:3001/flaky      # POST: not retried
//! cargo run --example client -- --requests 30 --rps 50 http://127.0.0.1:3001/down  # budget runs out
//! cargo run --example client -- --requests 14 --rps 20 http://127.0.0.1:3000/api/hello
//! ```

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
pub use events::{Attempts, GiveUp, RetryAction, RetryError, RetryEvent, Retryable};
pub use layer::RetryLayer;
pub use service::Retry;
