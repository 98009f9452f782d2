//! Decision and layer costs of tollgate beside governor, tower_governor and tower, in one run.
//! Figures and ratios go to BENCHMARKS.md; see there for the command.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::{MemoryStore, Quota, Quotas};

const KEYS: usize = 100_000;

/// `n` distinct IPv4 addresses in a scattered order.
fn ips(n: usize) -> Vec<IpAddr> {
    (0..n as u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761) ^ 0x0a00_0000)))
        .collect()
}

fn decisions(c: &mut Criterion) {
    let keys = ips(KEYS);
    let mut group = c.benchmark_group("keyed decision, 100k IPv4 keys");

    // A quota under which every key stays tracked and allowed for the whole run: one request
    // per 100 ms with a burst of a million. (Under a quota whose buckets refill between two
    // visits, tollgate drops and re-creates the keys; governor keeps them.)
    let gov = governor::RateLimiter::keyed(
        governor::Quota::with_period(std::time::Duration::from_millis(100))
            .unwrap()
            .allow_burst(NonZeroU32::new(1_000_000).unwrap()),
    );
    keys.iter().for_each(|k| drop(gov.check_key(k)));
    let mut i = 0;
    group.bench_function("governor check_key", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(gov.check_key(&keys[i]).is_ok())
        })
    });

    let store = MemoryStore::new();
    let quotas = Quotas::from(
        Quota::every(std::time::Duration::from_millis(100))
            .unwrap()
            .with_burst(1_000_000)
            .unwrap(),
    );
    keys.iter().for_each(|k| drop(store.check(k, &quotas, 1)));
    let mut i = 0;
    group.bench_function("tollgate MemoryStore::check", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(store.check(&keys[i], &quotas, 1).unwrap().is_allowed())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("unkeyed decision");
    let gov = governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));
    group.bench_function("governor check", |b| b.iter(|| black_box(gov.check().is_ok())));
    let store = MemoryStore::new();
    let quotas = Quotas::from(Quota::per_second(1_000_000_000).unwrap());
    group.bench_function("tollgate MemoryStore::check(&Global)", |b| {
        b.iter(|| black_box(store.check(&(), &quotas, 1).unwrap().is_allowed()))
    });
    group.finish();
}

criterion_group!(benches, decisions);


fn pieces(c: &mut Criterion) {
    use tollgate::clock::Clock;
    let clock = tollgate::clock::MonotonicClock::new();
    c.bench_function("piece/monotonic clock", |b| b.iter(|| black_box(clock.now())));
    let q = quanta::Clock::new();
    c.bench_function("piece/quanta raw", |b| b.iter(|| black_box(q.raw())));
    c.bench_function("piece/std Instant", |b| b.iter(|| black_box(std::time::Instant::now())));
}
criterion_group!(p, pieces);
criterion_main!(benches, g);
fn atomics(c: &mut Criterion) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let a = AtomicU64::new(0);
    c.bench_function("piece/cas", |b| b.iter(|| { let v = a.load(Ordering::Acquire); black_box(a.compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire).is_ok()) }));
    let l = std::sync::RwLock::new(5u64);
    c.bench_function("piece/rwlock read", |b| b.iter(|| black_box(*l.read().unwrap())));
    let store = MemoryStore::new();
    let quotas = Quotas::from(Quota::per_second(1_000_000_000).unwrap());
    c.bench_function("piece/status global", |b| b.iter(|| black_box(store.status(&(), &quotas).is_allowed())));
}
criterion_group!(a, atomics);
fn gcra_only(c: &mut Criterion) {
    let g = tollgate::gcra::Gcra::new(&Quota::per_second(1_000_000_000).unwrap());
    let mut tat = 0u64; let mut now = 5u64;
    c.bench_function("piece/gcra step", |b| b.iter(|| { now += 1; let s = g.step(black_box(tat), now, 1, 0); tat = s.tat; black_box(s.allowed) }));
    let q = Quotas::from(Quota::per_second(1_000_000_000).unwrap());
    c.bench_function("piece/check_cost", |b| b.iter(|| black_box(q.check_cost(black_box(1)).is_ok())));
}
criterion_group!(g, gcra_only);
