use std::fmt;
use std::future::{ready, Ready};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::table::{self, Table};
use super::{Decision, Store, StoreError};
use crate::clock::{Clock, MonotonicClock};
use crate::gcra::{Gcra, Step};
use crate::quota::Single;
use crate::quota::MAX_QUOTAS;
use crate::{QuotaError, Quotas};

/// The default cap on tracked states (keys × quotas), 2²⁰: the tables then hold at most
/// 32 MiB (twice that for a moment while one shard is rebuilt).
pub const DEFAULT_MAX_KEYS: usize = 1 << 20;

/// The embedded store: GCRA state per key in this process, shared by every clone.
///
/// # Concurrency
///
/// Keys are spread over shards (four per core by default). Deciding for a key already tracked
/// takes its shard's read lock and moves the key's TAT with one compare-and-swap; only a new
/// key takes a write lock, on one shard. Keys of a zero-sized type (the [global
/// key](crate::key::Global)) skip the map altogether: one atomic per quota.
///
/// # Memory
///
/// A tracked state costs a 16-byte slot in a table kept between 25% and 75% full, 21 to 64
/// bytes (33.6 measured at a million IPv4 keys, see `BENCHMARKS.md`), whatever the
/// size of the key: the store keeps a 64-bit keyed hash of the key (seeded at random per
/// store), not the key. Two distinct keys share a state only if their hashes collide, a chance
/// of about 3 in 100 million among a million live keys; they would then share one limit,
/// which is stricter, never looser.
///
/// States whose bucket has refilled are dropped lazily, when a shard would otherwise grow: with
/// GCRA they are identical to no state, so nothing is lost and no cleanup task is needed.
///
/// # At the cap
///
/// At most [`max_keys`](MemoryStoreBuilder::max_keys) states are tracked
/// ([`DEFAULT_MAX_KEYS`] by default). A new key that arrives while its shard is full, after
/// expired states are dropped, is decided against an *overflow* bucket, one per shard and
/// quota, shared by every key that overflowed. Keys already tracked keep their own state, so
/// an attacker rotating through millions of addresses is throttled as a handful of clients
/// instead of evicting everyone else's state.
///
/// # Clone
///
/// Clones share all state (one `Arc`).
pub struct MemoryStore<C = MonotonicClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    clock: C,
    hasher: foldhash::quality::RandomState,
    table: Table,
    global: GlobalSlots,
}

