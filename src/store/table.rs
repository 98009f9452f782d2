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
//! - **Bounded.** Each shard holds at most `max_entries / shards` keys' slots. A new key that
//!   finds its shard full, even after a rebuild, is decided against the shard's *overflow*
//!   slot for its quota, shared by every key that overflowed: a flood of rotating keys is
//!   throttled as one client per shard, while keys already tracked keep their own state.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::quota::MAX_QUOTAS;

/// The id of an unclaimed slot.
const EMPTY: u64 = 0;
/// Ids of overflow slots: the quota id with this tag, so that they never match a key's entry
/// id (but by a 64-bit collision, which would only merge two buckets).
const OVERFLOW_TAG: u64 = 0x6f76_6572_666c_6f77;
/// A full shard looks for expired slots at most this often when few new keys arrive.
const FULL_SHARD_REBUILD_NANOS: u64 = 1_000_000_000;
/// The smallest table.
const MIN_CAPACITY: usize = 16;

/// A TAT that is never stored: fills arrays of references before they are set.
static UNUSED: AtomicU64 = AtomicU64::new(0);

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
}

/// One shard, alone on its cache lines so that two cores on two shards do not contend.
#[repr(align(128))]
struct Shard {
    slots: RwLock<Slots>,
    /// Slots claimed in the current table, overflow slots included.
    len: AtomicUsize,
    /// New keys turned to the overflow slots since the last rebuild.
    overflowed: AtomicUsize,
    /// When the last rebuild ran.
    last_rebuild: AtomicU64,
}

impl Shard {
    /// Reserves room for `n` new slots, within the table's load limit and, unless they are
    /// overflow slots, the shard's cap.
    fn reserve(&self, n: usize, max_len: usize, cap: Option<usize>) -> bool {
        let limit = cap.map_or(max_len, |cap| cap.min(max_len));
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| {
                (len + n <= limit).then_some(len + n)
            })
            .is_ok()
    }
}

