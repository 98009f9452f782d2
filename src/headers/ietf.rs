//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
//!
//! Both are structured-field lists of items named by a quoted string, the quota's name:
//! `RateLimit-Policy: "burst";q=20;w=2, "hourly";q=1000;w=3600` and
//! `RateLimit: "burst";r=0;t=1`. The policy lists every quota of the set; `RateLimit` reports
//! the binding one (the one that denied, or that has the fewest requests left).
//!
//! Two optional parameters, off unless the layer is told
//! ([`HeaderOptions`](crate::rate_limit::HeaderOptions)):
//!
//! - `qu`, the [quota unit](QuotaUnit), on `RateLimit-Policy` items:
//!   `"default";q=100;qu="content-bytes";w=60`;
//! - `pk`, the [partition key](PartitionKey), on the items of both fields: a keyed hash of the
//!   request's rate-limit key, never the key, as a byte sequence: `"default";r=99;pk=:a2V5aGFz:`.

use std::hash::Hash;
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
///
/// Parsed by the `sfv` crate as a List (RFC 9651), never leniently: an integer of more than
/// 15 digits, a quote left open, or a Dictionary of the earlier drafts (`limit=10,
/// remaining=5`) makes the whole value unreadable, and a decimal (`r=1.0`) is not an integer.
/// The fuzz target `ratelimit_fields` compares what is read with sfv's List, item by item.
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

/// What a quota counts, as the `qu` parameter of `RateLimit-Policy` says it (the draft's
/// registry of quota units).
///
/// The layer charges every quota of a set the same [cost](crate::RateLimitLayer::cost), so one
/// unit describes them all: say `ContentBytes` when the cost is the request's size. Given to
/// [`HeaderOptions::quota_unit`](crate::rate_limit::HeaderOptions::quota_unit).
///
/// ```
/// use tollgate::rate_limit::{HeaderOptions, QuotaUnit};
///
/// assert_eq!(QuotaUnit::ContentBytes.as_str(), "content-bytes");
/// let options = HeaderOptions::default().quota_unit(QuotaUnit::ContentBytes);
/// assert_ne!(options, HeaderOptions::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaUnit {
    /// `qu="requests"`: one unit per request (what a client assumes when `qu` is absent).
    Requests,
    /// `qu="content-bytes"`: the bytes of content the server processes.
    ContentBytes,
    /// `qu="concurrent-requests"`: requests in flight at once.
    ConcurrentRequests,
}

impl QuotaUnit {
    /// The unit's name in the registry: `requests`, `content-bytes`, `concurrent-requests`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::ContentBytes => "content-bytes",
            Self::ConcurrentRequests => "concurrent-requests",
        }
    }
}

/// A partition key, as the `pk` parameter carries it: 48 bits of a hash of the request's
/// rate-limit key, keyed with a secret drawn at random when the process starts.
///
/// It tells a client which of its requests share a quota (same key, same `pk`) without
/// sending the key back: keys are often secrets (API keys, tokens), and responses are logged
/// and cached by more hands than requests. The secret is its own, not the one of
/// [`LoggedKey`](crate::key::LoggedKey), so partition keys and logs cannot be matched.
///
/// It is stable for the life of the process: instances of a fleet, or one instance after a
/// restart, give one key different partition keys. It is a keyed hash, not a MAC: it hides
/// keys from those who see it, not from a determined analysis of many keys and their
/// partition keys.
///
/// Never named by users (`pub`, because the public `Respond` and `Refuse` traits of
/// [`rate_limit`](crate::rate_limit) carry it, in a module private to the crate): the layer
/// writes it when [`HeaderOptions::partition_key`](crate::rate_limit::HeaderOptions::partition_key)
/// says to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionKey(u64);

impl PartitionKey {
    /// The partition key of a rate-limit key.
    pub(crate) fn of<K: Hash + ?Sized>(key: &K) -> Self {
        Self(crate::key::partition_hash(key))
    }

