//! `Retry-After` (RFC 9110 §10.2.3): written as delay-seconds, rounded up.

use std::time::Duration;

use http::HeaderValue;

use super::ceil_seconds;

/// The seconds to send for a wait: rounded up, and at least 1 when any wait is needed, so
/// that no client is told to retry at once when it cannot pass yet.
pub fn seconds(wait: Duration) -> u64 {
    ceil_seconds(wait).max(u64::from(!wait.is_zero()))
}

pub(crate) fn value(wait: Duration) -> HeaderValue {
    HeaderValue::from(seconds(wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_zero_when_a_wait_is_needed() {
        assert_eq!(seconds(Duration::from_nanos(1)), 1);
        assert_eq!(seconds(Duration::from_millis(999)), 1);
        assert_eq!(seconds(Duration::from_millis(1001)), 2);
        assert_eq!(seconds(Duration::ZERO), 0);
    }
}
