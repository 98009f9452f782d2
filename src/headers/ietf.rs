//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
//!
//! Both are structured-field lists of items named by a quoted string, the quota's name:
//! `RateLimit-Policy: "burst";q=20;w=2, "hourly";q=1000;w=3600` and
//! `RateLimit: "burst";r=0;t=1`. The policy lists every quota of the set; `RateLimit` reports
//! the binding one (the one that denied, or that has the fewest requests left).

use std::time::Duration;

use http::HeaderValue;

use super::{ceil_seconds, FieldBuf};
use crate::{Decision, Quotas};

/// `ratelimit-policy`.
pub(crate) const RATELIMIT_POLICY: http::HeaderName =
    http::HeaderName::from_static("ratelimit-policy");
/// `ratelimit`.
pub(crate) const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// One item of a `RateLimit` field as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceLimit {
    /// The policy's name.
    pub(crate) policy: String,
    /// Quota units left (`r`).
    pub(crate) remaining: u64,
    /// Seconds until more quota is available (`t`), if sent.
    pub(crate) reset: Option<Duration>,
}

/// Reads a `RateLimit` field value: the items that parse, in order; malformed items (a
/// missing or negative `r`, a non-integer `t`) are left out, and a value that is not a
/// structured-field list yields none.
pub(crate) fn parse_ratelimit(value: &[u8]) -> Vec<ServiceLimit> {
    named_items(value, |policy, params| {
        Some(ServiceLimit {
            policy,
            remaining: non_negative(params, "r")??,
            reset: non_negative(params, "t")?.map(Duration::from_secs),
        })
    })
}

/// One item of a `RateLimit-Policy` field as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServicePolicy {
    /// The policy's name.
    pub(crate) name: String,
    /// The quota, in units (`q`).
    pub(crate) quota: u64,
    /// Whether the units are requests: `qu` absent (the default) or `"requests"`. Any other
    /// unit, or a `qu` that is not a string, is not a count of requests.
    pub(crate) counts_requests: bool,
}

/// Reads a `RateLimit-Policy` field value: the items with a valid `q`, in order; the rest are
/// left out, as in [`parse_ratelimit`].
pub(crate) fn parse_policy(value: &[u8]) -> Vec<ServicePolicy> {
    named_items(value, |name, params| {
        let counts_requests = match params.get("qu") {
            None => true,
            // The draft's text says "requests"; its registry table, "request".
            Some(unit) => matches!(
                unit.as_string().map(|s| s.as_str()),
                Some("requests" | "request")
            ),
        };
        Some(ServicePolicy {
            name,
            quota: non_negative(params, "q")??,
            counts_requests,
        })
    })
}

/// The items of a structured-field list that are named by a string or a token, read by `read`;
/// inner lists, other items and a value that does not parse give nothing.
fn named_items<T>(value: &[u8], read: impl Fn(String, &sfv::Parameters) -> Option<T>) -> Vec<T> {
    let Ok(list) = sfv::Parser::new(value).parse::<sfv::List>() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|entry| match entry {
            sfv::ListEntry::Item(item) => Some(item),
            sfv::ListEntry::InnerList(_) => None,
        })
        .filter_map(|item| {
            let name = match &item.bare_item {
                sfv::BareItem::String(s) => s.as_str().to_owned(),
                sfv::BareItem::Token(t) => t.as_str().to_owned(),
                _ => return None,
            };
            read(name, &item.params)
        })
        .collect()
}

/// Parameter `key`: `Some(None)` when absent, `None` when not a non-negative integer.
fn non_negative(params: &sfv::Parameters, key: &str) -> Option<Option<u64>> {
    match params.get(key) {
        None => Some(None),
        Some(value) => value
            .as_integer()
            .and_then(|i| u64::try_from(i64::from(i)).ok())
            .map(Some),
    }
}

/// The `RateLimit-Policy` value of a set of quotas.
pub fn policy(quotas: &Quotas) -> String {
    policy_buf(quotas).as_str().to_owned()
}

/// The `RateLimit` value of a decision.
pub fn ratelimit(quotas: &Quotas, decision: &Decision) -> String {
    ratelimit_buf(quotas, decision).as_str().to_owned()
}

pub(crate) fn policy_value(quotas: &Quotas) -> Option<HeaderValue> {
    policy_buf(quotas).into_header_value()
}

/// The `RateLimit` value of a decision, from a small per-thread cache when it was written
/// recently. A client that stays under its limit sees the same value on every response (its
/// bucket refills between requests: `r` is the burst minus one), so most responses reuse a
/// value instead of formatting and allocating one.
#[inline]
pub(crate) fn ratelimit_value(quotas: &Quotas, decision: &Decision) -> Option<HeaderValue> {
    let status = decision.status();
    let key = (
        decision.quota_index(),
        status.remaining(),
        ceil_seconds(status.refill_after()),
    );
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        if recent.is_empty() {
            recent.resize_with(RECENT_SLOTS, || None);
        }
        let slot = &mut recent[slot_of(quotas, key)];
        if let Some(cached) = slot {
            if cached.quotas.same_set(quotas) && cached.key == key {
                return Some(cached.value.clone());
            }
        }
        let value = ratelimit_buf(quotas, decision).into_header_value()?;
        *slot = Some(Recent {
            quotas: quotas.clone(),
            key,
            value: value.clone(),
        });
        Some(value)
    })
}

