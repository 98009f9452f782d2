//! Decision and layer costs of tollgate beside governor, tower_governor and tower, in one run.
//!
//! ```text
//! cargo bench --bench rate_limit
//! ```
//!
//! Absolute times on shared machines are noisy; the ratios between neighbours of one group,
//! measured minutes apart, are what BENCHMARKS.md records.

mod common;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use common::once;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{Request, Response};
use tollgate::key::PeerIp;
use tollgate::store::Ask;
use tollgate::Store;
use tollgate::{MemoryStore, Quota, Quotas, RateLimitLayer};
use tower::{Layer, Service};

const KEYS: usize = 100_000;

/// `n` distinct IPv4 addresses in a scattered order.
fn ips(n: usize) -> Vec<IpAddr> {
    (0..n as u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761) ^ 0x0a00_0000)))
        .collect()
}

fn decisions(c: &mut Criterion) {
    let keys = ips(KEYS);
    let mut group = c.benchmark_group("keyed decision, 100k IPv4 keys");
    // A quota under which every key stays tracked and allowed for the whole run: one request
    // per 100 ms with a burst of a million. (Under a quota whose buckets refill between two
    // visits, tollgate forgets the keys and claims them again; governor keeps them.)
    let gov = governor::RateLimiter::keyed(
        governor::Quota::with_period(Duration::from_millis(100))
            .unwrap()
            .allow_burst(NonZeroU32::new(1_000_000).unwrap()),
    );
    keys.iter().for_each(|k| drop(gov.check_key(k)));
    let mut i = 0;
    group.bench_function("governor check_key", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(gov.check_key(&keys[i]).is_ok())
        })
    });
    let store = MemoryStore::new();
    let quotas = Quotas::from(
        Quota::every(Duration::from_millis(100))
            .unwrap()
            .with_burst(1_000_000)
            .unwrap(),
    );
    keys.iter()
        .for_each(|k| drop(store.decide(&Ask::new(k, &quotas)).into_inner()));
    let mut i = 0;
    group.bench_function("tollgate MemoryStore::decide", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let ask = Ask::new(&keys[i], &quotas);
            black_box(store.decide(&ask).into_inner().unwrap().is_allowed())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("unkeyed decision");
    let gov = governor::RateLimiter::direct(governor::Quota::per_second(
        NonZeroU32::new(1_000_000_000).unwrap(),
    ));
    group.bench_function("governor check", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    let store = MemoryStore::new();
    let quotas = Quotas::from(Quota::per_second(1_000_000_000).unwrap());
    group.bench_function("tollgate MemoryStore::decide(&Global)", |b| {
        b.iter(|| {
            let ask = Ask::new(&tollgate::key::Global, &quotas);
            black_box(store.decide(&ask).into_inner().unwrap().is_allowed())
        })
    });
    group.finish();
}

/// The no-op service every layer wraps.
#[derive(Clone, Copy)]
struct NoOp;

impl Service<Request<()>> for NoOp {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Body::empty())))
    }
}

/// What a server hands the stack: a request with the peer's address, as axum's
/// `ConnectInfo` and as a plain `SocketAddr`.
fn request(peer: SocketAddr) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

fn bench_layer<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut svc: S,
) where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let peer: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    group.bench_function(name, |b| {
        b.iter_batched(
            || request(peer),
            |req| once(&mut svc, req),
            BatchSize::SmallInput,
        )
    });
}

