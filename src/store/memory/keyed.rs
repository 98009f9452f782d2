//! The memory store's operations, each for a key's [`Place`]: the global key's slots when it
//! holds them, the keyed table otherwise.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use super::commit::{self, NO_STEP};
use super::{nanos, MemoryStore, Place};
use crate::clock::Clock;
use crate::gcra::Gcra;
use crate::quota::{Single, MAX_CARRIED, MAX_QUOTAS};
use crate::store::table::{self, entry_id};
use crate::store::Ask;
use crate::{Decision, QuotaError, Quotas};

impl<C: Clock> MemoryStore<C> {
    /// One quota, a cost that fits: the hot path.
    #[inline(always)]
    pub(super) fn decide_single(
        &self,
        place: Place,
        quota: Single,
        cost: u32,
        max_wait: u64,
    ) -> Decision {
        let inner = &*self.inner;
        let gcra = Gcra::from_nanos(quota.interval, quota.window);
        let hash = match place {
            Place::Global(hash) => match inner.global.find(quota.id) {
                Some(tat) => {
                    return commit::decide_one(gcra, tat, inner.clock.now(), cost, max_wait)
                }
                None => hash,
            },
            Place::Keyed(hash) => hash,
        };
        // The clock is read once the slot is found, so that its latency overlaps the slot's
        // cache miss.
        let now = || inner.clock.now();
        inner.table.update_one(
            hash,
            entry_id(hash, quota.id),
            now,
            |evicted| {
                inner
                    .pressure
                    .evicted(evicted, inner.table.capacity(), now())
            },
            |tat| commit::decide_one(gcra, tat, now(), cost, max_wait),
        )
    }

    /// Peeks, bad costs, and sets of several quotas or that carry states over.
    #[inline(never)]
    pub(super) fn decide_set(
        &self,
        place: Place,
        quotas: &Quotas,
        cost: u32,
        max_wait: u64,
    ) -> Result<Decision, QuotaError> {
        quotas.check_cost(cost)?;
        if cost == 0 {
            return Ok(self.peek(place, quotas));
        }
        let inner = &*self.inner;
        let hash = match place {
            Place::Global(hash) => match inner.global.find_all(quotas) {
                Some(tats) => {
                    let now = inner.clock.now();
                    let tats = &tats[..quotas.len()];
                    let earlier = inner.global.peek_carried(quotas);
                    commit::carry_over(quotas, tats, &earlier[..quotas.carried().len()], now);
                    return Ok(commit::decide_set(quotas, tats, now, cost, max_wait));
                }
                None => hash,
            },
            Place::Keyed(hash) => hash,
        };
        let (ids, carried) = (entry_ids(hash, quotas), carried_ids(hash, quotas));
        let now = inner.clock.now();
        Ok(inner.table.update(
            hash,
            &ids[..quotas.len()],
            &carried[..quotas.carried().len()],
            now,
            |evicted| inner.pressure.evicted(evicted, inner.table.capacity(), now),
            |tats, earlier| {
                // The global key's earlier quotas may hold one of its slots.
                let slots = match place {
                    Place::Global(_) => inner.global.peek_carried(quotas),
                    Place::Keyed(_) => [None; MAX_CARRIED],
                };
                let both: [Option<&AtomicU64>; MAX_CARRIED] =
                    std::array::from_fn(|j| earlier.get(j).copied().flatten().or(slots[j]));
                commit::carry_over(quotas, tats, &both[..earlier.len()], now);
                commit::decide_set(quotas, tats, now, cost, max_wait)
            },
        ))
    }

    /// Several keys at once, each with its own quotas, in one atomic step: the parts' shards
    /// are read-locked in shard order and one compare-and-swap loop commits all parts or
    /// none. Quotas carried over from earlier sets are not looked up here.
    pub(super) fn decide_across<K: Hash>(&self, ask: &Ask<'_, K>) -> Result<Decision, QuotaError> {
        ask.check()?;
        if ask.cost() == 0 {
            let mut statuses = [Decision::empty(); MAX_QUOTAS];
            for (status, (key, quotas)) in statuses.iter_mut().zip(ask.parts()) {
                *status = self.status(key, quotas);
            }
            return Ok(Decision::of_parts(&statuses[..ask.len()]));
        }
        let inner = &*self.inner;
        // At most MAX_QUOTAS quotas in all (checked above), so at most as many parts.
        let mut hashes = [0; MAX_QUOTAS];
        for (hash, (key, _)) in hashes.iter_mut().zip(ask.parts()) {
            *hash = inner.hasher.hash_one(key);
        }
        let (mut ids, mut gcras, mut n) =
            ([0; MAX_QUOTAS], [Gcra::from_nanos(1, 1); MAX_QUOTAS], 0);
        for ((_, quotas), &hash) in ask.parts().zip(&hashes) {
            for quota in quotas {
                ids[n] = entry_id(hash, quota.id());
                gcras[n] = Gcra::new(quota);
                n += 1;
            }
        }
        let mut specs: [(u64, &[u64]); MAX_QUOTAS] = [(0, &[]); MAX_QUOTAS];
        let mut at = 0;
        for ((spec, (_, quotas)), &hash) in specs.iter_mut().zip(ask.parts()).zip(&hashes) {
            *spec = (hash, &ids[at..at + quotas.len()]);
            at += quotas.len();
        }
        let now = inner.clock.now();
        let (cost, max_wait) = (ask.cost(), nanos(ask.max_wait()));
        let steps = inner.table.update_parts(
            &specs[..ask.len()],
            now,
            |evicted| inner.pressure.evicted(evicted, inner.table.capacity(), now),
            |tats| commit::commit_all(&gcras[..n], tats, now, cost, max_wait),
        );
        Ok(ask.decision(&steps[..n], now))
    }

