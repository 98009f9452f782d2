//! The layer, through a real tower service, on tokio's paused clock: a key from a header, its
//! quotas' version and its cost from two others, keys exempted by a predicate, blocks of keys
//! refused too often; one service refuses at once, another waits up to
//! [`LAYER_WAIT_US`]. What is compared is what an HTTP client sees: the status, `Retry-After`
//! and `RateLimit`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Request, Response};
use proptest::test_runner::TestRunner;
use tokio::runtime::Runtime;
use tollgate::clock::{Clock, TokioClock};
use tollgate::key::{Exempt, Header};
use tollgate::{MemoryStore, Quota, Quotas, RateLimitLayer};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer as _, Service, ServiceExt};

use crate::limiter::paused_runtime;
use crate::program::{
    answer_of, key_name, program, run, Blocks, Observed, Op, Outcome, Subject, Versions,
    LAYER_WAIT_US,
};
use crate::reference::{refill_after, Answer, Bucket, Impossible};

type Svc = BoxCloneService<Request<Body>, Response<Body>, Infallible>;

/// The exempt key.
const EXEMPT: u8 = 2;

struct Layer {
    runtime: Runtime,
    versions: Vec<Quotas>,
    store: MemoryStore<TokioClock>,
    reject: Svc,
    wait: Svc,
}

fn blocks() -> (Quota, Duration, Blocks) {
    let (interval, burst, duration) = (Duration::from_secs(1), 3, Duration::from_secs(10));
    let quota = Quota::every(interval).unwrap().with_burst(burst).unwrap();
    let blocks = Blocks {
        refusals: Bucket {
            name: "refusals",
            interval: interval.as_nanos() as u64,
            burst,
        },
        duration: duration.as_nanos() as u64,
    };
    (quota, duration, blocks)
}

impl Layer {
    fn new(versions: &Versions) -> Self {
        let runtime = paused_runtime();
        let sets = versions.crate_sets.clone();
        let (store, reject, wait) = runtime.block_on(async move {
            let store = MemoryStore::builder().clock(TokioClock::new()).build();
            let layer = || {
                let sets = sets.clone();
                RateLimitLayer::new(sets[0].clone())
                    .key(Exempt::keys(Header::new("x-key"), |key: &HeaderValue| {
                        key.as_bytes() == key_name(EXEMPT).as_bytes()
                    }))
                    .quotas(move |_: &HeaderValue, request: &Request<Body>| {
                        sets[number(request, "x-version") as usize].clone()
                    })
                    .cost(|request: &Request<Body>| number(request, "x-cost"))
                    .store(store.clone())
            };
            let (refusals, duration, _) = blocks();
            let ok = service_fn(|_: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Body::empty()))
            });
            let reject = BoxCloneService::new(layer().block(refusals, duration).layer(ok));
            let wait =
                BoxCloneService::new(layer().wait(Duration::from_micros(LAYER_WAIT_US)).layer(ok));
            tokio::time::advance(Duration::from_secs(1)).await;
            (store, reject, wait)
        });
        Self {
            runtime,
            versions: versions.crate_sets.clone(),
            store,
            reject,
            wait,
        }
    }

    fn request(key: &str, version: usize, cost: u32) -> Request<Body> {
        Request::get("/")
            .header("x-key", key)
            .header("x-version", version.to_string())
            .header("x-cost", cost.to_string())
            .body(Body::empty())
            .unwrap()
    }

    fn service(&self, max_wait: Duration) -> Svc {
        match max_wait.is_zero() {
            true => self.reject.clone(),
            false => self.wait.clone(),
        }
    }
}

fn number(request: &Request<Body>, name: &str) -> u32 {
    request.headers()[name].to_str().unwrap().parse().unwrap()
}

fn seen(response: &Response<Body>) -> Observed {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Observed::Http {
        status: response.status().as_u16(),
        retry_after: header("retry-after"),
        ratelimit: header("ratelimit"),
    }
}

