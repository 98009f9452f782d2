use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::{Clock, MonotonicClock};

/// Retries allowed over a sliding window: `ratio` of the requests made plus `floor` per
/// second (by default 20% plus 10 per second over 10 s, the Finagle and tower defaults).
///
/// Every request deposits; every retry withdraws. When an upstream fails every request, the
/// retries stay near `ratio` of the traffic instead of multiplying it by the attempt count,
/// the storm that turns an outage into a longer one. Clones share the budget.
///
/// Time comes from the crate's default clock unless [`with_clock`](Self::with_clock) says
/// otherwise (a [`TokioClock`](crate::clock::TokioClock) in tests with paused time).
/// Concurrent withdrawals may overdraw by at most one retry each.
///
/// ```
/// use std::time::Duration;
/// use tollgate::retry::RetryBudget;
///
/// let budget = RetryBudget::new(Duration::from_secs(10), 0.2, 0);
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert!(budget.try_withdraw());
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw(), "20% of 10 requests is 2 retries");
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Budget>,
}

const SLOTS: u64 = 10;

/// Where a budget reads the time: the default clock is called directly (every request reads
/// it), any other through a pointer.
enum Now {
    Monotonic(MonotonicClock),
    Other(Box<dyn Fn() -> u64 + Send + Sync>),
}

impl Now {
    fn of(clock: impl Clock) -> Self {
        match (&clock as &dyn std::any::Any).downcast_ref::<MonotonicClock>() {
            Some(monotonic) => Self::Monotonic(monotonic.clone()),
            None => Self::Other(Box::new(move || clock.now())),
        }
    }

    #[inline]
    fn read(&self) -> u64 {
        match self {
            Self::Monotonic(clock) => clock.now(),
            Self::Other(now) => now(),
        }
    }
}
const COUNT_BITS: u32 = 22;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_BITS: u32 = 64 - 2 * COUNT_BITS;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

struct Budget {
    now: Now,
    /// `2^64 / slot_nanos`, so that finding a slot is a multiplication, not a division.
    slot_reciprocal: u64,
    ratio: f64,
    reserve: f64,
    /// Per slot: epoch (20 bits) | requests (22 bits) | retries (22 bits).
    slots: [AtomicU64; SLOTS as usize],
}

impl RetryBudget {
    /// A budget over `window` allowing `ratio` retries per request (0.2: one retry per five
    /// requests) plus `floor_per_second` retries per second whatever the traffic.
    pub fn new(window: Duration, ratio: f64, floor_per_second: u32) -> Self {
        Self::with_clock(window, ratio, floor_per_second, MonotonicClock::new())
    }

    /// The same, on another clock.
    pub fn with_clock(
        window: Duration,
        ratio: f64,
        floor_per_second: u32,
        clock: impl Clock,
    ) -> Self {
        let window = window.max(Duration::from_millis(SLOTS));
        let ratio = if ratio.is_finite() {
            ratio.max(0.0)
        } else {
            0.0
        };
        let slot_nanos = u64::try_from(window.as_nanos() / u128::from(SLOTS))
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            inner: Arc::new(Budget {
                now: Now::of(clock),
                slot_reciprocal: u64::MAX / slot_nanos,
                ratio,
                reserve: f64::from(floor_per_second) * window.as_secs_f64(),
                slots: Default::default(),
            }),
        }
    }

    /// Records a request.
    pub fn deposit(&self) {
        self.inner.add(1, 0);
    }

    /// Takes one retry out of the budget, if it holds one.
    pub fn try_withdraw(&self) -> bool {
        let (requests, retries) = self.inner.totals();
        let available = self.inner.reserve + self.inner.ratio * requests as f64 - retries as f64;
        if available >= 1.0 {
            self.inner.add(0, 1);
            true
        } else {
            false
        }
    }

    /// Retries the budget would allow now.
    pub fn remaining(&self) -> u64 {
        let (requests, retries) = self.inner.totals();
        let available = self.inner.reserve + self.inner.ratio * requests as f64 - retries as f64;
        available.max(0.0) as u64
    }
}

