//! The over-limit cache: a key that was just denied is answered locally until its
//! retry-after, without asking Redis (as Envoy's rate-limit service does), so a client
//! hammering a denied key costs Redis nothing.

use std::sync::atomic::Ordering;

use crate::gcra::Gcra;
use crate::key::{KeyWriter, RedisKey};
use crate::quota::MAX_QUOTAS;
use crate::store::table::{entry_id, Table};
use crate::store::Decision;
use crate::Quotas;

/// Denials remembered until their retry-after, per subject and quota: entry
/// ([`entry_id`] of the subject's hash and the quota's id) → when the subject may pass under
/// that quota, in nanoseconds.
///
/// Kept per quota, not per set, as Redis keeps its states: a denial holds for every set that
/// holds the quota, and a set that carries states over from a quota forgets its denials (the
/// debt moved away).
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

    fn key_hash<K: RedisKey + ?Sized>(&self, subject: &K) -> u64 {
        use std::hash::BuildHasher;
        let mut bytes = Vec::with_capacity(64);
        subject.write_key(&mut KeyWriter::into_vec(&mut bytes));
        self.hasher.hash_one(bytes)
    }

    /// A remembered denial, as a decision: by the quota of `quotas` that keeps the subject
    /// waiting longest.
    pub(super) fn check<K: RedisKey + ?Sized>(
        &self,
        subject: &K,
        quotas: &Quotas,
        cost: u32,
        now: u64,
    ) -> Option<Decision> {
        let key_hash = self.key_hash(subject);
        let mut ids = [0; MAX_QUOTAS];
        for (id, quota) in ids.iter_mut().zip(quotas.as_slice()) {
            *id = entry_id(key_hash, quota.id());
        }
        let untils = self.table.load(key_hash, &ids[..quotas.len()]);
        let (index, &until) = untils.iter().enumerate().max_by_key(|&(_, until)| until)?;
        if until <= now {
            return None;
        }
        let gcra = Gcra::new(&quotas.as_slice()[index]);
        let wait = until - now;
        // For the request that was denied, debt = wait + window - cost × interval.
        let debt = wait
            .saturating_add(gcra.window_nanos())
            .saturating_sub(gcra.charge(cost));
        Some(Decision::denied(index, wait, debt, gcra, now))
    }

    /// Remembers a denial of a request of cost 1 that did not wait, until its retry-after.
    pub(super) fn remember<K: RedisKey + ?Sized>(
        &self,
        subject: &K,
        quotas: &Quotas,
        decision: &Decision,
        now: u64,
    ) {
        let Some(quota) = quotas.as_slice().get(decision.quota_index()) else {
            return;
        };
        let key_hash = self.key_hash(subject);
        let id = entry_id(key_hash, quota.id());
        let wait = u64::try_from(decision.retry_after().as_nanos()).unwrap_or(u64::MAX);
        let until = now.saturating_add(wait);
        self.table.update_one(
            key_hash,
            id,
            || now,
            |_evicted| {},
            |tat| tat.store(until, Ordering::Release),
        );
    }

    /// Forgets the subject's denials under `quotas` and under the quotas they carry states
    /// over from: after a charge the cache did not see, a refund, a reset, or a carry-over.
    pub(super) fn forget<K: RedisKey + ?Sized>(&self, subject: &K, quotas: &Quotas) {
        let key_hash = self.key_hash(subject);
        let own = quotas.as_slice().iter();
        let carried = quotas.carried().iter().map(|c| &c.quota);
        let ids: Vec<u64> = own
            .chain(carried)
            .map(|quota| entry_id(key_hash, quota.id()))
            .collect();
        self.table.reset(key_hash, &ids);
    }
}
