//! A scripted upstream: a real axum server on a loopback port that answers from a script and
//! records what it saw.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::extract::State;
use axum::response::Response as AxumResponse;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use tokio::time::Instant;

/// One scripted answer of the test upstream.
#[derive(Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

pub fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        delay: Duration::ZERO,
    }
}

impl Reply {
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// An upstream that answers from a script (then with its last answer), and records when each
/// request arrived and what body it carried.
#[derive(Default)]
pub struct Upstream {
    script: Mutex<VecDeque<Reply>>,
    last: Mutex<Option<Reply>>,
    pub arrivals: Mutex<Vec<Instant>>,
    pub bodies: Mutex<Vec<Bytes>>,
    hits: AtomicUsize,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn gaps(&self) -> Vec<Duration> {
        let arrivals = self.arrivals.lock().unwrap();
        arrivals.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

async fn answer(State(upstream): State<Arc<Upstream>>, request: Request<AxumBody>) -> AxumResponse {
    upstream.hits.fetch_add(1, Ordering::SeqCst);
    upstream.arrivals.lock().unwrap().push(Instant::now());
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    upstream.bodies.lock().unwrap().push(body);
    let next = upstream.script.lock().unwrap().pop_front();
    let reply = match next {
        Some(reply) => {
            *upstream.last.lock().unwrap() = Some(reply.clone());
            reply
        }
        None => upstream
            .last
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| reply(200)),
    };
    tokio::time::sleep(reply.delay).await;
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    response.body(AxumBody::from("answer")).unwrap()
}

pub async fn start_upstream(
    script: impl IntoIterator<Item = Reply>,
) -> (Arc<Upstream>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (serve_upstream(listener, script), addr)
}

/// The scripted upstream on `listener`, served from now on (from any code in the runtime,
/// synchronous code included).
pub fn serve_upstream(
    listener: tokio::net::TcpListener,
    script: impl IntoIterator<Item = Reply>,
) -> Arc<Upstream> {
    let upstream = Arc::new(Upstream {
        script: Mutex::new(script.into_iter().collect()),
        ..Default::default()
    });
    let app = Router::new()
        .fallback(any(answer))
        .with_state(Arc::clone(&upstream));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    upstream
}
