//! The stacks of the README's ordering guide, each run against real servers on loopback ports
//! with a real hyper client, on tokio's paused clock. When the guide changes, these change.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tollgate::clock::TokioClock;
use tollgate::concurrency::ConcurrencyLayer;
use tollgate::retry::{Backoff, ReplayBody, RetryLayer};
use tollgate::{key, MemoryStore, Quota, RateLimitLayer};
use tower::BoxError;
use tower::{ServiceBuilder, ServiceExt};
use tower_resilience::circuitbreaker::CircuitBreakerError;

use common::upstream::{reply, start_upstream, Upstream};
use common::TestServer;

fn paused_store() -> MemoryStore<TokioClock> {
    MemoryStore::builder().clock(TokioClock::new()).build()
}

fn hyper_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

fn get_request(url: String) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

/// One request per second per host, waiting (up to 10 s) for the slot: a polite client.
macro_rules! per_host_limit {
    () => {
        RateLimitLayer::new(Quota::per_second(1).unwrap())
            .key(key::Destination)
            .store(paused_store())
            .wait(Duration::from_secs(10))
            .errors()
    };
}

fn arrivals(upstream: &Upstream) -> Vec<Instant> {
    upstream.arrivals.lock().unwrap().clone()
}

// --- Client: retry outside timeout outside the rate limit -------------------------------------

