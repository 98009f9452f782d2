//! The layer through `oneshot` and tokio-test, on tokio's paused clock: waits and refills are
//! exact and take no wall time.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use tokio::time::{advance, Instant};
use tokio_test::{assert_pending, assert_ready, task};
use tollgate::clock::TokioClock;
use tollgate::key::{Global, Header};
use tollgate::rate_limit::Reset;
use tollgate::rate_limit::{HeaderOptions, LimitEventKind, RateLimitLayer, Refusal};
use tollgate::{MemoryStore, Quota, Quotas, RateLimited};
use tower::BoxError;
use tower::{service_fn, Layer, Service};

/// A store on tokio's clock, so that `pause` and `advance` drive it.
fn paused_store() -> MemoryStore<TokioClock> {
    MemoryStore::builder().clock(TokioClock::new()).build()
}

fn hello() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future + Send,
> + Clone
       + Send {
    service_fn(|_: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::from("hello"))) })
}

fn request(key: &str) -> Request<Body> {
    Request::get("/")
        .header("x-key", key)
        .body(Body::empty())
        .unwrap()
}

fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(start_paused = true)]
async fn refills_at_exactly_the_quota_rate() {
    let svc = RateLimitLayer::new(Quota::per_second(2).unwrap())
        .key(Header::new("x-key"))
        .store(paused_store())
        .layer(hello());
    let status = || {
        let svc = svc.clone();
        async move { svc.oneshot(request("a")).await.unwrap().status() }
    };
    assert_eq!(status().await, StatusCode::OK);
    assert_eq!(status().await, StatusCode::OK);
    assert_eq!(status().await, StatusCode::TOO_MANY_REQUESTS);
    advance(Duration::from_millis(499)).await;
    assert_eq!(status().await, StatusCode::TOO_MANY_REQUESTS);
    advance(Duration::from_millis(1)).await;
    assert_eq!(status().await, StatusCode::OK);
    assert_eq!(status().await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn sub_second_waits_say_retry_after_one_not_zero() {
    let svc = RateLimitLayer::new(Quota::per_second(10).unwrap().with_burst(1).unwrap())
        .store(paused_store())
        .layer(hello());
    svc.clone().oneshot(request("a")).await.unwrap();
    let refused = svc.clone().oneshot(request("a")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header(&refused, "ratelimit").as_deref(),
        Some("\"default\";r=0;t=1")
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_wait_mode_queues_in_order_and_refuses_past_the_maximum() {
    let svc = RateLimitLayer::new(Quota::per_second(1).unwrap())
        .key(Header::new("x-key"))
        .store(paused_store())
        .wait(Duration::from_secs(2))
        .layer(hello());
    let start = Instant::now();
    let finished: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (svc, finished) = (svc.clone(), Arc::clone(&finished));
        tasks.push(tokio::spawn(async move {
            let response = svc.oneshot(request("a")).await.unwrap();
            finished
                .lock()
                .unwrap()
                .push((i, start.elapsed().as_millis() as u64));
            response.status()
        }));
        // Arrive in order.
        tokio::task::yield_now().await;
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let finished = finished.lock().unwrap().clone();
    let waited: Vec<_> = finished
        .iter()
        .filter(|(i, _)| *i < 3)
        .map(|(_, ms)| *ms)
        .collect();
    assert_eq!(waited, [0, 1000, 2000]);
    // Another key does not wait behind them.
    let other = svc.clone().oneshot(request("b")).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_gives_its_slot_back() {
    let store = paused_store();
    let quotas = Quotas::from(Quota::per_second(1).unwrap());
    let svc = RateLimitLayer::new(quotas.clone())
        .key(Header::new("x-key"))
        .store(store.clone())
        .wait(Duration::from_secs(10))
        .layer(hello());
    svc.clone().oneshot(request("a")).await.unwrap();
    let mut waiting = task::spawn(svc.clone().oneshot(request("a")));
    assert_pending!(waiting.poll());
    let key = http::HeaderValue::from_static("a");
    assert_eq!(
        store.status(&key, &quotas).reset_after(),
        Duration::from_secs(2)
    );
    drop(waiting);
    assert_eq!(
        store.status(&key, &quotas).reset_after(),
        Duration::from_secs(1)
    );
}

#[tokio::test(start_paused = true)]
async fn global_wait_mode_is_backpressure_in_poll_ready() {
    let store = paused_store();
    let quotas = Quotas::from(Quota::per_second(1).unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let inner = service_fn(move |_: Request<Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Body::empty())) }
    });
    let layer = RateLimitLayer::new(quotas.clone())
        .key(Global)
        .store(store.clone())
        .wait(Duration::from_secs(5));
    let mut a = layer.layer(inner.clone());
    let mut b = a.clone();
    let mut c = a.clone();

    // A gets the slot at once; B and C reserve the next two and wait, each on its own timer.
    let mut ready_a = task::spawn(std::future::poll_fn(|cx| a.poll_ready(cx)));
    assert_ready!(ready_a.poll()).unwrap();
    drop(ready_a);
    let mut ready_b = task::spawn(std::future::poll_fn(|cx| b.poll_ready(cx)));
    let mut ready_c = task::spawn(std::future::poll_fn(|cx| c.poll_ready(cx)));
    assert_pending!(ready_b.poll());
    assert_pending!(ready_c.poll());

    advance(Duration::from_secs(1)).await;
    assert!(ready_b.is_woken());
    assert_ready!(ready_b.poll()).unwrap();
    assert_pending!(ready_c.poll());
    advance(Duration::from_secs(1)).await;
    assert!(ready_c.is_woken());
    assert_ready!(ready_c.poll()).unwrap();
    drop((ready_b, ready_c));

    // Each reserved slot is used by the call that follows.
    a.call(Request::new(Body::empty())).await.unwrap();
    b.call(Request::new(Body::empty())).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // C never calls: dropping it gives its slot back.
    assert_eq!(
        store.status(&Global, &quotas).reset_after(),
        Duration::from_secs(1)
    );
    drop(c);
    assert_eq!(store.status(&Global, &quotas).reset_after(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn global_wait_mode_refuses_past_the_maximum_wait() {
    let layer = RateLimitLayer::new(Quota::per_minute(1).unwrap())
        .store(paused_store())
        .wait(Duration::from_secs(5));
    let svc = layer.layer(hello());
    assert_eq!(
        svc.clone().oneshot(request("x")).await.unwrap().status(),
        StatusCode::OK
    );
    // The next slot is 60 s away, past the 5 s maximum: poll_ready is ready, call refuses.
    let refused = svc.clone().oneshot(request("x")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("60"));
}

#[tokio::test(start_paused = true)]
async fn non_http_services_get_a_typed_error() {
    let svc = RateLimitLayer::new(Quota::per_second(1).unwrap())
        .key(|n: &u32| Some(*n % 2))
        .store(paused_store())
        .errors()
        .layer(service_fn(
            |n: u32| async move { Ok::<_, BoxError>(n * 10) },
        ));
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 10);
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), 20);
    let error = svc.clone().oneshot(3).await.unwrap_err();
    let limited = error
        .downcast_ref::<RateLimited>()
        .expect("a RateLimited error");
    assert_eq!(limited.retry_after(), Duration::from_secs(1));
    assert!(error.to_string().contains("retry after 1 s"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn costs_are_charged_and_impossible_costs_refused() {
    let svc = RateLimitLayer::new(Quota::per_minute(10).unwrap())
        .store(paused_store())
        .cost(|req: &Request<Body>| {
            req.headers()
                .get("x-cost")
                .map_or(1, |v| v.to_str().unwrap().parse().unwrap())
        })
        .layer(hello());
    let with_cost = |cost: &str| {
        Request::get("/")
            .header("x-cost", cost)
            .body(Body::empty())
            .unwrap()
    };
    let first = svc.clone().oneshot(with_cost("7")).await.unwrap();
    assert_eq!(
        header(&first, "ratelimit").as_deref(),
        Some("\"default\";r=3;t=6")
    );
    assert_eq!(
        svc.clone().oneshot(with_cost("4")).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        svc.clone().oneshot(with_cost("3")).await.unwrap().status(),
        StatusCode::OK
    );
    // Eleven never fits a burst of ten: a clear 400, not a wait or a 429 to retry.
    let never = svc.clone().oneshot(with_cost("11")).await.unwrap();
    assert_eq!(never.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&never, "retry-after"), None);
}

#[tokio::test(start_paused = true)]
async fn several_quotas_report_the_binding_one() {
    let quotas = Quotas::new([
        Quota::per_second(10)
            .unwrap()
            .with_burst(5)
            .unwrap()
            .named("burst")
            .unwrap(),
        Quota::per_hour(7).unwrap().named("hourly").unwrap(),
    ])
    .unwrap();
    let svc = RateLimitLayer::new(quotas)
        .store(paused_store())
        .layer(hello());
    let mut last = None;
    for _ in 0..5 {
        last = Some(svc.clone().oneshot(request("k")).await.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(
        header(&last, "ratelimit").as_deref(),
        Some("\"burst\";r=0;t=1")
    );
    assert_eq!(
        header(&last, "ratelimit-policy").as_deref(),
        Some("\"burst\";q=5;w=1, \"hourly\";q=7;w=3600")
    );
    advance(Duration::from_secs(1)).await;
    svc.clone().oneshot(request("k")).await.unwrap();
    svc.clone().oneshot(request("k")).await.unwrap();
    let refused = svc.clone().oneshot(request("k")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&refused, "ratelimit").as_deref(),
        Some("\"hourly\";r=0;t=514")
    );
}

#[tokio::test(start_paused = true)]
async fn header_options() {
    let legacy = RateLimitLayer::new(Quota::per_minute(2).unwrap())
        .store(paused_store())
        .headers(
            HeaderOptions::default()
                .ietf(false)
                .legacy(Some(Reset::DeltaSeconds)),
        )
        .layer(hello());
    let response = legacy.clone().oneshot(request("k")).await.unwrap();
    assert_eq!(header(&response, "ratelimit"), None);
    assert_eq!(header(&response, "x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(
        header(&response, "x-ratelimit-remaining").as_deref(),
        Some("1")
    );
    assert_eq!(
        header(&response, "x-ratelimit-reset").as_deref(),
        Some("30")
    );

    let epoch = RateLimitLayer::new(Quota::per_minute(2).unwrap())
        .store(paused_store())
        .headers(HeaderOptions::default().legacy(Some(Reset::EpochSeconds)))
        .layer(hello());
    let response = epoch.clone().oneshot(request("k")).await.unwrap();
    let reset: u64 = header(&response, "x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 29..=now + 31).contains(&reset), "{reset} vs {now}");

    let quiet = RateLimitLayer::new(Quota::per_minute(1).unwrap())
        .store(paused_store())
        .headers(HeaderOptions::default().on_allowed(false))
        .refusal_status(StatusCode::SERVICE_UNAVAILABLE)
        .layer(hello());
    let allowed = quiet.clone().oneshot(request("k")).await.unwrap();
    assert_eq!(header(&allowed, "ratelimit"), None);
    let refused = quiet.clone().oneshot(request("k")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        header(&refused, "ratelimit").as_deref(),
        Some("\"default\";r=0;t=60")
    );
}

#[tokio::test(start_paused = true)]
async fn custom_refusals_keep_the_headers() {
    let svc = RateLimitLayer::new(Quota::per_minute(1).unwrap())
        .store(paused_store())
        .refuse_with(|refusal: &Refusal| {
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .body(Body::from(format!("slow down: {refusal}")))
                .unwrap()
        })
        .layer(hello());
    svc.clone().oneshot(request("k")).await.unwrap();
    let refused = svc.clone().oneshot(request("k")).await.unwrap();
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("60"));
    let body = axum::body::to_bytes(refused.into_body(), 1024)
        .await
        .unwrap();
    assert!(
        body.starts_with(b"slow down: rate limited by quota \"default\""),
        "{body:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_fire_the_hook() {
    let events: Arc<Mutex<Vec<(LimitEventKind, Duration)>>> = Arc::default();
    let log = Arc::clone(&events);
    let svc = RateLimitLayer::new(Quota::per_second(1).unwrap())
        .store(paused_store())
        .key(Header::new("x-key"))
        .wait(Duration::from_millis(1500))
        .on_event(move |e| log.lock().unwrap().push((e.kind, e.delay)))
        .layer(hello());
    for _ in 0..3 {
        let _ = svc.clone().oneshot(request("k")).await.unwrap();
    }
    // The first passes; the second waits 1 s; by then the third's slot is 1 s away: it waits.
    assert_eq!(
        *events.lock().unwrap(),
        [
            (LimitEventKind::Waiting, Duration::from_secs(1)),
            (LimitEventKind::Waiting, Duration::from_secs(1))
        ]
    );
}

#[tokio::test]
async fn the_inner_services_readiness_is_respected() {
    // A service that is never ready: the layer must not call it, nor panic.
    #[derive(Clone)]
    struct NeverReady;
    impl Service<Request<Body>> for NeverReady {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Pending
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            panic!("called while not ready")
        }
    }
    let mut svc = RateLimitLayer::new(Quota::per_second(1).unwrap()).layer(NeverReady);
    let mut ready = task::spawn(std::future::poll_fn(|cx| svc.poll_ready(cx)));
    assert_pending!(ready.poll());
}
