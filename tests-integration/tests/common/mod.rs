//! Helpers shared by the integration tests: real servers on loopback ports, a real client.

#![allow(dead_code)]

use std::net::SocketAddr;

use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

/// The decisions of the tests, in the shape they were written in: a key, its quotas, a cost
/// and a wait; several parts; or "at once, if the store can".
pub trait DecideOne<K>: tollgate::Store<K> {
    fn decide_one(
        &self,
        key: &K,
        quotas: &tollgate::Quotas,
        cost: u32,
        max_wait: std::time::Duration,
    ) -> Self::Future {
        self.decide(
            &tollgate::store::Ask::new(key, quotas)
                .with_cost(cost)
                .with_max_wait(max_wait),
        )
    }

    /// Across several keys: the binding part's index, and the decision.
    fn decide_across(
        &self,
        parts: std::sync::Arc<[(K, tollgate::Quotas)]>,
        cost: u32,
        max_wait: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<(usize, tollgate::Decision), tollgate::StoreError>>
    {
        let future = self.decide(
            &tollgate::store::Ask::across(&parts)
                .with_cost(cost)
                .with_max_wait(max_wait),
        );
        async move { future.await.map(|decision| (decision.part(), decision)) }
    }

    /// The decision, if the store answers without waiting (its future ready at the first poll).
    fn at_once(
        &self,
        key: &K,
        quotas: &tollgate::Quotas,
        cost: u32,
        max_wait: std::time::Duration,
    ) -> Option<Result<tollgate::Decision, tollgate::StoreError>> {
        use std::future::Future;
        let mut future = self.decide_one(key, quotas, cost, max_wait);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut future).poll(&mut cx) {
            std::task::Poll::Ready(decided) => Some(decided),
            std::task::Poll::Pending => None,
        }
    }
}

impl<K, S: tollgate::Store<K>> DecideOne<K> for S {}

/// A memory store's decision, at once.
pub fn check<K: std::hash::Hash, C: tollgate::clock::Clock>(
    store: &tollgate::MemoryStore<C>,
    key: &K,
    quotas: &tollgate::Quotas,
    cost: u32,
) -> Result<tollgate::Decision, tollgate::StoreError> {
    use tollgate::Store;
    store
        .decide(&tollgate::store::Ask::new(key, quotas).with_cost(cost))
        .into_inner()
}

pub mod conformance;
pub mod example;
pub mod logs;
pub mod nginx;
pub mod redis;
pub mod upstream;

/// What the breakers of the tests count as a failure: an error or a 5xx.
pub type FailureRule = fn(&Result<Response<hyper::body::Incoming>, tower::BoxError>) -> bool;

/// A circuit breaker (tower-resilience's) that opens after `failures` failures in a row and
/// stays open for five minutes.
pub fn breaker(
    failures: usize,
) -> tower_resilience::circuitbreaker::CircuitBreakerLayer<
    tower_resilience::circuitbreaker::FnClassifier<FailureRule>,
> {
    let failed: FailureRule = |result| match result {
        Ok(response) => response.status().is_server_error(),
        Err(_) => true,
    };
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(failures)
        .wait_duration_in_open(std::time::Duration::from_secs(300))
        .failure_classifier(failed)
        .build()
        .unwrap()
}

/// An axum app served on 127.0.0.1 at a free port, with peer addresses as `ConnectInfo`.
pub struct TestServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Self { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request; returns the response with its body collected.
pub async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Response<Bytes> {
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, body)
}

pub async fn fetch(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Response<Bytes> {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(client, builder.body(Full::default()).unwrap()).await
}

/// The statuses of `n` requests to `url` with `headers`, one after another.
pub async fn statuses(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(fetch(client, url, headers).await.status().as_u16());
    }
    out
}

pub fn header<'a, B>(response: &'a Response<B>, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}
