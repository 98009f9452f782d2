//! Several threads hammer one key on the real clock: whatever the interleaving, the store
//! never admits more than `burst + rate × elapsed` (+1 for the request at the boundary).
//!
//! This checks an upper bound over whatever time the run took; it does not time anything.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate::{MemoryStore, Quota, Quotas};

fn hammer(quotas: &Quotas, threads: usize, attempts: u64) -> (u64, Duration) {
    let store = MemoryStore::new();
    let admitted = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..attempts {
                    if common::check(&store, &"hot", quotas, 1)
                        .unwrap()
                        .is_allowed()
                    {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (admitted.load(Ordering::Relaxed), start.elapsed())
}

#[test]
fn one_key_under_contention_never_exceeds_the_quota() {
    let quota = Quota::per_second(1000).unwrap().with_burst(50).unwrap();
    let (admitted, elapsed) = hammer(&Quotas::from(quota), 4, 200_000);
    let bound = 50 + (1000.0 * elapsed.as_secs_f64()) as u64 + 1;
    assert!(
        admitted <= bound,
        "admitted {admitted} in {elapsed:?}, bound {bound}"
    );
    assert!(admitted >= 50, "the burst itself must pass: {admitted}");
}

#[test]
fn several_quotas_under_contention_never_exceed_any() {
    let quotas = Quotas::new([
        Quota::per_second(2000)
            .unwrap()
            .with_burst(100)
            .unwrap()
            .named("fast")
            .unwrap(),
        Quota::per_second(500)
            .unwrap()
            .with_burst(300)
            .unwrap()
            .named("slow")
            .unwrap(),
    ])
    .unwrap();
    let (admitted, elapsed) = hammer(&quotas, 4, 100_000);
    let secs = elapsed.as_secs_f64();
    let fast = 100 + (2000.0 * secs) as u64 + 1;
    let slow = 300 + (500.0 * secs) as u64 + 1;
    assert!(
        admitted <= fast.min(slow),
        "admitted {admitted} in {elapsed:?}, bounds {fast} and {slow}"
    );
    assert!(admitted >= 100);
}