const RECENT_SLOTS: usize = 16;

/// A value written recently. It holds its `Quotas`, so that no other set can take its address.
struct Recent {
    quotas: Quotas,
    key: (usize, u32, u64),
    value: HeaderValue,
}

thread_local! {
    static RECENT: std::cell::RefCell<Vec<Option<Recent>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn slot_of(quotas: &Quotas, (index, remaining, refill): (usize, u32, u64)) -> usize {
    let mixed = (quotas.identity() as u64)
        ^ (index as u64).rotate_left(16)
        ^ u64::from(remaining).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ refill.rotate_left(40);
    (mixed ^ (mixed >> 29)) as usize % RECENT_SLOTS
}

fn policy_buf(quotas: &Quotas) -> FieldBuf {
    let mut buf = FieldBuf::new();
    for (i, quota) in quotas.as_slice().iter().enumerate() {
        if i > 0 {
            buf.push(", ");
        }
        buf.push("\"")
            .push(quota.name())
            .push("\";q=")
            .push_u64(u64::from(quota.burst()))
            .push(";w=")
            .push_u64(ceil_seconds(quota.window()).max(1));
    }
    buf
}

#[inline]
fn ratelimit_buf(quotas: &Quotas, decision: &Decision) -> FieldBuf {
    let status = decision.status();
    let name = quotas
        .as_slice()
        .get(decision.quota_index())
        .map_or("default", |q| q.name());
    let mut buf = FieldBuf::new();
    buf.push("\"")
        .push(name)
        .push("\";r=")
        .push_u64(u64::from(status.remaining()));
    let refill = ceil_seconds(status.refill_after());
    if refill > 0 {
        buf.push(";t=").push_u64(refill);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, Quota};

    #[test]
    fn reads_ratelimit_fields() {
        let parsed = parse_ratelimit(b"\"burst\";r=0;t=3, \"daily\";r=999;t=86000, perhost;r=5");
        assert_eq!(
            parsed,
            [
                ServiceLimit {
                    policy: "burst".into(),
                    remaining: 0,
                    reset: Some(Duration::from_secs(3))
                },
                ServiceLimit {
                    policy: "daily".into(),
                    remaining: 999,
                    reset: Some(Duration::from_secs(86_000))
                },
                ServiceLimit {
                    policy: "perhost".into(),
                    remaining: 5,
                    reset: None
                },
            ]
        );
        // Hostile or malformed: left out, never a panic.
        assert!(parse_ratelimit(b"\"x\";r=-1;t=5").is_empty());
        assert!(parse_ratelimit(b"\"x\";t=5").is_empty());
        assert!(parse_ratelimit(b"\"x\";r=1;t=\"soon\"").is_empty());
        assert!(parse_ratelimit(b"not a list ((").is_empty());
        assert!(parse_ratelimit(b"\"x\";r=999999999999999999999;t=1").is_empty());
        assert_eq!(parse_ratelimit(b"\"ok\";r=1, \"bad\";r=1.5").len(), 1);
    }

    #[test]
    fn a_client_reads_the_policy_items_with_a_quota() {
        let parsed =
            parse_policy(b"\"burst\";q=20;w=2, hourly;q=1000;w=3600, \"bad\";q=-1, \"none\";w=1");
        let read: Vec<(&str, u64)> = parsed.iter().map(|p| (p.name.as_str(), p.quota)).collect();
        assert_eq!(read, [("burst", 20), ("hourly", 1000)]);
        assert!(parse_policy(b"((").is_empty());
    }

    #[test]
    fn policy_lists_every_quota() {
        let quotas = Quotas::new([
            Quota::per_second(10)
                .unwrap()
                .with_burst(20)
                .unwrap()
                .named("burst")
                .unwrap(),
            Quota::per_hour(1000).unwrap().named("hourly").unwrap(),
            Quota::per(std::time::Duration::from_millis(100), 1)
                .unwrap()
                .named("tiny")
                .unwrap(),
        ])
        .unwrap();
        assert_eq!(
            policy(&quotas),
            "\"burst\";q=20;w=2, \"hourly\";q=1000;w=3600, \"tiny\";q=1;w=1"
        );
    }

    #[test]
    fn ratelimit_reports_the_binding_quota() {
        let store = MemoryStore::new();
        let quotas = Quotas::from(Quota::per_minute(3).unwrap().named("login").unwrap());
        let first = store.check(&1, &quotas, 1).unwrap();
        assert_eq!(ratelimit(&quotas, &first), "\"login\";r=2;t=20");
        store.check(&1, &quotas, 2).unwrap();
        let denied = store.check(&1, &quotas, 1).unwrap();
        assert_eq!(ratelimit(&quotas, &denied), "\"login\";r=0;t=20");
        let fresh = store.status(&2, &quotas);
        assert_eq!(ratelimit(&quotas, &fresh), "\"login\";r=3");
    }
}
