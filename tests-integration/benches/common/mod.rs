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

/// The floor with a response future of tollgate's shape around the inner one (a private enum
/// under `pin_project!`: calling, with room for two header values and a settlement; answered;
/// waiting, boxed), filled as with headers off: what the shape of a tower-http-style future
/// costs a limit before it decides anything.
pub struct ShapedFloor<S>(pub SharedFloor<S>);

impl<S, Req> Service<Req> for ShapedFloor<S>
where
    S: Service<Req>,
    S::Response: Annotate,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Shaped<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        Shaped {
            state: ShapedState::Calling {
                future: self.0.call(request),
                note: None,
                settle: None,
            },
        }
    }
}

/// What tollgate's note and settlement hold: two header values and a shared account.
type Note = (
    Option<http::HeaderValue>,
    Option<http::HeaderValue>,
    Option<Box<[u64; 3]>>,
);
type Settle = (std::sync::Arc<dyn std::any::Any + Send + Sync>, u32, u32);

pin_project_lite::pin_project! {
    /// See [`ShapedFloor`].
    pub struct Shaped<F, T, E> {
        #[pin]
        state: ShapedState<F, T, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = ShapedProj]
    enum ShapedState<F, T, E> {
        Calling {
            #[pin]
            future: F,
            note: Option<Note>,
            settle: Option<Settle>,
        },
        Answered {
            answer: Option<Result<T, E>>,
        },
        Waiting {
            future: std::pin::Pin<Box<dyn Future<Output = Result<T, E>> + Send>>,
        },
    }
}

impl<F, T: Annotate, E> Future for Shaped<F, T, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ShapedProj::Calling {
                future,
                note,
                settle,
            } => {
                if note.is_none() && settle.is_none() {
                    return future.poll(cx);
                }
                let mut response = std::task::ready!(future.poll(cx))?;
                drop(settle.take());
                if let Some(note) = note.take() {
                    response.annotate(note);
                }
                Poll::Ready(Ok(response))
            }
            ShapedProj::Answered { answer } => {
                Poll::Ready(answer.take().expect("polled after completion"))
            }
            ShapedProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

/// The least a peer-IP limit with IETF headers must do per request, with tollgate's future
/// shape: read the peer from the request's extensions, hash it to one of 4,096 shared TATs
/// and move that one with a compare-and-swap (no table, no eviction, no collision handling),
/// and append a `RateLimit` and a `RateLimit-Policy` field to the response. The values are
/// shared ones cloned per request, as any cache of formatted values gives (tollgate's
/// included); the policy's is static, which costs no reference count.
pub struct PeerFloor<S> {
    pub floor: SharedFloor<S>,
    pub tats: std::sync::Arc<[std::sync::atomic::AtomicU64]>,
    pub ratelimit: http::HeaderValue,
}

impl<S> PeerFloor<S> {
    /// One per `interval_nanos` per peer, bursts up to `window_nanos`, around `inner`.
    pub fn new(inner: S, interval_nanos: u64, window_nanos: u64) -> Self {
        Self {
            floor: SharedFloor::new(inner, interval_nanos, window_nanos),
            tats: (0..4096).map(|_| Default::default()).collect(),
            ratelimit: http::HeaderValue::from_maybe_shared(bytes::Bytes::from(
                "\"default\";r=999999;t=1".to_string(),
            ))
            .unwrap(),
        }
    }
}

impl<S, B, RB> Service<http::Request<B>> for PeerFloor<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Shaped<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.floor.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use std::sync::atomic::Ordering;
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip());
        let bits = match peer {
            Some(std::net::IpAddr::V4(ip)) => u64::from(ip.to_bits()),
            Some(std::net::IpAddr::V6(ip)) => ip.to_bits() as u64 ^ (ip.to_bits() >> 64) as u64,
            None => 0,
        };
        let slot = (bits.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize;
        let floor = &self.floor;
        let now = floor.clock.delta_as_nanos(floor.origin, floor.clock.raw());
        let tat = &self.tats[slot];
        let mut seen = tat.load(Ordering::Acquire);
        loop {
            let next = seen.max(now) + floor.interval;
            if next - now > floor.window {
                break;
            }
            match tat.compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(found) => seen = found,
            }
        }
        let note = (
            Some(self.ratelimit.clone()),
            Some(http::HeaderValue::from_static(
                "\"default\";q=1000000000;w=1",
            )),
            None,
        );
        Shaped {
            state: ShapedState::Calling {
                future: self.floor.inner.call(request),
                note: Some(note),
                settle: None,
            },
        }
    }
}

/// What [`Shaped`] does with a note on an HTTP response: append its fields.
pub trait Annotate {
    fn annotate(&mut self, note: Note);
}

impl<B> Annotate for http::Response<B> {
    fn annotate(&mut self, (ratelimit, policy, _): Note) {
        // Constants, as tollgate's: `from_static` outside a const context looks the name up
        // on every call.
        const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
        const POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
        let headers = self.headers_mut();
        if let Some(ratelimit) = ratelimit {
            headers.append(RATELIMIT, ratelimit);
        }
        if let Some(policy) = policy {
            headers.append(POLICY, policy);
        }
    }
}