impl MemoryStore {
    /// A store with the default cap, shard count and clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a store: cap, shards, clock.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_keys: DEFAULT_MAX_KEYS,
            shards: None,
            clock: MonotonicClock::new(),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> Clone for MemoryStore<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: Clock> MemoryStore<C> {
    /// Decides a request of `cost` for `key` and charges it if allowed.
    ///
    /// # Errors
    ///
    /// [`QuotaError::CostExceedsBurst`] when `cost` exceeds a burst of the set: such a request
    /// could never pass.
    #[inline]
    pub fn check<K: Hash>(
        &self,
        key: &K,
        quotas: &Quotas,
        cost: u32,
    ) -> Result<Decision, QuotaError> {
        self.check_or_wait(key, quotas, cost, Duration::ZERO)
    }

    /// Like [`check`](Self::check), but a request whose slot comes within `max_wait` is
    /// allowed with [`Decision::wait`] set and its slot reserved, in arrival order. Sleep that
    /// long before going ahead, or [`refund`](Self::refund) if you give up.
    #[inline]
    pub fn check_or_wait<K: Hash>(
        &self,
        key: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Decision, QuotaError> {
        match quotas.single() {
            // The hot path: one quota, a cost that fits.
            Some(single) if cost > 0 && cost <= single.burst => {
                Ok(self.decide_single(key, single, cost, nanos(max_wait)))
            }
            _ => self.decide_general(key, quotas, cost, nanos(max_wait)),
        }
    }

    #[inline]
    fn decide_single<K: Hash>(&self, key: &K, quota: Single, cost: u32, max_wait: u64) -> Decision {
        let inner = &*self.inner;
        let gcra = quota.gcra;
        if std::mem::size_of::<K>() == 0 {
            if let Some(tat) = inner.global.find(quota.id) {
                return decide_one(gcra, tat, inner.clock.now(), cost, max_wait);
            }
        }
        let key_hash = inner.hasher.hash_one(key);
        // The clock is read once the slot is found, so that its latency overlaps the slot's
        // cache miss.
        let now = || inner.clock.now();
        inner
            .table
            .update_one(key_hash, key_hash ^ quota.id, now, |tat| {
                decide_one(gcra, tat, now(), cost, max_wait)
            })
    }

    /// Peeks, bad costs and sets of several quotas.
    #[inline(never)]
    fn decide_general<K: Hash>(
        &self,
        key: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: u64,
    ) -> Result<Decision, QuotaError> {
        quotas.check_cost(cost)?;
        if cost == 0 {
            return Ok(self.status(key, quotas));
        }
        let inner = &*self.inner;
        let mut decide_all = DecideAll {
            quotas,
            now: 0,
            cost,
            max_wait,
        };
        if std::mem::size_of::<K>() == 0 {
            if let Some(tats) = inner.global.find_all(quotas) {
                decide_all.now = inner.clock.now();
                return Ok(decide_all.run(&tats[..quotas.len()]));
            }
        }
        let key_hash = inner.hasher.hash_one(key);
        let ids = entry_ids(key_hash, quotas);
        decide_all.now = inner.clock.now();
        let now = decide_all.now;
        Ok(inner
            .table
            .update(key_hash, &ids[..quotas.len()], now, |tats| {
                decide_all.run(tats)
            }))
    }

    /// The state of `key` under `quotas`, without consuming anything.
    pub fn status<K: Hash>(&self, key: &K, quotas: &Quotas) -> Decision {
        let inner = &*self.inner;
        let tats = if std::mem::size_of::<K>() == 0 && inner.global.find_all(quotas).is_some() {
            let mut tats = [0; MAX_QUOTAS];
            if let Some(global) = inner.global.find_all(quotas) {
                for (tat, global) in tats.iter_mut().zip(&global[..quotas.len()]) {
                    *tat = global.load(Ordering::Acquire);
                }
            }
            tats
        } else {
            let key_hash = inner.hasher.hash_one(key);
            inner
                .table
                .load(key_hash, &entry_ids(key_hash, quotas)[..quotas.len()])
        };
        let now = inner.clock.now();
        let mut steps = [NO_STEP; MAX_QUOTAS];
        for (i, quota) in quotas.as_slice().iter().enumerate() {
            steps[i] = Gcra::new(quota).step(tats[i], now, 0, 0);
        }
        Decision::from_steps(quotas, &steps[..quotas.len()], now)
    }

    /// Gives back the cost of an allowed request that never went ahead.
    pub fn refund<K: Hash>(&self, key: &K, quotas: &Quotas, cost: u32) {
        let inner = &*self.inner;
        if std::mem::size_of::<K>() == 0 {
            if let Some(tats) = inner.global.find_all(quotas) {
                for (quota, tat) in quotas.as_slice().iter().zip(tats) {
                    table::subtract(tat, Gcra::new(quota).charge(cost));
                }
                return;
            }
        }
        let key_hash = inner.hasher.hash_one(key);
        let ids = entry_ids(key_hash, quotas);
        inner
            .table
            .modify(key_hash, &ids[..quotas.len()], |i, tat| {
                Gcra::new(&quotas.as_slice()[i]).refund(tat, cost)
            });
    }

    /// Forgets `key`'s state under `quotas`: its buckets are full again.
    pub fn reset<K: Hash>(&self, key: &K, quotas: &Quotas) {
        let inner = &*self.inner;
        if std::mem::size_of::<K>() == 0 {
            if let Some(tats) = inner.global.find_all(quotas) {
                for tat in &tats[..quotas.len()] {
                    tat.store(0, Ordering::Release);
                }
                return;
            }
        }
        let key_hash = inner.hasher.hash_one(key);
        let ids = entry_ids(key_hash, quotas);
        inner.table.reset(key_hash, &ids[..quotas.len()]);
    }

    /// How many states (keys × quotas) are tracked now, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.inner.table.len()
    }

    /// Whether no state is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every state whose bucket has refilled. Never needed for correctness or bounds
    /// (the store does it lazily); useful before measuring [`len`](Self::len).
    pub fn purge(&self) {
        self.inner.table.sweep(self.inner.clock.now());
    }

    /// The clock the store decides with.
    pub fn clock(&self) -> &C {
        &self.inner.clock
    }
}

impl<C: Clock, K: Hash> Store<K> for MemoryStore<C> {
    type Future = Ready<Result<Decision, StoreError>>;

