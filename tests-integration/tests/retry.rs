//! RetryLayer against real HTTP servers on loopback ports, through a real hyper client, on
//! tokio's paused clock: waits are exact and take no wall time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

mod common;

use bytes::Bytes;
use common::upstream::{reply, serve_upstream, start_upstream, Upstream};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tollgate::retry::{
    Attempts, Backoff, Classification, GiveUp, Outcome, ReplayBody, RetryAction, RetryBudget,
    RetryError, RetryLayer, Retryable,
};
use tower::BoxError;
use tower::{Layer, ServiceBuilder, ServiceExt};

type HttpClient<B> = Client<HttpConnector, ReplayBody<B>>;

fn client<B>() -> HttpClient<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(addr: SocketAddr) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap()
}

/// A retry layer with fixed jitter (half the ceiling), no budget unless a test sets one.
fn retry() -> RetryLayer {
    RetryLayer::new().jitter(|| 0.5).without_budget()
}

fn attempts<B>(response: &Response<B>) -> u32 {
    Attempts::of(response)
}

#[tokio::test(start_paused = true)]
async fn two_503s_then_a_200_succeeds_on_the_third_attempt() {
    let (upstream, addr) = start_upstream([reply(503), reply(503), reply(200)]).await;
    let response = retry().layer(client()).oneshot(get(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 3);
    assert_eq!(upstream.hits(), 3);
    // Backoff::standard with jitter 0.5: half of 100 ms, then half of 200 ms.
    assert_eq!(
        upstream.gaps(),
        [Duration::from_millis(50), Duration::from_millis(100)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_2_waits_2_seconds() {
    let (upstream, addr) =
        start_upstream([reply(429).header("retry-after", "2"), reply(200)]).await;
    let response = retry().layer(client()).oneshot(get(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.gaps(), [Duration::from_secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date() {
    let dated = reply(503)
        .header("date", "Wed, 21 Oct 2015 07:28:00 GMT")
        .header("retry-after", "Wed, 21 Oct 2015 07:28:03 GMT");
    let (upstream, addr) = start_upstream([dated, reply(200)]).await;
    let response = retry().layer(client()).oneshot(get(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.gaps(), [Duration::from_secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_maximum_returns_the_429_at_once() {
    let (upstream, addr) =
        start_upstream([reply(429).header("retry-after", "120"), reply(200)]).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    let start = Instant::now();
    let response = retry()
        .max_pushback(Duration::from_secs(30))
        .on_event(move |e| log.lock().unwrap().push(e.action))
        .layer(client())
        .oneshot(get(addr))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(attempts(&response), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(upstream.hits(), 1);
    assert_eq!(
        *events.lock().unwrap(),
        [RetryAction::GiveUp(GiveUp::PushbackTooLong)]
    );
}

#[tokio::test(start_paused = true)]
async fn post_is_not_retried_unless_marked_idempotent() {
    let post = |addr: SocketAddr| {
        Request::post(format!("http://{addr}/"))
            .body(Full::new(Bytes::from_static(b"order")))
            .unwrap()
    };

    let (upstream, addr) = start_upstream([reply(503), reply(200)]).await;
    let response = retry().layer(client()).oneshot(post(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.hits(), 1);

    let (upstream, addr) = start_upstream([reply(503), reply(200)]).await;
    let mut keyed = post(addr);
    keyed
        .headers_mut()
        .insert("idempotency-key", "order-17".parse().unwrap());
    let response = retry().layer(client()).oneshot(keyed).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.hits(), 2);
    assert_eq!(*upstream.bodies.lock().unwrap(), ["order", "order"]);

    let (upstream, addr) = start_upstream([reply(503), reply(200)]).await;
    let mut marked = post(addr);
    marked.extensions_mut().insert(Retryable);
    assert_eq!(
        retry()
            .layer(client())
            .oneshot(marked)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(upstream.hits(), 2);
}

/// A body streamed in chunks, one per poll: not `Clone`, not known in advance.
struct Streamed(VecDeque<Bytes>);

impl Streamed {
    fn new(chunks: usize, size: usize) -> Self {
        Self(
            (0..chunks)
                .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
                .collect(),
        )
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_under_the_cap_is_replayed_byte_for_byte() {
    let (upstream, addr) = start_upstream([reply(503), reply(200)]).await;
    let request = Request::put(format!("http://{addr}/"))
        .body(Streamed::new(10, 1000))
        .unwrap();
    let expected: Vec<u8> = Streamed::new(10, 1000)
        .0
        .iter()
        .flat_map(|c| c.to_vec())
        .collect();
    let response = retry()
        .body_cap(16 * 1024)
        .layer(client())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bodies = upstream.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], expected);
    assert_eq!(bodies[1], expected);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_over_the_cap_is_sent_once_and_not_retried() {
    let (upstream, addr) = start_upstream([reply(503), reply(200)]).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    let request = Request::put(format!("http://{addr}/"))
        .body(Streamed::new(10, 1000))
        .unwrap();
    let response = retry()
        .body_cap(4 * 1024)
        .on_event(move |e| log.lock().unwrap().push(e.action))
        .layer(client())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.hits(), 1);
    assert_eq!(
        upstream.bodies.lock().unwrap()[0].len(),
        10_000,
        "sent whole, once"
    );
    assert_eq!(*events.lock().unwrap(), [RetryAction::GiveUp(GiveUp::Body)]);
}

#[tokio::test(start_paused = true)]
async fn the_budget_holds_under_total_failure() {
    let (upstream, addr) = start_upstream([reply(503)]).await;
    let budget = RetryBudget::new(Duration::from_secs(60), 0.2, 0);
    let svc = RetryLayer::new()
        .jitter(|| 0.5)
        .budget(budget)
        .layer(client());
    for _ in 0..100 {
        let response = svc.clone().oneshot(get(addr)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // Without a budget: 300 hits (3 attempts each). With 20%: 100 requests and 20 retries.
    let hits = upstream.hits();
    assert!((100..=120).contains(&hits), "{hits} hits");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_never_overrun() {
    // Every answer takes 400 ms and fails; the deadline is 1 s.
    let (upstream, addr) = start_upstream([reply(503).after(Duration::from_millis(400))]).await;
    let start = Instant::now();
    let result = retry()
        .backoff(Backoff::standard().with_max_attempts(10))
        .deadline(Duration::from_secs(1))
        .layer(client())
        .oneshot(get(addr))
        .await;
    let elapsed = start.elapsed();
    assert!(elapsed <= Duration::from_secs(1), "took {elapsed:?}");
    match result {
        // Gave up before sleeping past the deadline: the last 503.
        Ok(response) => assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE),
        // Or cut an attempt at the deadline.
        Err(error) => {
            let error = error.downcast_ref::<RetryError>().unwrap();
            assert_eq!(error.gave_up(), Some(GiveUp::Deadline));
        }
    }
    assert!(upstream.hits() <= 3, "{} hits", upstream.hits());
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried_then_reported_with_the_attempt_count() {
    // A port that refuses connections.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let error = retry()
        .layer(client::<Full<Bytes>>())
        .oneshot(get(addr))
        .await
        .unwrap_err();
    let error = error.downcast_ref::<RetryError>().expect("a RetryError");
    assert_eq!(error.attempts(), 3);
    assert_eq!(error.gave_up(), Some(GiveUp::MaxAttempts));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_inside_is_a_per_attempt_limit() {
    let (upstream, addr) =
        start_upstream([reply(200).after(Duration::from_secs(5)), reply(200)]).await;
    let svc = ServiceBuilder::new()
        .layer(retry())
        .timeout(Duration::from_millis(500))
        .service(client());
    let response = svc.oneshot(get(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_inside_the_retry_opens_and_retries_stop_hammering() {
    let (upstream, addr) = start_upstream([reply(503)]).await;
    let breaker = common::breaker(5);
    let svc = ServiceBuilder::new()
        .layer(retry().backoff(Backoff::standard().with_max_attempts(3)))
        .timeout(Duration::from_secs(1))
        .layer(breaker)
        .map_err(BoxError::from)
        .service(client::<Full<Bytes>>().map_err(BoxError::from));
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        outcomes.push(match svc.clone().oneshot(get(addr)).await {
            Ok(response) => format!(
                "{} after {}",
                response.status().as_u16(),
                attempts(&response)
            ),
            Err(error) => {
                let error = error.downcast_ref::<RetryError>().unwrap();
                format!("open after {}", error.attempts())
            }
        });
    }
    // The first request tries 3 times, the second twice more and trips the breaker at the
    // fifth failure; from then on each request fails at once, without a retry.
    assert_eq!(upstream.hits(), 5);
    assert_eq!(outcomes[0], "503 after 3");
    assert!(
        outcomes[2..].iter().all(|o| o == "open after 1"),
        "{outcomes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn get_and_other_idempotent_methods_are_retried() {
    for method in [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        let (upstream, addr) = start_upstream([reply(502), reply(200)]).await;
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("http://{addr}/"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let response = retry().layer(client()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        assert_eq!(upstream.hits(), 2, "{method}");
        let _ = response.into_body().collect().await;
    }
}

#[tokio::test(start_paused = true)]
async fn any_request_type_is_retried_by_cloning_with_a_classifier_of_its_own() {
    // A service of plain strings whose first two calls find the connection reset.
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let service = tower::service_fn(move |request: String| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                0 | 1 => Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset",
                )),
                _ => Ok(request.len()),
            }
        }
    });
    // Errors read as the built-in classifiers read them; every answer is a success.
    let classify = |outcome: Outcome<'_, usize>| match outcome {
        Outcome::Response(_) => Classification::Success,
        Outcome::Error(error) => Classification::of_error(error),
    };
    let layer = RetryLayer::cloning(classify)
        .jitter(|| 0.5)
        .without_budget();
    let started = Instant::now();
    let answer = layer
        .layer(service)
        .oneshot("hello".to_owned())
        .await
        .unwrap();
    assert_eq!(answer, 5);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Backoff::standard with jitter 0.5: half of 100 ms, then half of 200 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(150));

    // A server's delay, read for a classifier of one's own, and a server that says "never".
    let mut headers = http::HeaderMap::new();
    headers.insert("retry-after", "7".parse().unwrap());
    assert_eq!(
        Classification::pushback(&headers),
        Some(Classification::RetryAfter(Duration::from_secs(7)))
    );
    headers.insert("content-type", "application/grpc".parse().unwrap());
    headers.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
    assert_eq!(
        Classification::pushback(&headers),
        Some(Classification::Final)
    );
    assert_eq!(Classification::pushback(&http::HeaderMap::new()), None);
}

/// A loopback address where nothing listens (yet): connections to it are refused.
fn refusing_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
    // Dropped: the port refuses connections until a test listens on it again.
}

/// A retry layer that, at its first retry, starts the scripted upstream on `addr`, so that the
/// first attempt finds nothing listening and the second finds the server.
fn retry_then_listen(addr: SocketAddr) -> (RetryLayer, Arc<Mutex<Option<Arc<Upstream>>>>) {
    let started = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&started);
    let layer = retry().on_event(move |event| {
        let mut slot = slot.lock().unwrap();
        if matches!(event.action, RetryAction::Retry { .. }) && slot.is_none() {
            let listener = std::net::TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            *slot = Some(serve_upstream(listener, [reply(200)]));
        }
    });
    (layer, started)
}

fn post_order(addr: SocketAddr) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/orders"))
        .body(Full::new(Bytes::from_static(b"order 17")))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_post_that_never_reached_the_server_is_retried_and_arrives_once() {
    let addr = refusing_address();
    let (layer, started) = retry_then_listen(addr);
    let response = layer
        .layer(client())
        .oneshot(post_order(addr))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);
    let upstream = started
        .lock()
        .unwrap()
        .clone()
        .expect("started at the retry");
    assert_eq!(upstream.hits(), 1);
    assert_eq!(
        *upstream.bodies.lock().unwrap(),
        ["order 17"],
        "the body, whole, once"
    );
}

/// reqwest as a tower service of `http` types, as the retry module's docs show it.
fn reqwest_service() -> impl tower::Service<
    Request<ReplayBody<Full<Bytes>>>,
    Response = Response<reqwest::Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let client = reqwest::Client::new();
    tower::service_fn(move |request: Request<ReplayBody<Full<Bytes>>>| {
        let client = client.clone();
        async move {
            let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap))?;
            Ok::<_, BoxError>(Response::from(client.execute(request).await?))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_post_that_never_reached_the_server_is_retried_through_reqwest() {
    let addr = refusing_address();
    let (layer, started) = retry_then_listen(addr);
    let response = layer
        .layer(reqwest_service())
        .oneshot(post_order(addr))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);
    let upstream = started
        .lock()
        .unwrap()
        .clone()
        .expect("started at the retry");
    assert_eq!(*upstream.bodies.lock().unwrap(), ["order 17"]);
}

/// A server whose first connection reads a whole request, counts it, and resets the
/// connection without answering; later connections are answered 200.
async fn reset_after_reading() -> (Arc<AtomicU32>, SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // The head and the body ("order 17", the request's last bytes).
            while !request.ends_with(b"order 17") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                // RST, not FIN: the request was read, and may have been acted on.
                #[allow(deprecated)]
                stream.set_linger(Some(Duration::ZERO)).unwrap();
                drop(stream);
                continue;
            }
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let _ = stream.write_all(ok).await;
        }
    });
    (seen, addr)
}

#[tokio::test(start_paused = true)]
async fn a_post_reset_after_it_was_sent_is_not_retried() {
    for through_reqwest in [false, true] {
        let (seen, addr) = reset_after_reading().await;
        let result = match through_reqwest {
            false => retry()
                .layer(client())
                .oneshot(post_order(addr))
                .await
                .map(|_| ()),
            true => retry()
                .layer(reqwest_service())
                .oneshot(post_order(addr))
                .await
                .map(|_| ()),
        };
        let error = result.expect_err("not retried, so the reset is the answer");
        let error = error.downcast_ref::<RetryError>().expect("a RetryError");
        assert_eq!(error.attempts(), 1, "reqwest: {through_reqwest}");
        assert_eq!(error.gave_up(), Some(GiveUp::NotIdempotent));
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the server saw it once");
        // The same request as a PUT, idempotent, is retried and answered: the server would
        // have taken a second POST.
        let (seen, addr) = reset_after_reading().await;
        let mut put = post_order(addr);
        *put.method_mut() = Method::PUT;
        let response = retry().layer(client()).oneshot(put).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }
}

/// A keep-alive server: the first request on a connection is answered (and the connection
/// kept), the second is read whole, counted, and the connection closed without an answer
/// (`reset`: RST, else FIN). Every request seen is counted.
async fn answer_once_then_close(reset: bool) -> (Arc<AtomicU32>, SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                for answered in [true, false] {
                    // An empty-bodied POST: its head is the whole request.
                    let mut request = Vec::new();
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    if answered {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        stream.write_all(ok).await.unwrap();
                    }
                }
                if reset {
                    #[allow(deprecated)]
                    stream.set_linger(Some(Duration::ZERO)).unwrap();
                }
                drop(stream);
            });
        }
    });
    (seen, addr)
}

#[tokio::test]
async fn a_post_on_a_reused_connection_that_the_server_read_then_closed_is_not_retried() {
    for reset in [false, true] {
        let (seen, addr) = answer_once_then_close(reset).await;
        let service = retry().layer(client::<Full<Bytes>>());
        let cancel = || {
            Request::post(format!("http://{addr}/orders/17/cancel"))
                .body(Full::default())
                .unwrap()
        };
        let first = service.clone().oneshot(cancel()).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        // The pooled connection is reused; the server reads the POST and closes.
        let second = service.clone().oneshot(cancel()).await;
        let attempts = match &second {
            Ok(response) => Attempts::of(response),
            Err(error) => error
                .downcast_ref::<RetryError>()
                .map_or(0, RetryError::attempts),
        };
        assert_eq!(
            seen.load(Ordering::SeqCst),
            2,
            "reset {reset}: the server took the second POST once (attempts {attempts}, {second:?})"
        );
    }
}
