//! The `metrics` feature, read back through a real Prometheus recorder: counters move, labels
//! are the names given to layers and stores, never keys.
//!
//! A recorder is process-wide, so this file holds one test.

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use tollgate::clock::TokioClock;
use tollgate::retry::{Backoff, RetryBudget, RetryLayer};
use tollgate::store::{OnFailure, RedisStore};
use tollgate::{key, MemoryStore, Quota, RateLimitLayer};
use tower::{Layer, ServiceExt};

use common::upstream::{reply, start_upstream};
use common::{client, fetch, TestServer};

/// The value of the sample `name{labels}` in Prometheus text, or 0 when it is absent.
fn sample(rendered: &str, name_and_labels: &str) -> f64 {
    rendered
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(start_paused = true)]
async fn counters_move_under_the_names_given_to_layers_and_stores() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let paused = || MemoryStore::builder().clock(TokioClock::new()).build();

    // A server limit per client IP, in reject mode: 2 allowed, then 1 limited.
    let rejecting = RateLimitLayer::new(Quota::per_minute(2).unwrap())
        .key(key::PeerIp::new())
        .store(paused())
        .name("api");
    // A global limit in wait mode: the second request waits half a second.
    let waiting = RateLimitLayer::new(Quota::per_second(2).unwrap().with_burst(1).unwrap())
        .store(paused())
        .wait(Duration::from_secs(5))
        .name("queue");
    // A store whose Redis is not there: answers from the fallback, counts the error.
    let dead_redis = RedisStore::builder("redis://127.0.0.1:1/")
        .on_failure(OnFailure::Allow)
        .build()
        .unwrap();
    let unreachable = RateLimitLayer::new(Quota::per_second(10).unwrap())
        .store(dead_redis)
        .name("shared");
    // A limit tried in shadow: 1 allowed, then 2 let through that it would have refused; a
    // near-limit report when the one request is spent.
    let trial = RateLimitLayer::new(Quota::per_minute(1).unwrap())
        .store(paused())
        .shadow()
        .near_limit(20)
        .name("trial");
    let app = Router::new()
        .route("/api", get(|| async { "api" }).layer(rejecting))
        .route("/queue", get(|| async { "queue" }).layer(waiting))
        .route("/trial", get(|| async { "trial" }).layer(trial))
        .route("/shared", get(|| async { "shared" }).layer(unreachable));
    let server = TestServer::start(app).await;
    let http = client();
    let statuses: Vec<u16> = statuses_of(
        &http,
        &server,
        &[
            "/api", "/api", "/api", "/queue", "/queue", "/shared", "/trial", "/trial", "/trial",
        ],
    )
    .await;
    assert_eq!(statuses, [200, 200, 429, 200, 200, 200, 200, 200, 200]);

    // A client retrying a server that always answers 503: 2 retries, then it gives up.
    let (_upstream, addr) = start_upstream([reply(503)]).await;
    let retrying = RetryLayer::new()
        .backoff(Backoff::standard().with_max_attempts(3))
        .budget(RetryBudget::default())
        .name("outbound")
        .layer(Client::builder(TokioExecutor::new()).build_http());
    let request = Request::get(format!("http://{addr}/"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = retrying.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // And one whose budget holds nothing: it gives up at once, the budget spent.
    let starved = RetryLayer::new()
        .budget(RetryBudget::new(Duration::from_secs(10), 0.0, 0))
        .name("starved")
        .layer(Client::builder(TokioExecutor::new()).build_http());
    let request = Request::get(format!("http://{addr}/"))
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(
        starved.oneshot(request).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // A client learning from a server that says "0 left, reset in 30 s": learned once, and a
    // reject-mode learn layer then refuses the next request locally.
    let (_told, told_addr) = start_upstream([reply(200)
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", "30")])
    .await;
    let learning = tollgate::learn::LearnLayer::new()
        .reject()
        .name("partner")
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let get = || {
        Request::get(format!("http://{told_addr}/"))
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    assert!(learning.clone().oneshot(get()).await.is_ok());
    assert!(learning.clone().oneshot(get()).await.is_err());

    // One slot per key: a second request waits, then is refused.
    let slot_held = tollgate::concurrency::ConcurrencyLayer::new(1)
        .wait(Duration::from_millis(10))
        .name("one-at-a-time")
        .errors()
        .layer(tower::service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::convert::Infallible>(())
        }));
    // No series for what a layer never does: an unbounded wait never refuses, a zero wait
    // never waits.
    let idle = || tower::service_fn(|_: u32| async { Ok::<_, std::convert::Infallible>(()) });
    let unbounded = tollgate::concurrency::ConcurrencyLayer::new(1)
        .name("unbounded")
        .errors()
        .layer(idle());
    let at_once = tollgate::concurrency::ConcurrencyLayer::new(1)
        .wait(Duration::ZERO)
        .name("at-once")
        .errors()
        .layer(idle());
    assert!(unbounded.oneshot(1).await.is_ok() && at_once.oneshot(1).await.is_ok());
    let first = tokio::spawn(slot_held.clone().oneshot(1));
    tokio::task::yield_now().await;
    assert!(slot_held.clone().oneshot(2).await.is_err());
    let in_flight_while_held = prometheus.render();
    first.abort();

    // A memory store at its cap: a flood of new keys makes it evict.
    let small = MemoryStore::builder().max_keys(64).shards(1).build();
    let per_hour = tollgate::Quotas::from(Quota::per_hour(1).unwrap());
    for flood_key in 0..1_000u32 {
        assert!(common::check(&small, &flood_key, &per_hour, 1)
            .unwrap()
            .is_allowed());
    }
    assert!(small.evicted() > 900, "{}", small.evicted());

    let rendered = prometheus.render();
    let expect = |name_and_labels: &str, value: f64| {
        assert_eq!(
            sample(&rendered, name_and_labels),
            value,
            "{name_and_labels} in\n{rendered}"
        );
    };
    expect(r#"tollgate_rate_limit_allowed_total{layer="api"}"#, 2.0);
    expect(r#"tollgate_rate_limit_limited_total{layer="api"}"#, 1.0);
    // No series for what the "api" layer does not use: near-limit reports, blocks, waits.
    for unused in [
        r#"tollgate_rate_limit_near_limit_total{layer="api"}"#,
        r#"tollgate_rate_limit_blocked_total{layer="api"}"#,
        r#"tollgate_rate_limit_waited_total{layer="api"}"#,
        r#"tollgate_rate_limit_wait_seconds_count{layer="api"}"#,
        r#"tollgate_rate_limit_blocked_total{layer="queue"}"#,
        r#"tollgate_concurrency_refused_total{layer="unbounded"}"#,
        r#"tollgate_concurrency_waited_total{layer="at-once"}"#,
    ] {
        assert!(!rendered.contains(unused), "{unused} in\n{rendered}");
    }
    // Shadow counts stay apart from enforced ones.
    expect(
        r#"tollgate_rate_limit_limited_total{layer="trial",shadow="true"}"#,
        2.0,
    );
    expect(
        r#"tollgate_rate_limit_allowed_total{layer="trial",shadow="true"}"#,
        1.0,
    );
    expect(
        r#"tollgate_rate_limit_near_limit_total{layer="trial",shadow="true"}"#,
        1.0,
    );
    expect(r#"tollgate_rate_limit_allowed_total{layer="queue"}"#, 2.0);
    expect(r#"tollgate_rate_limit_waited_total{layer="queue"}"#, 1.0);
    expect(
        r#"tollgate_rate_limit_wait_seconds_count{layer="queue"}"#,
        1.0,
    );
    // Half a second, less what the paused clock auto-advanced while the first was on the wire.
    let waited = sample(
        &rendered,
        r#"tollgate_rate_limit_wait_seconds_sum{layer="queue"}"#,
    );
    assert!((0.45..=0.5).contains(&waited), "{waited}");
    expect(r#"tollgate_store_errors_total{store="redis"}"#, 1.0);
    expect(
        r#"tollgate_retry_retries_total{layer="outbound",reason="transient"}"#,
        2.0,
    );
    expect(
        r#"tollgate_retry_gave_up_total{layer="outbound",reason="attempts"}"#,
        1.0,
    );
    expect(
        r#"tollgate_retry_gave_up_total{layer="starved",reason="budget"}"#,
        1.0,
    );
    expect(r#"tollgate_retry_budget_spent_total{layer="starved"}"#, 1.0);
    expect(
        r#"tollgate_retry_budget_spent_total{layer="outbound"}"#,
        0.0,
    );
    expect(
        r#"tollgate_learn_limits_learned_total{layer="partner"}"#,
        1.0,
    );
    expect(r#"tollgate_learn_refused_total{layer="partner"}"#, 1.0);
    expect(
        r#"tollgate_concurrency_waited_total{layer="one-at-a-time"}"#,
        1.0,
    );
    expect(
        r#"tollgate_concurrency_refused_total{layer="one-at-a-time"}"#,
        1.0,
    );
    assert_eq!(
        sample(
            &in_flight_while_held,
            r#"tollgate_concurrency_in_flight{layer="one-at-a-time"}"#
        ),
        1.0
    );
    expect(
        r#"tollgate_store_evicted_total{store="memory"}"#,
        small.evicted() as f64,
    );
    assert!(
        sample(
            &rendered,
            r#"tollgate_store_cap_reached_total{store="memory"}"#
        ) >= 100.0
    );
    // No label carries a key: no client address appears anywhere.
    assert!(!rendered.contains("127.0.0.1"), "{rendered}");
    // Every series says what it counts, for the exporter's `# HELP` lines.
    for line in rendered
        .lines()
        .filter(|l| l.starts_with("# TYPE tollgate_"))
    {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            rendered.contains(&format!("# HELP {name} ")),
            "{name} has no help text in\n{rendered}"
        );
    }
    assert!(rendered.contains("# HELP tollgate_rate_limit_wait_seconds How long held requests"));
}

/// Fetches the paths one after another and returns their statuses.
async fn statuses_of(http: &common::HttpClient, server: &TestServer, paths: &[&str]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for path in paths {
        statuses.push(fetch(http, &server.url(path), &[]).await.status().as_u16());
    }
    statuses
}