    #[inline]
    fn decide_now(
        &self,
        key: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Option<Result<Decision, StoreError>> {
        Some(
            self.check_or_wait(key, quotas, cost, max_wait)
                .map_err(StoreError::from),
        )
    }

    #[inline]
    fn decide(&self, key: &K, quotas: &Quotas, cost: u32, max_wait: Duration) -> Self::Future {
        ready(
            self.check_or_wait(key, quotas, cost, max_wait)
                .map_err(StoreError::from),
        )
    }

    fn refund(&self, key: &K, quotas: &Quotas, cost: u32) {
        MemoryStore::refund(self, key, quotas, cost);
    }
}

impl<C: Clock> fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("tracked", &self.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`MemoryStore`].
#[derive(Debug)]
#[must_use]
pub struct MemoryStoreBuilder<C = MonotonicClock> {
    max_keys: usize,
    shards: Option<usize>,
    clock: C,
}

impl<C: Clock> MemoryStoreBuilder<C> {
    /// The most states (keys × quotas) tracked at once; see [At the cap](MemoryStore#at-the-cap).
    /// Default [`DEFAULT_MAX_KEYS`].
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// How many shards to spread keys over (rounded up to a power of two). Default: four per
    /// core, at least 16.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The clock to decide with; [`TokioClock`](crate::clock::TokioClock) in tests with paused
    /// time.
    pub fn clock<C2: Clock>(self, clock: C2) -> MemoryStoreBuilder<C2> {
        MemoryStoreBuilder {
            max_keys: self.max_keys,
            shards: self.shards,
            clock,
        }
    }

    /// The store.
    pub fn build(self) -> MemoryStore<C> {
        let shards = self.shards.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(4, usize::from);
            (cores * 4).max(16)
        });
        MemoryStore {
            inner: Arc::new(Inner {
                clock: self.clock,
                hasher: foldhash::quality::RandomState::default(),
                table: Table::new(shards, self.max_keys),
                global: GlobalSlots::default(),
            }),
        }
    }
}

const NO_STEP: Step = Step {
    allowed: true,
    tat: 0,
    wait: 0,
};

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The ids of `key_hash`'s entries, one per quota. XOR keeps the hash's quality, and quota ids
/// are odd, so two quotas of one key never share an entry.
fn entry_ids(key_hash: u64, quotas: &Quotas) -> [u64; MAX_QUOTAS] {
    let mut ids = [0; MAX_QUOTAS];
    for (id, quota) in ids.iter_mut().zip(quotas) {
        *id = key_hash ^ quota.id();
    }
    ids
}

/// Decides one request against a single quota's TAT: the classic compare-and-swap loop.
#[inline]
fn decide_one(gcra: Gcra, tat: &AtomicU64, now: u64, cost: u32, max_wait: u64) -> Decision {
    let mut current = table::load(tat);
    loop {
        let step = gcra.step(current, now, cost, max_wait);
        if !step.allowed {
            return Decision::single(gcra, step, now);
        }
        match table::swap(tat, current, step.tat) {
            Ok(()) => return Decision::single(gcra, step, now),
            Err(actual) => current = actual,
        }
    }
}

/// Several quotas, all charged or none: read all, decide all, then commit each with a
/// compare-and-swap. If another request changed a TAT in between, undo the commits made so
/// far and start again.
struct DecideAll<'q> {
    quotas: &'q Quotas,
    now: u64,
    cost: u32,
    max_wait: u64,
}

