//! LearnLayer against local servers that state their limits in each dialect, lie with hostile
//! values, or storm with 429s, on tokio's paused clock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tollgate::learn::{Aimd, LearnLayer, ServerLimit};
use tollgate::retry::{ReplayBody, RetryAction, RetryLayer};
use tollgate::Quota;
use tower::{Layer, ServiceExt};

/// A server allowing `LIMIT` requests per `WINDOW` (fixed windows), saying so in the dialect
/// of the path, and answering 429 beyond.
const LIMIT: u64 = 5;
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Upstream {
    window_start: Mutex<Option<Instant>>,
    used: AtomicU64,
    hits: AtomicU64,
    refused: AtomicU64,
    arrivals: Mutex<Vec<Instant>>,
    /// The path of each request `answer` served, and when it came.
    paths: Mutex<Vec<(String, Instant)>>,
}

impl Upstream {
    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

async fn limited(State(upstream): State<Arc<Upstream>>, Path(dialect): Path<String>) -> Response {
    let now = Instant::now();
    upstream.hits.fetch_add(1, Ordering::SeqCst);
    upstream.arrivals.lock().unwrap().push(now);
    let start = {
        let mut start = upstream.window_start.lock().unwrap();
        let current = *start.get_or_insert(now);
        if now >= current + WINDOW {
            *start = Some(now);
            upstream.used.store(0, Ordering::SeqCst);
            now
        } else {
            current
        }
    };
    let used = upstream.used.fetch_add(1, Ordering::SeqCst) + 1;
    let over = used > LIMIT;
    let remaining = LIMIT.saturating_sub(used);
    let reset = (start + WINDOW - now).as_secs_f64().ceil() as u64;
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    };
    match dialect.as_str() {
        "ietf" => {
            set("ratelimit", format!("\"w\";r={remaining};t={reset}"));
            set("ratelimit-policy", format!("\"w\";q={LIMIT};w=10"));
        }
        "draft" => {
            set("ratelimit-limit", LIMIT.to_string());
            set("ratelimit-remaining", remaining.to_string());
            set("ratelimit-reset", reset.to_string());
        }
        "x-delta" => {
            set("x-ratelimit-limit", LIMIT.to_string());
            set("x-ratelimit-remaining", remaining.to_string());
            set("x-ratelimit-reset", reset.to_string());
        }
        "x-epoch" => {
            // GitHub's style: the reset as Unix seconds, rounded up, as a server must so that a
            // client waiting until then is never early.
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            let epoch = (wall + (start + WINDOW - now)).as_secs_f64().ceil() as u64;
            set("x-ratelimit-remaining", remaining.to_string());
            set("x-ratelimit-reset", epoch.to_string());
        }
        "silent" => {}
        _ => unreachable!(),
    }
    if over {
        upstream.refused.fetch_add(1, Ordering::SeqCst);
        set("retry-after", reset.to_string());
        return (StatusCode::TOO_MANY_REQUESTS, headers).into_response();
    }
    (StatusCode::OK, headers, "ok").into_response()
}

/// Answers with the headers in the query of the path: `/say/NAME=VALUE;NAME=VALUE/STATUS`.
async fn say(
    Path((pairs, status)): Path<(String, u16)>,
    State(upstream): State<Arc<Upstream>>,
) -> Response {
    upstream.hits.fetch_add(1, Ordering::SeqCst);
    upstream.arrivals.lock().unwrap().push(Instant::now());
    let mut headers = HeaderMap::new();
    for pair in pairs.split(';').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap();
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (StatusCode::from_u16(status).unwrap(), headers).into_response()
}

/// Like `say` on the first request; every later one is a plain 200.
async fn once(
    Path((pairs, status)): Path<(String, u16)>,
    State(upstream): State<Arc<Upstream>>,
) -> Response {
    if upstream.hits() == 0 {
        return say(Path((pairs, status)), State(upstream)).await;
    }
    upstream.hits.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, "ok").into_response()
}

