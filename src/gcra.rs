//! The arithmetic of the generic cell rate algorithm (GCRA): pure functions of one
//! theoretical arrival time (TAT), the current time and a request's cost. No I/O, no clock,
//! no storage: the memory store and the Redis script both follow these rules.
//!
//! ```text
//! let g = Gcra::new(&Quota::per_second(2)?); // one per 500 ms, burst 2
//! let now = 10_000_000_000;                   // nanoseconds on some monotonic clock
//! let first = g.step(0, now, 1, 0);           // 0: no state yet, a full bucket
//! let second = g.step(first.tat, now, 1, 0);
//! let third = g.step(second.tat, now, 1, 0);  // denied: third.wait == 500 ms
//! ```
//!
//! (The module is the crate's own: stores outside it decide with
//! [`Ask::apply`](crate::store::Ask::apply). This example runs as the unit test
//! `the_module_example`.)
//!
//! # The model
//!
//! A bucket of `burst` tokens refills one token per `interval`. GCRA stores, instead of a
//! token count and a timestamp, one instant: the TAT, the time at which the bucket will be
//! full again. With `window = interval × burst`:
//!
//! - a request of cost `c` moves the TAT to `max(tat, now) + c × interval`;
//! - it conforms when that new TAT is at most `now + window`, that is when it fits;
//! - `tat ≤ now` means a full bucket, identical to no state at all: such a key can be
//!   forgotten without loss, which keeps memory bounded.
//!
//! All times are `u64` nanoseconds; sums saturate, so a hostile cost or a clock far in the
//! future cannot wrap around.

//!
//! A calendar quota (see [`crate::calendar`]) is the same arithmetic read at a virtual now,
//! the end of the current window, with an interval of 1 µs: its state is `end + used × 1 µs`,
//! and a request fits when the count stays within the window's `n`. A refusal waits for the
//! window's end; nothing waits into the next window.

use std::time::Duration;

use crate::calendar::Calendar;
use crate::Quota;

/// The numbers of a quota that GCRA uses, in nanoseconds, and its calendar if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    window: u64,
    calendar: Option<Calendar>,
}

/// The outcome of one request against one quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Whether the request may pass, at once or after [`wait`](Self::wait).
    pub allowed: bool,
    /// The TAT to store when allowed; the unchanged TAT when denied.
    pub tat: u64,
    /// Allowed: how long the request waits for its slot (0 unless a maximum wait was given).
    /// Denied: how long until a request of this cost would pass (the retry-after).
    pub wait: u64,
}

impl Gcra {
    /// The parameters of `quota`.
    #[inline]
    pub fn new(quota: &Quota) -> Self {
        Self {
            interval: quota.interval_nanos(),
            window: quota.window_nanos(),
            calendar: quota.calendar(),
        }
    }

    /// From the interval and the window (`interval × burst`), in nanoseconds.
    #[inline]
    pub(crate) const fn from_nanos(interval: u64, window: u64) -> Self {
        // Never a calendar quota: the compiler drops the calendar branches from the hot path
        // built on this.
        Self {
            interval,
            window,
            calendar: None,
        }
    }

    /// The quota's calendar, if it is a calendar quota.
    #[inline]
    fn calendar(&self) -> Option<Calendar> {
        self.calendar
    }

    /// The time the state is read at: `now`, or for a calendar quota the end of the window
    /// holding `now` (nanoseconds since the Unix epoch).
    #[inline]
    pub(crate) fn at(&self, now: u64) -> u64 {
        match self.calendar() {
            None => now,
            Some(calendar) => calendar.end(now),
        }
    }

    /// Whether the quota is a calendar one.
    #[inline]
    pub(crate) fn is_calendar(&self) -> bool {
        self.calendar.is_some()
    }

    /// For a calendar quota, the end of the window holding `now`.
    #[inline]
    pub(crate) fn window_end(&self, now: u64) -> Option<u64> {
        self.calendar().map(|calendar| calendar.end(now))
    }