impl DecideAll<'_> {
    fn gcra(&self, i: usize) -> Gcra {
        Gcra::new(&self.quotas.as_slice()[i])
    }

    fn run(&mut self, tats: &[&AtomicU64]) -> Decision {
        let n = tats.len();
        let mut current = [0u64; MAX_QUOTAS];
        let mut steps = [NO_STEP; MAX_QUOTAS];
        'again: loop {
            for i in 0..n {
                current[i] = table::load(tats[i]);
                steps[i] = self
                    .gcra(i)
                    .step(current[i], self.now, self.cost, self.max_wait);
            }
            if steps[..n].iter().any(|s| !s.allowed) {
                return Decision::from_steps(self.quotas, &steps[..n], self.now);
            }
            for i in 0..n {
                if table::swap(tats[i], current[i], steps[i].tat).is_err() {
                    for (j, tat) in tats.iter().enumerate().take(i) {
                        table::subtract(tat, self.gcra(j).charge(self.cost));
                    }
                    continue 'again;
                }
            }
            return Decision::from_steps(self.quotas, &steps[..n], self.now);
        }
    }
}

/// State for zero-sized keys: a few lock-free slots, each claimed by one quota id.
#[derive(Default)]
struct GlobalSlots {
    slots: [GlobalSlot; 4],
}

#[derive(Default)]
#[repr(align(64))]
struct GlobalSlot {
    quota: AtomicU64,
    tat: AtomicU64,
}

impl GlobalSlots {
    /// The TAT of each quota of the set, claiming free slots; `None` when the slots are taken
    /// by other quotas (the caller then falls back to the map).
    #[inline]
    fn find_all(&self, quotas: &Quotas) -> Option<[&AtomicU64; MAX_QUOTAS]> {
        let mut found = [&self.slots[0].tat; MAX_QUOTAS];
        for (slot, quota) in found.iter_mut().zip(quotas) {
            *slot = self.find(quota.id())?;
        }
        Some(found)
    }

