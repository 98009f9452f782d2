//! How a subject is written into a Redis key name: unambiguous, never moving the Cluster hash
//! tag, and never a secret in clear.

use hmac::{KeyInit, Mac};

use crate::key::{KeyWriter, RedisKey};

/// The longest subject written into a key name as it is, without a key secret; longer ones
/// (a 400 KB header, say) are written as `sha1:` and the hex SHA-1 of the subject, so that a
/// client cannot make Redis, or the write-back list of an outage, hold its megabytes.
pub(crate) const MAX_SUBJECT: usize = 128;

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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::key::Global;

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
