//! Per-request overhead of RetryLayer on the success path over a no-op service, beside
//! `tower::retry::Retry` with a minimal policy, in one run.
//!
//! ```text
//! cargo bench --bench retry
//! ```

mod common;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use common::once;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tollgate::retry::{ReplayBody, RetryLayer};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::Policy;
use tower::{Layer, Service};

/// A no-op service for any request type.
#[derive(Clone, Copy)]
struct NoOp;

impl<B> Service<Request<B>> for NoOp {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

/// The smallest useful tower policy: clone the request, retry nothing that succeeded.
#[derive(Clone, Copy)]
struct Minimal;

impl<E> Policy<Request<Full<Bytes>>, Response<()>, E> for Minimal {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<()>, E>,
    ) -> Option<Ready<()>> {
        match result {
            Ok(response) if !response.status().is_server_error() => None,
            _ => Some(ready(())),
        }
    }

    fn clone_request(&mut self, request: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        Some(request.clone())
    }
}

/// The same, with tower's own budget (`TpsBudget`, 20% plus 10 per second over 10 s, the
/// defaults tollgate's budget shares): a deposit per success, a withdrawal per retry. This is
/// what a user writes to get what `RetryLayer::new()` gives.
#[derive(Clone)]
struct Budgeted(std::sync::Arc<TpsBudget>);

impl<E> Policy<Request<Full<Bytes>>, Response<()>, E> for Budgeted {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<()>, E>,
    ) -> Option<Ready<()>> {
        match result {
            Ok(response) if !response.status().is_server_error() => {
                self.0.deposit();
                None
            }
            _ => self.0.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(&mut self, request: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        Some(request.clone())
    }
}

/// What a client typically sends: a GET with a couple of headers.
fn request() -> Request<Full<Bytes>> {
    Request::get("http://api.example.com/v1/items?page=2")
        .header("accept", "application/json")
        .header("user-agent", "tollgate-bench")
        .body(Full::default())
        .unwrap()
}

fn bench<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut svc: S,
) where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.iter_batched(request, |req| once(&mut svc, req), BatchSize::SmallInput)
    });
}

fn retries(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("retry layer, success path");
    bench(&mut group, "bare service", NoOp);
    let tollgate =
        RetryLayer::new().layer(tower::service_fn(|r: Request<ReplayBody<Full<Bytes>>>| {
            let mut inner = NoOp;
            inner.call(r)
        }));
    bench(&mut group, "tollgate RetryLayer", tollgate);
    let unbudgeted = RetryLayer::new().without_budget().layer(tower::service_fn(
        |r: Request<ReplayBody<Full<Bytes>>>| {
            let mut inner = NoOp;
            inner.call(r)
        },
    ));
    bench(&mut group, "tollgate RetryLayer without budget", unbudgeted);
    bench(
        &mut group,
        "tower::retry::Retry (minimal policy)",
        tower::retry::RetryLayer::new(Minimal).layer(NoOp),
    );
    let budget = std::sync::Arc::new(TpsBudget::new(std::time::Duration::from_secs(10), 10, 0.2));
    bench(
        &mut group,
        "tower::retry::Retry (policy with TpsBudget)",
        tower::retry::RetryLayer::new(Budgeted(budget)).layer(NoOp),
    );
    group.finish();
}

criterion_group!(benches, retries);
criterion_main!(benches);
