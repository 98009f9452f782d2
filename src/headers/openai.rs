//! OpenAI's fields, and those of the APIs that copy them: two quotas, requests and tokens, each
//! with its limit, what is left of it, and the time until it is whole again as a Go duration.
//!
//! ```text
//! x-ratelimit-limit-requests: 60         x-ratelimit-limit-tokens: 150000
//! x-ratelimit-remaining-requests: 59     x-ratelimit-remaining-tokens: 149984
//! x-ratelimit-reset-requests: 1s         x-ratelimit-reset-tokens: 6m0s
//! ```
//!
//! Clients read them, with every other dialect, through [`server::read`](super::server::read):
//! the requests quota is a count of requests; the tokens quota is not, so it is the binding
//! limit only when it is spent.

use std::time::Duration;

use http::{HeaderMap, HeaderName};

use super::number;
use super::said::{Found, Limits};

/// `x-ratelimit-limit-requests`.
const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
/// `x-ratelimit-remaining-requests`.
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
/// `x-ratelimit-reset-requests`.
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
/// `x-ratelimit-limit-tokens`.
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
/// `x-ratelimit-remaining-tokens`.
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
/// `x-ratelimit-reset-tokens`.
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// The quotas stated, each named (`requests`, `tokens`): those whose remaining count parses.
pub(crate) fn read(headers: &HeaderMap) -> impl Iterator<Item = Found> + '_ {
    [
        (
            "requests",
            LIMIT_REQUESTS,
            REMAINING_REQUESTS,
            RESET_REQUESTS,
            true,
        ),
        (
            "tokens",
            LIMIT_TOKENS,
            REMAINING_TOKENS,
            RESET_TOKENS,
            false,
        ),
    ]
    .into_iter()
    .filter_map(move |(name, limit, remaining, reset, counts_requests)| {
        Some(Found {
            limits: Limits {
                remaining: number(headers, &remaining)?,
                reset: headers
                    .get(reset)
                    .and_then(|v| parse_go_duration(v.as_bytes())),
                limit: number(headers, &limit),
                name: Some(name.to_owned()),
            },
            counts_requests,
        })
    })
}

/// The most a Go duration holds: `i64::MAX` nanoseconds, about 292 years.
const GO_MAX_NANOS: u128 = i64::MAX as u128;

/// A duration as Go writes and reads it (`time.Duration`): numbers with optional decimals,
/// each followed by a unit (`h`, `m`, `s`, `ms`, `us`, `µs`, `ns`): `6m0s`, `1s`, `20ms`,
/// `1h2m3.5s`, `0s`, and the bare `0`.
///
/// `None` for anything else: a sign (a negative wait means nothing), a number without a
/// unit, an unknown unit, spaces inside, or more than Go itself can hold. Digits past the
/// eighteenth after a decimal point are dropped.
pub(crate) fn parse_go_duration(text: &[u8]) -> Option<Duration> {
    let text = text.trim_ascii();
    if text == b"0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, after) = rest.split_at(digits(rest));
        let (fraction, after) = match after.strip_prefix(b".") {
            Some(after) => after.split_at(digits(after)),
            None => (&b""[..], after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_len = after
            .iter()
            .take_while(|b| !b.is_ascii_digit() && **b != b'.')
            .count();
        let (unit, after) = after.split_at(unit_len);
        let nanos: u128 = match unit {
            b"ns" => 1,
            b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000, // us, µs (micro sign), μs (mu)
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => return None,
        };
        let mut value: u128 = 0;
        for digit in whole {
            value = value * 10 + u128::from(digit - b'0');
            if value > GO_MAX_NANOS {
                return None;
            }
        }
        // At most 10^18 × 3.6·10^12 below: far inside a u128.
        let (mut numerator, mut scale) = (0u128, 1u128);
        for digit in fraction.iter().take(18) {
            numerator = numerator * 10 + u128::from(digit - b'0');
            scale *= 10;
        }
        total = total
            .checked_add(value.checked_mul(nanos)?)?
            .checked_add(numerator * nanos / scale)?;
        if total > GO_MAX_NANOS {
            return None;
        }
        rest = after;
    }
    Some(Duration::from_nanos(u64::try_from(total).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("6m0s", ms(360_000)),
            ("1s", ms(1000)),
            ("20ms", ms(20)),
            ("1h2m3.5s", ms(3_723_500)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("59.819s", ms(59_819)),
            (".5s", ms(500)),
            ("1.s", ms(1000)),
            ("1.5us", Duration::from_nanos(1500)),
            ("1.5µs", Duration::from_nanos(1500)),
            ("1.5μs", Duration::from_nanos(1500)),
            ("100ns", Duration::from_nanos(100)),
            (" 2m ", ms(120_000)),
            ("1m1m", ms(120_000)),
            (
                "2562047h47m16.854775807s",
                Duration::from_nanos(i64::MAX as u64),
            ),
            ("0.0000000000000000000001s", Duration::ZERO),
        ] {
            assert_eq!(
                parse_go_duration(text.as_bytes()),
                Some(expected),
                "{text:?}"
            );
        }
    }

    #[test]
    fn hostile_durations_are_ignored() {
        for text in [
            "",
            " ",
            "s",
            ".s",
            "5",
            "1.5",
            "-1s",
            "+1s",
            "1 s",
            "1x",
            "1sec",
            "1e3s",
            "NaN",
            "inf",
            "1..5s",
            "2562047h47m16.854775808s",
            "2562048h",
            "99999999999999999999999999999999999999999h",
            "1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h99999999999999999h",
        ] {
            assert_eq!(parse_go_duration(text.as_bytes()), None, "{text:?}");
        }
        assert_eq!(parse_go_duration(b"\xff\xfe"), None);
        // A long run of small parts stays exact, and never overflows.
        let long = "1ns".repeat(10_000);
        assert_eq!(
            parse_go_duration(long.as_bytes()),
            Some(Duration::from_nanos(10_000))
        );
    }
}