    /// The interval, in nanoseconds (the Redis store's scripts take it).
    #[inline]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn interval_nanos(&self) -> u64 {
        self.interval
    }

    /// The window (`interval × burst`), in nanoseconds.
    #[inline]
    pub fn window_nanos(&self) -> u64 {
        self.window
    }

    /// Decides a request of `cost` tokens at `now` against the stored `tat` (0 for none).
    ///
    /// With `max_wait > 0` a request that does not fit yet may still be allowed, provided its
    /// slot comes within `max_wait`: it reserves the slot (the TAT moves forward) and
    /// [`Step::wait`] says how long to sleep before going ahead. Cost 0 is a peek: always
    /// allowed, TAT unchanged.
    #[inline]
    pub fn step(&self, tat: u64, now: u64, cost: u32, max_wait: u64) -> Step {
        if let Some(calendar) = self.calendar() {
            return self.step_in_window(calendar.end(now), tat, now, cost);
        }
        let new_tat = tat.max(now).saturating_add(self.charge(cost));
        // A peek takes nothing, so it passes at once, even past a bucket reserved beyond its
        // window by waiting requests (where a request of cost 1 would wait).
        let wait = match cost {
            0 => 0,
            _ => new_tat.saturating_sub(self.window).saturating_sub(now),
        };
        if wait <= max_wait {
            Step {
                allowed: true,
                tat: new_tat,
                wait,
            }
        } else {
            Step {
                allowed: false,
                tat,
                wait,
            }
        }
    }

    /// A calendar quota's step: read at the window's `end`, never waiting into the next window.
    #[cold]
    fn step_in_window(&self, end: u64, tat: u64, now: u64, cost: u32) -> Step {
        let new_tat = tat.max(end).saturating_add(self.charge(cost));
        if cost == 0 || new_tat - end <= self.window_nanos() {
            Step {
                allowed: true,
                tat: new_tat,
                wait: 0,
            }
        } else {
            Step {
                allowed: false,
                tat,
                wait: end.saturating_sub(now),
            }
        }
    }

    /// Undoes the cost of a request that reserved a slot and never used it: the inverse of an
    /// allowed [`step`](Self::step), exact unless other requests moved the TAT in between, and
    /// then off by at most the time between the two.
    #[inline]
    pub fn refund(&self, tat: u64, cost: u32) -> u64 {
        tat.saturating_sub(self.charge(cost))
    }

    /// How far a request of `cost` moves the TAT: `cost × interval`.
    #[inline]
    pub fn charge(&self, cost: u32) -> u64 {
        self.interval.saturating_mul(u64::from(cost))
    }

    /// What a client may know at time `at` of a bucket whose TAT is `tat`.
    #[inline]
    pub fn status(&self, tat: u64, at: u64) -> Status {
        if let Some(end) = self.window_end(at) {
            return self.status_of_window(tat.saturating_sub(end), end.saturating_sub(at));
        }
        let debt = tat.saturating_sub(at);
        let credit = self.window.saturating_sub(debt);
        let remaining = credit / self.interval;
        // Time until `remaining` grows by one.
        let refill_after = if debt == 0 {
            0
        } else if debt <= self.window {
            match debt % self.interval {
                0 => self.interval,
                part => part,
            }
        } else {
            debt - self.window + self.interval
        };
        Status {
            limit: u32::try_from(self.window / self.interval).unwrap_or(u32::MAX),
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset_after: debt,
            refill_after,
        }
    }
}

/// A request that waits (for a rate quota's slot) goes out at `now + wait`: a calendar quota
/// that counted it in a window ending by then refuses it instead, until its window's end, so
/// that a request never goes out in a window other than the one that counted it. `steps` are
/// those of one request of `cost` on each of `gcras`, all decided at `now`.
#[inline]
pub(crate) fn keep_in_windows(gcras: &[Gcra], steps: &mut [Step], now: u64, cost: u32) {
    let wait = steps
        .iter()
        .filter(|step| step.allowed)
        .map(|step| step.wait)
        .max()
        .unwrap_or(0);
    if cost == 0 || wait == 0 {
        return;
    }
    for (gcra, step) in gcras.iter().zip(steps.iter_mut()) {
        match gcra.window_end(now) {
            Some(end) if step.allowed && end <= now.saturating_add(wait) => {
                *step = Step {
                    allowed: false,
                    tat: gcra.refund(step.tat, cost),
                    wait: end.saturating_sub(now),
                };
            }
            _ => {}
        }
    }
}

