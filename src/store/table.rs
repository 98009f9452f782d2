//! The sharded table behind [`MemoryStore`](super::MemoryStore): entry id → TAT.
//!
//! - **Sharded.** A key's hash picks one of a power-of-two number of shards, each on its own
//!   cache lines, so that cores working on different keys do not contend.
//! - **Compact.** A shard's table is an array of 16-byte `(id, tat)` slots, probed linearly
//!   from the id's home slot: a lookup usually reads one cache line. The key itself is not
//!   kept (see [`MemoryStore`](super::MemoryStore#memory)).
//! - **Lock-free per key.** Deciding for a tracked key takes the shard's read lock and moves
//!   the TAT with one compare-and-swap; a new key claims an empty slot with one more, still
//!   under the read lock. Requests for one key never wait for each other, and no request waits
//!   for another key's. Only a *rebuild* takes the write lock.
//! - **Self-cleaning.** A slot whose TAT has passed describes a full bucket, the same as no
//!   slot. Slots are never freed one by one: when a table is three-quarters full, a rebuild
//!   copies the live slots into a fresh table, half full, growing, keeping or shrinking it.
//!   Forgotten keys give their memory back without any background task.
//! - **Bounded, and fair when full.** Each shard holds at most `max_entries / shards` states.
//!   When a new key finds its shard at that cap even after expired states are dropped, the
//!   rebuild *evicts* an eighth of the shard: from the quota that holds the most states (so
//!   that one limit's flood never spends another limit's room), the states with the least
//!   debt (the earliest TAT). With GCRA a state's only content is its debt, `TAT − now`, so
//!   evicting it forgives at most that debt, and the least-indebted states are the ones a
//!   flood of one-request keys creates. Every new key gets a state of its own: a flood cannot
//!   push honest clients into a shared bucket.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::quota::{MAX_CARRIED, MAX_QUOTAS};

/// The id of an unclaimed slot.
const EMPTY: u64 = 0;
/// The smallest table.
const MIN_CAPACITY: usize = 16;
/// The top bits of an entry id name its quota's partition (see [`entry_id`]).
const PARTITION_SHIFT: u32 = 56;
const PARTITIONS: usize = 1 << (64 - PARTITION_SHIFT);
/// An eviction frees this fraction of a shard's cap, so that the next one is that many new
/// keys away.
const EVICT_DIVISOR: usize = 8;

/// A TAT that is never stored: fills arrays of references before they are set.
static UNUSED: AtomicU64 = AtomicU64::new(0);

/// The id of `key_hash`'s state under the quota `quota_id`: the low bits mix both (XOR keeps
/// the hash's quality; quota ids are odd, so two quotas of one key never share an entry), the
/// top 8 bits are the quota's own, so that a rebuild can tell which quota a state belongs to.
#[inline]
pub(crate) fn entry_id(key_hash: u64, quota_id: u64) -> u64 {
    const LOW: u64 = (1 << PARTITION_SHIFT) - 1;
    let id = ((key_hash ^ quota_id) & LOW) | (quota_id & !LOW);
    if id == EMPTY {
        1
    } else {
        id
    }
}

#[inline]
fn partition(id: u64) -> usize {
    (id >> PARTITION_SHIFT) as usize
}

#[repr(C, align(16))]
struct Slot {
    id: AtomicU64,
    tat: AtomicU64,
}

/// A table of fixed capacity (a power of two), never more than three-quarters full.
struct Slots {
    slots: Box<[Slot]>,
    mask: usize,
}

