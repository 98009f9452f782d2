//! reqwest behind tollgate's client layers: retries, limits learned from the server, and a
//! per-host pace of our own. `.ci/run` runs it.
//!
//! ```text
//! cargo run --example reqwest_client
//! ```
//!
//! reqwest's `Client` is a tower `Service` of `reqwest::Request`; the layers speak
//! `http::Request`, so the adapter is one conversion each way (`reqwest::Request::try_from`,
//! `http::Response::from`). The example starts a local API that allows 3 requests per second
//! (and says so in its `RateLimit` fields), then sends 8 requests through
//!
//! `RetryLayer` → `LearnLayer` → `RateLimitLayer` (per host, wait mode, `.errors()`) → reqwest
//!
//! and checks that every one succeeds without the server ever answering 429: the learn layer
//! waits for the window the server announced.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use tollgate::key::{Destination, PeerIp};
use tollgate::learn::LearnLayer;
use tollgate::retry::{Attempts, ReplayBody, RetryLayer};
use tollgate::{Quota, RateLimitLayer};
use tower::BoxError;
use tower::{Service, ServiceBuilder};

/// reqwest as a tower service of `http` types: one conversion each way.
fn reqwest_service(
    client: reqwest::Client,
) -> impl Service<
    http::Request<ReplayBody<Full<Bytes>>>,
    Response = http::Response<reqwest::Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: http::Request<ReplayBody<Full<Bytes>>>| {
        let client = client.clone();
        async move {
            let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap))?;
            Ok::<_, BoxError>(http::Response::from(client.execute(request).await?))
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let api = local_api().await?;

    let client = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .layer(LearnLayer::new().wait(Duration::from_secs(5)))
        .layer(
            RateLimitLayer::new(Quota::per_second(20)?)
                .key(Destination)
                .wait(Duration::from_secs(5))
                .errors(),
        )
        .service(reqwest_service(reqwest::Client::new()));

    let start = Instant::now();
    let mut statuses = Vec::new();
    for i in 1..=8 {
        let request = http::Request::get(format!("http://{api}/hello")).body(Full::default())?;
        let response = client.clone().oneshot(request).await?;
        let attempts = Attempts::of(&response);
        println!(
            "request {i}: {} after {:?} in {attempts} attempt(s)",
            response.status(),
            start.elapsed()
        );
        // One attempt each: the server never had to refuse one.
        statuses.push((response.status().as_u16(), attempts));
    }
    assert_eq!(
        statuses,
        [(200, 1); 8],
        "every request within the server's limit"
    );
    // Three a second: the 8 requests span at least two windows the server announced.
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
    println!("8 requests, 8 succeeded, no 429: the client kept to the limit the server stated");
    Ok(())
}

/// An API on a loopback port: 3 requests per second per client, burst 3.
async fn local_api() -> Result<SocketAddr, BoxError> {
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(RateLimitLayer::new(Quota::per_second(3)?.with_burst(3)?).key(PeerIp::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    Ok(addr)
}
