//! What an operator watches a limit by, beyond allow and deny: shadow mode (decide and record,
//! refuse nothing) and near-limit events (a key that has little left).

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
///
/// Two tables, so that a flood of refusals never ends a block: the refusal counters (what a
/// key has been refused lately) and the blocks (when each ends). Counters are only evidence
/// and go first: their own table holds [`MAX_COUNTED`], and past that the least indebted are
/// forgotten. Blocks hold up to [`MAX_BLOCKED`] (about 1.25 million, at most 32 MiB, the
/// memory store's own default cap); past that, the blocks nearest their end make room, each
/// counted in `tollgate_blocks_evicted_total` and warned about at most once a minute. Expired
/// blocks take no room.
pub(crate) struct Block {
    /// The refusals a key may have: each refusal is a request against this GCRA.
    refusals: Gcra,
    refusals_id: u64,
    duration: u64,
    /// (key hash, refusals) → the refusals' TAT.
    counted: Table,
    /// (key hash, block) → when the block ends.
    blocks: Table,
    hasher: foldhash::quality::RandomState,
    start: tokio::time::Instant,
    /// The layer's name, for the eviction counter and warning.
    layer: Arc<str>,
    evictions_warning: crate::logs::Every,
}

/// The entry tag of a key's block.
const BLOCKED: u64 = 0xb10c;
/// The most blocks held at once.
pub(crate) const MAX_BLOCKED: usize = 1_250_000;
/// The most refusal counters held at once.
const MAX_COUNTED: usize = 1 << 18;

impl Block {
    pub(crate) fn new(refusals: &Quota, duration: std::time::Duration, layer: Arc<str>) -> Self {
        Self::holding(refusals, duration, layer, MAX_COUNTED, MAX_BLOCKED)
    }

    fn holding(
        refusals: &Quota,
        duration: std::time::Duration,
        layer: Arc<str>,
        counted: usize,
        blocks: usize,
    ) -> Self {
        Self {
            refusals: Gcra::new(refusals),
            refusals_id: refusals.id(),
            duration: u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
            counted: Table::new(16, counted),
            blocks: Table::new(64, blocks),
            hasher: foldhash::quality::RandomState::default(),
            start: tokio::time::Instant::now(),
            layer,
            evictions_warning: crate::logs::Every::new(60_000_000_000),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// How long `key` stays blocked, in nanoseconds; `None` if it is not.
    pub(crate) fn blocked<K: Hash>(&self, key: &K) -> Option<u64> {
        let key_hash = self.hasher.hash_one(key);
        let until = self.blocks.load(key_hash, &[entry_id(key_hash, BLOCKED)])[0];
        let now = self.now();
        (until > now).then(|| until - now)
    }

    /// Records a refusal of `key`; `true` when it starts a block.
    pub(crate) fn refused<K: Hash>(&self, key: &K) -> bool {
        let key_hash = self.hasher.hash_one(key);
        let now = self.now();
        let over = self.counted.update_one(
            key_hash,
            entry_id(key_hash, self.refusals_id),
            || now,
            |_evicted| {},
            |refusals| {
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
                // Too many: the refusals start again after the block.
                refusals.store(0, Ordering::Release);
                true
            },
        );
        if !over {
            return false;
        }
        let until = now.saturating_add(self.duration);
        self.blocks.update_one(
            key_hash,
            entry_id(key_hash, BLOCKED),
            || now,
            |evicted| self.evicted(evicted.states as u64, now),
            |blocked| blocked.swap(until, Ordering::AcqRel) <= now,
        )
    }

    /// Blocks ended early to make room: counted, and warned about at most once a minute.
    #[cold]
    fn evicted(&self, blocks: u64, now: u64) {
        crate::metrics::blocks_evicted(&self.layer, blocks);
        if self.evictions_warning.due(now) {
            tracing::warn!(
                target: "tollgate::rate_limit",
                layer = &*self.layer,
                evicted = blocks,
                capacity = self.blocks.capacity(),
                "block table full: ending the blocks nearest their end early (a distributed \
                 attack?); logged at most once a minute"
            );
        }
    }

    /// Blocks ended early to make room, since the layer was made.
    #[cfg(test)]
    fn evicted_blocks(&self) -> u64 {
        self.blocks.evicted()
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
        // A calendar quota reports once per window (a day, a month), not once per count.
        let window = u64::try_from(quota.window().as_nanos()).unwrap_or(u64::MAX);
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
    use std::time::Duration;

    use super::*;
    use crate::gcra::Gcra;
    use crate::Quotas;

    #[tokio::test(start_paused = true)]
    async fn a_million_blocks_last_their_whole_time() {
        let refusals = Quota::per_minute(1).unwrap();
        let block = Block::new(&refusals, Duration::from_secs(900), Arc::from("login"));
        let blocked = 1_000_000u32;
        for key in 0..blocked {
            assert!(!block.refused(&key), "the first refusal is tolerated");
            assert!(block.refused(&key), "the second starts a block");
        }
        assert_eq!(block.evicted_blocks(), 0);
        tokio::time::advance(Duration::from_secs(899)).await;
        for key in (0..blocked).step_by(997) {
            let left = block.blocked(&key).expect("still blocked");
            assert!(left <= 1_000_000_000, "{left}");
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(block.blocked(&0u32), None, "and no longer");
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_blocks_nearest_their_end_go_first() {
        let refusals = Quota::per_minute(1).unwrap();
        // A table of 64 shards, 8 blocks each at most; counters are plenty.
        let block = Block::holding(
            &refusals,
            Duration::from_secs(900),
            Arc::from("login"),
            1 << 16,
            512,
        );
        // One block a millisecond: each ends after every earlier one (blocks made at one
        // instant end together, and which of them goes first is the table's choice).
        let mut key = 0u32;
        for _ in 0..100 {
            key += 1;
            block.refused(&key);
            block.refused(&key);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let first = key;
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5_000 {
            key += 1;
            block.refused(&key);
            block.refused(&key);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(block.evicted_blocks() > 4_000, "{}", block.evicted_blocks());
        // The earliest blocks (nearest their end) went; the newest stay.
        let earliest = (1..=first).filter(|k| block.blocked(k).is_some()).count();
        assert!(earliest < 10, "{earliest} of the earliest blocks are left");
        assert!(block.blocked(&key).is_some());
        assert!(block.blocked(&(key - 1)).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_refusals_evicts_counters_never_blocks() {
        let refusals = Quota::per_minute(1).unwrap();
        let block = Block::holding(
            &refusals,
            Duration::from_secs(900),
            Arc::from("login"),
            256,
            1 << 16,
        );
        // Blocked first...
        for key in 0..1_000u32 {
            block.refused(&key);
            block.refused(&key);
        }
        // ...then 100,000 clients refused once each: the counters' table overflows.
        for key in 1_000..101_000u32 {
            block.refused(&key);
        }
        assert!((0..1_000u32).all(|key| block.blocked(&key).is_some()));
        assert_eq!(block.evicted_blocks(), 0);
    }

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
