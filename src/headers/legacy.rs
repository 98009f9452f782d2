//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`: the de facto fields
//! many clients read.
//!
//! `X-RateLimit-Reset` means two things in the wild: seconds from now (most APIs) or the Unix
//! time in seconds (GitHub). The layer writes the delta unless told otherwise
//! ([`Reset::EpochSeconds`]).
//!
//! Clients also read, through [`server::read`](super::server::read), the kin of these fields
//! that vendors added: GitHub's `X-RateLimit-Used` and `X-RateLimit-Resource`, and
//! `X-RateLimit-Reset-After` (seconds from now, with decimals, as Discord sends it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::said::{Found, Limits};
use super::{ceil_seconds, number};
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
/// `x-ratelimit-used`: GitHub's count of what was spent.
const X_RATELIMIT_USED: HeaderName = HeaderName::from_static("x-ratelimit-used");
/// `x-ratelimit-resource`: GitHub's name of the limit (`core`, `search`, `graphql`…).
const X_RATELIMIT_RESOURCE: HeaderName = HeaderName::from_static("x-ratelimit-resource");
/// `x-ratelimit-reset-after`: seconds from now, decimals allowed (Discord's).
const X_RATELIMIT_RESET_AFTER: HeaderName = HeaderName::from_static("x-ratelimit-reset-after");

/// The longest limit name kept; a longer one is ignored, not cut.
const MAX_NAME: usize = 64;

/// How `X-RateLimit-Reset` is written, for
/// [`HeaderOptions::legacy`](crate::rate_limit::HeaderOptions::legacy).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tollgate::rate_limit::Reset;
///
/// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let full_in = Duration::from_millis(1_500);
/// assert_eq!(Reset::DeltaSeconds.seconds(full_in, now), 2);
/// assert_eq!(Reset::EpochSeconds.seconds(full_in, now), 1_700_000_002);
/// ```
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
    // Rust's float syntax is wider than what servers write: a sign (`+.9`), an exponent
    // (`1e5`) once read as a reset here (found by the fuzz target `durations`).
    if !is_decimal(text) {
        return None;
    }
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

/// The older IETF draft's `RateLimit-Limit`, `-Remaining` and `-Reset` (a delay), when a
/// remaining count parses.
pub(crate) fn read_draft(headers: &HeaderMap, now: SystemTime) -> Option<Found> {
    Some(Found {
        limits: Limits {
            remaining: number(headers, &RATELIMIT_REMAINING)?,
            reset: headers
                .get(RATELIMIT_RESET)
                .and_then(|v| parse_reset(v, now)),
            limit: number(headers, &RATELIMIT_LIMIT),
            name: None,
        },
        counts_requests: true,
    })
}

/// `X-RateLimit-*` with its vendors' kin, when a remaining count is stated or follows from
/// GitHub's `X-RateLimit-Used`:
///
/// - remaining: `X-RateLimit-Remaining`; without it, `X-RateLimit-Limit` minus
///   `X-RateLimit-Used` (0 when more was used than the limit); with both, the fewer;
/// - reset: `X-RateLimit-Reset-After` when it parses (a delay, which no clock skew can
///   change), else `X-RateLimit-Reset` (see [`parse_reset`]);
/// - name: `X-RateLimit-Resource`, when it is a short token.
pub(crate) fn read_x(headers: &HeaderMap, now: SystemTime) -> Option<Found> {
    let limit = number(headers, &X_RATELIMIT_LIMIT);
    let unused = limit
        .zip(number(headers, &X_RATELIMIT_USED))
        .map(|(limit, used)| limit.saturating_sub(used));
    let remaining = match (number(headers, &X_RATELIMIT_REMAINING), unused) {
        (Some(remaining), Some(unused)) => remaining.min(unused),
        (remaining, unused) => remaining.or(unused)?,
    };
    let reset = headers
        .get(X_RATELIMIT_RESET_AFTER)
        .and_then(parse_seconds)
        .or_else(|| {
            headers
                .get(X_RATELIMIT_RESET)
                .and_then(|v| parse_reset(v, now))
        });
    let name = headers
        .get(X_RATELIMIT_RESOURCE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|name| {
            !name.is_empty()
                && name.len() <= MAX_NAME
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
        .map(str::to_owned);
    Some(Found {
        limits: Limits {
            remaining,
            reset,
            limit,
            name,
        },
        counts_requests: true,
    })
}

/// Seconds, with decimals: digits, at most one point, nothing else (no sign, exponent,
/// `NaN` or `inf`). `None` too for a value too large for a `Duration`.
pub(crate) fn parse_seconds(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !is_decimal(text) {
        return None;
    }
    Duration::try_from_secs_f64(text.parse().ok()?).ok()
}

/// Digits, at most one point, at least one digit: a non-negative integer or decimal.
fn is_decimal(text: &str) -> bool {
    let mut parts = text.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next().unwrap_or("");
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(whole.is_empty() && fraction.is_empty()) && all_digits(whole) && all_digits(fraction)
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
        // Found by the fuzz target `durations`: Rust's float syntax, wider than a decimal.
        for bad in ["+.9", "+1", "1e5", "1E3", "-0", "infinity", "."] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reset_after_is_seconds_with_decimals() {
        let parse = |v: &str| parse_seconds(&HeaderValue::from_str(v).unwrap());
        assert_eq!(parse("1.234"), Some(Duration::from_millis(1234)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse(" 60 "), Some(Duration::from_secs(60)));
        assert_eq!(parse(".5"), Some(Duration::from_millis(500)));
        assert_eq!(parse("2."), Some(Duration::from_secs(2)));
        for bad in [
            "",
            ".",
            "-1",
            "+1",
            "1e3",
            "1e400",
            "NaN",
            "inf",
            "1.2.3",
            "1,5",
            "soon",
            "99999999999999999999999999.5",
        ] {
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