/// Why a lock-free attempt gave way to the write lock.
enum Full {
    /// The table reached its load limit: rebuild it.
    Table,
    /// The shard reached its cap: rebuild if worth it, else use the overflow slots.
    Cap,
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
                    overflowed: AtomicUsize::new(0),
                    last_rebuild: AtomicU64::new(0),
                })
                .collect(),
            shard_mask: shards as u64 - 1,
            max_per_shard: max_entries.div_ceil(shards).max(1),
        }
    }

    #[inline]
    fn shard(&self, key_hash: u64) -> &Shard {
        // Bits 32.. pick the shard; slots are picked by the low bits of the entry id.
        &self.shards[((key_hash >> 32) & self.shard_mask) as usize]
    }

    /// [`update`](Self::update) for a single id: the hot path of single-quota limits.
    #[inline]
    pub(crate) fn update_one<R>(
        &self,
        key_hash: u64,
        id: u64,
        now: impl FnOnce() -> u64,
        mut f: impl FnMut(&AtomicU64) -> R,
    ) -> R {
        let shard = self.shard(key_hash);
        let id = entry_id(id);
        {
            let slots = read(shard);
            if let Some(slot) = slots.find(id) {
                return f(&slot.tat);
            }
        }
        self.update_new(shard, key_hash, &[id], now(), |tats| f(tats[0]))
    }

    /// Runs `f` on the TATs of `ids` (all in the shard of `key_hash`), claiming slots for the
    /// missing ones (TAT 0: a full bucket). `f` runs under the shard's read lock, so it must
    /// change the TATs with atomic operations only.
    pub(crate) fn update<R>(
        &self,
        key_hash: u64,
        ids: &[u64],
        now: u64,
        f: impl FnMut(&[&AtomicU64]) -> R,
    ) -> R {
        let shard = self.shard(key_hash);
        let mut entry_ids = [EMPTY; MAX_QUOTAS];
        for (to, id) in entry_ids.iter_mut().zip(ids) {
            *to = entry_id(*id);
        }
        self.update_new(shard, key_hash, &entry_ids[..ids.len()], now, f)
    }

    /// Claims what is missing under the read lock if the table has room; otherwise rebuilds
    /// under the write lock first, or turns to the overflow slots when the shard is full.
    #[cold]
    fn update_new<R>(
        &self,
        shard: &Shard,
        key_hash: u64,
        ids: &[u64],
        now: u64,
        mut f: impl FnMut(&[&AtomicU64]) -> R,
    ) -> R {
        let mut overflow = false;
        loop {
            let outcome = {
                let slots = read(shard);
                match self.gather(shard, &slots, key_hash, ids, overflow) {
                    Ok(tats) => return f(&tats[..ids.len()]),
                    Err(full) => full,
                }
            };
            let mut slots = write(shard);
            let since = now.saturating_sub(shard.last_rebuild.load(Ordering::Relaxed));
            let len = shard.len.load(Ordering::Relaxed);
            match outcome {
                Full::Table => self.rebuild(shard, &mut slots, ids.len(), now),
                Full::Cap => {
                    // A rebuild costs O(capacity): at the cap, run one when a quarter of the
                    // shard's worth of keys has overflowed, or a second has passed.
                    let overflowed = shard.overflowed.fetch_add(1, Ordering::Relaxed);
                    if overflowed >= len / 4 || since >= FULL_SHARD_REBUILD_NANOS {
                        self.rebuild(shard, &mut slots, 0, now);
                    }
                    if shard.len.load(Ordering::Relaxed) + ids.len() > self.max_per_shard {
                        overflow = true;
                    }
                }
            }
        }
    }

    /// The TATs of `ids`, claiming slots for the missing ones (the overflow slots if
    /// `overflow`), or why that needs the write lock.
    fn gather<'s>(
        &self,
        shard: &Shard,
        slots: &'s Slots,
        key_hash: u64,
        ids: &[u64],
        overflow: bool,
    ) -> Result<[&'s AtomicU64; MAX_QUOTAS], Full> {
        let mut tats = [&UNUSED; MAX_QUOTAS];
        for (id, tat) in ids.iter().zip(&mut tats) {
            if let Some(slot) = slots.find(*id) {
                *tat = &slot.tat;
                continue;
            }
            let (id, cap) = if overflow {
                (overflow_id(*id, key_hash), None)
            } else {
                (*id, Some(self.max_per_shard))
            };
            if let Some(slot) = slots.find(id) {
                *tat = &slot.tat;
                continue;
            }
            if !shard.reserve(1, slots.max_len(), cap) {
                let at_cap = cap.is_some_and(|cap| shard.len.load(Ordering::Relaxed) >= cap);
                return Err(if at_cap { Full::Cap } else { Full::Table });
            }
            let (slot, claimed) = slots.find_or_claim(id);
            if !claimed {
                // Another request claimed it first.
                shard.len.fetch_sub(1, Ordering::AcqRel);
            }
            *tat = &slot.tat;
        }
        Ok(tats)
    }

    /// Copies the live slots of `shard` into a fresh table, half full with room for `needed`
    /// more, dropping the slots whose bucket is full at `now`.
    fn rebuild(&self, shard: &Shard, slots: &mut Slots, needed: usize, now: u64) {
        let live = slots
            .slots
            .iter_mut()
            .filter(|s| {
                s.id.load(Ordering::Relaxed) != EMPTY && s.tat.load(Ordering::Relaxed) > now
            })
            .count();
        // Half full, so that the next rebuild is a quarter of the table away; but never bigger
        // than the cap needs (the cap is at most three-quarters of it).
        // Room for what must fit is guaranteed either way.
        let wanted = (live + needed) * 2;
        let enough_for_cap = self.max_per_shard + self.max_per_shard / 3 + 1;
        let must_fit = (live + needed) + (live + needed) / 3 + 2;
        let fresh = Slots::with_capacity(wanted.min(enough_for_cap).max(must_fit));
        for slot in slots.slots.iter_mut() {
            let (id, tat) = (*slot.id.get_mut(), *slot.tat.get_mut());
            if id != EMPTY && tat > now {
                let (new, _) = fresh.find_or_claim(id);
                new.tat.store(tat, Ordering::Relaxed);
            }
        }
        *slots = fresh;
        shard.len.store(live, Ordering::Release);
        shard.overflowed.store(0, Ordering::Relaxed);
        shard.last_rebuild.store(now, Ordering::Relaxed);
    }

    /// The TATs of `ids` (0, a full bucket, for those not tracked), without claiming slots.
    pub(crate) fn load(&self, key_hash: u64, ids: &[u64]) -> [u64; MAX_QUOTAS] {
        let slots = read(self.shard(key_hash));
        let mut tats = [0; MAX_QUOTAS];
        for (id, tat) in ids.iter().zip(&mut tats) {
            if let Some(slot) = slots.find(entry_id(*id)) {
                *tat = slot.tat.load(Ordering::Acquire);
            }
        }
        tats
    }

    /// Applies `change(index, tat)` to the TATs of `ids` that are tracked, each atomically.
    pub(crate) fn modify(&self, key_hash: u64, ids: &[u64], change: impl Fn(usize, u64) -> u64) {
        let slots = read(self.shard(key_hash));
        for (i, id) in ids.iter().enumerate() {
            if let Some(slot) = slots.find(entry_id(*id)) {
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

    /// How many slots are claimed (overflow slots included, expired ones until the next
    /// rebuild).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.len.load(Ordering::Acquire))
            .sum()
    }

    /// Rebuilds every shard, dropping the slots whose bucket is full at `now`.
    pub(crate) fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            self.rebuild(shard, &mut write(shard), 0, now);
        }
    }
}

