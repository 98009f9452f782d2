//! A `Store` written outside the crate, with only its public API (the GCRA's steps and
//! `Decision::from_steps`), used by `RateLimiter` and by `RateLimitLayer`.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate::clock::{Clock, TokioClock};
use tollgate::gcra::Gcra;
use tollgate::store::{ResetFuture, StoreError};
use tollgate::{Decision, Quotas, RateLimiter, Store};

/// The simplest correct store: one mutex over a map of TATs, keyed by (key, quota id).
#[derive(Clone, Default)]
struct MutexStore {
    tats: Arc<Mutex<HashMap<(String, u64), u64>>>,
    clock: TokioClock,
}

impl Store<String> for MutexStore {
    type Future = Ready<Result<Decision, StoreError>>;

    fn decide(&self, key: &String, quotas: &Quotas, cost: u32, max_wait: Duration) -> Self::Future {
        let now = self.clock.now();
        let max_wait = u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX);
        let mut tats = self.tats.lock().unwrap();
        let steps: Vec<_> = quotas
            .as_slice()
            .iter()
            .map(|quota| {
                let tat = tats.get(&(key.clone(), quota.id())).copied().unwrap_or(0);
                Gcra::new(quota).step(tat, now, cost, max_wait)
            })
            .collect();
        if cost > 0 && steps.iter().all(|step| step.allowed) {
            for (quota, step) in quotas.as_slice().iter().zip(&steps) {
                tats.insert((key.clone(), quota.id()), step.tat);
            }
        }
        ready(Ok(Decision::from_steps(quotas, &steps, now)))
    }

    fn refund(&self, key: &String, quotas: &Quotas, cost: u32) {
        let mut tats = self.tats.lock().unwrap();
        for quota in quotas.as_slice() {
            if let Some(tat) = tats.get_mut(&(key.clone(), quota.id())) {
                *tat = Gcra::new(quota).refund(*tat, cost);
            }
        }
    }

    fn reset(&self, key: &String, quotas: &Quotas) -> ResetFuture {
        let mut tats = self.tats.lock().unwrap();
        for quota in quotas.as_slice() {
            tats.remove(&(key.clone(), quota.id()));
        }
        Box::pin(ready(Ok(())))
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_written_outside_the_crate_serves_the_limiter() {
    let limiter =
        RateLimiter::keyed(tollgate::Quota::per_second(2).unwrap()).store(MutexStore::default());
    let alice = || "alice".to_owned();
    limiter.key(alice()).try_acquire().await.unwrap();
    limiter.key(alice()).try_acquire().await.unwrap();
    let refused = limiter.key(alice()).try_acquire().await.unwrap_err();
    assert_eq!(refused.retry_after(), Some(Duration::from_millis(500)));
    assert_eq!(limiter.key("bob".to_owned()).available().await.unwrap(), 2);
    // A wait given up is given back through the store's refund.
    let start = tokio::time::Instant::now();
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), limiter.key(alice()).acquire()).await;
    assert!(gave_up.is_err());
    limiter.key(alice()).acquire().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    limiter.key(alice()).reset().await.unwrap();
    assert_eq!(limiter.key(alice()).available().await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_store_written_outside_the_crate_serves_the_layer() {
    use tower::{Layer, ServiceExt};
    let layer = tollgate::RateLimitLayer::new(tollgate::Quota::per_minute(2).unwrap())
        .key(|request: &http::Request<()>| {
            request
                .headers()
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .store(MutexStore::default());
    let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    }));
    let request = || {
        http::Request::get("/")
            .header("x-user", "carol")
            .body(())
            .unwrap()
    };
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            service
                .clone()
                .oneshot(request())
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429]);
}