/// What an HTTP client should see of `expected`, for a request under `quotas`.
fn http(expected: &Outcome, quotas: &Quotas) -> Observed {
    let answer = match expected {
        Err(Impossible::TooCostly) => {
            return Observed::Http {
                status: 400,
                retry_after: None,
                ratelimit: None,
            }
        }
        Err(other) => panic!("no layer asks {other:?}"),
        Ok(answer) => answer,
    };
    let quota = &quotas.as_slice()[answer.quota];
    let bucket = Bucket {
        name: "",
        interval: quota.interval().as_nanos() as u64,
        burst: quota.burst(),
    };
    let seconds = |nanos: u64| nanos.div_ceil(1_000_000_000);
    let refill = seconds(refill_after(&bucket, answer.reset_after));
    let mut ratelimit = format!("\"{}\";r={}", quota.name(), answer.remaining);
    if refill > 0 {
        ratelimit.push_str(&format!(";t={refill}"));
    }
    Observed::Http {
        status: if answer.allowed { 200 } else { 429 },
        retry_after: (!answer.allowed).then(|| seconds(answer.retry_after).max(1).to_string()),
        ratelimit: Some(ratelimit),
    }
}

fn version_of(versions: &[Quotas], quotas: &Quotas) -> usize {
    versions
        .iter()
        .position(|v| std::ptr::eq(v.as_slice(), quotas.as_slice()))
        .expect("a version of the program")
}

impl Subject for Layer {
    fn now(&mut self) -> u64 {
        let _entered = self.runtime.enter();
        self.store.clock().now()
    }

    fn pass(&mut self, by: Duration) {
        self.runtime.block_on(tokio::time::advance(by));
    }

    fn decide(
        &mut self,
        parts: &[(String, Quotas)],
        cost: u32,
        max_wait: Duration,
        expected: &Outcome,
    ) -> (Observed, Observed) {
        let [(key, quotas)] = parts else {
            unreachable!("one key at a time")
        };
        let svc = self.service(max_wait);
        let request = Self::request(key, self.version(quotas), cost);
        let response = self.runtime.block_on(svc.oneshot(request)).unwrap();
        let want = match key.as_str() == key_name(EXEMPT) {
            // Not counted, and nothing to say.
            true => Observed::Http {
                status: 200,
                retry_after: None,
                ratelimit: None,
            },
            false => http(expected, quotas),
        };
        (seen(&response), want)
    }

    fn abandon(
        &mut self,
        parts: &[(String, Quotas)],
        cost: u32,
        max_wait: Duration,
        expected: &Outcome,
    ) -> (Observed, Observed) {
        let [(key, quotas)] = parts else {
            unreachable!("one key at a time")
        };
        if key.as_str() == key_name(EXEMPT) {
            return self.decide(parts, cost, max_wait, expected);
        }
        let mut svc = self.service(max_wait);
        let request = Self::request(key, self.version(quotas), cost);
        let _entered = self.runtime.enter();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut call = pin!(svc.call(request));
        let waits = matches!(expected, Ok(answer) if answer.allowed && answer.wait > 0);
        match call.as_mut().poll(&mut cx) {
            // Dropped while it waits for its slot: the slot is given back.
            Poll::Pending => (Observed::Nothing, Observed::Nothing),
            Poll::Ready(response) if !waits => (seen(&response.unwrap()), http(expected, quotas)),
            Poll::Ready(response) => (seen(&response.unwrap()), Observed::Nothing),
        }
    }

    fn refund(&mut self, _: &[(String, Quotas)], _: u32) {
        unreachable!("the layer gives back only what a dropped wait held")
    }

    fn reset(&mut self, key: &str, quotas: &Quotas) {
        self.store
            .reset(&HeaderValue::from_str(key).unwrap(), quotas);
    }

    fn status(&mut self, key: &str, quotas: &Quotas) -> Answer {
        let _entered = self.runtime.enter();
        answer_of(
            &self
                .store
                .status(&HeaderValue::from_str(key).unwrap(), quotas),
        )
    }

    fn takes(&self, op: &Op) -> bool {
        match op {
            Op::Across { .. } | Op::Refund { .. } => false,
            Op::Ask { max_wait_us, .. } => [0, LAYER_WAIT_US].contains(max_wait_us),
            _ => true,
        }
    }

    fn exempt(&self, key: &str) -> bool {
        key == key_name(EXEMPT)
    }

    fn blocks(&self) -> Option<Blocks> {
        Some(blocks().2)
    }
}

impl Layer {
    fn version(&self, quotas: &Quotas) -> usize {
        version_of(&self.versions, quotas)
    }
}

#[test]
fn the_layer_agrees_with_the_model() {
    TestRunner::new(crate::config())
        .run(&program(40), |program| {
            crate::watched(&program, || run(&program, Layer::new))
        })
        .unwrap();
}