    /// The state of a key under `quotas` (with what it would carry over), without consuming
    /// anything.
    pub(super) fn peek(&self, place: Place, quotas: &Quotas) -> Decision {
        let inner = &*self.inner;
        let carried = quotas.carried().len();
        let mut tats = self.load(place, quotas);
        let mut earlier = [0; MAX_CARRIED];
        if carried > 0 {
            let hash = hash_of(place);
            let found = inner
                .table
                .load_carried(hash, &carried_ids(hash, quotas)[..carried]);
            earlier[..carried].copy_from_slice(&found[..carried]);
            if let Place::Global(_) = place {
                let slots = inner.global.peek_carried(quotas);
                for (tat, slot) in earlier.iter_mut().zip(slots) {
                    *tat = (*tat).max(slot.map_or(0, table::load));
                }
            }
        }
        let now = inner.clock.now();
        commit::with_carried(quotas, &mut tats[..quotas.len()], &earlier[..carried], now);
        let mut steps = [NO_STEP; MAX_QUOTAS];
        for (i, quota) in quotas.as_slice().iter().enumerate() {
            steps[i] = Gcra::new(quota).step(tats[i], now, 0, 0);
        }
        Decision::from_steps(quotas, &steps[..quotas.len()], now)
    }

    /// The TATs of a key under each quota (0: a full bucket), without claiming.
    pub(super) fn load(&self, place: Place, quotas: &Quotas) -> [u64; MAX_QUOTAS] {
        let inner = &*self.inner;
        if let Place::Global(_) = place {
            if let Some(slots) = inner.global.find_all(quotas) {
                let mut tats = [0; MAX_QUOTAS];
                for (tat, slot) in tats.iter_mut().zip(&slots[..quotas.len()]) {
                    *tat = slot.load(Ordering::Acquire);
                }
                return tats;
            }
        }
        let hash = hash_of(place);
        inner
            .table
            .load(hash, &entry_ids(hash, quotas)[..quotas.len()])
    }

    /// Sets a key's TATs under each quota, claiming states as needed.
    pub(super) fn store(&self, place: Place, quotas: &Quotas, tats: &[u64]) {
        let inner = &*self.inner;
        if let Place::Global(_) = place {
            if let Some(slots) = inner.global.find_all(quotas) {
                for (slot, tat) in slots[..quotas.len()].iter().zip(tats) {
                    slot.store(*tat, Ordering::Release);
                }
                return;
            }
        }
        let hash = hash_of(place);
        let ids = entry_ids(hash, quotas);
        let now = inner.clock.now();
        inner.table.update(
            hash,
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

    /// Gives back `cost` of a key's charge under each quota.
    pub(super) fn refund_at(&self, place: Place, quotas: &Quotas, cost: u32) {
        let inner = &*self.inner;
        if let Place::Global(_) = place {
            if let Some(slots) = inner.global.find_all(quotas) {
                for (quota, tat) in quotas.as_slice().iter().zip(slots) {
                    table::subtract(tat, Gcra::new(quota).charge(cost));
                }
                return;
            }
        }
        let hash = hash_of(place);
        let ids = entry_ids(hash, quotas);
        inner.table.modify(hash, &ids[..quotas.len()], |i, tat| {
            Gcra::new(&quotas.as_slice()[i]).refund(tat, cost)
        });
    }

    /// Forgets a key's states under `quotas` and the quotas it carries over from.
    pub(super) fn forget(&self, place: Place, quotas: &Quotas) {
        let inner = &*self.inner;
        if let Place::Global(_) = place {
            if let Some(slots) = inner.global.find_all(quotas) {
                for tat in &slots[..quotas.len()] {
                    tat.store(0, Ordering::Release);
                }
                for tat in inner.global.peek_carried(quotas).into_iter().flatten() {
                    tat.store(0, Ordering::Release);
                }
                return;
            }
        }
        let hash = hash_of(place);
        inner
            .table
            .reset(hash, &entry_ids(hash, quotas)[..quotas.len()]);
        inner
            .table
            .reset(hash, &carried_ids(hash, quotas)[..quotas.carried().len()]);
    }
}

fn hash_of(place: Place) -> u64 {
    match place {
        Place::Global(hash) | Place::Keyed(hash) => hash,
    }
}

/// The ids of `hash`'s entries, one per quota (see [`table::entry_id`]).
fn entry_ids(hash: u64, quotas: &Quotas) -> [u64; MAX_QUOTAS] {
    let mut ids = [0; MAX_QUOTAS];
    for (id, quota) in ids.iter_mut().zip(quotas) {
        *id = entry_id(hash, quota.id());
    }
    ids
}

/// The ids of `hash`'s entries under the quotas `quotas` carries states over from.
fn carried_ids(hash: u64, quotas: &Quotas) -> [u64; MAX_CARRIED] {
    let mut ids = [0; MAX_CARRIED];
    for (id, carried) in ids.iter_mut().zip(quotas.carried()) {
        *id = entry_id(hash, carried.quota.id());
    }
    ids
}