impl Slots {
    fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(MIN_CAPACITY).next_power_of_two();
        Self {
            slots: (0..capacity)
                .map(|_| Slot {
                    id: AtomicU64::new(EMPTY),
                    tat: AtomicU64::new(0),
                })
                .collect(),
            mask: capacity - 1,
        }
    }

    /// The most slots this table may hold: three-quarters of its capacity.
    fn max_len(&self) -> usize {
        self.slots.len() / 4 * 3
    }

    /// The slot of `id`, if claimed. Terminates: a table always has empty slots.
    #[inline]
    fn find(&self, id: u64) -> Option<&Slot> {
        let mut i = id as usize & self.mask;
        loop {
            let slot = &self.slots[i];
            match slot.id.load(Ordering::Acquire) {
                found if found == id => return Some(slot),
                EMPTY => return None,
                _ => i = (i + 1) & self.mask,
            }
        }
    }

    /// The slot of `id`, claiming the first empty one on its probe path if there is none, and
    /// whether it was claimed now. Safe under the read lock: slots are claimed with a
    /// compare-and-swap and never released, so two threads claiming one id meet at one slot.
    /// The caller must have reserved room (see [`Shard::reserve`]).
    fn find_or_claim(&self, id: u64) -> (&Slot, bool) {
        let mut i = id as usize & self.mask;
        loop {
            let slot = &self.slots[i];
            let owner = match slot.id.load(Ordering::Acquire) {
                EMPTY => {
                    match slot
                        .id
                        .compare_exchange(EMPTY, id, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => return (slot, true),
                        Err(owner) => owner,
                    }
                }
                owner => owner,
            };
            if owner == id {
                return (slot, false);
            }
            i = (i + 1) & self.mask;
        }
    }
}

pub(crate) struct Table {
    shards: Box<[Shard]>,
    shard_mask: u64,
    max_per_shard: usize,
    /// States evicted at the cap, and evictions run, since the table was made.
    evicted: AtomicU64,
    evictions: AtomicU64,
}

/// One shard, alone on its cache lines so that two cores on two shards do not contend.
#[repr(align(128))]
struct Shard {
    slots: RwLock<Slots>,
    /// Slots claimed in the current table.
    len: AtomicUsize,
}

impl Shard {
    /// Reserves room for one new slot, within the table's load limit and the shard's cap.
    fn reserve(&self, limit: usize) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| {
                (len < limit).then_some(len + 1)
            })
            .is_ok()
    }
}

/// What a rebuild dropped under pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Evicted {
    /// Live states dropped.
    pub(crate) states: usize,
}

