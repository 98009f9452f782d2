//! `Retry-After` (RFC 9110 §10.2.3): written as delay-seconds, rounded up; read in both forms
//! (seconds, HTTP-date).
//!
//! Clients read it, with every other dialect, through [`server::read`](super::server::read).

use std::time::{Duration, SystemTime};

use http::HeaderValue;

use super::ceil_seconds;

/// The wait a `Retry-After` value asks for, measured from `now` when it is a date (pass the
/// response's `Date` when it has one, so that clock skew between the two hosts does not
/// count). A date in the past is no wait. `None` for anything malformed: negative, fractional,
/// too large for a `u64`, not a date.
pub(crate) fn parse(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The seconds to send for a wait: rounded up, and at least 1 when any wait is needed, so
/// that no client is told to retry at once when it cannot pass yet.
pub(crate) fn seconds(wait: Duration) -> u64 {
    ceil_seconds(wait).max(u64::from(!wait.is_zero()))
}

pub(crate) fn value(wait: Duration) -> HeaderValue {
    HeaderValue::from(seconds(wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_ignored() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for bad in [
            "-1",
            "1.5",
            "99999999999999999999999",
            "",
            " ",
            "0x10",
            "tomorrow",
            "Wed, 99 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(
                parse(&HeaderValue::from_str(bad).unwrap(), now),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(
            parse(&HeaderValue::from_static(" 7 "), now),
            Some(Duration::from_secs(7))
        );
        let past = HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(parse(&past, now), Some(Duration::ZERO));
        let binary = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        assert_eq!(parse(&binary, now), None);
    }

    #[test]
    fn never_zero_when_a_wait_is_needed() {
        assert_eq!(seconds(Duration::from_nanos(1)), 1);
        assert_eq!(seconds(Duration::from_millis(999)), 1);
        assert_eq!(seconds(Duration::from_millis(1001)), 2);
        assert_eq!(seconds(Duration::ZERO), 0);
    }
}
