//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`: the de facto fields
//! many clients read.
//!
//! `X-RateLimit-Reset` means two things in the wild: seconds from now (most APIs) or the Unix
//! time in seconds (GitHub). The layer writes the delta unless told otherwise
//! ([`Reset::EpochSeconds`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};

use super::ceil_seconds;
use crate::Decision;

/// `x-ratelimit-limit`.
pub(crate) const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`.
pub(crate) const X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`.
pub(crate) const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `ratelimit-limit`, of the IETF draft's earlier versions (read by clients, never sent).
pub(crate) const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `ratelimit-remaining`, of the IETF draft's earlier versions.
pub(crate) const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `ratelimit-reset`, of the IETF draft's earlier versions.
pub(crate) const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// How `X-RateLimit-Reset` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reset {
    /// Seconds until the bucket is full again, rounded up.
    #[default]
    DeltaSeconds,
    /// The Unix time, in seconds rounded up, at which the bucket is full again.
    EpochSeconds,
}

impl Reset {
    /// The value for a bucket that is full again after `after`, now being `now`.
    pub fn seconds(self, after: Duration, now: SystemTime) -> u64 {
        match self {
            Self::DeltaSeconds => ceil_seconds(after),
            Self::EpochSeconds => {
                let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
                ceil_seconds(since_epoch.saturating_add(after))
            }
        }
    }
}

/// The wait an `X-RateLimit-Reset` value means, read either way: a number above 10¹² is Unix
/// time in milliseconds, above 10⁹ (September 2001) Unix time in seconds, anything smaller a
/// delay in seconds. `None` for anything that is not a non-negative integer or decimal.
pub(crate) fn parse_reset(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let number: f64 = text
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let since_epoch = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let seconds = if number >= 1e12 {
        number / 1000.0 - since_epoch
    } else if number >= 1e9 {
        number - since_epoch
    } else {
        number
    };
    Duration::try_from_secs_f64(seconds.max(0.0)).ok()
}

/// The three fields for a decision.
pub(crate) fn values(decision: &Decision, reset: Reset) -> [(HeaderName, HeaderValue); 3] {
    let status = decision.status();
    let now = match reset {
        Reset::DeltaSeconds => UNIX_EPOCH,
        Reset::EpochSeconds => SystemTime::now(),
    };
    [
        (X_RATELIMIT_LIMIT, HeaderValue::from(status.limit())),
        (X_RATELIMIT_REMAINING, HeaderValue::from(status.remaining())),
        (
            X_RATELIMIT_RESET,
            HeaderValue::from(reset.seconds(status.reset_after(), now)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_is_told_apart() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let parse = |v: &str| parse_reset(&HeaderValue::from_str(v).unwrap(), now);
        assert_eq!(parse("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse("1700000045"), Some(Duration::from_secs(45)));
        assert_eq!(parse("1700000045000"), Some(Duration::from_secs(45)));
        assert_eq!(
            parse("1600000000"),
            Some(Duration::ZERO),
            "a reset in the past"
        );
        assert_eq!(parse("2.5"), Some(Duration::from_millis(2500)));
        for bad in ["-5", "NaN", "inf", "", "soon", "1e400"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reset_as_delta_or_epoch() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let after = Duration::from_millis(1500);
        assert_eq!(Reset::DeltaSeconds.seconds(after, now), 2);
        assert_eq!(Reset::EpochSeconds.seconds(after, now), 1_700_000_002);
    }
}
