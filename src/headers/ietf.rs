//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
//!
//! Both are structured-field lists of items named by a quoted string, the quota's name:
//! `RateLimit-Policy: "burst";q=20;w=2, "hourly";q=1000;w=3600` and
//! `RateLimit: "burst";r=0;t=1`. The policy lists every quota of the set; `RateLimit` reports
//! the binding one (the one that denied, or that has the fewest requests left).

use http::HeaderValue;

use super::{ceil_seconds, FieldBuf};
use crate::{Decision, Quotas};

/// `ratelimit-policy`.
pub const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// `ratelimit`.
pub const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

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