    /// Its six bytes, as the byte sequence of `pk` holds them.
    #[cfg(test)]
    pub(crate) fn to_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// Its byte sequence in base64, as it is written between the colons of `pk=:…:`.
    fn base64(self) -> [u8; 8] {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = [0; 8];
        // 48 bits: eight sextets, no padding.
        for (i, c) in out.iter_mut().enumerate() {
            *c = ALPHABET[((self.0 >> (42 - 6 * i)) & 63) as usize];
        }
        out
    }
}

impl std::fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let base64 = self.base64();
        write!(
            f,
            "PartitionKey(:{}:)",
            std::str::from_utf8(&base64).unwrap_or("")
        )
    }
}

/// The `RateLimit-Policy` value of a set of quotas.
#[cfg(test)]
pub(crate) fn policy(quotas: &Quotas) -> String {
    policy_buf(quotas, None, None).as_str().to_owned()
}

/// The `RateLimit` value of a decision.
#[cfg(test)]
pub(crate) fn ratelimit(quotas: &Quotas, decision: &Decision) -> String {
    ratelimit_buf(quotas, decision).as_str().to_owned()
}

/// The `RateLimit-Policy` value, with `qu` and `pk` on every item when given.
pub(crate) fn policy_value(
    quotas: &Quotas,
    unit: Option<QuotaUnit>,
    partition: Option<PartitionKey>,
) -> Option<HeaderValue> {
    policy_buf(quotas, unit, partition).into_header_value()
}

/// The `RateLimit` value of a decision with its partition key: never cached, since it is one
/// client's (the layer writes it only when told to).
pub(crate) fn ratelimit_value_with_partition(
    quotas: &Quotas,
    decision: &Decision,
    partition: PartitionKey,
) -> Option<HeaderValue> {
    let mut buf = ratelimit_buf(quotas, decision);
    push_partition(&mut buf, partition);
    buf.into_header_value()
}

