//! How a key is written into a Redis key name: [`RedisKey`], for the keys of the `redis`
//! feature's `RedisStore`.
//!
//! ```
//! use tollgate::key::{KeyWriter, RedisKey};
//!
//! /// A tenant and a user: the tenant is no secret, the user's id may be.
//! struct Member { tenant: u32, user: String }
//!
//! impl RedisKey for Member {
//!     fn write_key(&self, out: &mut KeyWriter<'_>) {
//!         out.tag("member").public(self.tenant.to_string().as_bytes()).public(b"/");
//!         out.bytes(self.user.as_bytes());
//!     }
//! }
//! # let _ = Member { tenant: 1, user: "u".into() };
//! ```

use std::net::IpAddr;

use super::Global;

/// Writes a key's subject into a Redis key: a type tag, then the value, with `{`, `}`, `%`
/// and `#` percent-escaped (braces would move the Cluster hash tag; `#` marks a hashed value).
///
/// A value that may be a secret (an API key, a token, a user's name) is written with
/// [`bytes`](KeyWriter::bytes): a store with a key secret
/// ([`RedisStoreBuilder::key_secret`](crate::store::RedisStoreBuilder::key_secret)) writes its
/// keyed hash instead. One that is not ([`public`](KeyWriter::public): addresses, host names)
/// stays readable.
///
/// Implemented for the keys of the built-in extractors and for strings and integers;
/// implement it for your own key types to use them with `RedisStore` (the `redis` feature).
pub trait RedisKey {
    /// Writes the subject.
    fn write_key(&self, out: &mut KeyWriter<'_>);
}

/// The sink of [`RedisKey::write_key`].
#[derive(Debug)]
pub struct KeyWriter<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    /// Where the first part that may be a secret begins.
    pub(crate) secret_from: Option<usize>,
    /// Every part counts as a secret.
    pub(crate) all_secret: bool,
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
