//! gRPC on both sides, end to end on loopback: a real tonic server (the `tonic-health`
//! service, which needs no code generation) behind `RateLimitLayer::grpc()`, and a real tonic
//! client through `RetryLayer::grpc()`. Paused tokio clock: waits are exact and take no wall
//! time.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tollgate::clock::TokioClock;
use tollgate::retry::{Backoff, ReplayBody, RetryLayer};
use tollgate::{key, MemoryStore, Quota, RateLimitLayer};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::health_reporter;
use tower::{Service, ServiceBuilder};

/// Counts the calls that reach the service it wraps.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    calls: Arc<AtomicUsize>,
}

impl<S: Service<R>, R> Service<R> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.call(request)
    }
}

/// Fails the first `failures` calls with `UNAVAILABLE`, a trailers-only response, the way a
/// server that is shedding load or restarting does.
#[derive(Clone)]
struct Unavailable<S> {
    inner: S,
    failures: Arc<AtomicUsize>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for Unavailable<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            let mut response = Response::new(tonic::body::Body::empty());
            let headers = response.headers_mut();
            headers.insert("content-type", HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from_static("14"));
            headers.insert("grpc-message", HeaderValue::from_static("restarting"));
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}

/// What a test server saw.
#[derive(Default)]
struct Seen {
    /// Calls that reached the server, refused or not.
    arrived: Arc<AtomicUsize>,
    /// Calls that reached the health service.
    served: Arc<AtomicUsize>,
}

