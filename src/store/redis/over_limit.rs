//! The over-limit cache: a key that was just denied is answered locally until its
//! retry-after, without asking Redis (as Envoy's rate-limit service does), so a client
//! hammering a denied key costs Redis nothing.

use std::sync::atomic::Ordering;

use crate::gcra::Gcra;
use crate::key::{KeyWriter, RedisKey};
use crate::store::table::Table;
use crate::store::Decision;
use crate::Quotas;

/// Denials remembered until their retry-after: entry id → when the key may pass, in the low
/// three bits of which the binding quota's index is kept.
pub(super) struct OverLimit {
    table: Table,
    hasher: foldhash::quality::RandomState,
}

impl OverLimit {
    pub(super) fn new() -> Self {
        Self {
            table: Table::new(16, 1 << 16),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn id<K: RedisKey + ?Sized>(&self, subject: &K, quotas: &Quotas) -> u64 {
        use std::hash::BuildHasher;
        let mut bytes = Vec::with_capacity(64);
        subject.write_key(&mut KeyWriter::into_vec(&mut bytes));
        // Never 0, the table's empty slot.
        self.hasher.hash_one((bytes, quotas.identity())) | 1
    }

    /// A remembered denial, as a decision.
    pub(super) fn check<K: RedisKey + ?Sized>(
        &self,
        subject: &K,
        quotas: &Quotas,
        cost: u32,
        now: u64,
    ) -> Option<Decision> {
        let id = self.id(subject, quotas);
        let until = self.table.load(id, &[id])[0];
        if until <= now {
            return None;
        }
        let index = (until & 0b111) as usize;
        let quota = quotas.as_slice().get(index)?;
        let gcra = Gcra::new(quota);
        let wait = until - now;
        // For the request that was denied, debt = wait + window - cost × interval.
        let debt = wait
            .saturating_add(gcra.window_nanos())
            .saturating_sub(gcra.charge(cost));
        Some(Decision::denied(index, wait, debt, gcra))
    }

    pub(super) fn remember<K: RedisKey + ?Sized>(
        &self,
        subject: &K,
        quotas: &Quotas,
        decision: &Decision,
        now: u64,
    ) {
        let id = self.id(subject, quotas);
        let wait = u64::try_from(decision.retry_after().as_nanos()).unwrap_or(u64::MAX);
        let until =
            (now.saturating_add(wait).saturating_add(7) & !0b111) | decision.quota_index() as u64;
        self.table.update_one(
            id,
            id,
            || now,
            |_evicted| {},
            |tat| tat.store(until, Ordering::Release),
        );
    }

    pub(super) fn forget<K: RedisKey + ?Sized>(&self, subject: &K, quotas: &Quotas) {
        let id = self.id(subject, quotas);
        self.table.reset(id, &[id]);
    }
}