/// Any other path: answers with what the request's `x-answer` header asks for,
/// `NAME=VALUE|NAME=VALUE`, with `status=CODE` for the status (200 by default), so that a
/// test scripts each answer of one route while the route (method and path) stays the same.
async fn answer(
    State(upstream): State<Arc<Upstream>>,
    request: Request<axum::body::Body>,
) -> Response {
    upstream.hits.fetch_add(1, Ordering::SeqCst);
    upstream.arrivals.lock().unwrap().push(Instant::now());
    upstream
        .paths
        .lock()
        .unwrap()
        .push((request.uri().path().to_owned(), Instant::now()));
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    let asked = request
        .headers()
        .get("x-answer")
        .map(|v| v.to_str().unwrap().to_owned());
    for pair in asked
        .iter()
        .flat_map(|a| a.split('|'))
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap();
        if name == "status" {
            status = StatusCode::from_u16(value.parse().unwrap()).unwrap();
            continue;
        }
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (status, headers, "ok").into_response()
}

async fn start() -> (Arc<Upstream>, SocketAddr) {
    let upstream = Arc::new(Upstream::default());
    let app = Router::new()
        .route("/limited/{dialect}", get(limited))
        .route("/say/{pairs}/{status}", get(say))
        .route("/once/{pairs}/{status}", get(once))
        .fallback(answer)
        .with_state(Arc::clone(&upstream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (upstream, addr)
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get_req(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

/// A GET of `path` that `answer` answers as `answer` says.
fn answered(addr: SocketAddr, path: &str, answer: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .header("x-answer", answer)
        .body(Full::default())
        .unwrap()
}

/// A moment in a test, and how many requests `answer` had served by then.
#[derive(Clone, Copy)]
struct Mark(usize, Instant);

impl Upstream {
    fn mark(&self) -> Mark {
        Mark(self.paths.lock().unwrap().len(), Instant::now())
    }

    /// When each request to `path` served after `since` arrived, from `since`.
    fn arrived(&self, path: &str, since: Mark) -> Vec<Duration> {
        let paths = self.paths.lock().unwrap();
        paths[since.0..]
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, at)| *at - since.1)
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn after_the_first_response_no_dialect_lets_the_client_exceed_the_server() {
    for dialect in ["ietf", "draft", "x-delta", "x-epoch"] {
        let (upstream, addr) = start().await;
        let svc = LearnLayer::new().layer(client());
        let path = format!("/limited/{dialect}");
        for _ in 0..16 {
            let response = svc.clone().oneshot(get_req(addr, &path)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{dialect}");
        }
        assert_eq!(
            upstream.refused(),
            0,
            "{dialect}: the client waited instead"
        );
        assert_eq!(upstream.hits(), 16, "{dialect}");
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_count_what_is_in_flight() {
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new().layer(client());
    // One request to learn, then a burst of twenty at once.
    svc.clone()
        .oneshot(get_req(addr, "/limited/ietf"))
        .await
        .unwrap();
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get_req(addr, "/limited/ietf"))))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(upstream.refused(), 0);
}

#[tokio::test(start_paused = true)]
async fn reject_mode_refuses_locally_instead_of_sending() {
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new().reject().layer(client());
    for _ in 0..5 {
        assert_eq!(
            svc.clone()
                .oneshot(get_req(addr, "/limited/x-delta"))
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    let error = svc
        .clone()
        .oneshot(get_req(addr, "/limited/x-delta"))
        .await
        .unwrap_err();
    let limit = error
        .downcast_ref::<ServerLimit>()
        .expect("refused locally");
    assert_eq!(limit.retry_after, Duration::from_secs(10));
    assert_eq!(upstream.hits(), 5, "the sixth request was never sent");
}

#[tokio::test(start_paused = true)]
async fn wait_and_reject_choose_the_mode_as_on_the_rate_limit_layer() {
    let (upstream, addr) = start().await;
    // The last word wins: `.wait(max)` after `.reject()` is wait mode again, up to `max`.
    let svc = LearnLayer::new()
        .reject()
        .wait(Duration::from_secs(30))
        .layer(client());
    for _ in 0..5 {
        svc.clone()
            .oneshot(get_req(addr, "/limited/x-delta"))
            .await
            .unwrap();
    }
    let sent = Instant::now();
    let sixth = svc
        .clone()
        .oneshot(get_req(addr, "/limited/x-delta"))
        .await
        .unwrap();
    assert_eq!(sixth.status(), StatusCode::OK);
    assert_eq!(
        Instant::now() - sent,
        Duration::from_secs(10),
        "waited for the reset"
    );
    assert_eq!(upstream.refused(), 0);
    // And `.reject()` after `.wait(max)` is reject mode: refused locally, never sent.
    let (upstream, addr) = start().await;
    let rejecting = LearnLayer::new()
        .wait(Duration::from_secs(30))
        .reject()
        .layer(client());
    for _ in 0..5 {
        rejecting
            .clone()
            .oneshot(get_req(addr, "/limited/x-delta"))
            .await
            .unwrap();
    }
    let error = rejecting
        .oneshot(get_req(addr, "/limited/x-delta"))
        .await
        .unwrap_err();
    assert!(error.downcast_ref::<ServerLimit>().is_some(), "{error}");
    assert_eq!(upstream.hits(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_cools_the_host_down() {
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new().layer(client());
    let first = svc
        .clone()
        .oneshot(get_req(addr, "/say/retry-after=4/429"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    let sent = Instant::now();
    svc.clone()
        .oneshot(get_req(addr, "/say/x=1/200"))
        .await
        .unwrap();
    assert_eq!(Instant::now() - sent, Duration::from_secs(4));
    let arrivals = upstream.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals[1] - arrivals[0], Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn hostile_values_are_ignored_or_capped() {
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new()
        .wait(Duration::from_secs(5))
        .layer(client());
    // Malformed: ignored, the next request goes at once.
    for pairs in [
        "x-ratelimit-remaining=-1;x-ratelimit-reset=5",
        "x-ratelimit-remaining=none;x-ratelimit-reset=5",
        "ratelimit=%22a%22%3Br%3D-3%3Bt%3D9",
        "retry-after=soon",
        "retry-after=-5",
    ] {
        svc.clone()
            .oneshot(get_req(addr, &format!("/say/{pairs}/429")))
            .await
            .unwrap();
        let start = Instant::now();
        svc.clone()
            .oneshot(get_req(addr, "/say/x=1/200"))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "{pairs}");
    }
    // Far in the future: capped at the maximum wait.
    for pairs in [
        "x-ratelimit-remaining=0;x-ratelimit-reset=99999999999",
        "retry-after=Fri%2C%2031%20Dec%209999%2023:59:59%20GMT",
        "retry-after=999999999",
    ] {
        let (_, addr) = start().await;
        svc.clone()
            .oneshot(get_req(addr, &format!("/say/{pairs}/429")))
            .await
            .unwrap();
        let start = Instant::now();
        svc.clone()
            .oneshot(get_req(addr, "/say/x=1/200"))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(5), "{pairs}");
    }
    assert!(upstream.hits() >= 10);
}

#[tokio::test(start_paused = true)]
async fn a_429_storm_is_met_with_patience() {
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new().layer(client());
    let start = Instant::now();
    for _ in 0..10 {
        let response = svc
            .clone()
            .oneshot(get_req(addr, "/say/retry-after=1/429"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // Ten 429s with Retry-After: 1 took nine seconds: one request a second, not a storm.
    assert_eq!(start.elapsed(), Duration::from_secs(9));
    assert_eq!(upstream.hits(), 10);
}

#[tokio::test(start_paused = true)]
async fn silent_hosts_get_the_default_quota() {
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new()
        .default_quota(Quota::per_second(2).unwrap().with_burst(1).unwrap())
        .layer(client());
    let start = Instant::now();
    for _ in 0..5 {
        svc.clone()
            .oneshot(get_req(addr, "/limited/silent"))
            .await
            .unwrap();
    }
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "five at two per second"
    );
    assert_eq!(upstream.hits(), 5);
}

#[tokio::test(start_paused = true)]
async fn adaptive_mode_halves_on_throttling_and_grows_on_success() {
    let (_, addr) = start().await;
    let layer = LearnLayer::new().adaptive(Aimd {
        start: 8.0,
        floor: 1.0,
        ceiling: 20.0,
        step: 1.0,
        decrease: 0.5,
    });
    let svc = layer.layer(client());
    let host: http::uri::Authority = addr.to_string().parse().unwrap();
    svc.clone()
        .oneshot(get_req(addr, "/say/x=1/429"))
        .await
        .unwrap();
    assert_eq!(layer.adaptive_rate(&host), Some(4.0));
    svc.clone()
        .oneshot(get_req(addr, "/say/x=1/503"))
        .await
        .unwrap();
    assert_eq!(layer.adaptive_rate(&host), Some(2.0));
    for _ in 0..3 {
        svc.clone()
            .oneshot(get_req(addr, "/say/x=1/200"))
            .await
            .unwrap();
    }
    assert_eq!(layer.adaptive_rate(&host), Some(5.0));
    for _ in 0..10 {
        svc.clone()
            .oneshot(get_req(addr, "/say/x=1/429"))
            .await
            .unwrap();
    }
    assert_eq!(
        layer.adaptive_rate(&host),
        Some(1.0),
        "never below the floor"
    );
    // At one per second, two requests are a second apart.
    let start = Instant::now();
    svc.clone()
        .oneshot(get_req(addr, "/say/x=1/200"))
        .await
        .unwrap();
    svc.clone()
        .oneshot(get_req(addr, "/say/x=1/200"))
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

/// An adaptive pace held at one request per second.
const ONE_PER_SECOND: Aimd = Aimd {
    start: 1.0,
    floor: 1.0,
    ceiling: 1.0,
    step: 1.0,
    decrease: 0.5,
};

#[tokio::test(start_paused = true)]
async fn refusals_in_adaptive_reject_mode_give_back_what_they_took() {
    let (_, addr) = start().await;
    let layer = LearnLayer::new().reject().adaptive(ONE_PER_SECOND);
    let svc = layer.layer(client());
    // One a second: the first goes, the next three are refused at once.
    svc.clone()
        .oneshot(get_req(addr, "/say/x=1/200"))
        .await
        .unwrap();
    for _ in 0..3 {
        let refused = svc
            .clone()
            .oneshot(get_req(addr, "/say/x=1/200"))
            .await
            .unwrap_err();
        assert!(refused.downcast_ref::<ServerLimit>().is_some(), "{refused}");
    }
    // The refused ones booked nothing: 1.5 s later the host's next slot is free.
    tokio::time::advance(Duration::from_millis(1500)).await;
    let after = svc.clone().oneshot(get_req(addr, "/say/x=1/200")).await;
    assert!(after.is_ok(), "{:?}", after.err());
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_waiting_frees_its_place() {
    let (_, addr) = start().await;
    let layer = LearnLayer::new().adaptive(ONE_PER_SECOND);
    let svc = layer.layer(client());
    svc.clone()
        .oneshot(get_req(addr, "/say/x=1/200"))
        .await
        .unwrap();
    // Waits for the slot a second away; given up after 100 ms.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        svc.clone().oneshot(get_req(addr, "/say/x=1/200")),
    )
    .await;
    assert!(gave_up.is_err());
    // Its slot was given back: the next request waits 0.9 s, not 1.9 s.
    let start = Instant::now();
    svc.clone()
        .oneshot(get_req(addr, "/say/x=1/200"))
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

/// RetryLayer → LearnLayer → client, as the example client stacks them.
fn retry_over_learn() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = tower::BoxError,
    Future = impl Send,
> + Clone {
    tower::ServiceBuilder::new()
        .layer(RetryLayer::new()) // max_pushback 30 s
        .layer(LearnLayer::new()) // waits up to 60 s
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>())
}

#[tokio::test(start_paused = true)]
async fn retry_and_learn_agree_on_the_servers_delay() {
    // 503 with Retry-After: 4 and "0 left, reset in 10 s" (the older draft's fields, which the
    // retry layer once ignored): both layers read 10 s. The retry says and waits 10 s, and the
    // learned limit has lapsed by then, so the learn layer adds nothing.
    let (upstream, addr) = start().await;
    let said = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&said);
    let stack = tower::ServiceBuilder::new()
        .layer(RetryLayer::new().on_event(move |event| {
            if let RetryAction::Retry { delay } = event.action {
                log.lock().unwrap().push(delay);
            }
        }))
        .layer(LearnLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
    let start = Instant::now();
    let response = stack
        .oneshot(get_req(
            addr,
            "/once/retry-after=4;ratelimit-remaining=0;ratelimit-reset=10/503",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.hits(), 2);
    assert_eq!(
        *said.lock().unwrap(),
        [Duration::from_secs(10)],
        "the delay the retry reports"
    );
    assert_eq!(start.elapsed().as_secs(), 10, "and the delay waited in all");
}

#[tokio::test(start_paused = true)]
async fn a_delay_past_the_retrys_maximum_is_not_waited_by_learn_either() {
    // The report's case: Retry-After 1 but reset in 40 s. The retry layer reads 40 s, past its
    // 30 s max_pushback, and returns the 503 at once; before, it slept 1 s and the learn layer
    // then waited 39 s more. And Retry-After 30 with reset 60, which took 120 s.
    for pairs in [
        "retry-after=1;ratelimit-remaining=0;ratelimit-reset=40",
        "retry-after=30;x-ratelimit-remaining=0;x-ratelimit-reset=60",
    ] {
        let (upstream, addr) = start().await;
        let start = Instant::now();
        let response = retry_over_learn()
            .oneshot(get_req(addr, &format!("/once/{pairs}/503")))
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{pairs}");
        assert_eq!(upstream.hits(), 1, "{pairs}");
        assert_eq!(start.elapsed(), Duration::ZERO, "{pairs}");
    }
}

#[tokio::test(start_paused = true)]
async fn every_wait_of_a_request_comes_out_of_one_maximum_wait() {
    // The host cools down for 1 s (a 429 with Retry-After: 1), then its default quota (one
    // per 2 s) has its next slot 1 s later: 2 s in all, past the 1.5 s allowed. Each wait
    // alone fits; together they must not.
    let (_, addr) = start().await;
    let layer = LearnLayer::new()
        .wait(Duration::from_millis(1500))
        .default_quota(Quota::per(Duration::from_secs(2), 1).unwrap());
    let svc = layer.layer(client());
    let throttled = svc
        .clone()
        .oneshot(get_req(addr, "/say/retry-after=1/429"))
        .await
        .unwrap();
    assert_eq!(throttled.status(), 429);
    let start = Instant::now();
    let refused = svc
        .clone()
        .oneshot(get_req(addr, "/say/x=1/200"))
        .await
        .unwrap_err();
    assert!(refused.downcast_ref::<ServerLimit>().is_some(), "{refused}");
    assert!(
        start.elapsed() <= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

/// The vendors' dialects, each on a response that asks for a delay: the path for `/once/`, the
/// status, and the delay both layers must read.
const VENDOR_DELAYS: [(&str, &str, u16, Duration); 6] = [
    (
        "OpenAI, requests spent",
        "x-ratelimit-limit-requests=60;x-ratelimit-remaining-requests=0;\
         x-ratelimit-reset-requests=6s;x-ratelimit-limit-tokens=150000;\
         x-ratelimit-remaining-tokens=149000;x-ratelimit-reset-tokens=20ms",
        429,
        Duration::from_secs(6),
    ),
    (
        "OpenAI, tokens spent",
        "x-ratelimit-limit-requests=60;x-ratelimit-remaining-requests=59;\
         x-ratelimit-reset-requests=1s;x-ratelimit-limit-tokens=150000;\
         x-ratelimit-remaining-tokens=0;x-ratelimit-reset-tokens=12.5s",
        429,
        Duration::from_millis(12_500),
    ),
    (
        // The reset is Unix seconds, measured against the response's own Date
        // (1445412480): 7 s.
        "GitHub, primary limit, 403",
        "date=Wed%2C%2021%20Oct%202015%2007:28:00%20GMT;x-ratelimit-limit=60;\
         x-ratelimit-remaining=0;x-ratelimit-used=60;x-ratelimit-reset=1445412487;\
         x-ratelimit-resource=core",
        403,
        Duration::from_secs(7),
    ),
    (
        "GitHub, used without remaining, 429",
        "date=Wed%2C%2021%20Oct%202015%2007:28:00%20GMT;x-ratelimit-limit=30;\
         x-ratelimit-used=30;x-ratelimit-reset=1445412489;x-ratelimit-resource=search",
        429,
        Duration::from_secs(9),
    ),
    (
        "GitHub, secondary limit, 403",
        "retry-after=3;x-ratelimit-limit=5000;x-ratelimit-remaining=4000;\
         x-ratelimit-resource=core",
        403,
        Duration::from_secs(3),
    ),
    (
        "X-RateLimit-Reset-After, in seconds with decimals",
        "x-ratelimit-limit=5;x-ratelimit-remaining=0;x-ratelimit-reset-after=2.5",
        429,
        Duration::from_millis(2500),
    ),
];

#[tokio::test(start_paused = true)]
async fn retry_and_learn_agree_on_the_vendors_delays() {
    for (dialect, pairs, status, delay) in VENDOR_DELAYS {
        let path = format!("/once/{pairs}/{status}");

        // RetryLayer over LearnLayer: the retry waits the server's delay, and the learn layer,
        // having read the same delay, adds nothing.
        let (upstream, addr) = start().await;
        let said = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&said);
        let stack = tower::ServiceBuilder::new()
            .layer(RetryLayer::new().on_event(move |event| {
                if let RetryAction::Retry { delay } = event.action {
                    log.lock().unwrap().push(delay);
                }
            }))
            .layer(LearnLayer::new())
            .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
        let start_time = Instant::now();
        let response = stack.oneshot(get_req(addr, &path)).await.unwrap();
        assert_eq!(response.status(), 200, "{dialect}");
        assert_eq!(upstream.hits(), 2, "{dialect}");
        assert_eq!(
            *said.lock().unwrap(),
            [delay],
            "{dialect}: the retry's delay"
        );
        assert_eq!(
            start_time.elapsed(),
            delay,
            "{dialect}: waited once, in all"
        );

        // LearnLayer alone reads the same delay: the next request to the host waits it.
        let (upstream, addr) = start().await;
        let svc = LearnLayer::new().layer(client());
        let first = svc.clone().oneshot(get_req(addr, &path)).await.unwrap();
        assert_eq!(first.status(), status, "{dialect}");
        let sent = Instant::now();
        let next = svc.clone().oneshot(get_req(addr, &path)).await.unwrap();
        assert_eq!(next.status(), 200, "{dialect}");
        assert_eq!(sent.elapsed(), delay, "{dialect}: the learn layer's wait");
        assert_eq!(upstream.hits(), 2, "{dialect}");
    }
}

/// GitHub's answers: `core` just spent (0 left, back in 60 s), then refilled; `search` with
/// plenty left. Each names its resource in `X-RateLimit-Resource`.
const CORE_SPENT: &str = "x-ratelimit-resource=core|x-ratelimit-limit=5000|\
                          x-ratelimit-remaining=0|x-ratelimit-used=5000|x-ratelimit-reset=60";
const CORE_BACK: &str = "x-ratelimit-resource=core|x-ratelimit-limit=5000|\
                         x-ratelimit-remaining=4999|x-ratelimit-reset=3600";
const SEARCH: &str = "x-ratelimit-resource=search|x-ratelimit-limit=30|\
                      x-ratelimit-remaining=29|x-ratelimit-reset=60";

#[tokio::test(start_paused = true)]
async fn a_spent_resource_slows_only_the_routes_answered_under_it() {
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new().layer(client());
    let call = |path: &str, answer: &str| svc.clone().oneshot(answered(addr, path, answer));
    // Each route answered once: /repos/… under `core`, now spent; /search/… under `search`.
    assert_eq!(
        call("/repos/o/r/issues", CORE_SPENT)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(call("/search/issues", SEARCH).await.unwrap().status(), 200);

    let start = Instant::now();
    let mark = upstream.mark();
    let repos = tokio::spawn(call("/repos/o/r/issues", CORE_BACK));
    for _ in 0..5 {
        assert_eq!(call("/search/issues", SEARCH).await.unwrap().status(), 200);
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "search went at once");
    assert!(!repos.is_finished(), "core waits for its reset");
    assert_eq!(repos.await.unwrap().unwrap().status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    assert_eq!(
        upstream.arrived("/search/issues", mark),
        [Duration::ZERO; 5]
    );
    assert_eq!(
        upstream.arrived("/repos/o/r/issues", mark),
        [Duration::from_secs(60)],
        "sent at the reset, not before"
    );
    // A route never answered is admitted against what the host said without a name: nothing
    // here, so it goes at once, whatever `core` said.
    let start = Instant::now();
    call("/rate_limit", "").await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn ietf_policies_each_hold_back_their_own_routes() {
    const POLICY: &str = "ratelimit-policy=\"uploads\";q=10;w=30, \"reads\";q=100;w=1";
    let uploads_spent = format!("{POLICY}|ratelimit=\"uploads\";r=0;t=30");
    let reads = format!("{POLICY}|ratelimit=\"reads\";r=99;t=1");
    // A route counted under both policies at once.
    let both = format!("{POLICY}|ratelimit=\"reads\";r=98;t=1, \"uploads\";r=0;t=30");
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new().layer(client());
    let call = |path: &str, answer: &str| svc.clone().oneshot(answered(addr, path, answer));
    call("/uploads/a", &uploads_spent).await.unwrap();
    call("/items", &reads).await.unwrap();
    call("/sync", &both).await.unwrap();

    let start = Instant::now();
    let mark = upstream.mark();
    let upload = tokio::spawn(call("/uploads/a", &reads));
    let sync = tokio::spawn(call("/sync", &reads));
    for _ in 0..3 {
        call("/items", &reads).await.unwrap();
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "reads went at once");
    upload.await.unwrap().unwrap();
    sync.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(upstream.arrived("/items", mark), [Duration::ZERO; 3]);
    assert_eq!(
        upstream.arrived("/uploads/a", mark),
        [Duration::from_secs(30)]
    );
    assert_eq!(
        upstream.arrived("/sync", mark),
        [Duration::from_secs(30)],
        "a route under both waits for the spent one"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_answer_cools_the_limit_it_names_or_else_the_host() {
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new().layer(client());
    let call = |path: &str, answer: &str| svc.clone().oneshot(answered(addr, path, answer));
    call("/repos/o/r", CORE_BACK).await.unwrap();
    // A 429 under `search`, spent, with a Retry-After later than its reset: `search` alone
    // cools, until the later of the two.
    let throttled = "status=429|retry-after=30|x-ratelimit-resource=search|\
                     x-ratelimit-limit=30|x-ratelimit-remaining=0|x-ratelimit-reset=10";
    assert_eq!(call("/search/code", throttled).await.unwrap().status(), 429);
    let start = Instant::now();
    let mark = upstream.mark();
    let search = tokio::spawn(call("/search/code", SEARCH));
    call("/repos/o/r", CORE_BACK).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "core is not cooled");
    search.await.unwrap().unwrap();
    assert_eq!(
        upstream.arrived("/search/code", mark),
        [Duration::from_secs(30)]
    );

    // GitHub's secondary limit: a 403 with Retry-After, under `core` with plenty left. No
    // named limit explains it, so the whole host cools, routes of other limits and routes
    // never answered included.
    let secondary = "status=403|retry-after=5|x-ratelimit-resource=core|\
                     x-ratelimit-limit=5000|x-ratelimit-remaining=4000|x-ratelimit-reset=3600";
    assert_eq!(call("/repos/o/r", secondary).await.unwrap().status(), 403);
    let start = Instant::now();
    call("/search/code", SEARCH).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let start = Instant::now();
    // A 429 that names nothing cools the host too.
    call("/anything", "status=429|retry-after=7").await.unwrap();
    call("/repos/o/r", CORE_BACK).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn openai_requests_and_tokens_both_bind_every_route_that_names_them() {
    // OpenAI names its two limits alike on every route: a route answered with both is under
    // both, and the routes share them (the limits are the organisation's, not the route's).
    let answer = |requests: u64, tokens: u64, status: u16| {
        format!(
            "status={status}|x-ratelimit-limit-requests=60|x-ratelimit-remaining-requests={requests}|\
             x-ratelimit-reset-requests=1s|x-ratelimit-limit-tokens=150000|\
             x-ratelimit-remaining-tokens={tokens}|x-ratelimit-reset-tokens=12s"
        )
    };
    let (upstream, addr) = start().await;
    let svc = LearnLayer::new().layer(client());
    let call = |path: &str, answer: &str| svc.clone().oneshot(answered(addr, path, answer));
    // Tokens left: requests count; the route is under both all the same.
    call("/v1/embeddings", &answer(59, 9000, 200))
        .await
        .unwrap();
    // Requests left, tokens spent: every route under `tokens` waits for their reset.
    assert_eq!(
        call("/v1/chat/completions", &answer(58, 0, 429))
            .await
            .unwrap()
            .status(),
        429
    );
    let start = Instant::now();
    let mark = upstream.mark();
    let chat = tokio::spawn(call("/v1/chat/completions", &answer(57, 9000, 200)));
    let embeddings = tokio::spawn(call("/v1/embeddings", &answer(56, 8000, 200)));
    // A route never answered knows neither limit yet.
    call("/v1/models", "").await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    chat.await.unwrap().unwrap();
    embeddings.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(12));
    for path in ["/v1/chat/completions", "/v1/embeddings"] {
        assert_eq!(
            upstream.arrived(path, mark),
            [Duration::from_secs(12)],
            "{path}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_route_of_the_users_groups_paths_never_answered_yet() {
    let (upstream, addr) = start().await;
    // By method and path (the default), /repos/o/b has never been answered: it goes at once,
    // and is refused by the server. Grouped by the first segment, it waits for `core`.
    let by_first_segment =
        LearnLayer::new().route(|_, uri| uri.path().split('/').nth(1).map(str::to_owned));
    for (layer, waits) in [(LearnLayer::new(), false), (by_first_segment, true)] {
        let svc = layer.layer(client());
        let call = |path: &str, answer: &str| svc.clone().oneshot(answered(addr, path, answer));
        call("/repos/o/a", CORE_SPENT).await.unwrap();
        call("/search/issues", SEARCH).await.unwrap();
        let mark = upstream.mark();
        call("/repos/o/b", CORE_BACK).await.unwrap();
        call("/search/commits", SEARCH).await.unwrap();
        let expected = if waits {
            Duration::from_secs(60)
        } else {
            Duration::ZERO
        };
        assert_eq!(
            upstream.arrived("/repos/o/b", mark),
            [expected],
            "waits: {waits}"
        );
        assert_eq!(
            upstream.arrived("/search/commits", mark),
            [expected],
            "search after core"
        );
    }
}
