//! [`MemoryStore`]: the embedded store. Its parts, each with one job:
//!
//! - `keyed`: decisions on the keyed table (`store::table`), for every key but the global one;
//! - `global`: the global key's lock-free slots;
//! - `commit`: the arithmetic on atomic TATs (compare-and-swap loops, all-or-nothing commits,
//!   carry-over between quota sets);
//! - this module: the store's API, which of the two places holds a key's states, and the
//!   reports of evictions at the cap.

mod commit;
mod global;
mod keyed;

use std::fmt;
use std::future::{ready, Ready};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::time::Duration;

use self::global::GlobalSlots;
use super::table::{Evicted, Table};
use super::{Ask, Decision, Store, StoreError};
use crate::clock::{Clock, MonotonicClock};
use crate::quota::MAX_QUOTAS;
use crate::{QuotaError, Quotas};

/// The default cap on tracked states (keys × quotas), 2²⁰: the tables then hold at most
/// 32 MiB (twice that for a moment while one shard is rebuilt).
pub(crate) const DEFAULT_MAX_KEYS: usize = 1 << 20;

/// The embedded store: GCRA state per key in this process, shared by every clone.
///
/// # Concurrency
///
/// Keys are spread over shards (four per core by default). Deciding for a key already tracked
/// takes its shard's read lock and moves the key's TAT with one compare-and-swap; only a new
/// key takes a write lock, on one shard. The [global key](crate::key::Global) (any key of a
/// zero-sized type) skips the table altogether: one atomic per quota.
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
/// (2²⁰ by default: the tables then hold at most 32 MiB). When a new key arrives at a full shard and dropping the
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
    /// The hash of the global key, for its states in the table when its slots are taken.
    global_hash: u64,
    table: Table,
    global: GlobalSlots,
    pressure: Pressure,
}

/// Where a key's states live.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The global key: its slots, or the table under this hash when the slots are taken.
    Global(u64),
    /// Any other key: the table, under this hash.
    Keyed(u64),
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
    /// Which place holds `key`'s states: decided here, once per call, from the key's type
    /// (the global key is the one of size zero).
    #[inline]
    fn place<K: Hash>(&self, key: &K) -> Place {
        if std::mem::size_of::<K>() == 0 {
            // Every key of size zero is the one global key: hashed once, when the store was
            // built.
            Place::Global(self.inner.global_hash)
        } else {
            Place::Keyed(self.inner.hasher.hash_one(key))
        }
    }

    /// Decides `ask` at once (see [`Store`]'s contract).
    #[inline(always)]
    pub(crate) fn decide_now<K: Hash>(&self, ask: &Ask<'_, K>) -> Result<Decision, QuotaError> {
        // An ask across one key is that key's (and the global key's, when it is the one).
        let Some((key, quotas)) = ask
            .single()
            .or_else(|| (ask.len() == 1).then(|| ask.part(0)))
        else {
            return self.decide_across(ask);
        };
        let (cost, max_wait) = (ask.cost(), nanos(ask.max_wait()));
        match quotas.single() {
            // The hot path: one quota, a cost that fits.
            Some(single) if cost > 0 && cost <= single.burst => {
                Ok(self.decide_single(self.place(key), single, cost, max_wait))
            }
            _ => self.decide_set(self.place(key), quotas, cost, max_wait),
        }
    }

    /// The state of `key` under `quotas`, without consuming anything.
    pub fn status<K: Hash>(&self, key: &K, quotas: &Quotas) -> Decision {
        self.peek(self.place(key), quotas)
    }

    /// Forgets `key`'s state under `quotas` (and what it would carry over from earlier
    /// quotas): its buckets are full again.
    pub fn reset<K: Hash>(&self, key: &K, quotas: &Quotas) {
        self.forget(self.place(key), quotas);
    }

    /// How many states (keys × quotas) are tracked now, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.inner.table.len()
    }

    /// Whether no state is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many live states were dropped to make room for new keys at the cap (see [At the
    /// cap](MemoryStore#at-the-cap)), since the store was built.
    pub fn evicted(&self) -> u64 {
        self.inner.table.evicted()
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

    /// The TATs of `key` under each quota of `quotas` (0: a full bucket), without claiming.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn tats<K: Hash>(&self, key: &K, quotas: &Quotas) -> [u64; MAX_QUOTAS] {
        self.load(self.place(key), quotas)
    }

    /// Sets the TATs of `key` under each quota of `quotas` to `tats` (in this store's clock),
    /// claiming states as needed: how a network store's answers are mirrored here, so that
    /// this store can take over where the network store left off.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_tats<K: Hash>(&self, key: &K, quotas: &Quotas, tats: &[u64]) {
        self.store(self.place(key), quotas, tats);
    }

    /// One unit (or `cost`) for `key` now: the crate's own unit tests' shorthand.
    #[cfg(test)]
    pub(crate) fn check<K: Hash>(
        &self,
        key: &K,
        quotas: &Quotas,
        cost: u32,
    ) -> Result<Decision, QuotaError> {
        self.decide_now(&Ask::new(key, quotas).with_cost(cost))
    }

    /// Gives back `cost` of `key`'s charge under `quotas`.
    pub(crate) fn give_back<K: Hash>(&self, key: &K, quotas: &Quotas, cost: u32, charged_at: u64) {
        self.refund_at(self.place(key), quotas, cost, charged_at);
    }
}

impl<C: Clock, K: Hash> Store<K> for MemoryStore<C> {
    type Future = Ready<Result<Decision, StoreError>>;

    #[inline(always)]
    fn decide(&self, ask: &Ask<'_, K>) -> Self::Future {
        ready(self.decide_now(ask).map_err(StoreError::from))
    }