impl Gcra {
    /// A calendar quota's status: `used` of its window (in the state's units), `left` until
    /// the window's end, when everything comes back.
    pub(crate) fn status_of_window(&self, used: u64, left: u64) -> Status {
        let back = if used == 0 { 0 } else { left };
        let window = self.window_nanos();
        Status {
            limit: u32::try_from(window / self.interval).unwrap_or(u32::MAX),
            remaining: u32::try_from(window.saturating_sub(used) / self.interval)
                .unwrap_or(u32::MAX),
            reset_after: back,
            refill_after: back,
        }
    }
}

/// The state of one quota for one key, as rate-limit headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    limit: u32,
    remaining: u32,
    reset_after: u64,
    refill_after: u64,
}

impl Status {
    /// The burst: how many requests a full bucket holds.
    #[inline]
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// How many requests of cost 1 would pass now.
    #[inline]
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Time until the bucket is full again; zero when it is full.
    #[inline]
    pub fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.reset_after)
    }

    /// Time until one more token is available (the IETF `t` parameter); zero when the bucket
    /// is full.
    #[inline]
    pub fn refill_after(&self) -> Duration {
        Duration::from_nanos(self.refill_after)
    }

    #[inline]
    pub(crate) fn reset_after_nanos(&self) -> u64 {
        self.reset_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_example() {
        let g = Gcra::new(&Quota::per_second(2).unwrap());
        let now = 10_000_000_000;
        let first = g.step(0, now, 1, 0);
        assert!(first.allowed);
        let second = g.step(first.tat, now, 1, 0);
        let third = g.step(second.tat, now, 1, 0);
        assert!(second.allowed && !third.allowed);
        assert_eq!(third.wait, 500_000_000);
    }
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    fn gcra(per_second: u32, burst: u32) -> Gcra {
        Gcra::new(
            &Quota::per_second(per_second)
                .unwrap()
                .with_burst(burst)
                .unwrap(),
        )
    }

    /// Runs `n` requests of cost 1 at `now` and counts the admitted ones.
    fn admit(g: &Gcra, tat: &mut u64, now: u64, n: u32) -> u32 {
        let mut admitted = 0;
        for _ in 0..n {
            let step = g.step(*tat, now, 1, 0);
            if step.allowed {
                *tat = step.tat;
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn burst_then_steady_rate() {
        let g = gcra(5, 10);
        let mut tat = 0;
        let t0 = 100 * SEC;
        assert_eq!(admit(&g, &mut tat, t0, 50), 10);
        // 5 per second: one more every 200 ms, exactly.
        assert_eq!(admit(&g, &mut tat, t0 + SEC / 5 - 1, 5), 0);
        assert_eq!(admit(&g, &mut tat, t0 + SEC / 5, 5), 1);
        assert_eq!(admit(&g, &mut tat, t0 + 2 * SEC, 50), 9);
        // A quiet spell refills the burst, never more.
        assert_eq!(admit(&g, &mut tat, t0 + 100 * SEC, 50), 10);
    }

    #[test]
    fn denial_says_when_to_retry_and_changes_nothing() {
        let g = gcra(5, 10);
        let now = 7 * SEC;
        let mut tat = 0;
        admit(&g, &mut tat, now, 10);
        let denied = g.step(tat, now, 1, 0);
        assert_eq!(
            denied,
            Step {
                allowed: false,
                tat,
                wait: SEC / 5
            }
        );
        let three = g.step(tat, now, 3, 0);
        assert_eq!(three.wait, 3 * SEC / 5);
        assert!(g.step(tat, now + three.wait, 3, 0).allowed);
    }

    #[test]
    fn peek_consumes_nothing() {
        let g = gcra(1, 2);
        let step = g.step(5 * SEC, 4 * SEC, 0, 0);
        assert!(step.allowed);
        assert_eq!(step.wait, 0);
        assert_eq!(g.status(step.tat, 4 * SEC).remaining(), 1);
    }

    #[test]
    fn waiting_reserves_slots_in_order() {
        let g = gcra(1, 1);
        let now = 50 * SEC;
        let a = g.step(0, now, 1, 3 * SEC);
        let b = g.step(a.tat, now, 1, 3 * SEC);
        let c = g.step(b.tat, now, 1, 3 * SEC);
        let d = g.step(c.tat, now, 1, 3 * SEC);
        assert_eq!([a.wait, b.wait, c.wait], [0, SEC, 2 * SEC]);
        assert!(a.allowed && b.allowed && c.allowed);
        assert_eq!(d.wait, 3 * SEC);
        let e = g.step(d.tat, now, 1, 3 * SEC);
        assert!(!e.allowed);
        assert_eq!(e.wait, 4 * SEC);
        // Giving a reservation back frees its slot for the next one.
        let back = g.refund(d.tat, 1);
        assert_eq!(back, c.tat);
    }

    #[test]
    fn status_reports_remaining_reset_and_refill() {
        let g = gcra(5, 10); // interval 200 ms, window 2 s
        let now = 3 * SEC;
        let full = g.status(0, now);
        assert_eq!((full.limit(), full.remaining()), (10, 10));
        assert_eq!(
            (full.reset_after(), full.refill_after()),
            (Duration::ZERO, Duration::ZERO)
        );

        let one_used = g.status(now + SEC / 5, now);
        assert_eq!(one_used.remaining(), 9);
        assert_eq!(one_used.reset_after(), Duration::from_millis(200));
        assert_eq!(one_used.refill_after(), Duration::from_millis(200));

        let partial = g.status(now + SEC / 2, now); // 2.5 tokens owed
        assert_eq!(partial.remaining(), 7);
        assert_eq!(partial.refill_after(), Duration::from_millis(100));

        let empty = g.status(now + 2 * SEC, now);
        assert_eq!(empty.remaining(), 0);
        assert_eq!(empty.refill_after(), Duration::from_millis(200));
        assert_eq!(empty.reset_after(), Duration::from_secs(2));

        // Reserved beyond the window (wait mode): 0 remaining until the excess has passed.
        let over = g.status(now + 3 * SEC, now);
        assert_eq!(over.remaining(), 0);
        assert_eq!(over.refill_after(), Duration::from_millis(1200));
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let g = gcra(1, 1);
        let step = g.step(u64::MAX - 5, u64::MAX - 10, u32::MAX, u64::MAX);
        assert_eq!(step.tat, u64::MAX);
        let denied = g.step(u64::MAX, 0, 1, 0);
        assert!(!denied.allowed);
    }

    proptest! {
        /// Over any schedule of requests, a quota admits at most `burst + elapsed / interval`.
        #[test]
        fn never_admits_more_than_the_quota_allows(
            per_second in 1u32..1000,
            burst in 1u32..100,
            gaps in proptest::collection::vec(0u64..50_000_000, 1..400),
            costs in proptest::collection::vec(1u32..4, 400),
        ) {
            let g = gcra(per_second, burst);
            let interval = SEC / u64::from(per_second);
            let start = 1_000 * SEC;
            let (mut now, mut tat, mut admitted) = (start, 0u64, 0u64);
            for (gap, cost) in gaps.iter().zip(&costs) {
                now += gap;
                let cost = (*cost).min(burst);
                let step = g.step(tat, now, cost, 0);
                if step.allowed {
                    tat = step.tat;
                    admitted += u64::from(cost);
                }
            }
            let bound = u64::from(burst) + (now - start) / interval;
            prop_assert!(admitted <= bound, "admitted {} > bound {}", admitted, bound);
        }

        /// A denied request is told the exact wait: one nanosecond earlier it still fails,
        /// at the wait it passes.
        #[test]
        fn retry_after_is_exact(
            per_second in 1u32..1000,
            burst in 1u32..50,
            used in 0u64..200,
            cost in 1u32..50,
        ) {
            let cost = cost.min(burst);
            let g = gcra(per_second, burst);
            let now = 500 * SEC;
            let tat = now + used * (SEC / u64::from(per_second));
            let step = g.step(tat, now, cost, 0);
            if !step.allowed {
                prop_assert!(step.wait > 0);
                prop_assert!(!g.step(tat, now + step.wait - 1, cost, 0).allowed);
                prop_assert!(g.step(tat, now + step.wait, cost, 0).allowed);
            }
        }

        /// Remaining never exceeds the limit, and `remaining` requests really do pass.
        #[test]
        fn remaining_is_honest(per_second in 1u32..1000, burst in 1u32..50, used in 0u64..100) {
            let g = gcra(per_second, burst);
            let now = 500 * SEC;
            let mut tat = now + used * (SEC / u64::from(per_second)) / 2;
            let status = g.status(tat, now);
            prop_assert!(status.remaining() <= status.limit());
            let remaining = status.remaining();
            prop_assert_eq!(admit(&g, &mut tat, now, remaining + 1), remaining);
        }
    }
}
