use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many attempts, and how long between them: exponential backoff with full jitter.
///
/// Before retry `n` (1 for the first retry), the wait is a random fraction of
/// `min(cap, base × 2ⁿ⁻¹)`, where `base` is the *throttled* base after a 429 or a
/// `RESOURCE_EXHAUSTED` (the server is overloaded: back off harder) and the *transient* base
/// otherwise. A delay the server asked for (`Retry-After` and kin) replaces the computed one.
/// Sums saturate: attempt 1000 waits at most `cap`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::retry::Backoff;
///
/// let backoff = Backoff::standard();
/// assert_eq!(backoff.max_attempts(), 3);
/// assert_eq!(backoff.ceiling(1, false), Duration::from_millis(100));
/// assert_eq!(backoff.ceiling(3, false), Duration::from_millis(400));
/// assert_eq!(backoff.ceiling(2, true), Duration::from_secs(2));
/// assert_eq!(backoff.ceiling(1_000, true), Duration::from_secs(5));
/// // With the jitter drawn at 0.5, half the ceiling.
/// assert_eq!(backoff.delay(2, false, 0.5), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    max_attempts: u32,
    transient: Duration,
    throttled: Duration,
    cap: Duration,
}

impl Backoff {
    /// The default: 3 attempts in all; 100 ms base, 1 s after throttling; waits capped at 5 s.
    pub const fn standard() -> Self {
        Self {
            max_attempts: 3,
            transient: Duration::from_millis(100),
            throttled: Duration::from_secs(1),
            cap: Duration::from_secs(5),
        }
    }

    /// For a person waiting: 3 attempts; 25 ms base, 250 ms after throttling; capped at 1 s.
    pub const fn interactive() -> Self {
        Self {
            max_attempts: 3,
            transient: Duration::from_millis(25),
            throttled: Duration::from_millis(250),
            cap: Duration::from_secs(1),
        }
    }

    /// For jobs that can wait: 6 attempts; 500 ms base, 5 s after throttling; capped at 60 s.
    pub const fn background() -> Self {
        Self {
            max_attempts: 6,
            transient: Duration::from_millis(500),
            throttled: Duration::from_secs(5),
            cap: Duration::from_secs(60),
        }
    }

    /// No retries: one attempt.
    pub const fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::standard()
        }
    }

    /// At most `n` attempts in all, the first included (at least 1).
    #[must_use]
    pub const fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = if n == 0 { 1 } else { n };
        self
    }

    /// The base after transient failures.
    #[must_use]
    pub const fn with_transient_base(mut self, base: Duration) -> Self {
        self.transient = base;
        self
    }

    /// The base after throttling (429, `RESOURCE_EXHAUSTED`).
    #[must_use]
    pub const fn with_throttled_base(mut self, base: Duration) -> Self {
        self.throttled = base;
        self
    }

    /// The longest computed wait.
    #[must_use]
    pub const fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Attempts in all, the first included.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The largest wait before retry `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32, throttled: bool) -> Duration {
        let base = if throttled {
            self.throttled
        } else {
            self.transient
        };
        let doublings = retry.saturating_sub(1).min(63);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry `retry`, given a jitter draw in `[0, 1)` (values outside are
    /// clamped).
    pub fn delay(&self, retry: u32, throttled: bool, jitter: f64) -> Duration {
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self.ceiling(retry, throttled).mul_f64(jitter)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::standard()
    }
}

/// A source of jitter: numbers in `[0, 1)`. [`RandomJitter`] by default; any closure
/// `Fn() -> f64` given to [`RetryLayer::jitter`](super::RetryLayer::jitter) (tests fix it with
/// `|| 0.5`).
pub(crate) trait Jitter: Send + Sync + 'static {
    /// The next draw.
    fn draw(&self) -> f64;
}

impl<F> Jitter for F
where
    F: Fn() -> f64 + Send + Sync + 'static,
{
    fn draw(&self) -> f64 {
        self()
    }
}

/// Uniform draws from a SplitMix64 sequence seeded at random per instance: cheap, lock-free,
/// good enough to spread retries (not for anything secret).
pub(crate) struct RandomJitter {
    state: AtomicU64,
}

impl RandomJitter {
    /// A sequence with a random seed.
    pub(crate) fn new() -> Self {
        use std::hash::BuildHasher;
        let seed = foldhash::quality::RandomState::default().hash_one(std::time::SystemTime::now());
        Self {
            state: AtomicU64::new(seed),
        }
    }
}

impl Jitter for RandomJitter {
    fn draw(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits, as a fraction of 2^53: uniform in [0, 1).
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl fmt::Debug for RandomJitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RandomJitter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_at_high_attempt_counts() {
        let huge = Backoff::standard()
            .with_cap(Duration::MAX)
            .with_transient_base(Duration::from_secs(u64::MAX / 2));
        assert_eq!(huge.ceiling(u32::MAX, false), Duration::MAX);
        assert_eq!(
            Backoff::standard().ceiling(0, false),
            Duration::from_millis(100)
        );
        assert_eq!(
            Backoff::standard().delay(3, false, f64::NAN),
            Duration::ZERO
        );
        assert_eq!(
            Backoff::standard().delay(3, false, 7.0),
            Duration::from_millis(400)
        );
        assert_eq!(Backoff::standard().with_max_attempts(0).max_attempts(), 1);
    }

    #[test]
    fn random_jitter_is_in_range_and_spread() {
        let jitter = RandomJitter::new();
        let draws: Vec<f64> = (0..10_000).map(|_| jitter.draw()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }
}