    #[inline]
    fn find(&self, quota: u64) -> Option<&AtomicU64> {
        for slot in &self.slots {
            let owner = slot.quota.load(Ordering::Acquire);
            if owner == quota {
                return Some(&slot.tat);
            }
            if owner == 0 {
                match slot
                    .quota
                    .compare_exchange(0, quota, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Some(&slot.tat),
                    Err(other) if other == quota => return Some(&slot.tat),
                    Err(_) => {}
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::Quota;

    fn store() -> (MemoryStore<ManualClock>, ManualClock) {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(1000));
        (MemoryStore::builder().clock(clock.clone()).build(), clock)
    }

    fn admitted<K: Hash>(
        store: &MemoryStore<ManualClock>,
        key: &K,
        quotas: &Quotas,
        n: u32,
    ) -> u32 {
        (0..n)
            .filter(|_| store.check(key, quotas, 1).unwrap().is_allowed())
            .count() as u32
    }

    #[test]
    fn exact_counts_per_key() {
        let (store, clock) = store();
        let q = Quotas::from(Quota::per_second(5).unwrap().with_burst(10).unwrap());
        assert_eq!(admitted(&store, &"a", &q, 100), 10);
        assert_eq!(admitted(&store, &"b", &q, 3), 3);
        clock.advance(Duration::from_millis(1000));
        assert_eq!(admitted(&store, &"a", &q, 100), 5);
        assert_eq!(admitted(&store, &"b", &q, 100), 10);
    }

    #[test]
    fn all_quotas_or_none() {
        let (store, clock) = store();
        let q = Quotas::new([
            Quota::per_second(10)
                .unwrap()
                .with_burst(20)
                .unwrap()
                .named("burst")
                .unwrap(),
            Quota::per_hour(25).unwrap().named("hourly").unwrap(),
        ])
        .unwrap();
        assert_eq!(admitted(&store, &1u32, &q, 100), 20);
        // The burst quota denies; the hourly one must not have been charged for the denials.
        let status = store.status(&1u32, &q);
        assert_eq!(status.remaining(), 0);
        clock.advance(Duration::from_secs(10));
        assert_eq!(admitted(&store, &1u32, &q, 100), 5);
        let denied = store.check(&1u32, &q, 1).unwrap();
        assert_eq!(q.as_slice()[denied.quota_index()].name(), "hourly");
        assert!(denied.retry_after() > Duration::from_secs(100));
    }

    #[test]
    fn peek_and_reset() {
        let (store, _) = store();
        let q = Quotas::from(Quota::per_minute(3).unwrap());
        store.check(&"k", &q, 2).unwrap();
        let peek = store.check(&"k", &q, 0).unwrap();
        assert_eq!(
            (peek.is_allowed(), peek.remaining(), peek.limit()),
            (true, 1, 3)
        );
        assert_eq!(peek.reset_after(), Duration::from_secs(40));
        assert_eq!(store.status(&"k", &q).remaining(), 1);
        store.reset(&"k", &q);
        assert_eq!(store.status(&"k", &q).remaining(), 3);
    }

    #[test]
    fn cost_beyond_the_burst_is_an_error() {
        let (store, _) = store();
        let q = Quotas::from(Quota::per_second(5).unwrap());
        assert!(matches!(
            store.check(&"k", &q, 6),
            Err(QuotaError::CostExceedsBurst {
                cost: 6,
                burst: 5,
                ..
            })
        ));
        assert!(store.check(&"k", &q, 5).unwrap().is_allowed());
    }

    #[test]
    fn waiting_reserves_and_refund_gives_back() {
        let (store, _) = store();
        let q = Quotas::from(Quota::per_second(1).unwrap());
        let max = Duration::from_secs(2);
        let waits: Vec<_> = (0..4)
            .map(|_| store.check_or_wait(&(), &q, 1, max).unwrap())
            .map(|d| (d.is_allowed(), d.wait().as_secs()))
            .collect();
        assert_eq!(waits, [(true, 0), (true, 1), (true, 2), (false, 0)]);
        store.refund(&(), &q, 1);
        let again = store.check_or_wait(&(), &q, 1, max).unwrap();
        assert_eq!(
            (again.is_allowed(), again.wait()),
            (true, Duration::from_secs(2))
        );
    }

    #[test]
    fn global_slots_overflow_into_the_map() {
        let (store, _) = store();
        for i in 0..6u32 {
            let q = Quotas::from(
                Quota::per_minute(1)
                    .unwrap()
                    .named(format!("q{i}"))
                    .unwrap(),
            );
            assert!(store.check(&(), &q, 1).unwrap().is_allowed());
            assert!(!store.check(&(), &q, 1).unwrap().is_allowed(), "quota {i}");
        }
        assert_eq!(store.len(), 2, "four quotas live in the global slots");
    }

    #[test]
    fn expired_keys_are_dropped_without_a_cleanup_task() {
        let (store, clock) = store();
        let q = Quotas::from(Quota::per_second(1).unwrap());
        for ip in 0..50_000u32 {
            store.check(&ip, &q, 1).unwrap();
        }
        assert_eq!(store.len(), 50_000);
        clock.advance(Duration::from_secs(2));
        // As the tables fill with new keys, they are rebuilt without the expired ones.
        for ip in 50_000..100_000u32 {
            store.check(&ip, &q, 1).unwrap();
        }
        assert!(store.len() < 60_000, "{} states tracked", store.len());
        clock.advance(Duration::from_secs(2));
        store.purge();
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn the_cap_holds_and_overflowing_keys_share_a_bucket() {
        let clock = ManualClock::new();
        let store = MemoryStore::builder()
            .clock(clock)
            .max_keys(1000)
            .shards(1)
            .build();
        let q = Quotas::from(Quota::per_hour(10).unwrap());
        for ip in 0..1000u32 {
            assert!(store.check(&ip, &q, 1).unwrap().is_allowed());
        }
        // A flood of new keys is limited as one client.
        let flood = (1000..100_000u32)
            .filter(|ip| store.check(ip, &q, 1).unwrap().is_allowed())
            .count();
        assert_eq!(flood, 10);
        assert_eq!(store.len(), 1001);
        // Tracked keys still have their own buckets.
        assert_eq!(store.status(&5u32, &q).remaining(), 9);
    }

    #[test]
    fn concurrent_requests_on_one_key_never_exceed_the_quota() {
        let (store, _) = store();
        let q = Quotas::new([
            Quota::per_hour(1000)
                .unwrap()
                .with_burst(300)
                .unwrap()
                .named("a")
                .unwrap(),
            Quota::per_hour(2000)
                .unwrap()
                .with_burst(400)
                .unwrap()
                .named("b")
                .unwrap(),
        ])
        .unwrap();
        let admitted: u32 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| admitted(&store, &"shared", &q, 1000)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 300);
        assert_eq!(store.status(&"shared", &q).remaining(), 0);
        let b = store.status(&"shared", &q);
        assert_eq!(b.limit(), 300);
    }
}
