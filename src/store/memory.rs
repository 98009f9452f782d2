use std::fmt;
use std::future::{ready, Ready};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::table::{self, Evicted, Table};
use super::{Decision, PartsFuture, ResetFuture, Store, StoreError};
use crate::clock::{Clock, MonotonicClock};
use crate::gcra::{Gcra, Step};
use crate::quota::{self, Single, MAX_CARRIED, MAX_QUOTAS};
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
/// ([`DEFAULT_MAX_KEYS`] by default). When a new key arrives at a full shard and dropping the
/// expired states frees nothing, the store *evicts* an eighth of the shard's states, chosen so
/// that a flood costs the flooder and not the other users:
///
/// - **Every new key gets its own fresh state.** There is no shared overflow bucket for a
///   flood to exhaust: an honest client that arrives during a flood of a million invented keys
///   is limited exactly as without it.
/// - **The least debt goes first.** With GCRA a state holds nothing but its debt (`TAT − now`,
///   what the key has spent and not yet earned back). The evicted states are those with the
///   least debt, so forgetting them forgives the least: a flood of one-request keys evicts
///   its own states, each worth at most one request's debt, before a key that has spent its
///   burst. A key that spent its burst is evicted only once the flood's states carry more debt
///   than it does: its owner regains at most what each invented key spent (see the test
///   `a_flood_forgives_a_spent_key_at_most_what_each_flood_key_spent`).
/// - **One limit's flood does not spend another's room.** States are counted per quota, and
///   evictions level the quotas with the most states down first: limits sharing a store with a
///   flooded one lose nothing while they hold fewer states than it.
///
/// Evictions are counted ([`evicted`](MemoryStore::evicted); with the `metrics` feature
/// `tollgate_store_cap_reached_total` and `tollgate_store_evicted_total`) and logged at WARN
/// (target `tollgate::store::memory`) at most once a minute.
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
    pressure: Pressure,
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
        let gcra = Gcra::from_nanos(quota.interval, quota.window);
        if std::mem::size_of::<K>() == 0 {
            if let Some(tat) = inner.global.find(quota.id) {
                return decide_one(gcra, tat, inner.clock.now(), cost, max_wait);
            }
        }
        let key_hash = inner.hasher.hash_one(key);
        // The clock is read once the slot is found, so that its latency overlaps the slot's
        // cache miss.
        let now = || inner.clock.now();
        inner.table.update_one(
            key_hash,
            table::entry_id(key_hash, quota.id),
            now,
            |evicted| {
                inner
                    .pressure
                    .evicted(evicted, inner.table.capacity(), now())
            },
            |tat| decide_one(gcra, tat, now(), cost, max_wait),
        )
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
                let earlier = inner.global.peek_carried(quotas);
                let tats = &tats[..quotas.len()];
                carry_over(
                    quotas,
                    tats,
                    &earlier[..quotas.carried().len()],
                    decide_all.now,
                );
                return Ok(decide_all.run(tats));
            }
        }
        let key_hash = inner.hasher.hash_one(key);
        let ids = entry_ids(key_hash, quotas);
        let carried = carried_ids(key_hash, quotas);
        decide_all.now = inner.clock.now();
        let now = decide_all.now;
        Ok(inner.table.update(
            key_hash,
            &ids[..quotas.len()],
            &carried[..quotas.carried().len()],
            now,
            |evicted| inner.pressure.evicted(evicted, inner.table.capacity(), now),
            |tats, earlier| {
                if std::mem::size_of::<K>() == 0 {
                    // The global key's earlier quotas may hold one of its lock-free slots.
                    let global = inner.global.peek_carried(quotas);
                    let both: [Option<&AtomicU64>; MAX_CARRIED] =
                        std::array::from_fn(|j| earlier.get(j).copied().flatten().or(global[j]));
                    carry_over(quotas, tats, &both[..earlier.len()], now);
                } else {
                    carry_over(quotas, tats, earlier, now);
                }
                decide_all.run(tats)
            },
        ))
    }

    /// Decides a request of `cost` against several keys at once, each with its own quotas, in
    /// one atomic step: allowed only if every part allows it, and then charged on every part;
    /// a refusal charges none (see [`Store::decide_parts`]). Answers the index of the part
    /// whose numbers the decision gives. Quotas carried over from earlier sets
    /// ([`Quotas::carry_over_from`]) are not looked up here.
    ///
    /// ```
    /// use tollgate::{MemoryStore, Quota, Quotas};
    ///
    /// let store = MemoryStore::new();
    /// let user = Quotas::from(Quota::per_minute(5).unwrap().named("user").unwrap());
    /// let global = Quotas::from(Quota::per_minute(2).unwrap().named("global").unwrap());
    /// let parts = [("alice", user.clone()), ("all", global)];
    /// assert!(store.check_parts(&parts, 1).unwrap().1.is_allowed());
    /// assert!(store.check_parts(&parts, 1).unwrap().1.is_allowed());
    /// // The global limit refuses, and alice's tokens are not spent by the refusal.
    /// let (binding, refused) = store.check_parts(&parts, 1).unwrap();
    /// assert_eq!((binding, refused.is_allowed()), (1, false));
    /// assert_eq!(store.status(&"alice", &user).remaining(), 3);
    /// ```
    ///
    /// # Errors
    ///
    /// [`QuotaError::Empty`] without parts, [`QuotaError::TooMany`] past
    /// [`MAX_PART_QUOTAS`](super::MAX_PART_QUOTAS) quotas in all, and
    /// [`QuotaError::CostExceedsBurst`].
    pub fn check_parts<K: Hash>(
        &self,
        parts: &[(K, Quotas)],
        cost: u32,
    ) -> Result<(usize, Decision), QuotaError> {
        self.check_parts_or_wait(parts, cost, Duration::ZERO)
    }

    /// Like [`check_parts`](Self::check_parts), but a request whose slot comes within
    /// `max_wait` on every part is allowed with [`Decision::wait`] set and its slots reserved.
    ///
    /// # Errors
    ///
    /// As [`check_parts`](Self::check_parts).
    pub fn check_parts_or_wait<K: Hash>(
        &self,
        parts: &[(K, Quotas)],
        cost: u32,
        max_wait: Duration,
    ) -> Result<(usize, Decision), QuotaError> {
        super::check_parts(parts, cost)?;
        if cost == 0 {
            let statuses: Vec<Decision> = parts.iter().map(|(k, q)| self.status(k, q)).collect();
            return Ok(Decision::of_parts(&statuses));
        }
        let inner = &*self.inner;
        // At most MAX_PART_QUOTAS quotas in all (checked above), so at most as many parts.
        let mut hashes = [0; MAX_QUOTAS];
        for (hash, (key, _)) in hashes.iter_mut().zip(parts) {
            *hash = inner.hasher.hash_one(key);
        }
        let (mut ids, mut gcras, mut n) =
            ([0; MAX_QUOTAS], [Gcra::from_nanos(1, 1); MAX_QUOTAS], 0);
        for ((_, quotas), &key_hash) in parts.iter().zip(&hashes) {
            for quota in quotas {
                ids[n] = table::entry_id(key_hash, quota.id());
                gcras[n] = Gcra::new(quota);
                n += 1;
            }
        }
        let mut specs: [(u64, &[u64]); MAX_QUOTAS] = [(0, &[]); MAX_QUOTAS];
        let mut at = 0;
        for ((spec, (_, quotas)), &key_hash) in specs.iter_mut().zip(parts).zip(&hashes) {
            *spec = (key_hash, &ids[at..at + quotas.len()]);
            at += quotas.len();
        }
        let now = inner.clock.now();
        let steps = inner.table.update_parts(
            &specs[..parts.len()],
            now,
            |evicted| inner.pressure.evicted(evicted, inner.table.capacity(), now),
            |tats| commit_all(&gcras[..n], tats, now, cost, nanos(max_wait)),
        );
        let decide = |at: usize, quotas: &Quotas| {
            Decision::from_steps(quotas, &steps[at..at + quotas.len()], now)
        };
        let mut decisions = [decide(0, &parts[0].1); MAX_QUOTAS];
        let mut at = 0;
        for (decision, (_, quotas)) in decisions.iter_mut().zip(parts) {
            *decision = decide(at, quotas);
            at += quotas.len();
        }
        Ok(Decision::of_parts(&decisions[..parts.len()]))
    }

    /// The state of `key` under `quotas`, without consuming anything.
    pub fn status<K: Hash>(&self, key: &K, quotas: &Quotas) -> Decision {
        let inner = &*self.inner;
        let carried = quotas.carried().len();
        let (mut tats, earlier) =
            if std::mem::size_of::<K>() == 0 && inner.global.find_all(quotas).is_some() {
                let mut tats = [0; MAX_QUOTAS];
                if let Some(global) = inner.global.find_all(quotas) {
                    for (tat, global) in tats.iter_mut().zip(&global[..quotas.len()]) {
                        *tat = global.load(Ordering::Acquire);
                    }
                }
                let mut earlier = [0; MAX_CARRIED];
                for (tat, slot) in earlier.iter_mut().zip(inner.global.peek_carried(quotas)) {
                    *tat = slot.map_or(0, table::load);
                }
                (tats, earlier)
            } else {
                let key_hash = inner.hasher.hash_one(key);
                let tats = inner
                    .table
                    .load(key_hash, &entry_ids(key_hash, quotas)[..quotas.len()]);
                let mut earlier = [0; MAX_CARRIED];
                if carried > 0 {
                    let found = inner
                        .table
                        .load_carried(key_hash, &carried_ids(key_hash, quotas)[..carried]);
                    earlier[..carried].copy_from_slice(&found[..carried]);
                    if std::mem::size_of::<K>() == 0 {
                        let global = inner.global.peek_carried(quotas);
                        for (tat, slot) in earlier.iter_mut().zip(global) {
                            *tat = (*tat).max(slot.map_or(0, table::load));
                        }
                    }
                }
                (tats, earlier)
            };
        let now = inner.clock.now();
        let seeds = carried_seeds(quotas, &tats, &earlier[..carried], now);
        for (tat, seed) in tats.iter_mut().zip(seeds.tats) {
            *tat = (*tat).max(seed);
        }
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
                for tat in inner.global.peek_carried(quotas).into_iter().flatten() {
                    tat.store(0, Ordering::Release);
                }
                return;
            }
        }
        let key_hash = inner.hasher.hash_one(key);
        let ids = entry_ids(key_hash, quotas);
        inner.table.reset(key_hash, &ids[..quotas.len()]);
        // Nor is anything carried over from earlier quotas.
        let carried = carried_ids(key_hash, quotas);
        inner
            .table
            .reset(key_hash, &carried[..quotas.carried().len()]);
    }

    /// The TATs of `key` under each quota of `quotas` (0: a full bucket), without claiming.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn tats<K: Hash>(&self, key: &K, quotas: &Quotas) -> [u64; MAX_QUOTAS] {
        let inner = &*self.inner;
        if std::mem::size_of::<K>() == 0 {
            if let Some(global) = inner.global.find_all(quotas) {
                let mut tats = [0; MAX_QUOTAS];
                for (tat, global) in tats.iter_mut().zip(&global[..quotas.len()]) {
                    *tat = global.load(Ordering::Acquire);
                }
                return tats;
            }
        }
        let key_hash = inner.hasher.hash_one(key);
        inner
            .table
            .load(key_hash, &entry_ids(key_hash, quotas)[..quotas.len()])
    }

    /// Sets the TATs of `key` under each quota of `quotas` to `tats` (in this store's clock),
    /// claiming states as needed: how a network store's answers are mirrored here, so that
    /// this store can take over where the network store left off.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_tats<K: Hash>(&self, key: &K, quotas: &Quotas, tats: &[u64]) {
        let inner = &*self.inner;
        if std::mem::size_of::<K>() == 0 {
            if let Some(global) = inner.global.find_all(quotas) {
                for (slot, tat) in global[..quotas.len()].iter().zip(tats) {
                    slot.store(*tat, Ordering::Release);
                }
                return;
            }
        }
        let key_hash = inner.hasher.hash_one(key);
        let ids = entry_ids(key_hash, quotas);
        let now = inner.clock.now();
        inner.table.update(
            key_hash,
            &ids[..quotas.len()],
            &[],
            now,
            |evicted| inner.pressure.evicted(evicted, inner.table.capacity(), now),
            |slots, _| {
                for (slot, tat) in slots.iter().zip(tats) {
                    slot.store(*tat, Ordering::Release);
                }
            },
        );
    }

    /// How many states (keys × quotas) are tracked now, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.inner.table.len()
    }

    /// How many live states were dropped to make room for new keys at the cap (see [At the
    /// cap](MemoryStore#at-the-cap)), since the store was built.
    pub fn evicted(&self) -> u64 {
        self.inner.table.evicted()
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

    fn reset(&self, key: &K, quotas: &Quotas) -> ResetFuture {
        MemoryStore::reset(self, key, quotas);
        Box::pin(ready(Ok(())))
    }

    fn decide_parts_now(
        &self,
        parts: &[(K, Quotas)],
        cost: u32,
        max_wait: Duration,
    ) -> Option<Result<(usize, Decision), StoreError>> {
        Some(
            self.check_parts_or_wait(parts, cost, max_wait)
                .map_err(StoreError::from),
        )
    }

    fn decide_parts(&self, parts: Arc<[(K, Quotas)]>, cost: u32, max_wait: Duration) -> PartsFuture
    where
        K: Send + Sync + 'static,
    {
        Box::pin(ready(
            self.check_parts_or_wait(&parts, cost, max_wait)
                .map_err(StoreError::from),
        ))
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
                pressure: Pressure::default(),
            }),
        }
    }
}