    fn refund(&self, ask: &Ask<'_, K>, cost: u32) {
        for (i, (key, quotas)) in ask.parts().enumerate() {
            // A key listed twice was charged once: it is given back once.
            let place = self.place(key);
            if ask
                .parts()
                .take(i)
                .any(|(earlier, _)| self.place(earlier) == place)
            {
                continue;
            }
            self.give_back(key, quotas, cost, ask.charged_at());
        }
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
    /// Default 2²⁰ (1,048,576).
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
        let hasher = foldhash::quality::RandomState::default();
        MemoryStore {
            inner: Arc::new(Inner {
                clock: self.clock,
                global_hash: hasher.hash_one(()),
                hasher,
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

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::Quota;

    fn check<K: Hash>(
        store: &MemoryStore<ManualClock>,
        key: &K,
        quotas: &Quotas,
        cost: u32,
    ) -> Result<Decision, QuotaError> {
        check_or_wait(store, key, quotas, cost, Duration::ZERO)
    }

    fn check_or_wait<K: Hash>(
        store: &MemoryStore<ManualClock>,
        key: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Decision, QuotaError> {
        store.decide_now(
            &Ask::new(key, quotas)
                .with_cost(cost)
                .with_max_wait(max_wait),
        )
    }

    fn check_parts<K: Hash>(
        store: &MemoryStore<ManualClock>,
        parts: &[(K, Quotas)],
        cost: u32,
    ) -> Result<(usize, Decision), QuotaError> {
        let decision = store.decide_now(&Ask::across(parts).with_cost(cost))?;
        Ok((decision.part(), decision))
    }

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
            .filter(|_| check(store, key, quotas, 1).unwrap().is_allowed())
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
        let denied = check(&store, &1u32, &q, 1).unwrap();
        assert_eq!(q.as_slice()[denied.quota_index()].name(), "hourly");
        assert!(denied.retry_after() > Duration::from_secs(100));
    }

    #[test]
    fn peek_and_reset() {
        let (store, _) = store();
        let q = Quotas::from(Quota::per_minute(3).unwrap());
        check(&store, &"k", &q, 2).unwrap();
        let peek = check(&store, &"k", &q, 0).unwrap();
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
            check(&store, &"k", &q, 6),
            Err(QuotaError::CostExceedsBurst {
                cost: 6,
                burst: 5,
                ..
            })
        ));
        assert!(check(&store, &"k", &q, 5).unwrap().is_allowed());
    }

    #[test]
    fn waiting_reserves_and_refund_gives_back() {
        let (store, _) = store();
        let q = Quotas::from(Quota::per_second(1).unwrap());
        let max = Duration::from_secs(2);
        let waits: Vec<_> = (0..4)
            .map(|_| check_or_wait(&store, &(), &q, 1, max).unwrap())
            .map(|d| (d.is_allowed(), d.wait().as_secs()))
            .collect();
        assert_eq!(waits, [(true, 0), (true, 1), (true, 2), (false, 0)]);
        store.give_back(&(), &q, 1, 0);
        let again = check_or_wait(&store, &(), &q, 1, max).unwrap();
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
            assert!(check(&store, &(), &q, 1).unwrap().is_allowed());
            assert!(
                !check(&store, &(), &q, 1).unwrap().is_allowed(),
                "quota {i}"
            );
        }
        assert_eq!(store.len(), 2, "four quotas live in the global slots");
    }

    #[test]
    fn expired_keys_are_dropped_without_a_cleanup_task() {
        let (store, clock) = store();
        let q = Quotas::from(Quota::per_second(1).unwrap());
        for ip in 0..50_000u32 {
            check(&store, &ip, &q, 1).unwrap();
        }
        assert_eq!(store.len(), 50_000);
        clock.advance(Duration::from_secs(2));
        // As the tables fill with new keys, they are rebuilt without the expired ones.
        for ip in 50_000..100_000u32 {
            check(&store, &ip, &q, 1).unwrap();
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
            .filter(|ip| check(&store, ip, &q, 1).unwrap().is_allowed())
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
                assert!(check(&store, &(step * 100 + n), &q, 1)
                    .unwrap()
                    .is_allowed());
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
            .filter(|key| check(&store, key, &flooded, 1).unwrap().is_allowed())
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
                            .filter(|_| check_parts(store, &parts, 1).unwrap().1.is_allowed())
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
        assert!(check_parts(&store, &parts, 1).unwrap().1.is_allowed());
        for _ in 0..5 {
            assert_eq!(check_parts(&store, &parts, 1).unwrap().0, 1);
        }
        assert_eq!(store.status(&"u".to_owned(), &user).remaining(), 49);
        // Too many quotas in all is an error, not a panic.
        let nine: Vec<(String, Quotas)> = (0..9).map(|i| (i.to_string(), user.clone())).collect();
        assert_eq!(check_parts(&store, &nine, 1), Err(QuotaError::TooMany(9)));
    }

    #[test]
    fn a_state_listed_twice_in_one_decision_is_charged_once() {
        let (store, _) = store();
        let q = Quotas::from(Quota::per_hour(4).unwrap());
        let parts = [("alice", q.clone()), ("alice", q.clone())];
        for _ in 0..4 {
            assert!(check_parts(&store, &parts, 1).unwrap().1.is_allowed());
        }
        assert!(!check_parts(&store, &parts, 1).unwrap().1.is_allowed());
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
        check_or_wait(&store, &"k", &before, 3, Duration::MAX).unwrap();
        // 6 of 20 more are owed under the new quota: 20 - 5 - 6 left.
        assert_eq!(admitted(&store, &"k", &after, 20), 9);
    }
}