/// Entry ids are never [`EMPTY`].
#[inline]
fn entry_id(id: u64) -> u64 {
    if id == EMPTY {
        1
    } else {
        id
    }
}

/// The overflow slot of a quota: recover the quota id from the entry id (`key_hash ^ quota`).
fn overflow_id(entry_id: u64, key_hash: u64) -> u64 {
    self::entry_id(entry_id ^ key_hash ^ OVERFLOW_TAG)
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

/// Loads a TAT for a decision.
#[inline]
pub(crate) fn load(tat: &AtomicU64) -> u64 {
    tat.load(Ordering::Acquire)
}

/// Stores `new` if the TAT is still `current`; else returns the TAT found.
#[inline]
pub(crate) fn swap(tat: &AtomicU64, current: u64, new: u64) -> Result<(), u64> {
    tat.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
        .map(drop)
}

/// Subtracts `by` from a TAT (a refund).
pub(crate) fn subtract(tat: &AtomicU64, by: u64) {
    let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
        Some(t.saturating_sub(by))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(tat: &AtomicU64, to: u64) {
        tat.store(to, Ordering::Release);
    }

    fn slot_addr(table: &Table, key: u64, id: u64, now: u64) -> usize {
        table.update_one(key, id, || now, |tat| tat as *const AtomicU64 as usize)
    }

    #[test]
    fn entries_are_created_once_and_found_again() {
        let table = Table::new(4, 100);
        table.update(7 << 32, &[11, 12], 0, |tats| {
            set(tats[0], 5);
            set(tats[1], 6);
        });
        assert_eq!(table.load(7 << 32, &[11, 12, 13])[..3], [5, 6, 0]);
        assert_eq!(table.len(), 2);
        table.modify(7 << 32, &[11, 12, 13], |_, tat| tat + 10);
        assert_eq!(table.load(7 << 32, &[11, 12, 13])[..3], [15, 16, 0]);
    }

    #[test]
    fn full_buckets_are_dropped_when_the_table_fills() {
        let table = Table::new(1, 1_000_000);
        for id in 1..=10_000u64 {
            table.update_one(0, id, || 0, |tat| set(tat, 100));
        }
        assert_eq!(table.len(), 10_000);
        // At time 200 every bucket is full again; new keys push the old ones out.
        for id in 10_001..=20_000u64 {
            table.update_one(0, id, || 200, |tat| set(tat, 300));
        }
        assert!(table.len() <= 10_000, "{} entries", table.len());
        // Live state survives a rebuild.
        assert_eq!(table.load(0, &[20_000])[0], 300);
        table.sweep(300);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_full_shard_sends_new_keys_to_the_overflow_slot() {
        const QUOTA: u64 = 0xabc1;
        let table = Table::new(1, 3);
        for key in 1..=3u64 {
            table.update_one(key, key ^ QUOTA, || 0, |tat| set(tat, 1_000));
        }
        // Live entries are kept; keys 4 and 5 share one overflow slot.
        let (a, b) = (
            slot_addr(&table, 4, 4 ^ QUOTA, 10),
            slot_addr(&table, 5, 5 ^ QUOTA, 10),
        );
        assert_eq!(a, b);
        assert_eq!(table.len(), 4);
        assert_ne!(
            slot_addr(&table, 1, 1 ^ QUOTA, 10),
            a,
            "tracked keys keep their own slot"
        );
        // Once the live entries have expired, new keys get their own slots again.
        let c = slot_addr(&table, 6, 6 ^ QUOTA, 2_000);
        let d = slot_addr(&table, 7, 7 ^ QUOTA, 2_000);
        assert_ne!(c, d);
        assert_eq!(
            table.len(),
            2,
            "keys 6 and 7; the overflow slot's bucket was full"
        );
    }

    #[test]
    fn concurrent_claims_of_one_key_meet_at_one_slot() {
        let table = Table::new(1, 1_000_000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for id in 1..5_000u64 {
                        table.update_one(0, id, || 0, |tat| tat.fetch_add(1, Ordering::AcqRel));
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
