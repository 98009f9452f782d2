//! Logs that a flood cannot turn into a flood of logs.
//!
//! Events that a request can cause at INFO or above (a block, a key near its limit, a request
//! without a key for a server reason, a spent retry budget, a refused admin request, a proxy
//! that sends no forwarding header) go through one budget shared by the whole process:
//! [`RATE`] a second, bursts of [`BURST`]. What the budget refuses is counted per call site,
//! and the site's next event that passes is preceded by one line saying how many similar
//! events were left out. A flood on rotating addresses thus writes a few kilobytes of logs a
//! second at INFO, whatever its rate (`BENCHMARKS.md`). DEBUG events (every denial, every
//! wait) are not capped: DEBUG is for looking at one client, not for production floods.
//!
//! Events that no request can repeat at will (start-up, a breaker tripping, Redis coming
//! back) are logged as they are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Events a second that the process-wide budget lets through.
pub(crate) const RATE: u64 = 10;
/// Events the budget lets through at once after a quiet spell.
pub(crate) const BURST: u64 = 20;

/// The process-wide budget.
static BUDGET: Budget = Budget::new(RATE, BURST);

/// `rate` lines a second, bursts of `burst`: a GCRA over nanoseconds since the first event.
pub(crate) struct Budget {
    tat: AtomicU64,
    interval: u64,
    tolerance: u64,
}

impl Budget {
    pub(crate) const fn new(rate: u64, burst: u64) -> Self {
        let interval = 1_000_000_000 / rate;
        Self {
            tat: AtomicU64::new(0),
            interval,
            tolerance: (burst - 1) * interval,
        }
    }

    /// Whether a line may be written at `now` ([`now`]); takes its place if so.
    pub(crate) fn take(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(found) => tat = found,
            }
        }
    }
}

/// Nanoseconds since the first call, on a monotonic clock; never 0.
pub(crate) fn now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

/// One call site of a capped event: what the budget left out there since its last event.
#[derive(Debug)]
pub(crate) struct Site {
    suppressed: AtomicU64,
}

impl Site {
    pub(crate) const fn new() -> Self {
        Self {
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether this site's event may be logged now; `Some(n)` with the events left out before
    /// it, which the caller reports first when `n > 0`.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(now())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        if BUDGET.take(now) {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// At most once an interval, for warnings about one condition that persists ("the store is at
/// its cap"): lock-free, and a lost race only skips a line.
#[derive(Debug)]
pub(crate) struct Every {
    /// When the last line was written, plus one (0: never).
    last: AtomicU64,
    nanos: u64,
}

impl Every {
    pub(crate) const fn new(nanos: u64) -> Self {
        Self {
            last: AtomicU64::new(0),
            nanos,
        }
    }

    /// Whether a line is due at `now` (nanoseconds on any monotonic clock); claims it if so.
    pub(crate) fn due(&self, now: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last - 1) >= self.nanos;
        due && self
            .last
            .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// A `tracing` event at INFO or above that requests can cause, within the process-wide
/// budget: `capped!(WARN, "target", "message"; field = value, ...)`. Events the budget leaves
/// out are counted and reported before the site's next event.
macro_rules! capped {
    ($level:ident, $target:literal, $message:literal $(; $($fields:tt)*)?) => {{
        static SITE: $crate::logs::Site = $crate::logs::Site::new();
        if tracing::enabled!(target: $target, tracing::Level::$level) {
            if let Some(suppressed) = SITE.admit() {
                if suppressed > 0 {
                    tracing::event!(
                        target: $target,
                        tracing::Level::$level,
                        suppressed,
                        concat!("{} similar events suppressed (logs capped process-wide): ", $message),
                        suppressed
                    );
                }
                tracing::event!(target: $target, tracing::Level::$level, $($($fields)*,)? $message);
            }
        }
    }};
}
pub(crate) use capped;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_lets_a_burst_then_the_rate_through_and_counts_the_rest() {
        let budget = Budget::new(RATE, BURST);
        let start = 1_000_000_000_000;
        let burst = (0..1_000).filter(|_| budget.take(start)).count();
        assert_eq!(burst as u64, BURST);
        // Ten seconds later, with a request every millisecond: the rate, no more.
        let passed = (1..=10_000)
            .filter(|ms| budget.take(start + ms * 1_000_000))
            .count();
        assert!(
            (RATE * 10..=RATE * 10 + 1).contains(&(passed as u64)),
            "{passed}"
        );
    }

    #[test]
    fn every_is_due_once_an_interval() {
        let every = Every::new(60);
        assert!(every.due(5));
        assert!(!every.due(6));
        assert!(!every.due(64));
        assert!(every.due(65));
    }
}
