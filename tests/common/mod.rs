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

pub mod conformance;
pub mod logs;
pub mod nginx;
pub mod redis;
pub mod upstream;

/// What the breakers of the tests count as a failure: an error or a 5xx.
pub type FailureRule = fn(&Result<Response<hyper::body::Incoming>, tollgate::BoxError>) -> bool;

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
