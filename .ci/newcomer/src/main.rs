//! The README's axum example (its first tower one), served on loopback and asked 12 times: 10 × 200, then 429.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

// --- the README's axum example, as a newcomer pastes it ---
use axum::{routing::get, Router};
use tollgate::key::PeerIp;
use tollgate::{Quota, RateLimitLayer};

fn readme_example() -> Result<Router, tollgate::QuotaError> {
    let app: Router = Router::new()
        .route("/api/hello", get(|| async { "hello" }))
        .layer(RateLimitLayer::new(Quota::per_second(5)?.with_burst(10)?).key(PeerIp::new()));
    Ok(app)
}
// --- end of the example ---

#[tokio::main]
async fn main() {
    let app = readme_example().expect("valid quotas");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(status(addr).await);
    }
    println!("README axum example with default features: {statuses:?}");
    let mut expected = vec![200; 10];
    expected.extend([429, 429]);
    assert_eq!(
        statuses, expected,
        "the README's axum example must limit, not fail"
    );
}

/// One `GET /api/hello` on a connection of its own; the response's status.
async fn status(addr: SocketAddr) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/hello HTTP/1.1\r\nHost: newcomer\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}
