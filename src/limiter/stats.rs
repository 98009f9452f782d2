//! Counts a limiter keeps for operators to read: allowed, refused, waited, near-limit reports,
//! blocks, and the keys refused most, in fixed memory whatever the number of keys.
//!
//! ```
//! use tollgate::key::Header;
//! use tollgate::rate_limit::LimiterStats;
//! use tollgate::{Quota, RateLimitLayer};
//!
//! let stats = LimiterStats::new();
//! let layer = RateLimitLayer::new(Quota::per_minute(100).unwrap())
//!     .key(Header::new("x-api-key"))
//!     .stats(stats.clone());
//! // ... serve; then, from an admin route:
//! let now = stats.snapshot();
//! println!("{} allowed, {} refused; most refused: {:?}", now.allowed, now.refused, now.top_refused);
//! # drop(layer);
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::key::{LogKeys, LoggedKey};

/// How many keys the most-refused sketch follows: any key with more than 1/64 of all
/// refusals is among them.
pub(crate) const TOP_KEYS: usize = 64;

/// How many of them a snapshot lists.
const LISTED: usize = 16;

/// A handle on a limiter's counts: give a clone to [`RateLimitLayer::stats`](crate::RateLimitLayer::stats)
/// (or [`RateLimiter::stats`](crate::RateLimiter::stats)) and read it with
/// [`snapshot`](Self::snapshot). Off unless given: a limiter without one counts nothing here
/// (its `metrics` counters are separate).
#[derive(Clone, Default)]
pub struct LimiterStats {
    cell: Arc<Cell>,
}

#[derive(Default)]
struct Cell {
    allowed: AtomicU64,
    refused: AtomicU64,
    waited: AtomicU64,
    near_limit: AtomicU64,
    blocked: AtomicU64,
    decided_alone: AtomicU64,
    top: Mutex<SpaceSaving>,
}

/// What a limiter has counted since its [`LimiterStats`] was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests allowed (at once or after a wait).
    pub allowed: u64,
    /// Requests refused over the limit (in shadow mode: that would have been).
    pub refused: u64,
    /// Requests made to wait for their slot.
    pub waited: u64,
    /// Near-limit reports.
    pub near_limit: u64,
    /// Blocks started.
    pub blocked: u64,
    /// Requests this instance decided alone while its shared store (Redis) was away: by the
    /// store's failure policy, or refused once a lease was spent ([`Decision::is_alone`](crate::Decision::is_alone)).
    pub decided_alone: u64,
    /// The 16 most refused keys, most first, as logs show them (a keyed hash unless the
    /// limiter logs keys in clear), with their refusal counts: a Space-Saving sketch of
    /// 64 entries, so memory is fixed whatever the number of keys. A key refused
    /// more than 1/64 of all refusals is always followed; a count may be over by
    /// the number of refusals of keys it displaced (Metwally et al.'s bound).
    pub top_refused: Vec<(String, u64)>,
}

impl LimiterStats {
    /// Counts starting at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counts now.
    pub fn snapshot(&self) -> Stats {
        let cell = &*self.cell;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let mut top: Vec<(String, u64)> = lock(&cell.top)
            .entries
            .iter()
            .map(|e| (e.shown.clone(), e.count))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(LISTED);
        Stats {
            allowed: load(&cell.allowed),
            refused: load(&cell.refused),
            waited: load(&cell.waited),
            near_limit: load(&cell.near_limit),
            blocked: load(&cell.blocked),
            decided_alone: load(&cell.decided_alone),
            top_refused: top,
        }
    }

    pub(crate) fn allowed(&self) {
        self.cell.allowed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn waited(&self) {
        self.cell.waited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn near_limit(&self) {
        self.cell.near_limit.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn blocked(&self) {
        self.cell.blocked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn decided_alone(&self) {
        self.cell.decided_alone.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused<K: Hash + fmt::Debug>(&self, key: &K, shown: LogKeys) {
        self.cell.refused.fetch_add(1, Ordering::Relaxed);
        let mut top = lock(&self.cell.top);
        let hash = top.hasher.hash_one(key);
        top.count(hash, || LoggedKey::new(key, shown).to_string());
    }
}

impl fmt::Debug for LimiterStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Metwally's Space-Saving: the heavy hitters of a stream in [`TOP_KEYS`] counters.
#[derive(Default)]
struct SpaceSaving {
    entries: Vec<Entry>,
    hasher: foldhash::quality::RandomState,
}

struct Entry {
    hash: u64,
    shown: String,
    count: u64,
}

impl SpaceSaving {
    fn count(&mut self, hash: u64, shown: impl FnOnce() -> String) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.hash == hash) {
            entry.count += 1;
            return;
        }
        if self.entries.len() < TOP_KEYS {
            self.entries.push(Entry {
                hash,
                shown: shown(),
                count: 1,
            });
            return;
        }
        // The newcomer takes the least counted place, with its count plus one.
        if let Some(least) = self.entries.iter_mut().min_by_key(|e| e.count) {
            *least = Entry {
                hash,
                shown: shown(),
                count: least.count + 1,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_refused_keys_are_found_in_fixed_memory() {
        let stats = LimiterStats::new();
        // 100,000 keys refused once each, three hot keys refused thousands of times.
        for i in 0..100_000u32 {
            stats.refused(&i, LogKeys::Clear);
            if i % 10 == 0 {
                stats.refused(&"hot-a", LogKeys::Clear);
            }
            if i % 20 == 0 {
                stats.refused(&"hot-b", LogKeys::Clear);
            }
            if i % 40 == 0 {
                stats.refused(&"hot-c", LogKeys::Clear);
            }
        }
        let top = stats.snapshot().top_refused;
        assert_eq!(top.len(), LISTED);
        let names: Vec<&str> = top.iter().take(3).map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["\"hot-a\"", "\"hot-b\"", "\"hot-c\""]);
        assert!(top[0].1 >= 10_000);
        assert_eq!(stats.snapshot().refused, 100_000 + 10_000 + 5_000 + 2_500);
    }

    #[test]
    fn keys_are_shown_as_logs_show_them() {
        let stats = LimiterStats::new();
        stats.refused(&"secret-token", LogKeys::Hashed);
        let top = stats.snapshot().top_refused;
        assert!(!top[0].0.contains("secret"), "{top:?}");
    }
}
