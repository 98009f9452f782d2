//! An upstream that fails on purpose, to watch `examples/client.rs` retry.
//!
//! ```text
//! cargo run --example flaky_server     # 127.0.0.1:3001 (PORT overrides)
//! ```
//!
//! | route | answers |
//! | --- | --- |
//! | `/flaky` (any method) | 503, 503, 200, again and again |
//! | `/throttle` | 429 with `Retry-After: 1` every other request, else 200 |
//! | `/down` | always 503 |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use tollgate::BoxError;

#[derive(Default)]
struct Counters {
    flaky: AtomicU64,
    throttle: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port:?} is not a port number"))?,
        Err(_) => 3001,
    };
    let app = Router::new()
        .route("/flaky", any(flaky))
        .route("/throttle", get(throttle))
        .route(
            "/down",
            any(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down\n") }),
        )
        .with_state(Arc::new(Counters::default()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "flaky server on http://{}: /flaky, /throttle, /down",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

async fn flaky(State(counters): State<Arc<Counters>>) -> impl IntoResponse {
    match counters.flaky.fetch_add(1, Ordering::SeqCst) % 3 {
        2 => (StatusCode::OK, "ok\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "try again\n"),
    }
}

async fn throttle(State(counters): State<Arc<Counters>>) -> impl IntoResponse {
    if counters.throttle.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}