#[tokio::test(start_paused = true)]
async fn client_retry_then_timeout_then_rate_limit_spends_a_token_on_every_attempt() {
    let (upstream, addr) = start_upstream([reply(503), reply(503), reply(200)]).await;
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new().backoff(Backoff::standard().with_max_attempts(3)))
        .timeout(Duration::from_secs(5))
        .layer(per_host_limit!())
        .service(hyper_client::<ReplayBody<Full<Bytes>>>());

    let response = client
        .oneshot(get_request(format!("http://{addr}/")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Every attempt took its own slot: the server never saw more than one request a second,
    // retries included.
    let times = arrivals(&upstream);
    assert_eq!(times.len(), 3);
    for gap in times.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap >= Duration::from_secs(1), "attempts {gap:?} apart");
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_outside_the_retry_counts_calls_and_lets_retries_through_unmetered() {
    // The order the guide warns against: the limiter sees one call, the server three requests
    // in a burst.
    let (upstream, addr) = start_upstream([reply(503), reply(503), reply(200)]).await;
    let client = ServiceBuilder::new()
        .layer(per_host_limit!())
        .layer(RetryLayer::new().backoff(Backoff::standard().with_max_attempts(3)))
        .service(hyper_client::<ReplayBody<Full<Bytes>>>());

    let response = client
        .oneshot(get_request(format!("http://{addr}/")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let times = arrivals(&upstream);
    assert_eq!(times.len(), 3);
    assert!(times[2] - times[0] < Duration::from_secs(1), "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn the_timeout_bounds_the_wait_for_a_slot_and_the_retry_tries_again() {
    // The timeout sits outside the limiter, so a wait for a slot counts against it: the second
    // call's first attempt waits 1 s for its slot, longer than its 600 ms, and times out; the
    // retry (a timeout is transient) comes back when the slot is free.
    let (upstream, addr) = start_upstream([reply(200)]).await;
    let client = ServiceBuilder::new()
        .layer(
            RetryLayer::new()
                .backoff(
                    Backoff::standard()
                        .with_max_attempts(3)
                        .with_transient_base(Duration::from_millis(500)),
                )
                .without_budget(),
        )
        .timeout(Duration::from_millis(600))
        .layer(per_host_limit!())
        .service(hyper_client::<ReplayBody<Full<Bytes>>>());

    let first = client
        .clone()
        .oneshot(get_request(format!("http://{addr}/")))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let started = Instant::now();
    let second = client
        .oneshot(get_request(format!("http://{addr}/")))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(tollgate::retry::Attempts::of(&second), 2);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        upstream.hits(),
        2,
        "the timed-out attempt never reached the server"
    );
}

// --- Client: a circuit breaker around the retry ----------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_breaker_outside_the_retry_counts_calls_and_when_open_stops_them_before_any_retry() {
    // Outside the retry, the breaker sees one outcome per call, after the retries: it opens
    // after 2 failed calls (6 requests), and from then on no call reaches the retry at all.
    // The opposite order, breaker inside the retry, is tests/retry.rs
    // `a_breaker_inside_the_retry_opens_and_retries_stop_hammering`.
    let (upstream, addr) = start_upstream([reply(503)]).await;
    let breaker = common::breaker(2);
    let client = ServiceBuilder::new()
        .layer(breaker)
        .layer(
            RetryLayer::new()
                .backoff(Backoff::standard().with_max_attempts(3))
                .without_budget(),
        )
        .service(hyper_client::<ReplayBody<Full<Bytes>>>());

    let mut open = 0;
    for _ in 0..10 {
        match client
            .clone()
            .oneshot(get_request(format!("http://{addr}/")))
            .await
        {
            Ok(response) => assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE),
            Err(CircuitBreakerError::OpenCircuit) => open += 1,
            Err(CircuitBreakerError::Inner(error)) => panic!("{error}"),
        }
    }
    assert_eq!(upstream.hits(), 6);
    assert_eq!(open, 8);
}

// --- Server: the rate limit outside or inside axum's routing ----------------------------------

fn routes() -> Router {
    Router::new().route("/a", get(|| async { "a" }))
}

fn two_per_minute() -> RateLimitLayer<key::Global, tollgate::Quotas, MemoryStore<TokioClock>> {
    RateLimitLayer::new(Quota::per_minute(2).unwrap()).store(paused_store())
}

async fn statuses(server: &TestServer, paths: &[&str]) -> Vec<u16> {
    let client = common::client();
    let mut seen = Vec::new();
    for path in paths {
        seen.push(
            common::fetch(&client, &server.url(path), &[])
                .await
                .status()
                .as_u16(),
        );
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn router_layer_counts_every_request_404s_included() {
    let server = TestServer::start(routes().layer(two_per_minute())).await;
    assert_eq!(
        statuses(&server, &["/missing", "/missing", "/a"]).await,
        [404, 404, 429]
    );
}

#[tokio::test(start_paused = true)]
async fn route_layer_counts_only_requests_that_match_a_route() {
    let server = TestServer::start(routes().route_layer(two_per_minute())).await;
    assert_eq!(
        statuses(&server, &["/missing", "/missing", "/a", "/a", "/a"]).await,
        [404, 404, 200, 200, 429]
    );
}

// --- Client: a concurrency limit beside the rate limit ----------------------------------------

/// A server whose `/slow` answers after `delay`, counting the requests in flight.
#[derive(Default)]
struct InFlight {
    arrived: AtomicUsize,
    arrival: tokio::sync::Notify,
    now: AtomicUsize,
    most: AtomicUsize,
    done: AtomicUsize,
}

impl InFlight {
    async fn wait_for_arrivals(&self, n: usize) {
        loop {
            let notified = self.arrival.notified();
            if self.arrived.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    }
}

async fn slow(State((in_flight, delay)): State<(Arc<InFlight>, Duration)>) -> &'static str {
    in_flight.arrived.fetch_add(1, Ordering::SeqCst);
    in_flight.arrival.notify_waiters();
    let now = in_flight.now.fetch_add(1, Ordering::SeqCst) + 1;
    in_flight.most.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(delay).await;
    in_flight.now.fetch_sub(1, Ordering::SeqCst);
    in_flight.done.fetch_add(1, Ordering::SeqCst);
    "done"
}

async fn slow_server(delay: Duration) -> (TestServer, Arc<InFlight>) {
    let in_flight = Arc::new(InFlight::default());
    let app = Router::new()
        .route("/slow", get(slow))
        .with_state((Arc::clone(&in_flight), delay));
    (TestServer::start(app).await, in_flight)
}

fn with_token(url: String, token: &'static str) -> Request<Full<Bytes>> {
    Request::get(url)
        .header("authorization", token)
        .body(Full::default())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn at_most_three_in_flight_per_token_under_load_within_the_rate() {
    let (server, in_flight) = slow_server(Duration::from_secs(1)).await;
    let client = ServiceBuilder::new()
        .layer(
            ConcurrencyLayer::new(3)
                .key(key::Header::new("authorization"))
                .errors(),
        )
        .layer(
            RateLimitLayer::new(Quota::per_second(100).unwrap())
                .key(key::Header::new("authorization"))
                .store(paused_store())
                .wait(Duration::from_secs(10))
                .errors(),
        )
        .service(hyper_client::<Full<Bytes>>());

    let calls: Vec<_> = (0..12)
        .map(|_| {
            tokio::spawn(
                client
                    .clone()
                    .oneshot(with_token(server.url("/slow"), "token-a")),
            )
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(in_flight.done.load(Ordering::SeqCst), 12);
    assert_eq!(in_flight.most.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_gives_its_slot_back() {
    let (server, in_flight) = slow_server(Duration::from_secs(3600)).await;
    let client = ServiceBuilder::new()
        .layer(
            ConcurrencyLayer::new(2)
                .key(key::Header::new("authorization"))
                .wait(Duration::from_secs(1))
                .errors(),
        )
        .service(hyper_client::<Full<Bytes>>());
    let call = || {
        tokio::spawn(
            client
                .clone()
                .oneshot(with_token(server.url("/slow"), "token-a")),
        )
    };

    let hung = [call(), call()];
    in_flight.wait_for_arrivals(2).await;
    // Both slots are taken: a third call waits its second and gives up.
    let error = call().await.unwrap().unwrap_err();
    assert!(
        error
            .downcast_ref::<tollgate::concurrency::NoSlot>()
            .is_some(),
        "{error}"
    );

    // Cancelling the hung calls frees their slots: the next call reaches the server, where it
    // would have failed with `NoSlot` after a second had they been kept.
    for hung in hung {
        hung.abort();
        assert!(hung.await.unwrap_err().is_cancelled());
    }
    let next = call();
    tokio::select! {
        () = in_flight.wait_for_arrivals(3) => {}
        outcome = next => panic!("the call ended before it reached the server: {outcome:?}"),
    }
}
