//! A limit on requests in flight per key: at most `n` at once for each API token, host or
//! client, the others waiting their turn in arrival order.
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use tollgate::concurrency::ConcurrencyLayer;
//! use tollgate::key::Header;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // At most 3 calls in flight per API token (as the Autotask API demands); a call waits at
//! // most 30 s for its turn, then gets 503. No `HandleErrorLayer` needed.
//! let app: Router = Router::new()
//!     .route("/report", get(|| async {
//!         tokio::time::sleep(Duration::from_secs(60)).await; // a slow report
//!         "done"
//!     }))
//!     .layer(
//!         ConcurrencyLayer::new(3)
//!             .key(Header::new("authorization"))
//!             .wait(Duration::from_secs(30)),
//!     );
//! let call = |token: &str| {
//!     let request = Request::get("/report").header("authorization", token);
//!     tokio::spawn(app.clone().oneshot(request.body(Body::empty()).unwrap()))
//! };
//! let first_three: Vec<_> = (0..3).map(|_| call("Bearer t1")).collect();
//! let fourth = call("Bearer t1");
//! let other_token = call("Bearer t2");
//! // The fourth waited 30 s for one of the three, each 60 s long: no slot came free.
//! let refused = fourth.await.unwrap().unwrap();
//! assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
//! for call in first_three.into_iter().chain([other_token]) {
//!     assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
//! }
//! # }
//! ```
//!
//! Without [`key`](ConcurrencyLayer::key) the limit is one for all requests together; without
//! [`wait`](ConcurrencyLayer::wait) a request waits for its slot as long as it takes.
//!
//! A slot is taken before the call and given back when the response future completes or is
//! dropped (a cancelled request frees its slot at once). For HTTP, that is when the response
//! head arrives, not when its body ends. It composes with [`RateLimitLayer`](crate::RateLimitLayer)
//! (a rate and a concurrency on the same key), in either order.
//!
//! Like the rate-limit layer, it answers HTTP requests itself (503 when no slot came free in
//! time, 400 or 500 without a key), so it works on an axum `Router` as it is;
//! [`errors`](ConcurrencyLayer::errors) makes it fail with a [`NoSlot`] or
//! [`KeyError`](crate::key::KeyError) instead, for clients (hyper, reqwest) and services that
//! are not HTTP, and [`grpc`](ConcurrencyLayer::grpc) answers gRPC statuses.
//!
//! Keys with nothing in flight are forgotten, so the map holds only busy keys. As in the
//! memory store, a key is held as a 64-bit keyed hash: two keys would share their slots only
//! on a hash collision, which makes them stricter, never looser.

mod events;
mod layer;
mod service;
mod slots;

pub use crate::limiter::NoSlot;
pub use events::{ConcurrencyEvent, ConcurrencyEventKind};
pub use layer::ConcurrencyLayer;
pub use service::Concurrency;
