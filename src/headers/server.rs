//! The one reader of what a server says about its limits, in every dialect, shared by
//! [`RetryLayer`](crate::RetryLayer) and [`LearnLayer`](crate::learn::LearnLayer), so that a
//! stack of both agrees on one delay instead of waiting the sum of what each read.
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use tollgate::headers::server;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", "1".parse().unwrap());
//! headers.insert("ratelimit", "\"default\";r=0;t=40".parse().unwrap());
//! let said = server::read(&headers);
//! // The later of what the fields say: the bucket is empty for 40 s, whatever Retry-After says.
//! assert_eq!(said.delay, Some(Duration::from_secs(40)));
//! assert_eq!(said.limits.unwrap().remaining, 0);
//! ```
//!
//! | field | read as |
//! | --- | --- |
//! | `Retry-After` | seconds, or an HTTP-date measured against the response's own `Date` (clock skew does not count); a date in the past is no delay, so the caller's own backoff applies |
//! | `RateLimit` (+ `RateLimit-Policy`) | draft-ietf-httpapi-ratelimit-headers-10: the item with the fewest left; an exhausted item's `t` is a delay |
//! | `RateLimit-Limit` / `-Remaining` / `-Reset` | the older draft: a delay when remaining is 0 |
//! | `X-RateLimit-Limit` / `-Remaining` / `-Reset` | the reset as Unix seconds, Unix milliseconds or a delay, told apart by size; a delay when remaining is 0 |
//! | `grpc-retry-pushback-ms` | on gRPC responses only (`content-type: application/grpc…`): a delay, or "do not retry" when negative; ignored on plain HTTP |
//!
//! Malformed values are ignored, never guessed at; bounding what a hostile value may ask for
//! is the caller's job (`max_pushback`, `max_wait`).

use std::time::{Duration, SystemTime};

use http::header::{CONTENT_TYPE, DATE, RETRY_AFTER};
use http::{HeaderMap, HeaderName};

use super::{ietf, legacy, retry_after};

/// The header of gRPC's server pushback (gRFC A6).
pub(crate) const GRPC_RETRY_PUSHBACK_MS: HeaderName =
    HeaderName::from_static("grpc-retry-pushback-ms");

/// What a response says about the server's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerSaid {
    /// How long the server asked the client to wait before its next request: the *later* of
    /// every field that asks for one.
    pub delay: Option<Duration>,
    /// A gRPC server said not to retry (a negative pushback).
    pub stop: bool,
    /// The most constraining limit it announced, if any.
    pub limits: Option<Limits>,
}

/// A limit a server announced: the one with the fewest requests left, among every dialect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Requests left.
    pub remaining: u64,
    /// When the allowance comes back, if said.
    pub reset: Option<Duration>,
    /// What it comes back to, if said.
    pub limit: Option<u64>,
}

/// Reads every dialect of `headers` (a response's).
pub fn read(headers: &HeaderMap) -> ServerSaid {
    let now = headers
        .get(DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or_else(SystemTime::now);
    let limits = limits(headers, now);
    let mut delays: Vec<Duration> = headers
        .get_all(RETRY_AFTER)
        .iter()
        .filter_map(|v| retry_after::parse(v, now))
        .filter(|delay| !delay.is_zero())
        .collect();
    if let Some(Limits {
        remaining: 0,
        reset: Some(reset),
        ..
    }) = limits
    {
        delays.push(reset);
    }
    let mut stop = false;
    match grpc_pushback(headers) {
        Some(GrpcPushback::Stop) => stop = true,
        Some(GrpcPushback::After(delay)) => delays.push(delay),
        None => {}
    }
    ServerSaid {
        delay: delays.into_iter().max(),
        stop,
        limits,
    }
}

/// gRPC's pushback, only on a gRPC response.
pub(crate) enum GrpcPushback {
    After(Duration),
    Stop,
}

fn grpc_pushback(headers: &HeaderMap) -> Option<GrpcPushback> {
    let is_grpc = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        return None;
    }
    grpc_pushback_of_grpc(headers)
}

/// gRPC's pushback, for a response known to be gRPC (its `grpc-status` was read).
pub(crate) fn grpc_pushback_of_grpc(headers: &HeaderMap) -> Option<GrpcPushback> {
    let text = headers.get(GRPC_RETRY_PUSHBACK_MS)?.to_str().ok()?.trim();
    match text.parse::<i64>() {
        Ok(ms) if ms < 0 => Some(GrpcPushback::Stop),
        Ok(ms) => Some(GrpcPushback::After(Duration::from_millis(
            ms.unsigned_abs(),
        ))),
        Err(_) => None,
    }
}

