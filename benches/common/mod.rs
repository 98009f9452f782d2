#![allow(dead_code)]

//! What the criterion benches share.

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
