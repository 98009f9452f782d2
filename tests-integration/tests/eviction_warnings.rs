//! The memory store's WARN at its cap, read from a captured log: at most once a minute.
//!
//! Alone in its file, so that no other test hits the same `tracing` call site on another
//! thread while this one listens.

mod common;

use std::time::Duration;

use tollgate::clock::TokioClock;
use tollgate::{MemoryStore, Quota, Quotas};

#[tokio::test(start_paused = true)]
async fn evictions_warn_at_most_once_a_minute() {
    let (logs, _guard) = common::logs::capture(tracing::Level::INFO);
    let warnings = || logs.text().matches("memory store at its cap").count();

    tokio::time::advance(Duration::from_secs(1000)).await;
    let store = MemoryStore::builder()
        .clock(TokioClock::new())
        .max_keys(100)
        .shards(1)
        .build();
    let q = Quotas::from(Quota::per_hour(1).unwrap());
    let mut key = 0u32;
    let mut flood = |n: u32| {
        for _ in 0..n {
            key += 1;
            common::check(&store, &key, &q, 1).unwrap();
        }
    };
    flood(10_000);
    assert!(store.evicted() > 9_000);
    assert_eq!(warnings(), 1, "one WARN for a minute of evictions");
    tokio::time::advance(Duration::from_secs(59)).await;
    flood(1_000);
    assert_eq!(warnings(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    flood(1_000);
    assert_eq!(warnings(), 2, "and one more a minute later");
}