fn push_partition(buf: &mut FieldBuf, partition: PartitionKey) {
    buf.push(";pk=:").push_bytes(&partition.base64()).push(":");
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

/// The policy's items, in the draft's order of parameters: `q`, `qu`, `w`, `pk`.
fn policy_buf(
    quotas: &Quotas,
    unit: Option<QuotaUnit>,
    partition: Option<PartitionKey>,
) -> FieldBuf {
    let mut buf = FieldBuf::new();
    for (i, quota) in quotas.as_slice().iter().enumerate() {
        if i > 0 {
            buf.push(", ");
        }
        buf.push("\"")
            .push(quota.name())
            .push("\";q=")
            .push_u64(u64::from(quota.burst()));
        if let Some(unit) = unit {
            buf.push(";qu=\"").push(unit.as_str()).push("\"");
        }
        buf.push(";w=")
            .push_u64(ceil_seconds(quota.window()).max(1));
        if let Some(partition) = partition {
            push_partition(&mut buf, partition);
        }
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

    fn two_quotas() -> Quotas {
        Quotas::new([
            Quota::per_second(10)
                .unwrap()
                .with_burst(20)
                .unwrap()
                .named("burst")
                .unwrap(),
            Quota::per_hour(1000).unwrap().named("hourly").unwrap(),
        ])
        .unwrap()
    }

    fn text(value: Option<HeaderValue>) -> String {
        value.unwrap().to_str().unwrap().to_owned()
    }

    #[test]
    fn quota_units_are_strings_in_the_drafts_order() {
        let quotas = two_quotas();
        assert_eq!(
            text(policy_value(&quotas, Some(QuotaUnit::ContentBytes), None)),
            "\"burst\";q=20;qu=\"content-bytes\";w=2, \"hourly\";q=1000;qu=\"content-bytes\";w=3600"
        );
        for (unit, name) in [
            (QuotaUnit::Requests, "requests"),
            (QuotaUnit::ContentBytes, "content-bytes"),
            (QuotaUnit::ConcurrentRequests, "concurrent-requests"),
        ] {
            assert_eq!(unit.as_str(), name);
            let value = text(policy_value(&quotas, Some(unit), None));
            let list = sfv::Parser::new(value.as_bytes())
                .parse::<sfv::List>()
                .unwrap();
            for entry in &list {
                let sfv::ListEntry::Item(item) = entry else {
                    panic!("{value}")
                };
                let qu = item.params.get("qu").and_then(|v| v.as_string());
                assert_eq!(qu.map(|s| s.as_str()), Some(name), "{value}");
            }
        }
        // Unconfigured: exactly what was written before there were options.
        assert_eq!(text(policy_value(&quotas, None, None)), policy(&quotas));
        assert_eq!(
            policy(&quotas),
            "\"burst\";q=20;w=2, \"hourly\";q=1000;w=3600"
        );
    }

    #[test]
    fn partition_keys_are_byte_sequences_of_a_keyed_hash() {
        let quotas = two_quotas();
        let key = "sk-live-0123456789abcdef";
        let pk = PartitionKey::of(&key);
        assert_eq!(pk, PartitionKey::of(&key), "stable");
        assert_ne!(pk, PartitionKey::of(&"sk-live-other"));
        let decision = MemoryStore::new().check(&key, &quotas, 1).unwrap();
        let ratelimit = text(ratelimit_value_with_partition(&quotas, &decision, pk));
        let policy = text(policy_value(&quotas, Some(QuotaUnit::Requests), Some(pk)));
        assert!(
            ratelimit.starts_with("\"burst\";r=19;t=1;pk=:"),
            "{ratelimit}"
        );
        for value in [&ratelimit, &policy] {
            assert!(
                !value.contains(key) && !value.contains("sk-live"),
                "{value}"
            );
            let list = sfv::Parser::new(value.as_bytes())
                .parse::<sfv::List>()
                .unwrap();
            for entry in &list {
                let sfv::ListEntry::Item(item) = entry else {
                    panic!("{value}")
                };
                let bytes = item.params.get("pk").and_then(|v| v.as_byte_sequence());
                assert_eq!(bytes, Some(&pk.to_bytes()[..]), "{value}");
            }
        }
        assert_eq!(list_len(&policy), 2, "on every policy item: {policy}");
        assert_eq!(
            format!("{pk:?}"),
            format!(
                "PartitionKey(:{}:)",
                std::str::from_utf8(&pk.base64()).unwrap()
            )
        );
    }

    fn list_len(value: &str) -> usize {
        sfv::Parser::new(value.as_bytes())
            .parse::<sfv::List>()
            .unwrap()
            .len()
    }

    #[test]
    fn base64_of_known_bytes() {
        // 0x000102030405 and 0xfffefdfcfbfa, written by any base64 encoder as below.
        assert_eq!(&PartitionKey(0x0001_0203_0405).base64(), b"AAECAwQF");
        assert_eq!(&PartitionKey(0xfffe_fdfc_fbfa).base64(), b"//79/Pv6");
        assert_eq!(
            PartitionKey(0x0001_0203_0405).to_bytes(),
            [0, 1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn what_the_writer_writes_the_reader_reads() {
        let quotas = two_quotas();
        let pk = PartitionKey::of(&"k");
        let policy = text(policy_value(
            &quotas,
            Some(QuotaUnit::ContentBytes),
            Some(pk),
        ));
        let read: Vec<(String, u64, bool)> = parse_policy(policy.as_bytes())
            .into_iter()
            .map(|p| (p.name, p.quota, p.counts_requests))
            .collect();
        assert_eq!(
            read,
            [
                ("burst".to_owned(), 20, false),
                ("hourly".to_owned(), 1000, false)
            ]
        );
        let requests = text(policy_value(&quotas, Some(QuotaUnit::Requests), None));
        assert!(parse_policy(requests.as_bytes())
            .iter()
            .all(|p| p.counts_requests));
    }
}
