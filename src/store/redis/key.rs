//! How a subject is written into a Redis key name: readable, unambiguous, and never moving the
//! Cluster hash tag.

use std::net::IpAddr;

use crate::key::Global;

/// The longest subject written into a key name as it is; longer ones (a 400 KB header, say)
/// are written as `sha1:` and the hex SHA-1 of the subject, so that a client cannot make
/// Redis, or the write-back list of an outage, hold its megabytes.
pub const MAX_SUBJECT: usize = 128;

/// The subject of `key` as it goes between a key name's braces (its Cluster hash tag).
pub(super) fn subject_tag<K: RedisKey + ?Sized>(key: &K) -> Vec<u8> {
    let mut tag = Vec::with_capacity(32);
    key.write_key(&mut KeyWriter(&mut tag));
    if tag.len() <= MAX_SUBJECT {
        return tag;
    }
    let digest = sha1_smol::Sha1::from(&tag).digest().to_string();
    format!("sha1:{digest}").into_bytes()
}

/// Writes a key's subject into a Redis key, readable and unambiguous: a type tag, then the
/// value, with `{`, `}` and `%` percent-escaped (braces would move the Cluster hash tag).
///
/// Implemented for the keys of the built-in extractors and for strings and integers;
/// implement it for your own key types to use them with [`RedisStore`](super::RedisStore).
pub trait RedisKey {
    /// Writes the subject.
    fn write_key(&self, out: &mut KeyWriter<'_>);
}

/// The sink of [`RedisKey::write_key`].
#[derive(Debug)]
pub struct KeyWriter<'a>(pub(crate) &'a mut Vec<u8>);

impl KeyWriter<'_> {
    /// Appends a type tag such as `ip`, followed by `:`.
    pub fn tag(&mut self, tag: &str) -> &mut Self {
        self.raw(tag.as_bytes());
        self.0.push(b':');
        self
    }

    /// Appends bytes, escaping `{`, `}` and `%`.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            match b {
                b'{' | b'}' | b'%' => self.0.extend_from_slice(format!("%{b:02X}").as_bytes()),
                _ => self.0.push(b),
            }
        }
        self
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.bytes(bytes);
    }
}

impl RedisKey for IpAddr {
    fn write_key(&self, out: &mut KeyWriter<'_>) {
        out.tag("ip").bytes(self.to_string().as_bytes());
    }
}

impl RedisKey for http::HeaderValue {
    fn write_key(&self, out: &mut KeyWriter<'_>) {
        out.tag("h").bytes(self.as_bytes());
    }
}

impl RedisKey for http::uri::Authority {
    fn write_key(&self, out: &mut KeyWriter<'_>) {
        out.tag("host")
            .bytes(self.as_str().to_ascii_lowercase().as_bytes());
    }
}

impl RedisKey for Global {
    fn write_key(&self, out: &mut KeyWriter<'_>) {
        out.raw(b"global");
    }
}

impl RedisKey for str {
    fn write_key(&self, out: &mut KeyWriter<'_>) {
        out.tag("s").bytes(self.as_bytes());
    }
}

impl RedisKey for String {
    fn write_key(&self, out: &mut KeyWriter<'_>) {
        self.as_str().write_key(out);
    }
}

impl<T: RedisKey + ?Sized> RedisKey for &T {
    fn write_key(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key(out);
    }
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl RedisKey for $t {
            fn write_key(&self, out: &mut KeyWriter<'_>) {
                out.tag("n").bytes(self.to_string().as_bytes());
            }
        }
    )*};
}

integer_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

#[cfg(test)]
mod tests {
    use super::*;

    fn key<K: RedisKey + ?Sized>(k: &K) -> String {
        let mut out = Vec::new();
        k.write_key(&mut KeyWriter(&mut out));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_are_readable_and_keep_the_hash_tag() {
        assert_eq!(
            key(&"203.0.113.7".parse::<IpAddr>().unwrap()),
            "ip:203.0.113.7"
        );
        assert_eq!(
            key(&http::HeaderValue::from_static("k{1}%")),
            "h:k%7B1%7D%25"
        );
        assert_eq!(
            key(&"API.example:443".parse::<http::uri::Authority>().unwrap()),
            "host:api.example:443"
        );
        assert_eq!(key(&Global), "global");
        assert_eq!(key("a}b"), "s:a%7Db");
        assert_eq!(key(&42u64), "n:42");
        assert_eq!(key(""), "s:", "never an empty hash tag");
    }

    #[test]
    fn long_subjects_become_their_digest() {
        let long = "x".repeat(400_000);
        let tag = String::from_utf8(subject_tag(long.as_str())).unwrap();
        assert!(tag.starts_with("sha1:") && tag.len() == 45, "{tag}");
        assert_eq!(
            subject_tag(long.as_str()),
            subject_tag(long.as_str()),
            "stable"
        );
        assert_ne!(subject_tag(long.as_str()), subject_tag(&long[1..]));
        let short = "y".repeat(MAX_SUBJECT - 2);
        assert_eq!(
            subject_tag(short.as_str()),
            format!("s:{short}").into_bytes()
        );
    }
}
