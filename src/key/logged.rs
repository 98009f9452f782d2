//! How keys appear in logs and events: hashed unless asked.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

/// How a layer shows keys in its `tracing` events and in the events its hooks receive.
///
/// Keys are often secrets (API keys, bearer tokens), and logs are read by more people, and
/// kept longer, than the secrets they would leak. So by default a key is shown as a short
/// *keyed* hash.
///
/// ```
/// use tollgate::key::{LogKeys, PeerIp};
/// use tollgate::{Quota, RateLimitLayer};
///
/// // Client IPs are not secrets here, and operators want to read them in the logs.
/// let layer = RateLimitLayer::new(Quota::per_second(5)?).key(PeerIp::new()).log_keys(LogKeys::Clear);
/// # drop(layer);
/// # Ok::<(), tollgate::QuotaError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogKeys {
    /// `key#3fa2c1d9e0b4`: 48 bits of a hash keyed with a secret drawn at random when the
    /// process starts. One key shows the same hash for the life of the process, so that an
    /// operator can follow one client through the logs, but the key cannot be read back or
    /// guessed by hashing candidates. The default.
    #[default]
    Hashed,
    /// The key itself, in its `Debug` form: for keys that are not secrets, such as client IPs.
    Clear,
}

/// A key as logs and events show it: see [`LogKeys`].
///
/// `Display` and `Debug` both show the configured form. Code that needs the key itself (a hook
/// that blocks a client, say) calls [`reveal`](Self::reveal), and keeps it out of its logs.
#[derive(Clone, Copy)]
pub struct LoggedKey<'a> {
    key: &'a dyn fmt::Debug,
    hash: u64,
    shown: LogKeys,
}

impl<'a> LoggedKey<'a> {
    /// `key`, to be shown as `shown` says.
    pub fn new<K: Hash + fmt::Debug>(key: &'a K, shown: LogKeys) -> Self {
        Self {
            key,
            hash: keyed_hash(log_secret(), key),
            shown,
        }
    }

    /// The key itself. Keep it out of logs.
    pub fn reveal(&self) -> &'a dyn fmt::Debug {
        self.key
    }

    /// The 48-bit keyed hash that [`LogKeys::Hashed`] shows.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

impl fmt::Display for LoggedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shown {
            LogKeys::Hashed => write!(f, "key#{:012x}", self.hash),
            LogKeys::Clear => write!(f, "{:?}", self.key),
        }
    }
}

impl fmt::Debug for LoggedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// 48 bits of `key`'s hash keyed with `secret`: enough to tell clients apart, too few to
/// carry the key.
fn keyed_hash<K: Hash + ?Sized>(secret: &foldhash::quality::RandomState, key: &K) -> u64 {
    secret.hash_one(key) >> 16
}

/// The process's secret hash key for logs.
fn log_secret() -> &'static foldhash::quality::RandomState {
    static SECRET: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    SECRET.get_or_init(foldhash::quality::RandomState::default)
}

/// The 48-bit hash of `key` that a response's partition key (`pk`) carries: the same keyed
/// hash as [`LoggedKey::hash`], under a secret of its own. Clients see the partition keys of
/// the keys they send, which they choose; with the log secret, that would hand anyone an
/// oracle for the hashes in the logs. Under its own secret, what a client learns from its
/// partition keys says nothing about the logs.
pub(crate) fn partition_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    static SECRET: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    keyed_hash(
        SECRET.get_or_init(foldhash::quality::RandomState::default),
        key,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_by_default_clear_on_request() {
        let token = "Bearer s3cr3t";
        let hashed = LoggedKey::new(&token, LogKeys::default());
        let shown = format!("{hashed} {hashed:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.starts_with("key#") && hashed.to_string().len() == 16);
        // Stable for one key, distinct for another.
        assert_eq!(
            hashed.to_string(),
            LoggedKey::new(&token, LogKeys::Hashed).to_string()
        );
        assert_ne!(
            hashed.to_string(),
            LoggedKey::new(&"Bearer other", LogKeys::Hashed).to_string()
        );
        assert_eq!(format!("{:?}", hashed.reveal()), "\"Bearer s3cr3t\"");
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(LoggedKey::new(&ip, LogKeys::Clear).to_string(), "192.0.2.1");
    }

    #[test]
    fn partition_hashes_are_stable_48_bits_under_their_own_secret() {
        let token = "Bearer s3cr3t";
        let pk = partition_hash(&token);
        assert_eq!(pk, partition_hash(&token), "stable for one key");
        assert_ne!(pk, partition_hash(&"Bearer other"));
        assert!(pk < 1 << 48);
        // Not the log hash: a client's partition keys tell nothing of the logs.
        assert_ne!(pk, LoggedKey::new(&token, LogKeys::Hashed).hash());
    }
}
