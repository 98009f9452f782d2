//! The states of the global key: a few lock-free slots, each claimed by one quota id, so that
//! a limit on the whole service is one compare-and-swap on its own cache line, no hash and no
//! lock. Once every slot is taken, other quotas go to the keyed table like any key's; slots are
//! never given up, so each quota's state stays where it started.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::table::{self, Tat};

use crate::quota::MAX_CARRIED;
use crate::Quotas;

/// The global key's slots.
#[derive(Default)]
pub(super) struct GlobalSlots {
    slots: [GlobalSlot; 4],
}

#[derive(Default)]
#[repr(align(64))]
struct GlobalSlot {
    quota: AtomicU64,
    tat: AtomicU64,
}

impl GlobalSlots {
    /// The TATs of the quotas `quotas` carries states over from, where they hold a slot.
    pub(super) fn peek_carried(&self, quotas: &Quotas) -> [Option<&AtomicU64>; MAX_CARRIED] {
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

    /// The TAT of `quota`'s slot, claiming a free one; `None` when all are taken.
    #[inline]
    pub(super) fn find(&self, quota: u64) -> Option<&AtomicU64> {
        let owners = self.slots.iter().map(|slot| &slot.quota);
        claim(owners, quota).map(|i| &self.slots[i].tat)
    }
}

/// The index of the slot `quota` owns among `owners`, claiming a free one (owner 0) if it owns
/// none; `None` when every slot is another quota's. Racing claims of a free slot are settled
/// by compare-and-swap: the loser reads the winner, which is its own quota (the same slot) or
/// another (it goes on to the next slot), so that a quota never owns two slots.
#[inline]
pub(super) fn claim<'a, T: Tat + 'a>(
    owners: impl IntoIterator<Item = &'a T>,
    quota: u64,
) -> Option<usize> {
    for (i, owner) in owners.into_iter().enumerate() {
        loop {
            match table::load(owner) {
                found if found == quota => return Some(i),
                // Free: claim it, then read again (a lost race, or a spurious failure).
                0 if table::swap(owner, 0, quota).is_ok() => return Some(i),
                0 => continue,
                _ => break,
            }
        }
    }
    None
}

/// Every interleaving of two claims (loom), as in `commit::interleavings`.
#[cfg(test)]
mod interleavings {
    use loom::sync::atomic::AtomicU64;
    use loom::sync::Arc;
    use loom::thread;

    use super::claim;

    /// Two claims of `quotas` over `owners` (0: free), at once: their slots, and the owners.
    fn race(owners: [u64; 2], quotas: [u64; 2]) -> ([Option<usize>; 2], [u64; 2]) {
        let slots = Arc::new([AtomicU64::new(owners[0]), AtomicU64::new(owners[1])]);
        let theirs = Arc::clone(&slots);
        let t = thread::spawn(move || claim(theirs.iter(), quotas[1]));
        let here = claim(slots.iter(), quotas[0]);
        let there = t.join().unwrap();
        let owners = [
            slots[0].load(loom::sync::atomic::Ordering::Acquire),
            slots[1].load(loom::sync::atomic::Ordering::Acquire),
        ];
        ([here, there], owners)
    }

    #[test]
    fn one_quota_claimed_twice_at_once_owns_one_slot() {
        loom::model(|| {
            let (found, owners) = race([0, 0], [7, 7]);
            assert_eq!(found[0], found[1]);
            assert!(found[0].is_some());
            assert_eq!(owners.iter().filter(|&&o| o == 7).count(), 1, "{owners:?}");
        });
    }

    #[test]
    fn two_quotas_claimed_at_once_own_a_slot_each() {
        loom::model(|| {
            let (found, owners) = race([0, 0], [7, 9]);
            assert!(found[0].is_some() && found[1].is_some() && found[0] != found[1]);
            assert_eq!(owners[found[0].unwrap()], 7);
            assert_eq!(owners[found[1].unwrap()], 9);
        });
    }

    #[test]
    fn the_last_free_slot_goes_to_one_of_two_quotas() {
        loom::model(|| {
            let (found, owners) = race([5, 0], [7, 9]);
            assert_eq!(found.iter().filter(|f| f.is_some()).count(), 1, "{found:?}");
            assert_eq!(owners[0], 5);
            assert!(owners[1] == 7 || owners[1] == 9);
        });
    }
}
