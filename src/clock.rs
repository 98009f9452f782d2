//! Where "now" comes from: one clock per store, read once per decision.
//!
//! - The default: the CPU's time-stamp counter through `quanta` where it is invariant across
//!   cores, the OS's monotonic clock elsewhere (see [Across cores](#across-cores)).
//! - [`TokioClock`]: tokio's clock, which `tokio::time::pause` and `advance` control. Use it in
//!   tests, so that waits and refills are exact and take no wall time.
//! - Any other [`Clock`] of yours.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::clock::{Clock, TokioClock};
//! use tollgate::{MemoryStore, Quota, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let clock = TokioClock::new();
//! let before = clock.now();
//! tokio::time::advance(Duration::from_millis(250)).await;
//! assert_eq!(clock.now() - before, 250_000_000);
//!
//! // A limiter whose refills follow paused time.
//! let store = MemoryStore::builder().clock(TokioClock::new()).build();
//! let limiter = RateLimiter::new(Quota::per_second(1).unwrap()).store(store);
//! assert!(limiter.check().is_ok() && limiter.check().is_err());
//! tokio::time::advance(Duration::from_secs(1)).await;
//! assert!(limiter.check().is_ok());
//! # }
//! ```
//!
//! # Across cores
//!
//! governor's users saw its TSC clock go backwards between cores (governor issue 299). quanta
//! reads the TSC only where the processor has an *invariant* TSC and `rdtscp` (synchronised
//! across cores, constant rate through power states; checked with `cpuid` once), and reads the
//! OS's monotonic clock otherwise. Where it does read the TSC, what skew remains between cores
//! is small (nanoseconds to a microsecond), and it moves a decision by no more than itself: a
//! reading behind the others sees that much more debt (`TAT − now`) and is stricter by it, a
//! reading ahead sees that much less and may admit that much early. The OS clock
//! (`std::time::Instant`) would remove even that, at a measured cost: 26.3 ns a read against
//! 10.1 ns here (`cargo bench -p tests-integration --bench rate_limit -- "clock read"`, BENCHMARKS.md), which would
//! more than double an unkeyed decision.

#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(test)]
use std::sync::Arc;
use std::time::Duration;

/// A monotonic source of time in nanoseconds since the Unix epoch.
///
/// Stores call [`now`](Clock::now) once per decision; everything they answer (waits,
/// resets) is a duration from that reading, so the same clock serves decisions and headers.
/// Only calendar quotas ([`Quota::per_calendar_day`](crate::Quota::per_calendar_day)) read
/// the reading as a date: a clock of yours that counts from another origin shifts their
/// windows by it, and changes nothing else.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch (UTC), as of the clock's start; then steady: it never
    /// decreases, and does not follow later steps of the system's wall clock.
    fn now(&self) -> u64;
}

/// The wall clock's nanoseconds since the Unix epoch (0 before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

pub(crate) use self::default::MonotonicClock;

/// The default clock, named by the stores' default type parameters but by no user: public in a
/// private module.
mod default {
    use std::fmt;
    use std::time::Duration;

    use super::Clock;

    /// The default clock: the time-stamp counter read through `quanta`, calibrated once per
    /// process (see the [module docs](self#across-cores)), counted from the wall clock's
    /// reading when it was built. It follows real time, not tokio's paused clock.
    #[derive(Clone)]
    pub struct MonotonicClock {
        clock: quanta::Clock,
        origin: u64,
        unix_origin: u64,
    }

    impl MonotonicClock {
        /// A clock that reads the wall clock's time now.
        pub(crate) fn new() -> Self {
            let clock = quanta::Clock::new();
            let origin = clock.raw();
            Self {
                clock,
                origin,
                unix_origin: super::unix_now(),
            }
        }
    }

    impl Default for MonotonicClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Clock for MonotonicClock {
        #[inline]
        fn now(&self) -> u64 {
            // No overflow before the year 2554.
            self.unix_origin
                .wrapping_add(self.clock.delta_as_nanos(self.origin, self.clock.raw()))
        }
    }

    impl fmt::Debug for MonotonicClock {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("MonotonicClock")
                .field("now", &Duration::from_nanos(self.now()))
                .finish()
        }
    }
}

/// tokio's clock: paused, advanced and auto-advanced by `tokio::time::pause` and `advance`.
///
/// It reads the wall clock's time at the first `TokioClock` of the process, then moves as
/// tokio's clock moves, so that every `TokioClock` of the process reads the same time (paused
/// time stands the calendar still). Reading it costs more than the default clock (tokio looks
/// up the runtime's clock when its `test-util` feature is on), so it is meant for tests.
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
    unix_origin: u64,
}

impl TokioClock {
    /// tokio's clock, counted from the Unix epoch.
    pub fn new() -> Self {
        static ORIGIN: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
        let (origin, unix_origin) = *ORIGIN.get_or_init(|| (std::time::Instant::now(), unix_now()));
        Self {
            origin: tokio::time::Instant::from_std(origin),
            unix_origin,
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> u64 {
        let now = tokio::time::Instant::now();
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        match now.checked_duration_since(self.origin) {
            Some(after) => self.unix_origin.saturating_add(nanos(after)),
            // A runtime paused before the first clock was made.
            None => self
                .unix_origin
                .saturating_sub(nanos(self.origin.saturating_duration_since(now))),
        }
    }
}

/// A clock that moves only when told to. Clones share the time.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct ManualClock {
    nanos: Arc<AtomicU64>,
}

#[cfg(test)]
impl ManualClock {
    /// A clock at its origin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by` (saturating).
    pub(crate) fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_add(by))
            });
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.nanos.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward() {
        let clock = MonotonicClock::new();
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        let b = clock.now();
        assert!(b >= a + 1_000_000, "{a} then {b}");
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        let a = clock.now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.now() - a, 3_000_000_000);
    }

    #[test]
    fn manual_clock_saturates() {
        let clock = ManualClock::new();
        clock.advance(Duration::MAX);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), u64::MAX);
    }
}
