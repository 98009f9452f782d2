//! The memory store's WARN at its cap, read from a captured log: at most once a minute.
//!
//! Alone in its file, so that no other test hits the same `tracing` call site on another
//! thread while this one listens.

use std::sync::Arc;
use std::time::Duration;

use tollgate::clock::ManualClock;
use tollgate::{MemoryStore, Quota, Quotas};

#[test]
fn evictions_warn_at_most_once_a_minute() {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let warnings = || {
        String::from_utf8(lines.0.lock().unwrap().clone())
            .unwrap()
            .matches("memory store at its cap")
            .count()
    };

    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1000));
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_keys(100)
        .shards(1)
        .build();
    let q = Quotas::from(Quota::per_hour(1).unwrap());
    let mut key = 0u32;
    let mut flood = |n: u32| {
        for _ in 0..n {
            key += 1;
            store.check(&key, &q, 1).unwrap();
        }
    };
    flood(10_000);
    assert!(store.evicted() > 9_000);
    assert_eq!(warnings(), 1, "one WARN for a minute of evictions");
    clock.advance(Duration::from_secs(59));
    flood(1_000);
    assert_eq!(warnings(), 1);
    clock.advance(Duration::from_secs(2));
    flood(1_000);
    assert_eq!(warnings(), 2, "and one more a minute later");
}
