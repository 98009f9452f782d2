//! The server of the end-to-end benchmark (`scripts/e2e-bench.sh`): an axum hello-world,
//! bare or behind a per-IP limit that never refuses, with rate-limit headers on; and a control
//! that writes the same header fields without any limiter.
//!
//! ```text
//! cargo run --release --example e2e_server -- bare|bare_with_headers|tollgate|tollgate_quiet|tower_governor PORT
//! ```
//!
//! It runs on one tokio worker thread, so that the load generator has the other core.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use http::HeaderValue;
use tollgate::key::PeerIp;
use tollgate::{Quota, RateLimitLayer};
use tower::BoxError;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "bare".into());
    let port: u16 = args.next().as_deref().unwrap_or("3100").parse()?;
    let hello = Router::new().route("/", get(|| async { "Hello, World!" }));
    let app = match mode.as_str() {
        "bare" => hello,
        // A billion per second per IP: never refuses, always writes the headers.
        "tollgate" => {
            hello.layer(RateLimitLayer::new(Quota::per_second(1_000_000_000)?).key(PeerIp::new()))
        }
        // A control: no limiter, the same two header fields as tollgate writes, as constants.
        // It shows what the bytes alone cost on the wire.
        // (tower's `map_response`, which boxes nothing, so that the control costs no more
        // than the bytes.)
        "bare_with_headers" => hello.layer(tower::util::MapResponseLayer::new(
            |mut response: axum::response::Response| {
                let headers = response.headers_mut();
                headers.append(
                    "ratelimit",
                    HeaderValue::from_static("\"default\";r=999999999;t=1"),
                );
                headers.append(
                    "ratelimit-policy",
                    HeaderValue::from_static("\"default\";q=1000000000;w=1"),
                );
                response
            },
        )),
        // The same limit without headers on allowed responses.
        "tollgate_quiet" => hello.layer(
            RateLimitLayer::new(Quota::per_second(1_000_000_000)?)
                .key(PeerIp::new())
                .headers(tollgate::rate_limit::HeaderOptions::default().on_allowed(false)),
        ),
        "tower_governor" => {
            let config = tower_governor::governor::GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(1_000_000_000)
                .use_headers()
                .finish()
                .ok_or("tower_governor rejected the configuration")?;
            hello.layer(tower_governor::GovernorLayer::new(config))
        }
        other => {
            return Err(format!(
                "unknown mode {other:?}: bare, bare_with_headers, tollgate, tollgate_quiet or tower_governor"
            )
            .into())
        }
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await?;
            Ok(())
        })
}