impl Table {
    /// A table of `shards` shards (rounded up to a power of two) holding at most about
    /// `max_entries` entries.
    pub(crate) fn new(shards: usize, max_entries: usize) -> Self {
        let shards = shards.clamp(1, 1 << 16).next_power_of_two();
        Self {
            shards: (0..shards)
                .map(|_| Shard {
                    slots: RwLock::new(Slots::with_capacity(MIN_CAPACITY)),
                    len: AtomicUsize::new(0),
                })
                .collect(),
            shard_mask: shards as u64 - 1,
            // Room for one key's every quota, however small the cap.
            max_per_shard: max_entries.div_ceil(shards).max(MAX_QUOTAS),
            evicted: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    #[inline]
    fn shard(&self, key_hash: u64) -> &Shard {
        &self.shards[self.shard_index(key_hash)]
    }

    /// The index of `key_hash`'s shard: bits 32.. pick it; slots are picked by the low bits
    /// of the entry id.
    #[inline]
    fn shard_index(&self, key_hash: u64) -> usize {
        ((key_hash >> 32) & self.shard_mask) as usize
    }

    /// [`update`](Self::update) for a single entry: the hot path of single-quota limits.
    /// `on_evict` is told when making room evicted live states.
    #[inline]
    pub(crate) fn update_one<R>(
        &self,
        key_hash: u64,
        id: u64,
        now: impl FnOnce() -> u64,
        on_evict: impl FnOnce(Evicted),
        mut f: impl FnMut(&AtomicU64) -> R,
    ) -> R {
        let shard = self.shard(key_hash);
        {
            let slots = read(shard);
            if let Some(slot) = slots.find(id) {
                return f(&slot.tat);
            }
        }
        self.update_new(shard, &[id], &[], now(), on_evict, |tats, _| f(tats[0]))
    }

    /// Runs `f` on the TATs of the entries `ids` (all in the shard of `key_hash`), claiming
    /// slots for the missing ones (TAT 0: a full bucket), and on those of the entries
    /// `carried` that are tracked (states to carry over from), without claiming any. `f` runs
    /// under the shard's read lock, so it must change the TATs with atomic operations only.
    pub(crate) fn update<R>(
        &self,
        key_hash: u64,
        ids: &[u64],
        carried: &[u64],
        now: u64,
        on_evict: impl FnOnce(Evicted),
        f: impl FnMut(&[&AtomicU64], &[Option<&AtomicU64>]) -> R,
    ) -> R {
        self.update_new(self.shard(key_hash), ids, carried, now, on_evict, f)
    }

    /// Runs `f` on the TATs of several keys' entries at once (`parts`: each key's hash and
    /// its entry ids, in order), claiming slots for the missing ones. The shards' read locks
    /// are taken in shard order, so that two such calls never wait for each other in a cycle.
    pub(crate) fn update_parts<R>(
        &self,
        parts: &[(u64, &[u64])],
        now: u64,
        mut on_evict: impl FnMut(Evicted),
        mut f: impl FnMut(&[&AtomicU64]) -> R,
    ) -> R {
        let (mut order, mut shards) = ([0; MAX_QUOTAS], 0);
        for (key_hash, _) in parts.iter().take(MAX_QUOTAS) {
            order[shards] = self.shard_index(*key_hash);
            shards += 1;
        }
        let order = &mut order[..shards];
        order.sort_unstable();
        let wanted: usize = parts.iter().map(|(_, ids)| ids.len()).sum();
        let mut claim = false;
        loop {
            // Tracked keys are found at the first attempt; a missing slot is claimed (each
            // key on its own, under its shard's usual path) before the next.
            if claim {
                for (key_hash, ids) in parts {
                    self.update(*key_hash, ids, &[], now, &mut on_evict, |_, _| ());
                }
            }
            claim = true;
            let mut guards: [Option<RwLockReadGuard<'_, Slots>>; MAX_QUOTAS] =
                std::array::from_fn(|_| None);
            for (i, &shard) in order.iter().enumerate() {
                // A shard twice in the order is locked once.
                if i == 0 || order[i - 1] != shard {
                    guards[i] = Some(read(&self.shards[shard]));
                }
            }
            let (mut tats, mut found) = ([&UNUSED; MAX_QUOTAS], 0);
            'parts: for (key_hash, ids) in parts {
                let shard = self.shard_index(*key_hash);
                let at = order.partition_point(|&s| s < shard);
                let Some(slots) = guards.get(at).and_then(Option::as_ref) else {
                    break 'parts;
                };
                for id in *ids {
                    // Dropped by a rebuild since it was claimed: claim it again.
                    let (Some(slot), Some(tat)) = (slots.find(*id), tats.get_mut(found)) else {
                        break 'parts;
                    };
                    *tat = &slot.tat;
                    found += 1;
                }
            }
            if found == wanted {
                return f(&tats[..found]);
            }
        }
    }

    /// Claims what is missing under the read lock if the shard has room; otherwise rebuilds
    /// under the write lock first, evicting at the cap.
    #[cold]
    fn update_new<R>(
        &self,
        shard: &Shard,
        ids: &[u64],
        carried: &[u64],
        now: u64,
        on_evict: impl FnOnce(Evicted),
        mut f: impl FnMut(&[&AtomicU64], &[Option<&AtomicU64>]) -> R,
    ) -> R {
        let mut on_evict = Some(on_evict);
        loop {
            {
                let slots = read(shard);
                if let Some(tats) = self.gather(shard, &slots, ids) {
                    let mut earlier = [None; MAX_CARRIED];
                    for (found, id) in earlier.iter_mut().zip(carried) {
                        *found = slots.find(*id).map(|slot| &slot.tat);
                    }
                    return f(&tats[..ids.len()], &earlier[..carried.len()]);
                }
            }
            let mut slots = write(shard);
            // Another request may have made room while this one waited for the lock.
            let len = shard.len.load(Ordering::Relaxed);
            if len + ids.len() <= self.limit(&slots) {
                continue;
            }
            let at_cap = len + ids.len() > self.max_per_shard;
            let evicted = self.rebuild(shard, &mut slots, ids.len(), now, at_cap);
            if evicted.states > 0 {
                self.evicted
                    .fetch_add(evicted.states as u64, Ordering::Relaxed);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                if let Some(on_evict) = on_evict.take() {
                    on_evict(evicted);
                }
            }
        }
    }

    /// The most slots `slots` may hold: its load limit, and the shard's cap.
    fn limit(&self, slots: &Slots) -> usize {
        slots.max_len().min(self.max_per_shard)
    }

    /// The TATs of `ids`, claiming slots for the missing ones; `None` if that needs the write
    /// lock. Slots claimed before running out of room stay claimed (with TAT 0, a full
    /// bucket): the next attempt finds them.
    fn gather<'s>(
        &self,
        shard: &Shard,
        slots: &'s Slots,
        ids: &[u64],
    ) -> Option<[&'s AtomicU64; MAX_QUOTAS]> {
        let mut tats = [&UNUSED; MAX_QUOTAS];
        for (id, tat) in ids.iter().zip(&mut tats) {
            if let Some(slot) = slots.find(*id) {
                *tat = &slot.tat;
                continue;
            }
            if !shard.reserve(self.limit(slots)) {
                return None;
            }
            let (slot, claimed) = slots.find_or_claim(*id);
            if !claimed {
                // Another request claimed it first.
                shard.len.fetch_sub(1, Ordering::AcqRel);
            }
            *tat = &slot.tat;
        }
        Some(tats)
    }

    /// Copies the live slots of `shard` into a fresh table with room for `needed` more,
    /// dropping the slots whose bucket is full at `now`; `at_cap`, also evicting enough to
    /// leave an eighth of the cap free (see [`Evictions`]).
    fn rebuild(
        &self,
        shard: &Shard,
        slots: &mut Slots,
        needed: usize,
        now: u64,
        at_cap: bool,
    ) -> Evicted {
        let live = slots
            .slots
            .iter()
            .filter(|s| {
                s.id.load(Ordering::Relaxed) != EMPTY && s.tat.load(Ordering::Relaxed) > now
            })
            .count();
        let mut evictions = Evictions::none();
        if at_cap {
            let room = (self.max_per_shard / EVICT_DIVISOR).max(needed);
            let keep = self.max_per_shard.saturating_sub(room);
            if live > keep {
                evictions = Evictions::choose(slots, now, live - keep);
            }
        }
        let kept = live - evictions.total;
        // Half full, so that the next rebuild is a quarter of the table away; but never bigger
        // than the cap needs (the cap is at most three-quarters of it).
        // Room for what must fit is guaranteed either way.
        let wanted = (kept + needed) * 2;
        let enough_for_cap = self.max_per_shard + self.max_per_shard / 3 + 1;
        let must_fit = (kept + needed) + (kept + needed) / 3 + 2;
        let fresh = Slots::with_capacity(wanted.min(enough_for_cap).max(must_fit));
        for slot in slots.slots.iter_mut() {
            let (id, tat) = (*slot.id.get_mut(), *slot.tat.get_mut());
            if id != EMPTY && tat > now && !evictions.evicts(id, tat) {
                let (new, _) = fresh.find_or_claim(id);
                new.tat.store(tat, Ordering::Relaxed);
            }
        }
        *slots = fresh;
        shard.len.store(kept, Ordering::Release);
        Evicted {
            states: evictions.total,
        }
    }

    /// The TATs of `ids` (0, a full bucket, for those not tracked), without claiming slots.
    pub(crate) fn load(&self, key_hash: u64, ids: &[u64]) -> [u64; MAX_QUOTAS] {
        let slots = read(self.shard(key_hash));
        let mut tats = [0; MAX_QUOTAS];
        for (id, tat) in ids.iter().zip(&mut tats) {
            if let Some(slot) = slots.find(*id) {
                *tat = slot.tat.load(Ordering::Acquire);
            }
        }
        tats
    }

    /// The TATs of `ids` (0 for those not tracked), up to [`MAX_CARRIED`] of them.
    pub(crate) fn load_carried(&self, key_hash: u64, ids: &[u64]) -> [u64; MAX_CARRIED] {
        let slots = read(self.shard(key_hash));
        let mut tats = [0; MAX_CARRIED];
        for (id, tat) in ids.iter().zip(&mut tats) {
            if let Some(slot) = slots.find(*id) {
                *tat = slot.tat.load(Ordering::Acquire);
            }
        }
        tats
    }

    /// Applies `change(index, tat)` to the TATs of `ids` that are tracked, each atomically.
    pub(crate) fn modify(&self, key_hash: u64, ids: &[u64], change: impl Fn(usize, u64) -> u64) {
        let slots = read(self.shard(key_hash));
        for (i, id) in ids.iter().enumerate() {
            if let Some(slot) = slots.find(*id) {
                let _ = slot
                    .tat
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                        Some(change(i, tat))
                    });
            }
        }
    }

    /// Sets the TATs of `ids` that are tracked to 0: their buckets are full again. (The slots
    /// stay claimed until the next rebuild drops them.)
    pub(crate) fn reset(&self, key_hash: u64, ids: &[u64]) {
        self.modify(key_hash, ids, |_, _| 0);
    }

    /// How many slots are claimed (expired ones until the next rebuild).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.len.load(Ordering::Acquire))
            .sum()
    }

    /// The most states the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.max_per_shard * self.shards.len()
    }

    /// Live states evicted at the cap since the table was made.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Rebuilds every shard, dropping the slots whose bucket is full at `now`.
    pub(crate) fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            self.rebuild(shard, &mut write(shard), 0, now, false);
        }
    }
}

