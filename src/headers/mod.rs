//! The rate-limit header dialects, written by the rate-limit layer and read by the client
//! layers. Private to the crate: users configure the fields through
//! [`HeaderOptions`](crate::rate_limit::HeaderOptions) (with the two public enums of this
//! module, re-exported as [`rate_limit::QuotaUnit`](crate::rate_limit::QuotaUnit) and
//! [`rate_limit::Reset`](crate::rate_limit::Reset)), and read what servers say through
//! [`Classification::pushback`](crate::retry::Classification::pushback) and the
//! [`LearnLayer`](crate::learn::LearnLayer).
//!
//! Writers and readers of one dialect each, and the one reader of them all:
//!
//! - [`ietf`]: `RateLimit-Policy` and `RateLimit`, draft-ietf-httpapi-ratelimit-headers-10.
//! - [`legacy`]: `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`, and the
//!   draft's earlier `RateLimit-Limit`, `-Remaining`, `-Reset`.
//! - [`retry_after`]: `Retry-After`, always in whole seconds, rounded up.
//! - `openai`: OpenAI's `x-ratelimit-*-requests` and `x-ratelimit-*-tokens` (read only).
//! - [`server`]: the one reader of what a server says, every dialect at once, for clients;
//!   above the readers. What they find (`said`) is below them, so that no reader imports from
//!   the module that imports it.
//!
//! What the fields say for a token bucket (the numbers of the [binding
//! quota](crate::Decision)):
//!
//! | field | value |
//! | --- | --- |
//! | `RateLimit-Policy: "name";q=Q;w=W` | `Q` = the burst, `W` = seconds for an empty bucket to fill (`interval × burst`, rounded up) |
//! | `RateLimit: "name";r=R;t=T` | `R` = requests left now, `T` = seconds until one more is available (rounded up; left out when the bucket is full) |
//! | `Retry-After: S` | on refusals: seconds until this request would pass, rounded up, at least 1 |
//! | `X-RateLimit-Limit` / `-Remaining` | `Q` / `R` |
//! | `X-RateLimit-Reset` | seconds until the bucket is full again, as a delta (default) or as Unix epoch seconds (GitHub's style) |
//! | `qu="unit"` on `RateLimit-Policy` items | only when [configured](crate::rate_limit::HeaderOptions::quota_unit): what `Q` counts ([`QuotaUnit`](crate::rate_limit::QuotaUnit)) |
//! | `pk=:…:` on `RateLimit` and `RateLimit-Policy` items | only when [configured](crate::rate_limit::HeaderOptions::partition_key): a keyed hash of the request's key, never the key ([`ietf::PartitionKey`]) |

pub(crate) mod ietf;
pub(crate) mod legacy;
pub(crate) mod openai;
pub(crate) mod retry_after;
pub(crate) mod said;
pub(crate) mod server;

use std::time::Duration;

use http::{HeaderMap, HeaderName};

/// A field that holds a non-negative integer, as a `u64`; `None` when absent or anything else.
pub(crate) fn number(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Whole seconds, rounded up: a client told "0" would retry at once.
pub(crate) fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Builds a short header value on the stack; the value then copies it once into its own
/// buffer. Values that do not fit (never the case for the fields written here: names are at
/// most 64 bytes, numbers 20 digits) spill to the heap.
pub(crate) struct FieldBuf {
    bytes: [u8; 96],
    len: usize,
    spill: Vec<u8>,
}

impl FieldBuf {
    #[inline]
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; 96],
            len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, s: &str) -> &mut Self {
        self.push_bytes(s.as_bytes())
    }

    #[inline]
    pub(crate) fn push_bytes(&mut self, s: &[u8]) -> &mut Self {
        match self.bytes.get_mut(self.len..self.len + s.len()) {
            Some(to) if self.spill.is_empty() => {
                to.copy_from_slice(s);
                self.len += s.len();
            }
            _ => {
                if self.spill.is_empty() {
                    self.spill.extend_from_slice(&self.bytes[..self.len]);
                }
                self.spill.extend_from_slice(s);
            }
        }
        self
    }

    /// Decimal digits, two at a time.
    #[inline]
    pub(crate) fn push_u64(&mut self, n: u64) -> &mut Self {
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = n;
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            i -= 2;
            digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        }
        if n >= 10 {
            let pair = n as usize * 2;
            i -= 2;
            digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        } else {
            i -= 1;
            digits[i] = b'0' + n as u8;
        }
        self.push_bytes(&digits[i..])
    }

    fn bytes(&self) -> &[u8] {
        if self.spill.is_empty() {
            &self.bytes[..self.len]
        } else {
            &self.spill
        }
    }

    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.bytes()).unwrap_or("")
    }

    /// The value; `None` only if it held a byte a header value cannot (names are checked
    /// when quotas are built, so it never does here).
    #[inline]
    pub(crate) fn into_header_value(self) -> Option<http::HeaderValue> {
        http::HeaderValue::from_bytes(self.bytes()).ok()
    }
}

