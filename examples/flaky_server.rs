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
//! | `/limited` | 5 requests per 10-second window (windows start at Unix times divisible by 10), with `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (Unix seconds); past the 5th, 429 with `Retry-After` |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use tower::BoxError;

#[derive(Default)]
struct Counters {
    flaky: AtomicU64,
    throttle: AtomicU64,
    /// `/limited`: the current window (its Unix second of start) and the requests in it.
    window: Mutex<(u64, u64)>,
}

/// `/limited` allows this many requests per window.
const LIMIT: u64 = 5;
/// `/limited`'s window, in seconds.
const WINDOW: u64 = 10;

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
        .route("/limited", any(limited))
        .route(
            "/down",
            any(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down\n") }),
        )
        .with_state(Arc::new(Counters::default()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "flaky server on http://{}: /flaky, /throttle, /down, /limited",
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

async fn limited(State(counters): State<Arc<Counters>>) -> impl IntoResponse {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let start = now - now % WINDOW;
    let used = {
        let mut window = counters.window.lock().unwrap();
        if window.0 != start {
            *window = (start, 0);
        }
        window.1 += 1;
        window.1
    };
    let reset = start + WINDOW;
    let headers = [
        ("x-ratelimit-limit", LIMIT.to_string()),
        (
            "x-ratelimit-remaining",
            LIMIT.saturating_sub(used).to_string(),
        ),
        ("x-ratelimit-reset", reset.to_string()),
    ];
    if used > LIMIT {
        let retry_after = [("retry-after", (reset - now).to_string())];
        (
            StatusCode::TOO_MANY_REQUESTS,
            headers,
            retry_after,
            "over the limit\n",
        )
            .into_response()
    } else {
        (
            StatusCode::OK,
            headers,
            format!("ok, {used} of {LIMIT} in this window\n"),
        )
            .into_response()
    }
}