/// The announced limit with the fewest left (and, among those, the latest reset).
fn limits(headers: &HeaderMap, now: SystemTime) -> Option<Limits> {
    let mut found: Vec<Limits> = Vec::new();
    let policies: Vec<ietf::ServicePolicy> = headers
        .get_all(ietf::RATELIMIT_POLICY)
        .iter()
        .flat_map(|v| ietf::parse_policy(v.as_bytes()))
        .collect();
    for value in headers.get_all(ietf::RATELIMIT).iter() {
        for item in ietf::parse_ratelimit(value.as_bytes()) {
            let limit = policies
                .iter()
                .find(|policy| policy.name == item.policy)
                .map(|policy| policy.quota);
            found.push(Limits {
                remaining: item.remaining,
                reset: item.reset,
                limit,
            });
        }
    }
    let dialects = [
        (
            legacy::RATELIMIT_LIMIT,
            legacy::RATELIMIT_REMAINING,
            legacy::RATELIMIT_RESET,
        ),
        (
            legacy::X_RATELIMIT_LIMIT,
            legacy::X_RATELIMIT_REMAINING,
            legacy::X_RATELIMIT_RESET,
        ),
    ];
    for (limit, remaining, reset) in &dialects {
        if let Some(remaining) = number(headers, remaining) {
            found.push(Limits {
                remaining,
                reset: headers.get(reset).and_then(|v| legacy::parse_reset(v, now)),
                limit: number(headers, limit),
            });
        }
    }
    found
        .into_iter()
        .min_by_key(|l| (l.remaining, std::cmp::Reverse(l.reset)))
}

fn number(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(pairs: &[(&str, &str)]) -> ServerSaid {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        read(&headers)
    }

    #[test]
    fn the_later_of_every_field() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            said(&[("retry-after", "30"), ("ratelimit", "\"a\";r=0;t=60")]).delay,
            secs(60)
        );
        assert_eq!(
            said(&[("retry-after", "30"), ("ratelimit", "\"a\";r=2;t=60")]).delay,
            secs(30)
        );
        assert_eq!(
            said(&[
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "40"),
                ("retry-after", "1")
            ])
            .delay,
            secs(40)
        );
        assert_eq!(
            said(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "9")]).delay,
            secs(9)
        );
        assert_eq!(
            said(&[("x-ratelimit-remaining", "1"), ("x-ratelimit-reset", "9")]).delay,
            None
        );
    }

    #[test]
    fn a_past_date_is_no_delay() {
        let now = "Wed, 21 Oct 2015 07:28:00 GMT";
        let past = said(&[
            ("date", now),
            ("retry-after", "Wed, 21 Oct 2015 07:20:00 GMT"),
        ]);
        assert_eq!(past.delay, None);
        let future = said(&[
            ("date", now),
            ("retry-after", "Wed, 21 Oct 2015 07:30:00 GMT"),
        ]);
        assert_eq!(future.delay, Some(Duration::from_secs(120)));
    }

    #[test]
    fn grpc_pushback_only_on_grpc_responses() {
        assert_eq!(said(&[("grpc-retry-pushback-ms", "5000")]).delay, None);
        let grpc = said(&[
            ("content-type", "application/grpc"),
            ("grpc-retry-pushback-ms", "5000"),
        ]);
        assert_eq!(grpc.delay, Some(Duration::from_secs(5)));
        let stop = said(&[
            ("content-type", "application/grpc+proto"),
            ("grpc-retry-pushback-ms", "-1"),
        ]);
        assert!(stop.stop);
    }

    #[test]
    fn the_fewest_left_wins() {
        let limits = said(&[
            ("ratelimit", "\"burst\";r=3;t=1, \"day\";r=0;t=80000"),
            ("ratelimit-policy", "\"day\";q=1000;w=86400"),
            ("x-ratelimit-remaining", "7"),
        ])
        .limits
        .unwrap();
        assert_eq!(
            limits,
            Limits {
                remaining: 0,
                reset: Some(Duration::from_secs(80000)),
                limit: Some(1000)
            }
        );
    }
}