/// At most this many values are interned for the life of the process ([`interned`]).
const MAX_INTERNED: usize = 256;
/// And at most this many bytes of them.
const MAX_INTERNED_BYTES: usize = 64 * 1024;

/// The values interned so far, and their bytes.
static INTERNED: std::sync::Mutex<(Vec<&'static str>, usize)> =
    std::sync::Mutex::new((Vec::new(), 0));

/// `value` as a static one, for a value written on a great many responses (a quota set's
/// `RateLimit-Policy`): cloned and dropped per response, a static value costs nothing, where a
/// shared one moves a reference count whose cache line every core serving responses takes in
/// turn. Equal values are interned once, process-wide; past [`MAX_INTERNED`] values or
/// [`MAX_INTERNED_BYTES`] bytes, `value` is returned as it is, so that quota sets made at run
/// time without end cost a bounded few kilobytes. Called once per cached value, not per
/// request.
pub(crate) fn interned(value: http::HeaderValue) -> http::HeaderValue {
    let Ok(text) = value.to_str() else {
        return value;
    };
    let mut interned = INTERNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (values, bytes) = &mut *interned;
    if let Some(found) = values.iter().find(|found| **found == text) {
        return http::HeaderValue::from_static(found);
    }
    if values.len() >= MAX_INTERNED || *bytes + text.len() > MAX_INTERNED_BYTES {
        return value;
    }
    let leaked: &'static str = Box::leak(text.into());
    values.push(leaked);
    *bytes += leaked.len();
    // `to_str` accepted it, so every byte is one `from_static` accepts too.
    http::HeaderValue::from_static(leaked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interned_value_is_one_static_string_and_the_interned_are_bounded() {
        let value = || http::HeaderValue::from_str("\"interned\";q=1;w=1").unwrap();
        let (first, second) = (interned(value()), interned(value()));
        assert_eq!(first, value());
        // One leaked copy for both: the same bytes, not two shared buffers.
        assert_eq!(first.as_bytes().as_ptr(), second.as_bytes().as_ptr());
        for i in 0..2 * MAX_INTERNED {
            let many = http::HeaderValue::from_str(&format!("\"many-{i}\";q=1;w=1")).unwrap();
            assert_eq!(interned(many.clone()), many);
        }
        {
            let interned = INTERNED.lock().unwrap();
            assert!(interned.0.len() <= MAX_INTERNED && interned.1 <= MAX_INTERNED_BYTES);
        }
        // Past the cap, a new value comes back as it was given.
        let past = http::HeaderValue::from_str("\"past the cap\";q=1;w=1").unwrap();
        let at = past.as_bytes().as_ptr();
        assert_eq!(interned(past).as_bytes().as_ptr(), at);
        // A value interned before the cap still is.
        assert_eq!(
            interned(value()).as_bytes().as_ptr(),
            first.as_bytes().as_ptr()
        );
    }

    #[test]
    fn what_the_fields_say_for_a_token_bucket() {
        use crate::{MemoryStore, Quota, Quotas};

        let quotas = Quotas::from(Quota::per_second(5).unwrap().with_burst(10).unwrap());
        assert_eq!(ietf::policy(&quotas), "\"default\";q=10;w=2");
        let decision = MemoryStore::new().check(&"k", &quotas, 1).unwrap();
        assert_eq!(ietf::ratelimit(&quotas, &decision), "\"default\";r=9;t=1");
        assert_eq!(retry_after::seconds(Duration::from_millis(1)), 1);
    }

    #[test]
    fn rounds_up() {
        assert_eq!(ceil_seconds(Duration::ZERO), 0);
        assert_eq!(ceil_seconds(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_seconds(Duration::from_secs(2)), 2);
        assert_eq!(ceil_seconds(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn field_buf_writes_numbers() {
        let mut buf = FieldBuf::new();
        buf.push("r=").push_u64(0).push(";t=").push_u64(u64::MAX);
        assert_eq!(buf.as_str(), "r=0;t=18446744073709551615");
        assert_eq!(
            buf.into_header_value().unwrap(),
            "r=0;t=18446744073709551615"
        );
        for n in [
            1,
            9,
            10,
            42,
            99,
            100,
            101,
            999,
            1000,
            123_456_789,
            10_000_000_000,
        ] {
            let mut buf = FieldBuf::new();
            buf.push_u64(n);
            assert_eq!(buf.as_str(), n.to_string());
        }
        let mut long = FieldBuf::new();
        for i in 0..50 {
            long.push("ab").push_u64(i);
        }
        let expected: String = (0..50).map(|i| format!("ab{i}")).collect();
        assert_eq!(long.as_str(), expected);
        let mut bad = FieldBuf::new();
        bad.push("a\nb");
        assert!(bad.into_header_value().is_none());
    }
}
