//! The one reader of what a server says about its limits, in every dialect, shared by
//! [`RetryLayer`](crate::RetryLayer) and [`LearnLayer`](crate::learn::LearnLayer), so that a
//! stack of both agrees on one delay instead of waiting the sum of what each read. Users reach
//! it through [`Classification::pushback`](crate::retry::Classification::pushback) and
//! [`LearnEvent`](crate::learn::LearnEvent); the table of the fields it reads is in the
//! [`learn`](crate::learn#what-it-reads) module's docs, public, and is kept there.
//!
//! **Which limit.** [`Limits`](super::said::Limits) counts requests, because that is what a
//! client spends: one per request. Of every limit stated, in every dialect, it is the one with
//! the fewest left (and, among those, the latest reset); when nothing is left of it, its
//! reset, if still to come, is a delay. A quota in other units (OpenAI's tokens, an IETF policy of `content-bytes`)
//! says nothing of how many requests are left, until it is spent: 0 is 0 in any unit. So
//! such a quota is the binding one exactly when it is exhausted (and then its reset is a
//! delay like any other, and its `limit`, in other units, is left out); otherwise the request
//! count binds, however small the share of tokens left.
//!
//! **Status.** A 403 is a rate limit when the server asked for a delay with it
//! ([`forbidden_by_rate_limit`]): GitHub answers its primary limit with 403, "0 left" and a
//! reset, and its secondary limits with 403 and `Retry-After`. Any other 403 is what it
//! says.
//!
//! Malformed values are ignored, never guessed at: a negative, fractional, `NaN`, `1e400`
//! or overflowing count, an unknown duration unit, a resource name that is not a short
//! token. Bounding what a hostile but well-formed value may ask for is the caller's job
//! (the retry layer's `max_pushback`, the learn layer's `wait`).

use std::time::{Duration, SystemTime};

use http::header::{CONTENT_TYPE, DATE, RETRY_AFTER};
use http::{HeaderMap, HeaderName};

use super::said::{Found, Limits, ServerSaid};
use super::{ietf, legacy, openai, retry_after};

/// The header of gRPC's server pushback (gRFC A6).
pub(crate) const GRPC_RETRY_PUSHBACK_MS: HeaderName =
    HeaderName::from_static("grpc-retry-pushback-ms");

/// Whether a 403 Forbidden that said `said` is a rate limit rather than a refusal of access:
/// it is when the server asked for a delay with it (`Retry-After`, or a limit with 0 left
/// and a reset), as GitHub does. The one rule of [`RetryLayer`](crate::RetryLayer)'s
/// classifier and of [`LearnLayer`](crate::learn::LearnLayer).
pub(crate) fn forbidden_by_rate_limit(said: &ServerSaid) -> bool {
    said.delay.is_some() && !said.stop
}

/// Reads every dialect of `headers` (a response's).
pub(crate) fn read(headers: &HeaderMap) -> ServerSaid {
    read_all(headers).0
}

/// Reads every dialect of `headers`, and returns, beside what [`read`] returns, every limit
/// stated (named or not, in any unit), for a reader that keeps them apart by name.
pub(crate) fn read_all(headers: &HeaderMap) -> (ServerSaid, Vec<Found>) {
    let now = headers
        .get(DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or_else(SystemTime::now);
    let found = found(headers, now);
    let limits = binding(found.iter());
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
    }) = &limits
    {
        // A reset that has come (OpenAI's `0s`, an epoch in the past) is no delay, as a
        // `Retry-After` in the past is none: the caller's own backoff applies.
        if !reset.is_zero() {
            delays.push(*reset);
        }
    }
    let mut stop = false;
    match grpc_pushback(headers) {
        Some(GrpcPushback::Stop) => stop = true,
        Some(GrpcPushback::After(delay)) => delays.push(delay),
        None => {}
    }
    let said = ServerSaid {
        delay: delays.into_iter().max(),
        stop,
        limits,
    };
    (said, found)
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

