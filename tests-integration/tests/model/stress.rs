//! The memory store on real threads: four threads ask, across keys too, with costs, give
//! back, and move a shared clock, and every decision is recorded with the clock read before
//! and after it. The history is then checked against the bound the model guarantees, per key
//! and quota, for every window: what was charged and not given back in it is at most the
//! burst plus the rate over the window. (loom proves the same of the lock-free parts over
//! every interleaving of small scenarios; this runs them at full speed, contended.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tollgate::clock::Clock;
use tollgate::store::Ask;
use tollgate::{MemoryStore, Quota, Quotas, Store};

use crate::memory::TestClock;

const THREADS: u64 = 4;
const OPS: u64 = 4_000;
const KEYS: usize = 4;

/// One charge (or a refund of one, negative) of `key`, between `from` and `to` on the clock.
#[derive(Clone, Copy, Debug)]
struct Event {
    key: usize,
    cost: i64,
    from: u64,
    to: u64,
}

/// xorshift64*: each thread's own choices.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn quotas() -> Quotas {
    Quotas::new([
        Quota::every(Duration::from_micros(100))
            .and_then(|q| q.with_burst(5))
            .and_then(|q| q.named("fast"))
            .unwrap(),
        Quota::every(Duration::from_millis(1))
            .and_then(|q| q.with_burst(20))
            .and_then(|q| q.named("slow"))
            .unwrap(),
    ])
    .unwrap()
}

#[test]
fn contended_decisions_stay_within_the_bound_of_every_window() {
    let clock = TestClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let quotas = quotas();
    let keys: Vec<(String, Quotas)> = (0..KEYS)
        .map(|k| (format!("key-{k}"), quotas.clone()))
        .collect();
    let history = Mutex::new(Vec::new());
    let admitted = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (store, clock, keys, history, admitted) =
                (&store, &clock, &keys, &history, &admitted);
            scope.spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (thread + 1);
                let mut mine = Vec::new();
                for _ in 0..OPS {
                    if next(&mut rng) % 5 == 0 {
                        clock.advance(Duration::from_micros(next(&mut rng) % 400));
                    }
                    // One key, or two different keys across (all or nothing).
                    let first = (next(&mut rng) % KEYS as u64) as usize;
                    let second = (first + 1 + (next(&mut rng) % (KEYS as u64 - 1)) as usize) % KEYS;
                    let across = next(&mut rng) % 4 == 0;
                    let parts: Vec<usize> = if across {
                        vec![first, second]
                    } else {
                        vec![first]
                    };
                    let cost = 1 + (next(&mut rng) % 3) as u32;
                    let asked: Vec<(String, Quotas)> =
                        parts.iter().map(|&k| keys[k].clone()).collect();
                    let ask = match asked.as_slice() {
                        [(key, quotas)] => Ask::new(key, quotas),
                        parts => Ask::across(parts),
                    }
                    .with_cost(cost);
                    let from = clock.now();
                    let decision = tokio_test::block_on(store.decide(&ask)).unwrap();
                    let to = clock.now();
                    if !decision.is_allowed() {
                        continue;
                    }
                    admitted.fetch_add(1, Ordering::Relaxed);
                    for &key in &parts {
                        mine.push(Event {
                            key,
                            cost: i64::from(cost),
                            from,
                            to,
                        });
                    }
                    if next(&mut rng) % 10 == 0 {
                        let from = clock.now();
                        store.refund(&ask, cost);
                        let to = clock.now();
                        for &key in &parts {
                            mine.push(Event {
                                key,
                                cost: -i64::from(cost),
                                from,
                                to,
                            });
                        }
                    }
                }
                history.lock().unwrap().extend(mine);
            });
        }
    });
    let history = history.into_inner().unwrap();
    let admitted = admitted.into_inner();
    assert!(
        admitted > 1_000,
        "the contention was real: {admitted} admitted"
    );
    for key in 0..KEYS {
        let mut events: Vec<Event> = history.iter().copied().filter(|e| e.key == key).collect();
        events.sort_by_key(|e| (e.from, e.to));
        for quota in quotas.as_slice() {
            let (interval, burst) = (
                quota.interval().as_nanos() as i128,
                i128::from(quota.burst()),
            );
            let charges: Vec<&Event> = events.iter().filter(|e| e.cost > 0).collect();
            let refunds: Vec<&Event> = events.iter().filter(|e| e.cost < 0).collect();
            for (i, first) in charges.iter().enumerate() {
                // A window runs from the earliest its first charge could have been decided to
                // the latest any of its charges could. Every refund that may have landed in
                // it (begun before its end, ended after its start) counts against what it
                // charged: a request decided late may have been given a refund stamped later.
                let mut given_back = refunds.iter().filter(|r| r.to >= first.from).peekable();
                let (mut net, mut end) = (0i64, 0u64);
                for last in &charges[i..] {
                    net += last.cost;
                    end = end.max(last.to);
                    while let Some(refund) = given_back.next_if(|r| r.from <= end) {
                        net += refund.cost;
                    }
                    let window = i128::from(end - first.from);
                    let bound = burst + window / interval;
                    assert!(
                        i128::from(net) <= bound,
                        "key {key}, quota {}: {net} charged in {window} ns from {} (bound \
                         {bound})",
                        quota.name(),
                        first.from,
                    );
                }
            }
        }
    }
}