fn layers(c: &mut Criterion) {
    // tower::limit::RateLimit creates its timer when built: it needs a runtime around.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    // Limits that never refuse within a run.
    let mut group = c.benchmark_group("layer, peer-IP key, headers on");
    bench_layer(&mut group, "bare service", NoOp);
    let tollgate =
        RateLimitLayer::new(Quota::per_second(1_000_000_000).unwrap()).key(PeerIp::new());
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer",
        tollgate.clone().layer(NoOp),
    );
    // What each operator feature costs when on (issue 10); off, they cost the row above.
    // Far from the limit (a burst of a million): the check, not the report.
    let roomy = RateLimitLayer::new(
        Quota::per_second(1_000_000_000)
            .unwrap()
            .with_burst(1_000_000)
            .unwrap(),
    )
    .key(PeerIp::new());
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer, burst 10^6",
        roomy.clone().layer(NoOp),
    );
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer, burst 10^6, near_limit(20)",
        roomy.clone().near_limit(20).layer(NoOp),
    );
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer, burst 10^6, stats",
        roomy
            .clone()
            .stats(tollgate::rate_limit::LimiterStats::new())
            .layer(NoOp),
    );
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer, burst 10^6, settle_cost",
        roomy.settle_cost().layer(NoOp),
    );
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer, shadow_headers()",
        tollgate.shadow_headers().layer(NoOp),
    );
    // Quotas changed at run time through a handle: one atomic load per request.
    let live = tollgate::rate_limit::LiveQuotas::new(Quota::per_second(1_000_000_000).unwrap());
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer::live (LiveQuotas)",
        RateLimitLayer::live(live).key(PeerIp::new()).layer(NoOp),
    );
    // A set that carries states over from an earlier quota (a changed limit, linked Tiers):
    // the store's general path.
    let earlier = Quotas::from(Quota::per_second(500_000_000).unwrap());
    let carrying =
        Quotas::from(Quota::per_second(1_000_000_000).unwrap()).carry_over_from(&earlier);
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer, quotas carried over",
        RateLimitLayer::new(carrying).key(PeerIp::new()).layer(NoOp),
    );
    // Two keys per request in one decision: the peer and a global limit.
    let scopes = tollgate::key::Scopes::new()
        .scope(
            "peer",
            PeerIp::new(),
            Quota::per_second(1_000_000_000).unwrap(),
        )
        .scope(
            "global",
            tollgate::key::Global,
            Quota::per_second(1_000_000_000).unwrap(),
        );
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer::scoped (peer + global)",
        RateLimitLayer::scoped(scopes).layer(NoOp),
    );
    // The least such a limit must do (see `common::PeerFloor`), with the same future shape.
    bench_layer(
        &mut group,
        "floor: peer hash + CAS + two header fields",
        common::PeerFloor::new(NoOp, 1, u64::MAX / 2),
    );
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000_000)
        .use_headers()
        .finish()
        .unwrap();
    let governor = tower_governor::GovernorLayer::new(config);
    bench_layer(
        &mut group,
        "tower_governor GovernorLayer (use_headers)",
        governor.layer(NoOp),
    );
    group.finish();

    let mut group = c.benchmark_group("layer, global limit");
    bench_layer(&mut group, "bare service", NoOp);
    let tollgate = RateLimitLayer::new(Quota::per_second(1_000_000_000).unwrap());
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer (headers on)",
        tollgate.clone().layer(NoOp),
    );
    let quiet = tollgate.headers(tollgate::rate_limit::HeaderOptions::default().on_allowed(false));
    bench_layer(
        &mut group,
        "tollgate RateLimitLayer (headers off)",
        quiet.layer(NoOp),
    );
    let tower_limit = tower::limit::RateLimitLayer::new(1_000_000_000, Duration::from_secs(1));
    bench_layer(
        &mut group,
        "tower::limit::RateLimit",
        tower_limit.layer(NoOp),
    );
    // The floor of any limit shared by clones: one clock read and one compare-and-swap.
    bench_layer(
        &mut group,
        "floor: clock read + CAS on a shared TAT",
        common::SharedFloor::new(NoOp, 1, u64::MAX / 2),
    );
    // The same with a response future of tollgate's shape (a private enum with room for the
    // header note and the settlement): what the shape costs before any decision.
    bench_layer(
        &mut group,
        "floor + a response future of tollgate's shape",
        common::ShapedFloor(common::SharedFloor::new(NoOp, 1, u64::MAX / 2)),
    );
    group.finish();
}

/// What one read of each candidate clock costs: the default clock reads the TSC through
/// quanta; `std::time::Instant` is the OS's monotonic clock (vDSO `clock_gettime`).
fn clocks(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock read");
    // What tollgate's default clock reads: quanta's raw counter, scaled to nanoseconds.
    let tsc = quanta::Clock::new();
    let origin = tsc.raw();
    group.bench_function("tollgate MonotonicClock (quanta TSC)", |b| {
        b.iter(|| black_box(tsc.delta_as_nanos(origin, tsc.raw())))
    });
    let start = std::time::Instant::now();
    group.bench_function("std::time::Instant::now", |b| {
        b.iter(|| black_box(start.elapsed()))
    });
    group.finish();
}

criterion_group!(benches, decisions, layers, clocks);
criterion_main!(benches);
