//! Keys in logs: a token used as a rate-limit key never appears in the captured output.
//!
//! Alone in its file: `tracing` caches per call site whether anyone listens, and a test that
//! hits the same call sites on another thread without a subscriber could make this one miss
//! its lines.

mod common;

use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use common::{client, statuses, TestServer};
use tollgate::key::Header;
use tollgate::rate_limit::RateLimitLayer;
use tollgate::Quota;

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(n).unwrap()
}

#[tokio::test]
async fn a_token_used_as_a_key_never_reaches_the_logs() {
    const TOKEN: &str = "s3cr3t-token-9f8e7d";
    // A current-thread runtime: the server's tasks run on this thread, under this subscriber.
    let (logs, _guard) = common::logs::capture(tracing::Level::TRACE);

    let hook_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook_log = Arc::clone(&hook_lines);
    let per_token = |quota: Quota| {
        RateLimitLayer::new(quota)
            .key(Header::new("authorization"))
            .name("per-token")
    };
    let app = Router::new()
        .route(
            "/reject",
            get(|| async { "ok" }).layer(per_token(per_minute(1)).on_event(move |event| {
                // What a user's hook logs by default.
                tracing::info!(key = %event.key, "hook saw {:?}", event.key);
                hook_log.lock().unwrap().push(event.key.to_string());
            })),
        )
        .route(
            "/wait",
            get(|| async { "ok" }).layer(
                per_token(Quota::per_second(1).unwrap()).wait(std::time::Duration::from_secs(2)),
            ),
        );
    let server = TestServer::start(app).await;
    let client = client();
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    assert_eq!(
        statuses(&client, &server.url("/reject"), &auth, 3).await,
        [200, 429, 429]
    );
    assert_eq!(
        statuses(&client, &server.url("/wait"), &auth, 2).await,
        [200, 200]
    );
    // Without the header: the error names the header, not a value.
    assert_eq!(
        statuses(&client, &server.url("/reject"), &[], 1).await,
        [400]
    );

    let logs = logs.text();
    assert!(
        logs.contains("request denied"),
        "denials were logged: {logs}"
    );
    assert!(
        logs.contains("request waits for its slot"),
        "waits were logged: {logs}"
    );
    assert!(
        !logs.contains(TOKEN),
        "the token leaked into the logs:\n{logs}"
    );
    // One client, one hash: lines can be correlated.
    let hook_lines = hook_lines.lock().unwrap();
    assert_eq!(hook_lines.len(), 2);
    assert_eq!(hook_lines[0], hook_lines[1]);
    assert!(hook_lines[0].starts_with("key#"));
    assert!(logs.contains(&hook_lines[0]));
}