/// Which live states a rebuild at the cap drops.
///
/// *Fair between quotas*: the states are taken from the partitions (quotas) that hold the
/// most, levelling them down (water-filling), so a quota with fewer states than the flooded
/// one loses none. *Least debt first* within a partition: the states with the earliest TATs,
/// which lose the least when forgotten.
struct Evictions {
    /// Per partition: evict states with a TAT below the threshold, and this many at it.
    thresholds: Box<[(u64, usize)]>,
    total: usize,
}

impl Evictions {
    fn none() -> Self {
        Self {
            thresholds: Box::new([]),
            total: 0,
        }
    }

    /// Chooses `count` live states of `slots` (or a few more, when partitions tie).
    fn choose(slots: &Slots, now: u64, count: usize) -> Self {
        let live = || {
            slots
                .slots
                .iter()
                .map(|s| (s.id.load(Ordering::Relaxed), s.tat.load(Ordering::Relaxed)))
                .filter(move |&(id, tat)| id != EMPTY && tat > now)
        };
        let mut per_partition = vec![0usize; PARTITIONS];
        for (id, _) in live() {
            per_partition[partition(id)] += 1;
        }
        // The highest level such that trimming every partition down to it frees `count`.
        let freed = |level: usize| -> usize {
            per_partition.iter().map(|&n| n.saturating_sub(level)).sum()
        };
        let (mut low, mut high) = (0, per_partition.iter().copied().max().unwrap_or(0));
        while low < high {
            let mid = (low + high).div_ceil(2);
            if freed(mid) >= count {
                low = mid;
            } else {
                high = mid - 1;
            }
        }
        let level = low;
        let mut thresholds = vec![(0u64, 0usize); PARTITIONS].into_boxed_slice();
        let mut total = 0;
        let mut tats = Vec::new();
        for (p, &n) in per_partition.iter().enumerate() {
            let evict = n.saturating_sub(level);
            if evict == 0 {
                continue;
            }
            tats.clear();
            tats.extend(live().filter(|&(id, _)| partition(id) == p).map(|(_, t)| t));
            let (below, &mut at, _) = tats.select_nth_unstable(evict - 1);
            let strictly_below = below.iter().filter(|&&t| t < at).count();
            thresholds[p] = (at, evict - strictly_below);
            total += evict;
        }
        Self { thresholds, total }
    }