/// Serves the health service on a loopback port; `unavailable` calls fail first; the rate limit
/// is `quota` per `x-api-key`.
async fn serve(quota: Quota, unavailable: usize) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let (arrived, served) = (Arc::clone(&seen.arrived), Arc::clone(&seen.served));
    let failures = Arc::new(AtomicUsize::new(unavailable));
    let (reporter, health) = health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stack = ServiceBuilder::new()
        .layer_fn(move |inner| Counted {
            inner,
            calls: Arc::clone(&arrived),
        })
        .layer(
            RateLimitLayer::new(quota)
                .key(key::Header::new("x-api-key"))
                .store(MemoryStore::builder().clock(TokioClock::new()).build())
                .grpc(),
        )
        .layer_fn(move |inner| Unavailable {
            inner,
            failures: Arc::clone(&failures),
        })
        .layer_fn(move |inner| Counted {
            inner,
            calls: Arc::clone(&served),
        })
        .into_inner();
    let server = Server::builder().layer(stack).add_service(health);
    tokio::spawn(async move {
        let _keep_reporting = reporter;
        server
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (addr, seen)
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn check(api_key: &'static str) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-api-key", api_key.parse().unwrap());
    request
}

/// A tonic client whose calls go through `RetryLayer::grpc()`: the layer records each call's
/// body to replay it, and `tonic::body::Body::new` turns the replayable body back into what the
/// channel takes.
fn retrying_client(
    channel: Channel,
    layer: RetryLayer<tollgate::retry::GrpcClassifier>,
) -> HealthClient<
    impl tonic::client::GrpcService<tonic::body::Body, ResponseBody = tonic::body::Body> + Clone,
> {
    let service = ServiceBuilder::new()
        .layer(layer)
        .map_request(|request: Request<ReplayBody<tonic::body::Body>>| {
            request.map(tonic::body::Body::new)
        })
        .service(channel);
    HealthClient::new(service)
}

#[tokio::test(start_paused = true)]
async fn a_denied_call_is_resource_exhausted_with_pushback_not_http_429() {
    let (addr, seen) = serve(Quota::per_minute(2).unwrap(), 0).await;
    let mut client = HealthClient::new(channel(addr).await);

    for _ in 0..2 {
        client
            .check(check("alice"))
            .await
            .expect("within the quota");
    }
    let status = client
        .check(check("alice"))
        .await
        .expect_err("over the quota");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // 2 per minute: the next token comes 30 s after the first (less what the paused clock
    // auto-advanced to hyper's timers while the calls were on the wire).
    assert!((29_000..=30_000).contains(&pushback), "{pushback}");
    assert_eq!(status.metadata().get("retry-after").unwrap(), "30");
    assert!(
        status.message().contains("rate limit"),
        "{}",
        status.message()
    );

    // Keys are counted apart; a call without a key is the client's mistake.
    client
        .check(check("bob"))
        .await
        .expect("bob has his own quota");
    let status = client
        .check(tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        }))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    assert_eq!(seen.arrived.load(Ordering::SeqCst), 5);
    assert_eq!(seen.served.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_retries_unavailable() {
    let (addr, seen) = serve(Quota::per_second(100).unwrap(), 2).await;
    let layer = RetryLayer::grpc().backoff(Backoff::standard().with_max_attempts(3));
    let mut client = retrying_client(channel(addr).await, layer);

    let response = client
        .check(check("alice"))
        .await
        .expect("the third attempt is served");
    assert_eq!(
        response.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(seen.arrived.load(Ordering::SeqCst), 3);
    assert_eq!(seen.served.load(Ordering::SeqCst), 1);

    // Without the layer the same failure reaches the caller.
    let (addr, _) = serve(Quota::per_second(100).unwrap(), 1).await;
    let status = HealthClient::new(channel(addr).await)
        .check(check("alice"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_honours_the_servers_pushback() {
    // One call every 2 s per key: the second call is refused with 2000 ms of pushback.
    let (addr, seen) = serve(Quota::every(Duration::from_secs(2)).unwrap(), 0).await;
    let mut client = retrying_client(channel(addr).await, RetryLayer::grpc());

    client
        .check(check("alice"))
        .await
        .expect("the first call is within the quota");
    let started = Instant::now();
    client
        .check(check("alice"))
        .await
        .expect("served after the pushback");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "retried after {waited:?}, before the pushback"
    );
    // The server's delay replaces the backoff: no more than one retry, no extra sleep.
    assert!(waited < Duration::from_millis(2_100), "waited {waited:?}");
    assert_eq!(seen.arrived.load(Ordering::SeqCst), 3);
    assert_eq!(seen.served.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn pushback_beyond_the_maximum_returns_the_refusal_at_once() {
    let (addr, seen) = serve(Quota::per_minute(1).unwrap(), 0).await;
    let layer = RetryLayer::grpc().max_pushback(Duration::from_secs(5));
    let mut client = retrying_client(channel(addr).await, layer);

    client
        .check(check("alice"))
        .await
        .expect("within the quota");
    let started = Instant::now();
    let status = client
        .check(check("alice"))
        .await
        .expect_err("60 s of pushback is too long");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "slept {:?}",
        started.elapsed()
    );
    assert_eq!(seen.arrived.load(Ordering::SeqCst), 2);
}

/// The health service behind `layer` alone, on a loopback port.
async fn serve_behind<L>(layer: L) -> SocketAddr
where
    L: tower::Layer<tonic::service::Routes> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
{
    let (reporter, health) = health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder().layer(layer).add_service(health);
    tokio::spawn(async move {
        let _keep_reporting = reporter;
        server
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

fn health_check() -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    })
}

#[tokio::test(start_paused = true)]
async fn peer_ip_finds_the_peer_of_a_tonic_server() {
    // The `tonic` feature: PeerIp reads the TcpConnectInfo tonic's server records, so a
    // per-peer limit works as it is (without it, every call failed with INTERNAL).
    let addr = serve_behind(
        RateLimitLayer::new(Quota::per_minute(2).unwrap())
            .key(key::PeerIp::new())
            .store(MemoryStore::builder().clock(TokioClock::new()).build())
            .grpc(),
    )
    .await;
    let mut client = HealthClient::new(channel(addr).await);
    client
        .check(health_check())
        .await
        .expect("within the quota");
    client
        .check(health_check())
        .await
        .expect("within the quota");
    let status = client
        .check(health_check())
        .await
        .expect_err("over the quota");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test(start_paused = true)]
async fn a_layer_not_told_grpc_still_answers_grpc_calls_in_grpc() {
    // No `.grpc()`: the HTTP answer sees `content-type: application/grpc` and answers
    // RESOURCE_EXHAUSTED, where clients once saw `Unavailable` mapped from HTTP 429.
    let addr = serve_behind(
        RateLimitLayer::new(Quota::per_minute(1).unwrap())
            .store(MemoryStore::builder().clock(TokioClock::new()).build()),
    )
    .await;
    let mut client = HealthClient::new(channel(addr).await);
    client
        .check(health_check())
        .await
        .expect("within the quota");
    let status = client
        .check(health_check())
        .await
        .expect_err("over the quota");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
}
