//! How a subject is written into a Redis key name: unambiguous, never moving the Cluster hash
//! tag, and never a secret in clear.

use std::net::IpAddr;

use hmac::{KeyInit, Mac};

use crate::key::Global;

/// The longest subject written into a key name as it is, without a key secret; longer ones
/// (a 400 KB header, say) are written as `sha1:` and the hex SHA-1 of the subject, so that a
/// client cannot make Redis, or the write-back list of an outage, hold its megabytes.
pub const MAX_SUBJECT: usize = 128;

/// The shortest key secret accepted.
pub(super) const MIN_SECRET: usize = 16;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How subjects become the part of a key name between braces.
pub(super) struct Subjects {
    /// HMAC-SHA-256 keyed with the fleet's secret, ready to clone.
    mac: Option<HmacSha256>,
    /// Hash every subject, addresses and host names included.
    hash_all: bool,
}

impl Subjects {
    /// Subjects written with `secret` (hashed where they may be secrets), or in clear without.
    pub(super) fn new(secret: Option<&[u8]>, hash_all: bool) -> Self {
        Self {
            mac: secret.map(|secret| {
                <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes any key")
            }),
            hash_all,
        }
    }

    /// Whether subjects that may be secrets are written in clear (no key secret).
    pub(super) fn in_clear(&self) -> bool {
        self.mac.is_none()
    }

    /// The subject of `key` as it goes between a key name's braces (its Cluster hash tag).
    ///
    /// With a key secret, everything from the first part that may be a secret on (a header
    /// value, a string; every part with `hash_all`) is replaced by `#` and 128 bits of
    /// HMAC-SHA-256 of the whole subject, in hex: `h:#3f9c…`, `scope:user:#0b1e…`. Without
    /// one, long subjects become their SHA-1.
    pub(super) fn tag<K: RedisKey + ?Sized>(&self, key: &K) -> Vec<u8> {
        let mut tag = Vec::with_capacity(48);
        let mut writer = KeyWriter {
            out: &mut tag,
            secret_from: None,
            all_secret: self.hash_all && self.mac.is_some(),
        };
        key.write_key(&mut writer);
        let secret_from = writer.secret_from;
        match (&self.mac, secret_from) {
            (Some(mac), Some(from)) => {
                let digest = mac.clone().chain_update(&tag).finalize().into_bytes();
                tag.truncate(from);
                tag.push(b'#');
                push_hex(&mut tag, &digest[..16]);
                tag
            }
            _ if tag.len() > MAX_SUBJECT => {
                let digest = sha1_smol::Sha1::from(&tag).digest().to_string();
                format!("sha1:{digest}").into_bytes()
            }
            _ => tag,
        }
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0xf)]);
    }
}

/// Writes a key's subject into a Redis key: a type tag, then the value, with `{`, `}`, `%`
/// and `#` percent-escaped (braces would move the Cluster hash tag; `#` marks a hashed value).
///
/// A value that may be a secret (an API key, a token, a user's name) is written with
/// [`bytes`](KeyWriter::bytes): a store with a key secret
/// ([`RedisStoreBuilder::key_secret`](super::RedisStoreBuilder::key_secret)) writes its
/// keyed hash instead. One that is not ([`public`](KeyWriter::public): addresses, host names)
/// stays readable.
///
/// Implemented for the keys of the built-in extractors and for strings and integers;
/// implement it for your own key types to use them with [`RedisStore`](super::RedisStore).
pub trait RedisKey {
    /// Writes the subject.
    fn write_key(&self, out: &mut KeyWriter<'_>);
}

/// The sink of [`RedisKey::write_key`].
#[derive(Debug)]
pub struct KeyWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Where the first part that may be a secret begins.
    secret_from: Option<usize>,
    /// Every part counts as a secret.
    all_secret: bool,
}

impl<'a> KeyWriter<'a> {
    /// A writer into `out`, for hashing subjects locally.
    pub(crate) fn into_vec(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            secret_from: None,
            all_secret: false,
        }
    }

    /// Appends a type tag such as `ip`, followed by `:`. Always readable.
    pub fn tag(&mut self, tag: &str) -> &mut Self {
        self.escaped(tag.as_bytes());
        self.out.push(b':');
        self
    }

    /// Appends a value that may be a secret (an API key, a token): hashed when the store has
    /// a key secret.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.secret_from.get_or_insert(self.out.len());
        self.escaped(bytes);
        self
    }

    /// Appends a value that is no secret (an address, a host name): readable, unless the
    /// store hashes every subject.
    pub fn public(&mut self, bytes: &[u8]) -> &mut Self {
        if self.all_secret {
            return self.bytes(bytes);
        }
        self.escaped(bytes);
        self
    }

    fn escaped(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'{' | b'}' | b'%' | b'#' => {
                    self.out.push(b'%');
                    push_hex_upper(self.out, b);
                }
                _ => self.out.push(b),
            }
        }
    }
}

