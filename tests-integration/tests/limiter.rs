//! `RateLimiter`, the direct API, on paused time over the memory store and on a real Redis;
//! and the layer's cost on a network store, which goes through the same admission path.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tollgate::clock::TokioClock;
use tollgate::rate_limit::Refusal;
use tollgate::{MemoryStore, Quota, RateLimitLayer, RateLimiter};
use tower::{service_fn, Service};

fn paused_store() -> MemoryStore<TokioClock> {
    MemoryStore::builder().clock(TokioClock::new()).build()
}

fn ten_per_second_burst_20() -> RateLimiter<tollgate::key::Global, MemoryStore<TokioClock>> {
    RateLimiter::new(Quota::per_second(10).unwrap().with_burst(20).unwrap()).store(paused_store())
}

#[tokio::test(start_paused = true)]
async fn a_burst_then_one_per_interval_and_waiters_in_order() {
    let limiter = ten_per_second_burst_20();
    for _ in 0..20 {
        limiter.try_acquire().await.unwrap();
    }
    let refused = limiter.try_acquire().await.unwrap_err();
    assert!(matches!(refused, Refusal::Limited(_)));
    assert_eq!(refused.retry_after(), Some(Duration::from_millis(100)));

    // Three waiters, started in order, are served in order, one every 100 ms.
    let start = Instant::now();
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (limiter, served) = (limiter.clone(), Arc::clone(&served));
        tasks.push(tokio::spawn(async move {
            limiter.acquire().await.unwrap();
            served
                .lock()
                .unwrap()
                .push((i, start.elapsed().as_millis()));
        }));
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*served.lock().unwrap(), [(0, 100), (1, 200), (2, 300)]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_acquire_gives_its_slot_back() {
    let limiter = RateLimiter::new(Quota::per_second(1).unwrap()).store(paused_store());
    limiter.acquire().await.unwrap();
    // The next slot is 1 s away; give up after 100 ms.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), limiter.acquire()).await;
    assert!(gave_up.is_err());
    // Its slot was given back: the next caller waits 0.9 s, not 1.9 s.
    let start = Instant::now();
    limiter.acquire().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(900));
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_limit_and_reset_fills_it() {
    let limiter = RateLimiter::new(Quota::per_minute(3).unwrap()).store(paused_store());
    let clone = limiter.clone();
    limiter.try_acquire().await.unwrap();
    clone.try_acquire().await.unwrap();
    assert_eq!(limiter.available().await.unwrap(), 1);
    let status = clone.status().await.unwrap();
    assert_eq!((status.limit(), status.remaining()), (3, 1));
    limiter.try_acquire().await.unwrap();
    assert!(clone.try_acquire().await.is_err());
    clone.reset().await.unwrap();
    assert_eq!(limiter.available().await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn costs_and_the_longest_wait() {
    let limiter = RateLimiter::new(Quota::per_second(5).unwrap())
        .store(paused_store())
        .max_wait(Duration::from_millis(500));
    limiter.try_acquire().cost(3).await.unwrap();
    assert!(matches!(
        limiter.try_acquire().cost(6).await,
        Err(Refusal::TooCostly(_))
    ));
    // 2 left: a cost of 4 waits 400 ms (within the 500 ms allowed)...
    let start = Instant::now();
    limiter.acquire().cost(4).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(400));
    // ...a cost of 5 now would wait a second: refused at once, saying so.
    let refused = limiter.acquire().cost(5).await.unwrap_err();
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(start.elapsed(), Duration::from_millis(400));
}

#[tokio::test(start_paused = true)]
async fn keys_have_their_own_buckets() {
    let per_user = RateLimiter::keyed(Quota::per_minute(2).unwrap()).store(paused_store());
    per_user.key("alice").try_acquire().await.unwrap();
    per_user.key("alice").try_acquire().await.unwrap();
    assert!(per_user.key("alice").try_acquire().await.is_err());
    assert_eq!(per_user.key("bob").available().await.unwrap(), 2);
    per_user.key("alice").reset().await.unwrap();
    assert_eq!(per_user.key("alice").available().await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn denials_and_waits_reach_the_hook() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let limiter = RateLimiter::new(Quota::per_second(1).unwrap())
        .store(paused_store())
        .name("jobs")
        .on_event(move |event| {
            log.lock()
                .unwrap()
                .push((event.layer.to_owned(), event.kind))
        });
    limiter.acquire().await.unwrap();
    limiter.acquire().await.unwrap();
    let _ = limiter.try_acquire().await;
    use tollgate::rate_limit::LimitEventKind::{Denied, Waiting};
    assert_eq!(
        *seen.lock().unwrap(),
        [("jobs".to_owned(), Waiting), ("jobs".to_owned(), Denied)]
    );
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn on_redis_the_same_calls_hold_one_limit() {
    let redis = redis_or_skip!();
    let limiter = RateLimiter::new(Quota::per_minute(3).unwrap()).store(redis.store());
    let other_instance = RateLimiter::new(Quota::per_minute(3).unwrap()).store(redis.store());
    limiter.try_acquire().await.unwrap();
    other_instance.try_acquire().await.unwrap();
    assert_eq!(limiter.available().await.unwrap(), 1);
    limiter.try_acquire().await.unwrap();
    let refused = other_instance.try_acquire().await.unwrap_err();
    assert!(refused.retry_after().unwrap() > Duration::from_secs(15));
    // A wait abandoned gives its slot back on Redis too.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), limiter.acquire()).await;
    assert!(gave_up.is_err());
    let refund_landed = async {
        // The refund is sent in the background: wait until Redis has it (the bucket is full
        // again 60 s from now, not 80 s as with the abandoned slot).
        while limiter.status().await.unwrap().reset_after() > Duration::from_secs(61) {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), refund_landed)
        .await
        .expect("the abandoned slot was given back");
    let refused = limiter.try_acquire().await.unwrap_err();
    assert!(refused.retry_after().unwrap() <= Duration::from_secs(20));
    other_instance.reset().await.unwrap();
    assert_eq!(limiter.available().await.unwrap(), 3);
}

/// The layer's global limit in wait mode reserves one unit in `poll_ready`; a request that
/// costs more must be charged in full, on a network store as on the memory store.
async fn cost_five_against_ten_per_minute<S>(store: S) -> (Vec<bool>, u32)
where
    S: tollgate::Store<tollgate::key::Global>,
{
    let quota = Quota::per_minute(10).unwrap();
    let layer = RateLimitLayer::new(quota.clone())
        .store(store.clone())
        .wait(Duration::from_secs(1))
        .cost(|_: &http::Request<()>| 5)
        .errors();
    let mut service = tower::Layer::layer(
        &layer,
        service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) }),
    );
    let mut passed = Vec::new();
    for _ in 0..3 {
        let ready = service.ready().await.unwrap();
        passed.push(ready.call(http::Request::new(())).await.is_ok());
    }
    let left = tollgate::RateLimiter::new(quota)
        .store(store)
        .available()
        .await
        .unwrap();
    (passed, left)
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_cost_is_charged_in_full_on_a_network_store_in_wait_mode() {
    let redis = redis_or_skip!();
    assert_eq!(
        cost_five_against_ten_per_minute(redis.store()).await,
        (vec![true, true, false], 0)
    );
    assert_eq!(
        cost_five_against_ten_per_minute(MemoryStore::new()).await,
        (vec![true, true, false], 0)
    );
}

#[tokio::test]
async fn a_cost_above_the_burst_is_refused_in_wait_mode_too() {
    // The global limit in wait mode reserves one unit in poll_ready; a request that costs
    // more than the burst must still be refused as impossible, not charged the rest.
    let layer = RateLimitLayer::new(Quota::per_minute(10).unwrap())
        .wait(Duration::from_secs(1))
        .cost(|_: &http::Request<()>| 11)
        .errors();
    let mut service = tower::Layer::layer(
        &layer,
        service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) }),
    );
    let ready = service.ready().await.unwrap();
    let error = ready.call(http::Request::new(())).await.unwrap_err();
    assert!(
        error.downcast_ref::<tollgate::QuotaError>().is_some(),
        "{error}"
    );
}

#[tokio::test]
async fn settings_in_any_order_give_the_same_limiter() {
    use tollgate::rate_limit::LimiterStats;
    // Statistics set before the store, or after it, count alike (the store used to drop
    // what was set before it), and so does a name.
    let (before, after) = (LimiterStats::new(), LimiterStats::new());
    let quota = Quota::per_minute(1).unwrap();
    let stats_first = RateLimiter::keyed(quota.clone())
        .stats(before.clone())
        .name("first")
        .store(MemoryStore::new());
    let store_first = RateLimiter::keyed(quota)
        .store(MemoryStore::new())
        .name("first")
        .stats(after.clone());
    for limiter in [&stats_first, &store_first] {
        assert!(limiter.key("k").try_acquire().await.is_ok());
        assert!(limiter.key("k").try_acquire().await.is_err());
    }
    assert_eq!(before.snapshot(), after.snapshot());
    assert_eq!(
        (before.snapshot().allowed, before.snapshot().refused),
        (1, 1)
    );
    assert_eq!(format!("{stats_first:?}"), format!("{store_first:?}"));
}
