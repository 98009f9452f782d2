//! The rate-limit header dialects, written by the rate-limit layer (and read by clients).
//!
//! - [`ietf`]: `RateLimit-Policy` and `RateLimit`, draft-ietf-httpapi-ratelimit-headers-10.
//! - [`legacy`]: `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
//! - [`retry_after`]: `Retry-After`, always in whole seconds, rounded up.
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
//!
//! ```
//! use std::time::Duration;
//! use tollgate::headers::{ietf, retry_after};
//! use tollgate::{MemoryStore, Quota, Quotas};
//!
//! let quotas = Quotas::from(Quota::per_second(5).unwrap().with_burst(10).unwrap());
//! assert_eq!(ietf::policy(&quotas), "\"default\";q=10;w=2");
//! let decision = MemoryStore::new().check(&"k", &quotas, 1).unwrap();
//! assert_eq!(ietf::ratelimit(&quotas, &decision), "\"default\";r=9;t=1");
//! assert_eq!(retry_after::seconds(Duration::from_millis(1)), 1);
//! ```

pub mod ietf;
pub mod legacy;
pub mod retry_after;

use std::time::Duration;

/// Whole seconds, rounded up: a client told "0" would retry at once.
pub(crate) fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Builds a header value from a short ASCII text, without going through `String`.
pub(crate) struct FieldBuf {
    bytes: [u8; 256],
    len: usize,
    overflow: bool,
}

impl FieldBuf {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; 256],
            len: 0,
            overflow: false,
        }
    }

    pub(crate) fn push(&mut self, s: &str) -> &mut Self {
        let end = self.len + s.len();
        match self.bytes.get_mut(self.len..end) {
            Some(to) => {
                to.copy_from_slice(s.as_bytes());
                self.len = end;
            }
            None => self.overflow = true,
        }
        self
    }

    pub(crate) fn push_u64(&mut self, n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // Digits are ASCII.
        self.push(std::str::from_utf8(&digits[i..]).unwrap_or("0"))
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    /// The value; `None` if it did not fit (it never does not for the fields written here:
    /// names are at most 64 bytes and numbers 20 digits).
    pub(crate) fn to_header_value(&self) -> Option<http::HeaderValue> {
        if self.overflow {
            return None;
        }
        http::HeaderValue::from_bytes(&self.bytes[..self.len]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut full = FieldBuf::new();
        for _ in 0..300 {
            full.push("x");
        }
        assert!(full.to_header_value().is_none());
    }
}
