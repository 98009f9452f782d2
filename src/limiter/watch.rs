//! What an operator watches a limit by, beyond allow and deny: shadow mode (decide and record,
//! refuse nothing) and near-limit events (a key that has little left).

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;

use crate::gcra::Gcra;
use crate::store::table::{entry_id, Table};
use crate::{Decision, Quota};

/// How an [`Admission`](super::Admission) reports beyond allow and deny. The default watches
/// nothing and costs nothing.
#[derive(Default)]
pub(crate) struct Watch {
    /// Decide and record as usual, but let every request through at once.
    pub(crate) shadow: bool,
    pub(crate) near_limit: Option<NearLimit>,
    pub(crate) block: Option<Block>,
    pub(crate) stats: Option<super::LimiterStats>,
}

/// Blocks: a key refused faster than a quota of refusals allows (say 10 a minute) is refused
/// for a set time without asking the store (rate-limiter-flexible's `blockDuration`).
pub(crate) struct Block {
    /// The refusals a key may have: each refusal is a request against this GCRA.
    refusals: Gcra,
    refusals_id: u64,
    duration: u64,
    /// (key hash, refusals) → the refusals' TAT; (key hash, block) → when the block ends.
    table: Table,
    hasher: foldhash::quality::RandomState,
    start: tokio::time::Instant,
}

/// The entry tag of a key's block.
const BLOCKED: u64 = 0xb10c;

impl Block {
    pub(crate) fn new(refusals: &Quota, duration: std::time::Duration) -> Self {
        Self {
            refusals: Gcra::new(refusals),
            refusals_id: refusals.id(),
            duration: u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
            table: Table::new(16, REMEMBERED),
            hasher: foldhash::quality::RandomState::default(),
            start: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// How long `key` stays blocked, in nanoseconds; `None` if it is not.
    pub(crate) fn blocked<K: Hash>(&self, key: &K) -> Option<u64> {
        let key_hash = self.hasher.hash_one(key);
        let until = self.table.load(key_hash, &[entry_id(key_hash, BLOCKED)])[0];
        let now = self.now();
        (until > now).then(|| until - now)
    }

    /// Records a refusal of `key`; `true` when it starts a block.
    pub(crate) fn refused<K: Hash>(&self, key: &K) -> bool {
        let key_hash = self.hasher.hash_one(key);
        let now = self.now();
        let ids = [
            entry_id(key_hash, self.refusals_id),
            entry_id(key_hash, BLOCKED),
        ];
        self.table.update(
            key_hash,
            &ids,
            &[],
            now,
            |_evicted| {},
            |entries, _| {
                let (refusals, blocked) = (entries[0], entries[1]);
                let tat = refusals.load(Ordering::Acquire);
                let step = self.refusals.step(tat, now, 1, 0);
                if step.allowed {
                    // One more refusal within what is tolerated (a lost race only undercounts).
                    let _ = refusals.compare_exchange(
                        tat,
                        step.tat,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    return false;
                }
                // Too many: blocked, and the refusals start again after the block.
                let until = now.saturating_add(self.duration);
                let started = blocked.load(Ordering::Acquire) <= now;
                blocked.store(until, Ordering::Release);
                refusals.store(0, Ordering::Release);
                started
            },
        )
    }
}

/// Near-limit events: when a key's share left falls to `percent_left` of its burst or below,
/// at most once per key and quota per window (the time its bucket takes to refill), so that a
/// hot key does not flood the hook.
pub(crate) struct NearLimit {
    percent_left: u32,
    /// (key hash, quota) → when the key may be reported again, in clock nanoseconds.
    reported: Table,
    hasher: foldhash::quality::RandomState,
    /// Tokio's clock (the system's, or paused time in tests), read as nanoseconds since this.
    start: tokio::time::Instant,
}

/// The most keys remembered as reported (their entries expire with their window).
const REMEMBERED: usize = 1 << 16;

impl NearLimit {
    /// Near the limit at `percent_left` of the burst or less (clamped to 1–100).
    pub(crate) fn new(percent_left: u8) -> Self {
        Self {
            percent_left: u32::from(percent_left.clamp(1, 100)),
            reported: Table::new(16, REMEMBERED),
            hasher: foldhash::quality::RandomState::default(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Whether this allowed decision is to be reported as near the limit: the share left is
    /// at or below the threshold, and the key was not reported within its window.
    pub(crate) fn report<K: Hash>(&self, key: &K, quota: &Quota, decision: &Decision) -> bool {
        let limit = decision.limit();
        if limit == 0
            || u64::from(decision.remaining()) * 100
                > u64::from(limit) * u64::from(self.percent_left)
        {
            return false;
        }
        let key_hash = self.hasher.hash_one(key);
        let id = entry_id(key_hash, quota.id());
        // Plus one: 0 is the table's "never".
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        let window = Gcra::new(quota).window_nanos();
        // The entry's value is when the key may be reported again; the table forgets entries
        // whose time has passed, like full buckets.
        self.reported.update_one(
            key_hash,
            id,
            || now,
            |_evicted| {},
            |until| {
                let due = until.load(Ordering::Acquire);
                due <= now
                    && until
                        .compare_exchange(
                            due,
                            now.saturating_add(window),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::Gcra;
    use crate::Quotas;

    #[test]
    fn a_key_is_reported_once_per_window() {
        let quota = Quota::per_second(5).unwrap().with_burst(10).unwrap();
        let quotas = Quotas::from(quota.clone());
        let gcra = Gcra::new(&quota);
        let near = NearLimit::new(20);
        let mut reported = 0;
        for spent in 1..=10u32 {
            let now = 1_000_000_000;
            let step = gcra.step(
                now + u64::from(spent - 1) * gcra.interval_nanos(),
                now,
                1,
                0,
            );
            let decision = Decision::from_steps(&quotas, &[step], now);
            if near.report(&"k", &quota, &decision) {
                reported += 1;
            }
        }
        assert_eq!(reported, 1);
    }
}
