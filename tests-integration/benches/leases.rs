//! A hot key's decision on a leased Redis limit beside the memory store's, in one run, and
//! the calls to Redis per decision it costs.
//!
//! ```text
//! cargo bench --bench leases        # needs redis-server and redis-cli
//! ```
//!
//! Redis runs on core 0 (`taskset`, when there is one); the store's renewals run on a
//! tokio worker beside the measuring thread. Three neighbours, one
//! key, a limit no run reaches (a burst of a billion): the memory store's decision; the Redis
//! store's with leases (each decision spent from the lease, renewed in the background); and,
//! for scale, the Redis store's round trip per decision (leases off). After the leased run it
//! prints the script calls Redis counted per decision (`INFO commandstats`); the issue's
//! bound is 0.01 at 10,000 decisions a second, and here the decisions come as fast as one
//! core makes them.

mod common;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::redis::{cli, start_redis};
use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::store::{Ask, RedisStore};
use tollgate::{Decision, MemoryStore, Quota, Quotas, Store};

/// Decisions that waited for Redis (a lease spent before its renewal came back).
static WAITED: AtomicU64 = AtomicU64::new(0);

/// A decision, polled once, and driven to its end on `runtime` if it waits for Redis.
fn at_once<F: Future<Output = Result<Decision, tollgate::StoreError>>>(
    runtime: &tokio::runtime::Runtime,
    future: F,
) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut future = pin!(future);
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(decision) => decision.unwrap().is_allowed(),
        Poll::Pending => {
            WAITED.fetch_add(1, Ordering::Relaxed);
            runtime.block_on(future).unwrap().is_allowed()
        }
    }
}

/// Script calls Redis has counted.
fn script_calls(port: u16) -> u64 {
    let info = cli(port, &["INFO", "commandstats"]);
    ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
        .iter()
        .filter_map(|prefix| {
            info.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
        })
        .sum()
}

fn leases(c: &mut Criterion) {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("TOLLGATE_REQUIRE_REDIS").as_deref() != Ok("1"),
            "redis-server is not installed, and TOLLGATE_REQUIRE_REDIS=1"
        );
        println!("skipped: redis-server and redis-cli are needed");
        return;
    }
    // Redis on core 0; this process where the scheduler puts it (its measuring thread and
    // the worker that renews the lease).
    let dir = std::env::temp_dir().join(format!("tollgate-leases-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = start_redis(&dir, &[]);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // A worker for the store's background work (renewals, give-backs); this thread measures.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    // Redis counts in whole microseconds (a million a second at most): the burst is what no
    // run reaches.
    let quotas = Quotas::from(
        Quota::per_second(1_000_000)
            .unwrap()
            .with_burst(1_000_000_000)
            .unwrap(),
    );
    let key = "hot".to_owned();
    let ask = Ask::new(&key, &quotas);

    let mut group = c.benchmark_group("hot key, one decision");
    let memory = MemoryStore::new();
    group.bench_function("MemoryStore", |b| {
        b.iter(|| black_box(at_once(&runtime, memory.decide(&ask))))
    });

    let leased = RedisStore::builder(url.as_str()).build().unwrap();
    // Hot and leased before the measurement (the first decisions go to Redis one by one), for
    // long enough that the lease is sized to this demand.
    let warming = std::time::Instant::now();
    while warming.elapsed() < Duration::from_millis(500) {
        at_once(&runtime, leased.decide(&ask));
    }
    assert_eq!(leased.leased_keys(), 1, "the hot key was not leased");
    WAITED.store(0, Ordering::Relaxed);
    let decided = AtomicU64::new(0);
    let calls_before = script_calls(redis.port);
    group.bench_function("RedisStore, leased", |b| {
        b.iter(|| {
            decided.fetch_add(1, Ordering::Relaxed);
            black_box(at_once(&runtime, leased.decide(&ask)))
        })
    });
    let calls = script_calls(redis.port) - calls_before;
    let decided = decided.into_inner();
    let waited = WAITED.load(Ordering::Relaxed);
    println!(
        "leased: {calls} script calls for {decided} decisions ({:.6} per decision); \
         {waited} decisions waited for Redis",
        calls as f64 / decided as f64
    );
    assert!(
        calls as f64 / decided as f64 <= 0.01,
        "{calls} calls for {decided} decisions"
    );

    let round_trip = RedisStore::builder(url.as_str())
        .leases(false)
        .build()
        .unwrap();
    group.bench_function("RedisStore, a round trip each (leases off)", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(round_trip.decide(&ask))
                    .unwrap()
                    .is_allowed(),
            )
        })
    });
    group.finish();
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, leases);
criterion_main!(benches);
