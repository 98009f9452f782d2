//! Instructions per request, exact on any machine: each case runs `N` times in a process of
//! its own under `valgrind --tool=callgrind`, counting only inside [`measured`] (set-up,
//! clock calibration and tear-down are left out), and `scripts/instructions.sh` divides by
//! `N`. Criterion's nanoseconds swing 2–3.5× between days on the shared machines; instruction
//! counts do not (DESIGN.md).
//!
//! ```text
//! scripts/instructions.sh               # every case, N = 20000
//! cargo bench --bench instructions -- CASE N   # one case, without valgrind
//! ```

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
use http::{Request, Response};
use tollgate::key::{Global, PeerIp};
use tollgate::rate_limit::HeaderOptions;
use tollgate::store::Ask;
use tollgate::{MemoryStore, Quota, Quotas, RateLimitLayer, RateLimiter, Store};
use tower::{Layer, Service};

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

fn request() -> Request<()> {
    let mut request = Request::new(());
    let peer: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

/// The loop callgrind counts (`--toggle-collect=*measured*`).
#[inline(never)]
fn measured(n: u64, mut each: impl FnMut(u64)) {
    for i in 0..n {
        each(black_box(i));
    }
}

fn through<S>(mut svc: S, n: u64)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    measured(n, |_| {
        black_box(once(&mut svc, request()));
    });
}

const CASES: &[&str] = &[
    "bare",
    "global-headers-off",
    "global-headers-on",
    "tower-limit",
    "shared-floor",
    "shaped-floor",
    "peer-floor",
    "peer-headers-on",
    "tower-governor",
    "unkeyed-decision",
    "unkeyed-check",
    "governor-check",
    "keyed-decision",
    "governor-check-key",
];

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(case), Some(n)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        // `cargo bench` without arguments (CI's short run): every case, a few iterations.
        for case in CASES {
            run(case, 100);
        }
        return;
    };
    run(case, n);
}

fn run(case: &str, n: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let billion = || Quota::per_second(1_000_000_000).unwrap();
    let keys: Vec<IpAddr> = (0..100_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761) ^ 0x0a00_0000)))
        .collect();
    match case {
        "bare" => through(NoOp, n),
        "global-headers-off" => through(
            RateLimitLayer::new(billion())
                .headers(HeaderOptions::default().on_allowed(false))
                .layer(NoOp),
            n,
        ),
        "global-headers-on" => through(RateLimitLayer::new(billion()).layer(NoOp), n),
        "tower-limit" => through(
            tower::limit::RateLimitLayer::new(1_000_000_000, Duration::from_secs(1)).layer(NoOp),
            n,
        ),
        "shared-floor" => through(common::SharedFloor::new(NoOp, 1, u64::MAX / 2), n),
        "peer-floor" => through(common::PeerFloor::new(NoOp, 1, u64::MAX / 2), n),
        "shaped-floor" => through(
            common::ShapedFloor(common::SharedFloor::new(NoOp, 1, u64::MAX / 2)),
            n,
        ),
        "peer-headers-on" => through(
            RateLimitLayer::new(billion())
                .key(PeerIp::new())
                .layer(NoOp),
            n,
        ),
        "tower-governor" => {
            let config = tower_governor::governor::GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(1_000_000_000)
                .use_headers()
                .finish()
                .unwrap();
            through(tower_governor::GovernorLayer::new(config).layer(NoOp), n)
        }
        "unkeyed-decision" => {
            let (store, quotas) = (MemoryStore::new(), Quotas::from(billion()));
            measured(n, |_| {
                let decided = store.decide(&Ask::new(&Global, &quotas)).into_inner();
                black_box(decided.unwrap().is_allowed());
            });
        }
        "unkeyed-check" => {
            let limiter = RateLimiter::new(billion());
            measured(n, |_| {
                black_box(limiter.check().is_ok());
            });
        }
        "governor-check" => {
            let gov = governor::RateLimiter::direct(governor::Quota::per_second(
                NonZeroU32::new(1_000_000_000).unwrap(),
            ));
            measured(n, |_| {
                black_box(gov.check().is_ok());
            });
        }
        "keyed-decision" => {
            let store = MemoryStore::new();
            let quotas = Quotas::from(
                Quota::every(Duration::from_millis(100))
                    .unwrap()
                    .with_burst(1_000_000)
                    .unwrap(),
            );
            for key in &keys {
                drop(store.decide(&Ask::new(key, &quotas)).into_inner());
            }
            measured(n, |i| {
                let ask = Ask::new(&keys[i as usize % keys.len()], &quotas);
                black_box(store.decide(&ask).into_inner().unwrap().is_allowed());
            });
        }
        "governor-check-key" => {
            let gov = governor::RateLimiter::keyed(
                governor::Quota::with_period(Duration::from_millis(100))
                    .unwrap()
                    .allow_burst(NonZeroU32::new(1_000_000).unwrap()),
            );
            for key in &keys {
                drop(gov.check_key(key));
            }
            measured(n, |i| {
                black_box(gov.check_key(&keys[i as usize % keys.len()]).is_ok());
            });
        }
        other => panic!("unknown case {other:?}: one of {CASES:?}"),
    }
}