/// Reports evictions at the cap: counters on every one, a WARN at most once a minute.
struct Pressure {
    warning: crate::logs::Every,
}

impl Default for Pressure {
    fn default() -> Self {
        Self {
            warning: crate::logs::Every::new(60_000_000_000),
        }
    }
}

impl Pressure {
    #[cold]
    fn evicted(&self, evicted: Evicted, capacity: usize, now: u64) {
        crate::metrics::store_evicted(evicted.states as u64);
        if self.warning.due(now) {
            tracing::warn!(
                target: "tollgate::store::memory",
                capacity,
                evicted = evicted.states,
                "memory store at its cap: evicting the states with the least debt, from the \
                 quota with the most states (a flood of new keys?); logged at most once a minute"
            );
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

/// The ids of `key_hash`'s entries, one per quota (see [`table::entry_id`]).
fn entry_ids(key_hash: u64, quotas: &Quotas) -> [u64; MAX_QUOTAS] {
    let mut ids = [0; MAX_QUOTAS];
    for (id, quota) in ids.iter_mut().zip(quotas) {
        *id = table::entry_id(key_hash, quota.id());
    }
    ids
}

/// The ids of `key_hash`'s entries under the quotas `quotas` carries states over from.
fn carried_ids(key_hash: u64, quotas: &Quotas) -> [u64; MAX_CARRIED] {
    let mut ids = [0; MAX_CARRIED];
    for (id, carried) in ids.iter_mut().zip(quotas.carried()) {
        *id = table::entry_id(key_hash, carried.quota.id());
    }
    ids
}

/// What a key carries over from the quotas a set replaced.
struct Seeds {
    /// Per quota of the set, the TAT its state takes (0: nothing to carry over).
    tats: [u64; MAX_QUOTAS],
    /// Per earlier quota, the debt (nanoseconds) moved out of its state.
    moved: [u64; MAX_CARRIED],
}

/// For each quota of `quotas`, its state (`tats`, at `now`) plus the debt the key owes under
/// the earlier quotas of that name (`earlier`, the TATs of [`Quotas::carried`]), rescaled to
/// the quota's window. Added, not merely taken when the key owes nothing under the new quota:
/// a request admitted under the earlier quotas that settles its cost after the change (or was
/// still deciding when it came) charges the earlier state, and that charge moves over too.
fn carried_seeds(quotas: &Quotas, tats: &[u64], earlier: &[u64], now: u64) -> Seeds {
    let mut seeds = Seeds {
        tats: [0; MAX_QUOTAS],
        moved: [0; MAX_CARRIED],
    };
    for (j, (carried, &tat)) in quotas.carried().iter().zip(earlier).enumerate() {
        let i = carried.index;
        let window = quotas.as_slice()[i].window_nanos();
        let debt =
            quota::rescaled_tat(tat, now, carried.quota.window_nanos(), window).saturating_sub(now);
        if tat > now {
            seeds.moved[j] = tat - now;
        }
        if debt > 0 {
            let base = if seeds.tats[i] > 0 {
                seeds.tats[i]
            } else {
                tats[i].max(now)
            };
            seeds.tats[i] = base.saturating_add(debt);
        }
    }
    seeds
}

/// Moves a key's debt under the quotas `quotas` replaced (`earlier`, where tracked) onto its
/// states under `quotas` (`tats`), rescaled; the debt moved is taken off the earlier states,
/// so that a key that moves back (a tier change undone) carries its debt back, and a charge
/// that lands on an earlier state meanwhile is moved by the next decision.
fn carry_over(quotas: &Quotas, tats: &[&AtomicU64], earlier: &[Option<&AtomicU64>], now: u64) {
    if earlier.iter().all(Option::is_none) {
        return;
    }
    let mut current = [0; MAX_QUOTAS];
    for (value, tat) in current.iter_mut().zip(tats) {
        *value = table::load(tat);
    }
    let mut before = [0; MAX_CARRIED];
    for (value, tat) in before.iter_mut().zip(earlier) {
        *value = tat.map_or(0, table::load);
    }
    let seeds = carried_seeds(quotas, &current, &before[..earlier.len()], now);
    let mut moved = [false; MAX_QUOTAS];
    for (i, tat) in tats.iter().enumerate() {
        moved[i] = seeds.tats[i] > 0 && table::swap(tat, current[i], seeds.tats[i]).is_ok();
    }
    for (j, carried) in quotas.carried().iter().enumerate() {
        if let (true, Some(tat)) = (moved[carried.index], earlier[j]) {
            if seeds.moved[j] > 0 {
                table::subtract(tat, seeds.moved[j]);
            }
        }
    }
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
    fn run(&mut self, tats: &[&AtomicU64]) -> Decision {
        let mut gcras = [Gcra::from_nanos(1, 1); MAX_QUOTAS];
        for (gcra, quota) in gcras.iter_mut().zip(self.quotas) {
            *gcra = Gcra::new(quota);
        }
        let steps = commit_all(
            &gcras[..tats.len()],
            tats,
            self.now,
            self.cost,
            self.max_wait,
        );
        Decision::from_steps(self.quotas, &steps[..tats.len()], self.now)
    }
}

/// Decides one request against every TAT of `tats` (one per GCRA of `gcras`) and charges all
/// or none: read all, decide all, then commit each with a compare-and-swap. If another
/// request changed a TAT in between, undo the commits made so far and start again.
fn commit_all(
    gcras: &[Gcra],
    tats: &[&AtomicU64],
    now: u64,
    cost: u32,
    max_wait: u64,
) -> [Step; MAX_QUOTAS] {
    let n = tats.len();
    // One state listed twice (the same key and quota in two parts of a decision) is charged
    // once, as a single Redis does: its second listing is decided but not committed.
    let mut repeated = [false; MAX_QUOTAS];
    for j in 1..n {
        repeated[j] = tats[..j].iter().any(|tat| std::ptr::eq(*tat, tats[j]));
    }
    let mut current = [0u64; MAX_QUOTAS];
    let mut steps = [NO_STEP; MAX_QUOTAS];
    'again: loop {
        for i in 0..n {
            current[i] = table::load(tats[i]);
            steps[i] = gcras[i].step(current[i], now, cost, max_wait);
        }
        if steps[..n].iter().any(|s| !s.allowed) {
            return steps;
        }
        for i in (0..n).filter(|&i| !repeated[i]) {
            if table::swap(tats[i], current[i], steps[i].tat).is_err() {
                for j in (0..i).filter(|&j| !repeated[j]) {
                    table::subtract(tats[j], gcras[j].charge(cost));
                }
                continue 'again;
            }
        }
        return steps;
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

    /// The TATs of the quotas `quotas` carries states over from, where they hold a slot.
    fn peek_carried(&self, quotas: &Quotas) -> [Option<&AtomicU64>; MAX_CARRIED] {
        let mut found = [None; MAX_CARRIED];
        for (found, carried) in found.iter_mut().zip(quotas.carried()) {
            let id = carried.quota.id();
            *found = self
                .slots
                .iter()
                .find(|slot| slot.quota.load(Ordering::Acquire) == id)
                .map(|slot| &slot.tat);
        }
        found
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

    fn capped(max_keys: usize) -> (MemoryStore<ManualClock>, ManualClock) {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(1000));
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .max_keys(max_keys)
            .shards(1)
            .build();
        (store, clock)
    }

    #[test]
    fn at_the_cap_every_new_key_still_gets_its_own_bucket() {
        let (store, _) = capped(1000);
        let q = Quotas::from(Quota::per_hour(10).unwrap());
        // An honest client that has spent 3 of its 10.
        assert_eq!(admitted(&store, &u32::MAX, &q, 3), 3);
        // A flood of 100 times the cap in new keys: each is one fresh bucket, never a shared
        // one, and the store stays within its cap.
        let flood = (0..100_000u32)
            .filter(|ip| store.check(ip, &q, 1).unwrap().is_allowed())
            .count();
        assert_eq!(flood, 100_000);
        assert!(store.len() <= 1000, "{} states", store.len());
        assert!(store.evicted() >= 99_000, "{} evicted", store.evicted());
        // New honest keys after the flood: their whole burst, as without it.
        for honest in 1_000_000..1_000_100u32 {
            assert_eq!(admitted(&store, &honest, &q, 20), 10);
        }
        // The spent client was not forgiven: it owes more than any flood key.
        assert_eq!(store.status(&u32::MAX, &q).remaining(), 7);
    }

    #[test]
    fn a_flood_forgives_a_spent_key_at_most_what_each_flood_key_spent() {
        let (store, clock) = capped(1000);
        let q = Quotas::from(Quota::per_second(1).unwrap().with_burst(10).unwrap());
        let spent = u64::MAX;
        assert_eq!(admitted(&store, &spent, &q, 20), 10);
        // Ten thousand new one-request keys a (simulated) second for 12 s, ten times what the
        // cap holds; each owes one request (1 s) when it arrives.
        let mut most_forgiven = 0;
        for step in 1..=1_200u64 {
            for n in 0..100 {
                assert!(store.check(&(step * 100 + n), &q, 1).unwrap().is_allowed());
            }
            clock.advance(Duration::from_millis(10));
            // What the spent key has earned back by now, and what the store says it has.
            let earned = (step / 100).min(10) as i64;
            let remaining = i64::from(store.status(&spent, &q).remaining());
            most_forgiven = most_forgiven.max(remaining - earned);
        }
        assert!(store.evicted() > 100_000);
        assert!(
            most_forgiven <= 1,
            "evictions forgave the spent key {most_forgiven} requests, more than one flood key's"
        );
    }

    #[test]
    fn one_limits_flood_does_not_evict_another_limits_states() {
        let (store, _) = capped(1000);
        let honest = Quotas::from(Quota::per_second(10).unwrap().named("login").unwrap());
        let flooded = Quotas::from(Quota::per_minute(1).unwrap().named("report").unwrap());
        // A hundred clients have spent their login burst: each owes 1 s, less than any
        // flood key (60 s), so least-debt alone would evict them first.
        for user in 0..100u32 {
            assert_eq!(admitted(&store, &user, &honest, 20), 10);
        }
        let flood = (1_000..200_000u32)
            .filter(|key| store.check(key, &flooded, 1).unwrap().is_allowed())
            .count();
        assert_eq!(flood, 199_000);
        assert!(store.len() <= 1000);
        // Not one login state was evicted: none regained a request.
        for user in 0..100u32 {
            assert_eq!(store.status(&user, &honest).remaining(), 0, "user {user}");
        }
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

    #[test]
    fn a_changed_quota_carries_each_keys_spent_fraction_over() {
        let (store, clock) = store();
        let old = Quotas::from(Quota::per_minute(10).unwrap());
        assert_eq!(admitted(&store, &"a", &old, 8), 8);
        assert_eq!(admitted(&store, &"b", &old, 10), 10);
        // Raised tenfold: "a" spent 80%, "b" all of it; a new key starts full.
        let raised = Quotas::from(Quota::per_minute(100).unwrap()).carry_over_from(&old);
        assert_eq!(store.status(&"a", &raised).remaining(), 20);
        assert_eq!(admitted(&store, &"a", &raised, 100), 20);
        assert_eq!(admitted(&store, &"b", &raised, 100), 0);
        assert_eq!(admitted(&store, &"c", &raised, 200), 100);
        // Lowered to a fifth of the burst, with a window twice as long: the spent fraction
        // stays spent, and comes back at the new rate.
        let lowered = Quotas::from(Quota::per_minute(10).unwrap().with_burst(20).unwrap())
            .carry_over_from(&raised);
        assert_eq!(admitted(&store, &"c", &lowered, 100), 0, "c spent all 100");
        clock.advance(Duration::from_secs(12));
        assert_eq!(admitted(&store, &"c", &lowered, 100), 2, "12 s at 10/min");
        assert_eq!(
            admitted(&store, &"d", &lowered, 100),
            20,
            "new keys start full"
        );
    }

    #[test]
    fn a_key_moving_between_tiers_and_back_keeps_its_debt() {
        let (store, _) = store();
        let free = Quotas::from(Quota::per_minute(10).unwrap());
        let paid = Quotas::from(Quota::per_minute(50).unwrap()).carry_over_from(&free);
        let free = free.carry_over_from(&paid);
        assert_eq!(admitted(&store, &"k", &free, 5), 5);
        assert_eq!(
            admitted(&store, &"k", &paid, 10),
            10,
            "half of 50 left, 10 used"
        );
        // Back on the free tier: 35 of 50 spent is 70%, so 3 of 10 are left.
        assert_eq!(admitted(&store, &"k", &free, 10), 3);
        assert_eq!(
            admitted(&store, &"k", &paid, 10),
            0,
            "and all of it, back again"
        );
    }

    #[test]
    fn carried_states_follow_chains_of_changes_sets_and_resets() {
        let (store, _) = store();
        let a = Quotas::from(Quota::per_second(4).unwrap());
        assert_eq!(admitted(&store, &"k", &a, 2), 2);
        let b = Quotas::from(Quota::per_second(8).unwrap()).carry_over_from(&a);
        let c = Quotas::from(Quota::per_second(16).unwrap()).carry_over_from(&b);
        // "k" never decided under b: c finds its state under a.
        assert_eq!(store.status(&"k", &c).remaining(), 8);
        store.reset(&"k", &c);
        assert_eq!(
            store.status(&"k", &c).remaining(),
            16,
            "reset forgets carried debt"
        );
        // A set of two quotas matches by name, and keeps quotas that did not change.
        let hourly = Quota::per_hour(100).unwrap().named("hourly").unwrap();
        let two = Quotas::new([Quota::per_second(4).unwrap(), hourly.clone()]).unwrap();
        assert_eq!(admitted(&store, &"m", &two, 3), 3);
        let next = Quotas::new([Quota::per_second(40).unwrap(), hourly])
            .unwrap()
            .carry_over_from(&two);
        assert_eq!(next.carried().len(), 1, "only the changed quota");
        let status = store.status(&"m", &next);
        assert_eq!(status.remaining(), 10, "75% of 40 spent");
        // The global key carries over too.
        let one = Quotas::from(Quota::per_second(2).unwrap());
        assert_eq!(admitted(&store, &crate::key::Global, &one, 2), 2);
        let more = Quotas::from(Quota::per_second(6).unwrap()).carry_over_from(&one);
        assert_eq!(admitted(&store, &crate::key::Global, &more, 10), 0);
    }

    #[test]
    fn decisions_across_keys_are_all_or_nothing_under_concurrency() {
        let (store, _) = store();
        let user = Quotas::from(Quota::per_hour(50).unwrap().named("user").unwrap());
        let global = Quotas::from(Quota::per_hour(300).unwrap().named("global").unwrap());
        // 8 threads, 4 users each 2 threads deep: 200 user tokens, 300 global ones.
        let admitted: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let (store, user, global) = (&store, user.clone(), global.clone());
                    s.spawn(move || {
                        let parts = [(format!("user{}", t % 4), user), ("all".into(), global)];
                        (0..100)
                            .filter(|_| store.check_parts(&parts, 1).unwrap().1.is_allowed())
                            .count() as u32
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            admitted.iter().sum::<u32>(),
            200,
            "every user spent, global not"
        );
        assert_eq!(store.status(&"all".to_owned(), &global).remaining(), 100);
        // Refusals by the global quota spend nothing of a user's.
        let tight = Quotas::from(Quota::per_hour(1).unwrap().named("global").unwrap());
        let parts = [("u".to_owned(), user.clone()), ("g".to_owned(), tight)];
        assert!(store.check_parts(&parts, 1).unwrap().1.is_allowed());
        for _ in 0..5 {
            assert_eq!(store.check_parts(&parts, 1).unwrap().0, 1);
        }
        assert_eq!(store.status(&"u".to_owned(), &user).remaining(), 49);
        // Too many quotas in all is an error, not a panic.
        let nine: Vec<(String, Quotas)> = (0..9).map(|i| (i.to_string(), user.clone())).collect();
        assert_eq!(store.check_parts(&nine, 1), Err(QuotaError::TooMany(9)));
    }

    #[test]
    fn a_state_listed_twice_in_one_decision_is_charged_once() {
        let (store, _) = store();
        let q = Quotas::from(Quota::per_hour(4).unwrap());
        let parts = [("alice", q.clone()), ("alice", q.clone())];
        for _ in 0..4 {
            assert!(store.check_parts(&parts, 1).unwrap().1.is_allowed());
        }
        assert!(!store.check_parts(&parts, 1).unwrap().1.is_allowed());
        assert_eq!(store.status(&"alice", &q).remaining(), 0);
    }

    #[test]
    fn the_global_key_keeps_its_debt_through_many_live_changes() {
        let (store, _) = store();
        let mut quotas = Quotas::from(Quota::per_hour(10).unwrap());
        assert_eq!(admitted(&store, &crate::key::Global, &quotas, 10), 10);
        // Six changes: more than the global key's four lock-free slots.
        for n in [20, 30, 40, 50, 60, 70] {
            quotas = Quotas::from(Quota::per_hour(n).unwrap()).carry_over_from(&quotas);
            assert_eq!(
                store.status(&crate::key::Global, &quotas).remaining(),
                0,
                "per_hour({n})"
            );
            assert_eq!(admitted(&store, &crate::key::Global, &quotas, 5), 0);
        }
    }

    #[test]
    fn a_charge_that_lands_on_the_earlier_quota_after_a_change_moves_over() {
        let (store, _) = store();
        let before = Quotas::from(Quota::per_hour(10).unwrap());
        let after = Quotas::from(Quota::per_hour(20).unwrap()).carry_over_from(&before);
        assert_eq!(admitted(&store, &"k", &before, 2), 2);
        assert_eq!(admitted(&store, &"k", &after, 1), 1, "4 of 20 spent, and 1");
        // A request admitted before the change settles 3 more on the earlier quota.
        store
            .check_or_wait(&"k", &before, 3, Duration::MAX)
            .unwrap();
        // 6 of 20 more are owed under the new quota: 20 - 5 - 6 left.
        assert_eq!(admitted(&store, &"k", &after, 20), 9);
    }
}