impl Default for RetryBudget {
    /// 20% of requests plus 10 per second, over 10 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(10), 0.2, 10)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.inner.ratio)
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl Budget {
    /// The number of the current slot: now divided by the slot's length, or one less within a
    /// few nanoseconds of a boundary, which moves the boundary, not the window.
    #[inline]
    fn epoch(&self) -> u64 {
        ((u128::from(self.now.read()) * u128::from(self.slot_reciprocal)) >> 64) as u64
    }

    #[inline]
    fn add(&self, requests: u64, retries: u64) {
        let epoch = self.epoch();
        let slot = &self.slots[(epoch % SLOTS) as usize];
        let tag = epoch & EPOCH_MASK;
        // The common case, a request in a slot already of this epoch and far from full: one
        // add. (Far from full: racing adders cannot carry into the epoch bits.)
        let current = slot.load(Ordering::Acquire);
        let (slot_epoch, old_requests, old_retries) = unpack(current);
        if slot_epoch == tag
            && old_requests + requests < COUNT_MAX / 2
            && old_retries + retries < COUNT_MAX / 2
        {
            slot.fetch_add((requests << COUNT_BITS) | retries, Ordering::AcqRel);
            return;
        }
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
            let (slot_epoch, old_requests, old_retries) = unpack(packed);
            let (old_requests, old_retries) = if slot_epoch == tag {
                (old_requests, old_retries)
            } else {
                (0, 0)
            };
            Some(pack(
                tag,
                (old_requests + requests).min(COUNT_MAX),
                (old_retries + retries).min(COUNT_MAX),
            ))
        });
    }

    /// Requests and retries within the window.
    fn totals(&self) -> (u64, u64) {
        let now = self.epoch();
        let (mut requests, mut retries) = (0, 0);
        for slot in &self.slots {
            let (epoch, slot_requests, slot_retries) = unpack(slot.load(Ordering::Acquire));
            let age = (now & EPOCH_MASK).wrapping_sub(epoch) & EPOCH_MASK;
            if age < SLOTS {
                requests += slot_requests;
                retries += slot_retries;
            }
        }
        (requests, retries)
    }
}

fn pack(epoch: u64, requests: u64, retries: u64) -> u64 {
    (epoch << (2 * COUNT_BITS)) | (requests << COUNT_BITS) | retries
}

fn unpack(packed: u64) -> (u64, u64, u64) {
    (
        packed >> (2 * COUNT_BITS),
        (packed >> COUNT_BITS) & COUNT_MAX,
        packed & COUNT_MAX,
    )
}

/// One budget per destination (URI authority), made on first use from a template, so that
/// one failing upstream cannot spend the retries of the healthy ones. At most `max`
/// destinations get their own; the rest share one.
#[derive(Clone)]
pub(crate) struct PerDestination {
    template: (Duration, f64, u32),
    max: usize,
    budgets: Arc<Mutex<HashMap<http::uri::Authority, RetryBudget>>>,
    overflow: RetryBudget,
}

impl PerDestination {
    pub(crate) fn new(window: Duration, ratio: f64, floor: u32, max: usize) -> Self {
        Self {
            template: (window, ratio, floor),
            max,
            budgets: Arc::default(),
            overflow: RetryBudget::new(window, ratio, floor),
        }
    }

    pub(crate) fn get(&self, authority: Option<&http::uri::Authority>) -> RetryBudget {
        let Some(authority) = authority else {
            return self.overflow.clone();
        };
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = budgets.get(authority) {
            return budget.clone();
        }
        if budgets.len() >= self.max {
            return self.overflow.clone();
        }
        let (window, ratio, floor) = self.template;
        let budget = RetryBudget::new(window, ratio, floor);
        budgets.insert(authority.clone(), budget.clone());
        budget
    }
}

impl fmt::Debug for PerDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerDestination")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let budget = RetryBudget::with_clock(Duration::from_secs(10), 0.5, 0, TokioClock::new());
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.remaining(), 5);
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..4 {
            budget.deposit();
        }
        assert_eq!(budget.remaining(), 7);
        // The first ten requests leave the window; the last four remain.
        tokio::time::advance(Duration::from_millis(5_500)).await;
        assert_eq!(budget.remaining(), 2);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(budget.remaining(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_some_retries_without_traffic() {
        let budget = RetryBudget::with_clock(Duration::from_secs(10), 0.2, 1, TokioClock::new());
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn hostile_parameters_are_tamed() {
        let budget = RetryBudget::new(Duration::ZERO, f64::NAN, 0);
        budget.deposit();
        assert!(!budget.try_withdraw());
        let negative = RetryBudget::new(Duration::from_secs(1), -3.0, 0);
        negative.deposit();
        assert_eq!(negative.remaining(), 0);
    }

    #[test]
    fn per_destination_budgets_are_separate_and_bounded() {
        let per = PerDestination::new(Duration::from_secs(10), 0.0, 1, 2);
        let a: http::uri::Authority = "a.example".parse().unwrap();
        let b: http::uri::Authority = "b.example".parse().unwrap();
        let c: http::uri::Authority = "c.example".parse().unwrap();
        while per.get(Some(&a)).try_withdraw() {}
        assert!(per.get(Some(&b)).try_withdraw(), "b has its own budget");
        while per.get(Some(&c)).try_withdraw() {}
        // Past the limit of two destinations, others share the overflow budget, now spent.
        let d: http::uri::Authority = "d.example".parse().unwrap();
        assert!(!per.get(Some(&d)).try_withdraw());
    }
}