fn push_hex_upper(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(HEX[usize::from(byte >> 4)]);
    out.push(HEX[usize::from(byte & 0xf)]);
}

impl RedisKey for IpAddr {
    fn write_key(&self, out: &mut KeyWriter<'_>) {
        out.tag("ip").public(self.to_string().as_bytes());
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
            .public(self.as_str().to_ascii_lowercase().as_bytes());
    }
}

impl RedisKey for Global {
    fn write_key(&self, out: &mut KeyWriter<'_>) {
        out.public(b"global");
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
                out.tag("n").public(self.to_string().as_bytes());
            }
        }
    )*};
}

integer_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

#[cfg(test)]
mod tests {
    use super::*;

    fn key<K: RedisKey + ?Sized>(k: &K) -> String {
        String::from_utf8(Subjects::new(None, false).tag(k)).unwrap()
    }

    #[test]
    fn keys_are_readable_and_keep_the_hash_tag() {
        assert_eq!(
            key(&"203.0.113.7".parse::<IpAddr>().unwrap()),
            "ip:203.0.113.7"
        );
        assert_eq!(
            key(&http::HeaderValue::from_static("k{1}%#")),
            "h:k%7B1%7D%25%23"
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
        let subjects = Subjects::new(None, false);
        let long = "x".repeat(400_000);
        let tag = String::from_utf8(subjects.tag(long.as_str())).unwrap();
        assert!(tag.starts_with("sha1:") && tag.len() == 45, "{tag}");
        assert_eq!(
            subjects.tag(long.as_str()),
            subjects.tag(long.as_str()),
            "stable"
        );
        assert_ne!(subjects.tag(long.as_str()), subjects.tag(&long[1..]));
        let short = "y".repeat(MAX_SUBJECT - 2);
        assert_eq!(
            subjects.tag(short.as_str()),
            format!("s:{short}").into_bytes()
        );
    }

    #[test]
    fn with_a_secret_no_secret_is_written_in_clear() {
        let secret = b"a shared fleet secret, 32 bytes!";
        let subjects = Subjects::new(Some(secret), false);
        let tag = |k: &dyn Fn(&mut KeyWriter<'_>)| {
            struct Writes<'a>(&'a dyn Fn(&mut KeyWriter<'_>));
            impl RedisKey for Writes<'_> {
                fn write_key(&self, out: &mut KeyWriter<'_>) {
                    (self.0)(out)
                }
            }
            String::from_utf8(subjects.tag(&Writes(k))).unwrap()
        };
        for api_key in ["sk-live-0123456789abcdef", &"k".repeat(176)] {
            let value = http::HeaderValue::from_str(api_key).unwrap();
            let written = String::from_utf8(subjects.tag(&value)).unwrap();
            assert!(
                written.starts_with("h:#") && written.len() == 35,
                "{written}"
            );
            assert!(!written.contains(&api_key[..8]));
            // The same on every instance with the secret; another secret, another name.
            let again = Subjects::new(Some(secret), false).tag(&value);
            assert_eq!(written.as_bytes(), again);
            let other = Subjects::new(Some(b"another secret, also 32 bytes!!!"), false);
            assert_ne!(written.as_bytes(), other.tag(&value));
        }
        // Strings too; addresses stay readable unless every subject is hashed.
        assert!(tag(&|out| {
            out.tag("s").bytes(b"alice");
        })
        .starts_with("s:#"));
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(subjects.tag(&ip), b"ip:203.0.113.7");
        let hidden = String::from_utf8(Subjects::new(Some(secret), true).tag(&ip)).unwrap();
        assert!(
            hidden.starts_with("ip:#") && !hidden.contains("203"),
            "{hidden}"
        );
        // Public parts before a secret stay, and a readable subject never looks hashed.
        assert!(tag(&|out| {
            out.tag("scope").public(b"user:").bytes(b"alice");
        })
        .starts_with("scope:user:#"));
        assert_eq!(
            tag(&|out| {
                out.tag("n").public(b"#1");
            }),
            "n:%231"
        );
    }
}
