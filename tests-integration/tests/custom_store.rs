//! A `Store` written outside the crate, with only its public API: one mutex over a map of
//! TATs, and the crate's arithmetic (`Ask::states`, `Ask::apply`, `Ask::give_back`). It
//! answers the conformance scenario as the memory store does (a live quota change that
//! carries each key's debt over, and decisions across keys, included), and serves the direct
//! limiter and the layer.

mod common;

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate::store::{Ask, StoreError};
use tollgate::{Decision, MemoryStore, Quota, Quotas, RateLimiter, Store};

/// The simplest correct store: one mutex over a map of TATs, keyed by (key, quota id), on
/// tokio's clock (paused in these tests).
#[derive(Clone)]
struct MutexStore {
    tats: Arc<Mutex<HashMap<(String, u64), u64>>>,
    origin: tokio::time::Instant,
}

impl MutexStore {
    fn new() -> Self {
        Self {
            tats: Arc::default(),
            origin: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        // Never 0, which stands for "no state".
        self.origin.elapsed().as_nanos() as u64 + 1_000_000_000
    }

    /// Runs `f` on the TATs of `ask`'s states, under the lock, and writes them back.
    fn with_states<R>(&self, ask: &Ask<'_, String>, f: impl FnOnce(&mut [u64]) -> R) -> R {
        let mut map = self.tats.lock().unwrap();
        let ids: Vec<(String, u64)> = ask
            .states()
            .map(|(key, quota)| (key.clone(), quota.id()))
            .collect();
        let mut tats: Vec<u64> = ids
            .iter()
            .map(|id| map.get(id).copied().unwrap_or(0))
            .collect();
        let answer = f(&mut tats);
        for (id, tat) in ids.into_iter().zip(tats) {
            map.insert(id, tat);
        }
        answer
    }

    /// Forgets `key` under `quotas`: this store's own reset.
    fn reset(&self, key: &str, quotas: &Quotas) {
        let mut map = self.tats.lock().unwrap();
        for quota in quotas.as_slice() {
            map.remove(&(key.to_owned(), quota.id()));
        }
    }
}

impl Store<String> for MutexStore {
    type Future = Ready<Result<Decision, StoreError>>;

    fn decide(&self, ask: &Ask<'_, String>) -> Self::Future {
        let now = self.now();
        ready(
            self.with_states(ask, |tats| ask.apply(tats, now))
                .map_err(StoreError::from),
        )
    }

    fn refund(&self, ask: &Ask<'_, String>, cost: u32) {
        let now = self.now();
        self.with_states(ask, |tats| ask.give_back(tats, cost, now));
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_written_outside_the_crate_answers_as_the_memory_store_does() {
    let outside = common::conformance::scenario(&MutexStore::new()).await;
    let memory = MemoryStore::builder()
        .clock(tollgate::clock::TokioClock::new())
        .build();
    let inside = common::conformance::scenario(&memory).await;
    assert_eq!(outside, inside);
    // The scenario's live change is there, and carried debt over: after 4 of 10 under the
    // old quota, 60 of 100 were left under the new one.
    assert!(
        outside.iter().any(|seen| seen.remaining == 60),
        "{outside:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_written_outside_the_crate_serves_the_limiter() {
    let store = MutexStore::new();
    let quota = Quota::per_second(2).unwrap();
    let limiter = RateLimiter::keyed(quota.clone()).store(store.clone());
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
    store.reset("alice", &Quotas::from(quota));
    assert_eq!(limiter.key(alice()).available().await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_store_written_outside_the_crate_serves_the_layer() {
    use tower::Layer;
    let layer = tollgate::RateLimitLayer::new(Quota::per_minute(2).unwrap())
        .key(|request: &http::Request<()>| {
            request
                .headers()
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .store(MutexStore::new());
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
