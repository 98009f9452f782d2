//! The states of the global key: a few lock-free slots, each claimed by one quota id, so that
//! a limit on the whole service is one compare-and-swap on its own cache line, no hash and no
//! lock. Once every slot is taken, other quotas go to the keyed table like any key's; slots are
//! never given up, so each quota's state stays where it started.

use std::sync::atomic::{AtomicU64, Ordering};

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
