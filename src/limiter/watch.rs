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
