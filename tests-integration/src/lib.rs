//! tollgate's integration tests and benches live in `tests/` and `benches/`, with the heavy
//! dependencies (the peers tollgate is measured against, tonic, reqwest, criterion) that
//! the crate's own examples and tests go without.
//!
//! Below, the examples of tollgate's docs that need tonic or reqwest, compiled here as doc
//! tests: `tests/doc_examples.rs` checks that tollgate's docs show them line for line.
//!
//! From `src/rate_limit/mod.rs`:
//!
//! ```no_run
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
//! From `src/retry/mod.rs`:
//!
//! ```no_run
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
//! From `src/retry/mod.rs`:
//!
//! ```no_run
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