    /// Whether the live state `(id, tat)` is evicted. Call once per live state.
    fn evicts(&mut self, id: u64, tat: u64) -> bool {
        let Some((threshold, at_threshold)) = self.thresholds.get_mut(partition(id)) else {
            return false;
        };
        if tat < *threshold {
            return true;
        }
        if tat == *threshold && *at_threshold > 0 {
            *at_threshold -= 1;
            return true;
        }
        false
    }
}

// A poisoned lock only means that a thread panicked while holding it; the tables hold plain
// atomics, never half-written, so carry on.
#[inline]
fn read(shard: &Shard) -> RwLockReadGuard<'_, Slots> {
    shard.slots.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, Slots> {
    shard.slots.write().unwrap_or_else(PoisonError::into_inner)
}

/// A TAT that decisions change with atomic operations only (or a global slot's owner, claimed
/// the same way): the table's `AtomicU64`s, and loom's in the model-checked tests of every
/// interleaving.
pub(crate) trait Tat {
    /// Loads the TAT for a decision.
    fn load_tat(&self) -> u64;
    /// Stores `new` if the TAT is still `current`; else returns the TAT found.
    fn swap_tat(&self, current: u64, new: u64) -> Result<(), u64>;
    /// Replaces the TAT by `change(tat)`, atomically.
    fn update_tat(&self, change: impl FnMut(u64) -> u64);
}

