//! API keys at rest: two instances on one real Redis, sharing a key secret, share one limit
//! per API key, and nothing Redis holds or is sent (key names, values, a `MONITOR` capture)
//! contains an API key in clear, short or long.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::redis::Redis;
use common::{client, fetch, TestServer};
use tollgate::key::Header;
use tollgate::store::RedisStore;
use tollgate::{Quota, RateLimitLayer};

const SECRET: &str = "the fleet's shared secret, 32 b!";

/// An instance: an API limited per `x-api-key` to 3 a minute, on `redis` with `secret`.
async fn instance(redis: &Redis, secret: Option<&str>) -> TestServer {
    let mut builder = RedisStore::builder(redis.url()).timeout(Duration::from_millis(500));
    if let Some(secret) = secret {
        builder = builder.key_secret(secret);
    }
    let store = builder.connect().await.unwrap();
    let app = Router::new().route(
        "/api",
        get(|| async { "ok" }).layer(
            RateLimitLayer::new(Quota::per_minute(3).unwrap().named("api").unwrap())
                .key(Header::new("x-api-key"))
                .store(store),
        ),
    );
    TestServer::start(app).await
}

/// Everything `redis-cli MONITOR` prints until the guard is dropped.
struct Monitor {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn start(redis: &Redis) -> Self {
        let mut child = Command::new("redis-cli")
            .arg("-s")
            .arg(redis.socket())
            .arg("MONITOR")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        // MONITOR's "OK" is its first line.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lines.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "MONITOR did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, lines }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every key in Redis, and the `DUMP` of each, as text.
fn everything_stored(redis: &Redis) -> String {
    let keys = redis.cli(&["--scan"]).unwrap();
    let mut all = keys.clone();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        all.push_str(&redis.cli(&["--no-raw", "DUMP", key]).unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn api_keys_never_reach_redis_in_clear_and_the_fleet_still_shares_one_limit() {
    let Some(redis) = Redis::start() else { return };
    let short = "sk-live-4f9a2c7e1b8d03"; // 22 bytes
    let long = format!("sk-live-{}", "7c1e9b3a5d2f8046a1b2c3d4".repeat(7)); // 176 bytes
    assert_eq!((short.len(), long.len()), (22, 176));
    let monitor = Monitor::start(&redis);
    let (a, b) = (
        instance(&redis, Some(SECRET)).await,
        instance(&redis, Some(SECRET)).await,
    );
    let client = client();
    for key in [short, long.as_str()] {
        // Three a minute across both instances: alternate, and the fourth is refused.
        let mut statuses = Vec::new();
        for i in 0..6 {
            let server = if i % 2 == 0 { &a } else { &b };
            let response = fetch(&client, &server.url("/api"), &[("x-api-key", key)]).await;
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429, 429], "{key}");
    }
    // Let MONITOR's pipe catch up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = monitor.text();
    assert!(
        seen.contains("EVALSHA") || seen.contains("evalsha"),
        "the capture saw the decisions: {seen}"
    );
    let stored = everything_stored(&redis);
    assert!(stored.contains("tollgate:{h:#"), "{stored}");
    for key in [short, long.as_str()] {
        // Any 12 bytes of the key would give it away.
        for start in (0..=key.len() - 12).step_by(4) {
            let piece = &key[start..start + 12];
            assert!(!seen.contains(piece), "MONITOR saw {piece:?}");
            assert!(!stored.contains(piece), "Redis holds {piece:?}");
        }
    }
    drop(monitor);

    // Without the secret (the check's own control): the short key is stored in clear, which
    // is what the test would catch.
    let Some(redis) = Redis::start() else { return };
    let clear = instance(&redis, None).await;
    fetch(&client, &clear.url("/api"), &[("x-api-key", short)]).await;
    assert!(everything_stored(&redis).contains(short));
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_short_secret_is_refused_at_start_up() {
    let Some(redis) = Redis::start() else { return };
    let error = RedisStore::builder(redis.url())
        .key_secret("hunter2")
        .connect()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("fewer than 16"), "{error}");
    let error = RedisStore::builder(redis.url())
        .hash_all_keys(true)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("needs a key secret"), "{error}");
}
