#![allow(dead_code)]

//! What the benches share.

pub mod redis;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tower::Service;

/// One request through `svc`: ready, call, and the response future polled to completion,
/// without a runtime's scheduling in the measurement.
pub fn once<S, Req>(svc: &mut S, request: Req) -> S::Response
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut future = pin!(svc.call(request));
    loop {
        if let Poll::Ready(response) = future.as_mut().poll(&mut cx) {
            return response.unwrap();
        }
    }
}

/// Whether a bench runs in its short mode: under `cargo test --benches` (as CI runs every
/// bench, so that none rots unseen), which, unlike `cargo bench`, passes no `--bench`.
#[allow(dead_code)]
pub fn quick() -> bool {
    !std::env::args().any(|arg| arg == "--bench")
}

/// The least any limit shared by clones must do per request: read a clock and move one
/// shared theoretical arrival time with a compare-and-swap (GCRA, one quota, no headers,
/// no report), passing the inner future through unchanged. What it costs beside
/// `tower::limit::RateLimit` (per-instance state, no atomic) is the floor of a shared limit.
#[derive(Clone)]
pub struct SharedFloor<S> {
    pub inner: S,
    pub tat: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub clock: quanta::Clock,
    pub origin: u64,
    pub interval: u64,
    pub window: u64,
}

impl<S> SharedFloor<S> {
    /// One per `interval_nanos`, bursts up to `window_nanos`, around `inner`.
    pub fn new(inner: S, interval_nanos: u64, window_nanos: u64) -> Self {
        let clock = quanta::Clock::new();
        Self {
            inner,
            tat: Default::default(),
            origin: clock.raw(),
            clock,
            interval: interval_nanos,
            window: window_nanos,
        }
    }
}

impl<S, Req> Service<Req> for SharedFloor<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> S::Future {
        use std::sync::atomic::Ordering;
        // The same clock as tollgate's default: the TSC through quanta.
        let now = self.clock.delta_as_nanos(self.origin, self.clock.raw());
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now) + self.interval;
            if next - now > self.window {
                break; // refused: a real limit would answer here
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(found) => tat = found,
            }
        }
        self.inner.call(request)
    }
}