/// Every limit stated, in every dialect.
fn found(headers: &HeaderMap, now: SystemTime) -> Vec<Found> {
    let mut found = ietf_limits(headers);
    found.extend(legacy::read_draft(headers, now));
    found.extend(legacy::read_x(headers, now));
    found.extend(openai::read(headers));
    found
}

/// The binding limit among `found`: the fewest requests left (and, among those, the latest
/// reset), a quota in other units only when it is exhausted.
pub(crate) fn binding<'a>(found: impl Iterator<Item = &'a Found>) -> Option<Limits> {
    found
        .filter(|f| f.counts_requests || f.limits.remaining == 0)
        .map(|f| match f.counts_requests {
            true => f.limits.clone(),
            false => Limits {
                limit: None,
                ..f.limits.clone()
            },
        })
        .min_by_key(|l| (l.remaining, std::cmp::Reverse(l.reset)))
}

/// The items of the `RateLimit` fields, each with its policy's quota and unit when a
/// `RateLimit-Policy` item of the same name states them.
///
/// Each field line is parsed alone, a documented leniency: RFC 9651 §4.2 joins a list's
/// lines with commas and ignores the whole field when that fails to parse, where here a line
/// that does not parse is left out and the others are read. When every line parses, the two
/// agree (the fuzz target `ratelimit_fields` checks it, and skips exactly the other case); a
/// list member cannot span lines that each parse, and what a server states well is worth
/// reading beside a line it garbled.
fn ietf_limits(headers: &HeaderMap) -> Vec<Found> {
    let mut found = Vec::new();
    let ratelimits = headers.get_all(ietf::RATELIMIT);
    if ratelimits.iter().next().is_none() {
        return found;
    }
    let policies: Vec<ietf::ServicePolicy> = headers
        .get_all(ietf::RATELIMIT_POLICY)
        .iter()
        .flat_map(|v| ietf::parse_policy(v.as_bytes()))
        .collect();
    for value in ratelimits.iter() {
        for item in ietf::parse_ratelimit(value.as_bytes()) {
            let policy = policies.iter().find(|policy| policy.name == item.policy);
            found.push(Found {
                limits: Limits {
                    remaining: item.remaining,
                    reset: item.reset,
                    limit: policy.map(|policy| policy.quota),
                    name: Some(item.policy),
                },
                counts_requests: policy.is_none_or(|policy| policy.counts_requests),
            });
        }
    }
    found
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
                limit: Some(1000),
                name: Some("day".into()),
            }
        );
    }

    fn limits_of(pairs: &[(&str, &str)]) -> Option<Limits> {
        said(pairs).limits
    }

    fn openai(
        requests: (&str, &str, &str),
        tokens: (&str, &str, &str),
    ) -> Vec<(&'static str, String)> {
        vec![
            ("x-ratelimit-limit-requests", requests.0.to_owned()),
            ("x-ratelimit-remaining-requests", requests.1.to_owned()),
            ("x-ratelimit-reset-requests", requests.2.to_owned()),
            ("x-ratelimit-limit-tokens", tokens.0.to_owned()),
            ("x-ratelimit-remaining-tokens", tokens.1.to_owned()),
            ("x-ratelimit-reset-tokens", tokens.2.to_owned()),
        ]
    }

    fn said_owned(pairs: &[(&'static str, String)]) -> ServerSaid {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        said(&pairs)
    }

    #[test]
    fn openai_requests_bind_until_tokens_are_spent() {
        // Both left: the request count binds, whatever the share of tokens left.
        let both_left = said_owned(&openai(("60", "59", "1s"), ("150000", "1200", "6m0s")));
        assert_eq!(both_left.delay, None);
        assert_eq!(
            both_left.limits.unwrap(),
            Limits {
                remaining: 59,
                reset: Some(Duration::from_secs(1)),
                limit: Some(60),
                name: Some("requests".into()),
            }
        );
        // Requests spent: a delay of their reset.
        let requests_spent = said_owned(&openai(("60", "0", "20ms"), ("150000", "9000", "6m0s")));
        assert_eq!(requests_spent.delay, Some(Duration::from_millis(20)));
        assert_eq!(requests_spent.limits.unwrap().remaining, 0);
        // Tokens spent: they bind, with their reset as the delay, and no limit in requests.
        let tokens_spent = said_owned(&openai(("60", "42", "1s"), ("150000", "0", "1h2m3.5s")));
        assert_eq!(tokens_spent.delay, Some(Duration::from_millis(3_723_500)));
        assert_eq!(
            tokens_spent.limits.unwrap(),
            Limits {
                remaining: 0,
                reset: Some(Duration::from_millis(3_723_500)),
                limit: None,
                name: Some("tokens".into()),
            }
        );
        // Both spent: the later reset.
        let both_spent = said_owned(&openai(("60", "0", "6m0s"), ("150000", "0", "20ms")));
        assert_eq!(both_spent.delay, Some(Duration::from_secs(360)));
        assert_eq!(both_spent.limits.unwrap().name.as_deref(), Some("requests"));
        // Tokens alone, left: no count of requests, so no limit; spent: a limit and a delay.
        assert_eq!(limits_of(&[("x-ratelimit-remaining-tokens", "10")]), None);
        let tokens_only = said(&[
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "0.5s"),
        ]);
        assert_eq!(tokens_only.delay, Some(Duration::from_millis(500)));
        // "0s": spent, and back now: no delay.
        assert_eq!(
            said_owned(&openai(("60", "0", "0s"), ("1", "1", "0s"))).delay,
            None
        );
    }

    #[test]
    fn openai_hostile_values_are_ignored() {
        for reset in ["-1s", "6m0", "1e400s", "NaN", "99999999999h", "1 m", ""] {
            let headers = openai(("60", "0", reset), ("150000", "0", reset));
            let read = said_owned(&headers);
            assert_eq!(read.delay, None, "{reset:?}");
            assert_eq!(read.limits.unwrap().reset, None, "{reset:?}");
        }
        for remaining in [
            "-1",
            "1.5",
            "NaN",
            "99999999999999999999999",
            "1e400",
            "lots",
        ] {
            let headers = openai(("60", remaining, "1s"), ("150000", remaining, "1s"));
            assert_eq!(said_owned(&headers).limits, None, "{remaining:?}");
        }
        // A malformed limit is left out; the rest stands.
        let headers = openai(("-60", "3", "1s"), ("x", "0", "2s"));
        let read = said_owned(&headers);
        assert_eq!(read.delay, Some(Duration::from_secs(2)));
        assert_eq!(read.limits.unwrap().limit, None);
    }

    #[test]
    fn github_used_and_resource() {
        let now = "Wed, 21 Oct 2015 07:28:00 GMT"; // 1445412480
        let github = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = vec![
                ("date", now),
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-reset", "1445412540"),
            ];
            pairs.extend_from_slice(extra);
            said(&pairs)
        };
        let both = github(&[
            ("x-ratelimit-remaining", "4990"),
            ("x-ratelimit-used", "10"),
            ("x-ratelimit-resource", "core"),
        ]);
        assert_eq!(
            both.limits.unwrap(),
            Limits {
                remaining: 4990,
                reset: Some(Duration::from_secs(60)),
                limit: Some(5000),
                name: Some("core".into()),
            }
        );
        // Used alone: remaining is the limit minus it.
        let used = github(&[
            ("x-ratelimit-used", "4999"),
            ("x-ratelimit-resource", "search"),
        ]);
        assert_eq!(used.limits.as_ref().unwrap().remaining, 1);
        assert_eq!(used.limits.unwrap().name.as_deref(), Some("search"));
        // Spent: a delay until the reset.
        let spent = github(&[("x-ratelimit-used", "5000")]);
        assert_eq!(spent.delay, Some(Duration::from_secs(60)));
        // More used than the limit: nothing left, no underflow.
        assert_eq!(
            github(&[("x-ratelimit-used", "9999")])
                .limits
                .unwrap()
                .remaining,
            0
        );
        // Remaining and used disagree: the fewer.
        let disagree = github(&[
            ("x-ratelimit-remaining", "10"),
            ("x-ratelimit-used", "4995"),
        ]);
        assert_eq!(disagree.limits.unwrap().remaining, 5);
        // Used without a limit says nothing of what is left.
        assert_eq!(limits_of(&[("x-ratelimit-used", "3")]), None);
    }

    #[test]
    fn github_hostile_values_are_ignored() {
        for used in ["-1", "NaN", "1e400", "99999999999999999999999", "3.5"] {
            let read = said(&[("x-ratelimit-limit", "60"), ("x-ratelimit-used", used)]);
            assert_eq!(read.limits, None, "{used:?}");
        }
        let long = "r".repeat(65);
        for resource in [
            "",
            "has space",
            "semi;colon",
            "quote\"",
            "ünïcode",
            long.as_str(),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("x-ratelimit-remaining", "1".parse().unwrap());
            headers.insert(
                "x-ratelimit-resource",
                http::HeaderValue::from_bytes(resource.as_bytes()).unwrap(),
            );
            assert_eq!(read(&headers).limits.unwrap().name, None, "{resource:?}");
        }
    }

    #[test]
    fn reset_after_is_a_delay_in_seconds() {
        let discord = said(&[
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1470173023.123"),
            ("x-ratelimit-reset-after", "1.234"),
        ]);
        // The delay, not the epoch (which this test's clock is far past).
        assert_eq!(discord.delay, Some(Duration::from_millis(1234)));
        assert_eq!(
            said(&[
                ("x-ratelimit-remaining", "2"),
                ("x-ratelimit-reset-after", "1.234")
            ])
            .delay,
            None,
            "requests left: no delay"
        );
        // Without -Remaining: nothing to pair it with.
        assert_eq!(said(&[("x-ratelimit-reset-after", "5")]).limits, None);
        // Malformed: X-RateLimit-Reset is read instead.
        for bad in [
            "-1",
            "NaN",
            "1e400",
            "inf",
            "1e3",
            "99999999999999999999999.0",
        ] {
            let read = said(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "7"),
                ("x-ratelimit-reset-after", bad),
            ]);
            assert_eq!(read.delay, Some(Duration::from_secs(7)), "{bad:?}");
        }
    }

    #[test]
    fn ietf_quotas_in_other_units_bind_only_when_spent() {
        // Bytes left are not requests left: the request count binds.
        let bytes_left = said(&[
            ("ratelimit", "\"bytes\";r=10;t=5, \"calls\";r=40;t=9"),
            (
                "ratelimit-policy",
                "\"bytes\";q=1000;qu=\"content-bytes\";w=60, \"calls\";q=50;w=60",
            ),
        ]);
        let limits = bytes_left.limits.unwrap();
        assert_eq!(
            (limits.name.as_deref(), limits.remaining, limits.limit),
            (Some("calls"), 40, Some(50))
        );
        // Spent bytes bind, and delay.
        let bytes_spent = said(&[
            (
                "ratelimit",
                "\"bytes\";r=0;t=5;pk=:AAECAwQF:, \"calls\";r=40;t=9",
            ),
            (
                "ratelimit-policy",
                "\"bytes\";q=1000;qu=\"content-bytes\";w=60;pk=:AAECAwQF:",
            ),
        ]);
        assert_eq!(bytes_spent.delay, Some(Duration::from_secs(5)));
        let limits = bytes_spent.limits.unwrap();
        assert_eq!(
            (limits.name.as_deref(), limits.limit),
            (Some("bytes"), None)
        );
        // `qu="requests"` is the default said aloud; a `qu` that is not a string is no unit
        // this reader knows.
        for (unit, counts) in [("\"requests\"", true), ("requests", false), ("5", false)] {
            let read = limits_of(&[
                ("ratelimit", "\"a\";r=3"),
                ("ratelimit-policy", &format!("\"a\";q=9;qu={unit}")),
            ]);
            assert_eq!(read.is_some(), counts, "{unit}");
        }
    }
}