impl Tat for AtomicU64 {
    #[inline]
    fn load_tat(&self) -> u64 {
        self.load(Ordering::Acquire)
    }

    #[inline]
    fn swap_tat(&self, current: u64, new: u64) -> Result<(), u64> {
        self.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }

    fn update_tat(&self, mut change: impl FnMut(u64) -> u64) {
        let _ = self.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(change(t)));
    }
}

/// Loads a TAT for a decision.
#[inline]
pub(crate) fn load<T: Tat + ?Sized>(tat: &T) -> u64 {
    tat.load_tat()
}

/// Stores `new` if the TAT is still `current`; else returns the TAT found.
#[inline]
pub(crate) fn swap<T: Tat + ?Sized>(tat: &T, current: u64, new: u64) -> Result<(), u64> {
    tat.swap_tat(current, new)
}

/// Subtracts `by` from a TAT (a refund).
pub(crate) fn subtract<T: Tat + ?Sized>(tat: &T, by: u64) {
    tat.update_tat(|t| t.saturating_sub(by));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(tat: &AtomicU64, to: u64) {
        tat.store(to, Ordering::Release);
    }

    #[test]
    fn entries_are_created_once_and_found_again() {
        let table = Table::new(4, 100);
        table.update(
            7 << 32,
            &[11, 12],
            &[],
            0,
            |_| {},
            |tats, _| {
                set(tats[0], 5);
                set(tats[1], 6);
            },
        );
        assert_eq!(table.load(7 << 32, &[11, 12, 13])[..3], [5, 6, 0]);
        assert_eq!(table.len(), 2);
        table.modify(7 << 32, &[11, 12, 13], |_, tat| tat + 10);
        assert_eq!(table.load(7 << 32, &[11, 12, 13])[..3], [15, 16, 0]);
    }

    #[test]
    fn full_buckets_are_dropped_when_the_table_fills() {
        let table = Table::new(1, 1_000_000);
        for id in 1..=10_000u64 {
            table.update_one(0, id, || 0, |_| {}, |tat| set(tat, 100));
        }
        assert_eq!(table.len(), 10_000);
        // At time 200 every bucket is full again; new keys push the old ones out.
        for id in 10_001..=20_000u64 {
            table.update_one(0, id, || 200, |_| {}, |tat| set(tat, 300));
        }
        assert!(table.len() <= 10_000, "{} entries", table.len());
        // Live state survives a rebuild.
        assert_eq!(table.load(0, &[20_000])[0], 300);
        table.sweep(300);
        assert_eq!(table.len(), 0);
    }

    /// An entry id in partition `p`.
    fn id_in(p: u64, n: u64) -> u64 {
        (p << PARTITION_SHIFT) | n
    }

    #[test]
    fn a_full_shard_evicts_the_least_indebted_states() {
        let table = Table::new(1, 16);
        for n in 1..=16u64 {
            // Debts 1000 + n: key 1 owes the least.
            table.update_one(0, id_in(1, n), || 0, |_| {}, |tat| set(tat, 1_000 + n));
        }
        assert_eq!(table.len(), 16);
        let mut told = Evicted::default();
        let new = table.update_one(0, id_in(1, 17), || 10, |e| told = e, load);
        assert_eq!(new, 0, "a new key starts with a full bucket of its own");
        // An eighth of the cap: the two least indebted.
        assert_eq!(told, Evicted { states: 2 });
        assert_eq!(table.evicted(), 2);
        let ids: Vec<u64> = (1..=17).map(|n| id_in(1, n)).collect();
        let tats: Vec<u64> = ids
            .chunks(8)
            .flat_map(|c| table.load(0, c)[..c.len()].to_vec())
            .collect();
        assert_eq!(tats[..2], [0, 0], "keys 1 and 2 were evicted");
        assert!(tats[2..16].iter().zip(3..).all(|(&t, n)| t == 1_000 + n));
        assert_eq!(table.len(), 15);
        // The next new keys fit without another eviction.
        table.update_one(0, id_in(1, 18), || 10, |_| panic!("no eviction"), |_| ());
        assert_eq!(table.evicted(), 2);
    }

    #[test]
    fn evictions_level_the_fullest_quota_first() {
        let table = Table::new(1, 16);
        // Quota 2's four states owe less than any of quota 1's twelve...
        for n in 1..=12u64 {
            table.update_one(0, id_in(1, n), || 0, |_| {}, |tat| set(tat, 5_000 + n));
        }
        for n in 1..=4u64 {
            table.update_one(0, id_in(2, n), || 0, |_| {}, |tat| set(tat, 100 + n));
        }
        // ...but quota 1 holds the most, so its least indebted go.
        table.update_one(0, id_in(1, 13), || 10, |_| {}, |_| ());
        assert_eq!(table.evicted(), 2);
        let quota_2: Vec<u64> = (1..=4).map(|n| id_in(2, n)).collect();
        assert_eq!(table.load(0, &quota_2)[..4], [101, 102, 103, 104]);
        let quota_1: Vec<u64> = (1..=3).map(|n| id_in(1, n)).collect();
        assert_eq!(table.load(0, &quota_1)[..3], [0, 0, 5_003]);
        // Equal shares: both lose.
        let table = Table::new(1, 16);
        for n in 1..=8u64 {
            table.update_one(0, id_in(1, n), || 0, |_| {}, |tat| set(tat, 1_000 + n));
            table.update_one(0, id_in(2, n), || 0, |_| {}, |tat| set(tat, 1_000 + n));
        }
        table.update_one(0, id_in(3, 1), || 10, |_| {}, |_| ());
        assert_eq!(
            table.load(0, &[id_in(1, 1), id_in(2, 1), id_in(1, 2)])[..3],
            [0, 0, 1_002]
        );
    }

    #[test]
    fn expired_states_are_dropped_before_any_eviction() {
        let table = Table::new(1, 16);
        for n in 1..=16u64 {
            let tat = if n % 2 == 0 { 5 } else { 1_000 };
            table.update_one(0, id_in(1, n), || 0, |_| {}, |tat_| set(tat_, tat));
        }
        // At time 10 half have expired: room without evicting.
        table.update_one(0, id_in(1, 17), || 10, |_| panic!("no eviction"), |_| ());
        assert_eq!(table.evicted(), 0);
        assert_eq!(table.len(), 9);
    }

    #[test]
    fn concurrent_claims_of_one_key_meet_at_one_slot() {
        let table = Table::new(1, 1_000_000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for id in 1..5_000u64 {
                        table.update_one(
                            0,
                            id,
                            || 0,
                            |_| {},
                            |tat| tat.fetch_add(1, Ordering::AcqRel),
                        );
                    }
                });
            }
        });
        // Every thread found the slot the first one claimed, through rebuilds too.
        assert_eq!(table.len(), 4_999);
        for id in 1..5_000u64 {
            assert_eq!(table.load(0, &[id])[0], 4, "id {id}");
        }
    }
}
