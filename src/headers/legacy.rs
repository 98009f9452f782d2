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
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

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
    fn reset_as_delta_or_epoch() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let after = Duration::from_millis(1500);
        assert_eq!(Reset::DeltaSeconds.seconds(after, now), 2);
        assert_eq!(Reset::EpochSeconds.seconds(after, now), 1_700_000_002);
    }
}
