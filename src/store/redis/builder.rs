//! Configuring a [`RedisStore`], and checking at start-up that it can work.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::connection::{self, Connection, Target, Tls};
use super::{ErrorHook, OnFailure, RedisStore, DEFAULT_PREFIX, DEFAULT_TIMEOUT};
use crate::store::StoreError;

/// Configures a [`RedisStore`]: made by [`RedisStore::builder`] (one Redis),
/// [`RedisStore::cluster`] (a Redis Cluster) or [`RedisStore::sentinel`] (the primary Redis
/// Sentinels name).
#[must_use]
pub struct RedisStoreBuilder {
    pub(super) target: Target,
    pub(super) tls: Tls,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
    pub(super) on_failure: OnFailure,
    /// Set by the user, or `None`: announced in Redis.
    pub(super) fleet_size: Option<u32>,
    pub(super) over_limit_cache: bool,
    pub(super) leases: bool,
    pub(super) batching: bool,
    pub(super) hook: Option<ErrorHook>,
    pub(super) key_secret: Option<Vec<u8>>,
    pub(super) hash_all_keys: bool,
    pub(super) time: super::script::ScriptTime,
}

impl RedisStoreBuilder {
    pub(super) fn new(target: Target) -> Self {
        Self {
            target,
            tls: Tls::default(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            on_failure: OnFailure::Deny,
            fleet_size: None,
            over_limit_cache: true,
            leases: true,
            batching: true,
            hook: None,
            key_secret: None,
            hash_all_keys: false,
            time: super::script::ScriptTime::default(),
        }
    }

    /// Decides on `clock` instead of Redis's `TIME`, for tests that move time themselves (as
    /// the model-based tests do, on a test clock that starts above zero). Keys then live a
    /// million times longer in Redis than they owe, since the test's time does not follow the
    /// wall clock that expires them. Never in production: every instance of a fleet must read
    /// one clock, Redis's.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn clock(mut self, clock: impl crate::clock::Clock) -> Self {
        self.time = super::script::ScriptTime::of(clock);
        self
    }

    /// The first part of every key (default `tollgate`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a call to Redis may take before the failure policy applies (default
    /// 50 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do when Redis fails or is too slow (default [`OnFailure::Deny`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// How many instances share this limit: with [`OnFailure::Local`], each instance decides
    /// with 1/`instances` of every quota while Redis is away (the rate divided, the burst
    /// divided, at least 1), so that the fleet together stays near one limit instead of
    /// admitting one limit per instance.
    ///
    /// Without it, the instances count themselves: each announces itself in Redis every
    /// second (one sorted set, `<prefix>:{fleet}`, an entry per instance that lasts 3 s) and
    /// reads how many did, so an outage finds each with 1/(instances seen lately) ([`fleet`]
    /// says how many). Set it to override that count (or a little above it: more only makes
    /// an outage stricter).
    ///
    /// [`fleet`]: RedisStore::fleet
    pub fn fleet_size(mut self, instances: u32) -> Self {
        self.fleet_size = Some(instances.max(1));
        self
    }

    /// Whether to answer keys that were just denied locally, until their retry-after (default
    /// on).
    pub fn over_limit_cache(mut self, on: bool) -> Self {
        self.over_limit_cache = on;
        self
    }

    /// Whether keys that are hot on this instance take their tokens from Redis in leases and
    /// spend them locally (default on; see [Leases](RedisStore#leases)). Off, every decision
    /// is a round trip, and a hot key keeps [`OnFailure::Local`]'s share through an outage.
    pub fn leases(mut self, on: bool) -> Self {
        self.leases = on;
        self
    }

    /// Whether decisions queued on the connection go to Redis together, in one script call
    /// (default on; see [Throughput](RedisStore#throughput)). On a cluster, the decisions of one
    /// node go together, which needs Redis 7 or later.
    pub fn batching(mut self, on: bool) -> Self {
        self.batching = on;
        self
    }

    /// Trusts these certificate authorities (PEM) for `rediss://`, beyond the system's
    /// roots: for a Redis whose certificate a private CA signed.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.roots = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) for `rediss://`, to a Redis that asks
    /// for one (`tls-auth-clients yes`).
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// The ACL user (if any) and password of the primary that Redis Sentinels name (the
    /// Sentinels' own come from their URLs). Ignored elsewhere: give them in the URL.
    pub fn master_auth(mut self, user: Option<&str>, password: &str) -> Self {
        if let Target::Sentinel { auth, .. } = &mut self.target {
            *auth = Some((user.map(str::to_owned), password.to_owned()));
        }
        self
    }

    /// The fleet's secret for key names: subjects that may be secrets (API keys, tokens, any
    /// [`RedisKey`](crate::key::RedisKey) part written with
    /// [`KeyWriter::bytes`](crate::key::KeyWriter::bytes)) are written as 128 bits of their
    /// HMAC-SHA-256 under it, never in clear, in key names and so in every command Redis
    /// sees (`MONITOR`, the slow log, replicas, backups). Addresses and host names stay
    /// readable unless [`hash_all_keys`](Self::hash_all_keys) says otherwise.
    ///
    /// Give every instance the same secret (at least 16 bytes; 32 random ones is good), so
    /// that they share one limit per key. Changing it starts every key afresh, as a new
    /// prefix would. Without one, [`connect`](Self::connect) says at start-up (WARN) that
    /// such keys are stored in clear.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tollgate::StoreError> {
    /// use tollgate::store::RedisStore;
    /// let secret = std::env::var("TOLLGATE_KEY_SECRET").expect("the fleet's key secret");
    /// let store = RedisStore::builder("redis://127.0.0.1:6379")
    ///     .key_secret(secret)
    ///     .connect()
    ///     .await?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn key_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.key_secret = Some(secret.as_ref().to_vec());
        self
    }

    /// With a [`key_secret`](Self::key_secret), hash every subject, client addresses and host
    /// names included (default off: they are no secrets, and readable names help an operator).
    pub fn hash_all_keys(mut self, on: bool) -> Self {
        self.hash_all_keys = on;
        self
    }

    /// Calls `hook` on every failed call to Redis.
    pub fn on_error(mut self, hook: impl Fn(&StoreError) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The store, checked at start-up: connects, authenticates, makes sure the server is what
    /// the builder says (one Redis, or a Redis Cluster whose slots are all served), and loads
    /// the scripts. A wrong URL, an unreachable server, a wrong password or ACL user, a TLS
    /// failure, a cluster node given as one Redis, or a lone Redis given as a cluster is an
    /// error here, with a message that says which (and no password in it), instead of a
    /// server that starts and then decides every request by its failure policy.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tollgate::StoreError> {
    /// use tollgate::store::RedisStore;
    /// let store = RedisStore::builder("redis://:s3cret@127.0.0.1:6379").connect().await?;
    /// let cluster = RedisStore::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .connect()
    ///     .await?;
    /// # drop((store, cluster)); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::Unusable`] saying what is wrong.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let list = |urls: &[String]| {
            let shown: Vec<String> = urls.iter().map(|s| redacted(s)).collect();
            shown.join(",")
        };
        let shown = match &self.target {
            Target::Single(url) => format!("Redis at {}", redacted(url)),
            Target::Cluster(seeds) => format!("Redis Cluster at {}", list(seeds)),
            Target::Sentinel {
                sentinels, master, ..
            } => format!(
                "the primary {master:?} of the Redis Sentinels at {}",
                list(sentinels)
            ),
        };
        let unusable = |what: String| StoreError::Unusable(format!("{shown}: {what}"));
        self.check_key_secret().map_err(unusable)?;
        self.check_pem().map_err(unusable)?;
        let patience = self.timeout.max(Duration::from_secs(2));
        let in_time = |what: &'static str| {
            let shown = shown.clone();
            move |_| StoreError::Unusable(format!("{shown}: no answer in {patience:?} ({what})"))
        };
        let mut connection = match &self.target {
            Target::Single(url) => {
                let client = connection::client(url, &self.tls)
                    .map_err(|e| unusable(format!("not a Redis URL ({e})")))?;
                let config = connection::manager_config(self.timeout);
                let manager = redis::aio::ConnectionManager::new_with_config(client, config);
                let connected = match tokio::time::timeout(patience, manager).await {
                    Ok(Ok(connection)) => Ok(connection),
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err(format!("no answer in {patience:?} (connecting)")),
                };
                let connection = match connected {
                    Ok(connection) => connection,
                    // `rediss://` to a port that serves Redis without TLS: the handshake fails
                    // or never ends; say why.
                    Err(_) if url.starts_with("rediss://") && plain_redis_at(url).await => {
                        return Err(unusable(PLAIN_PORT.to_owned()))
                    }
                    Err(what) => return Err(unusable(what)),
                };
                Connection::Single(connection)
            }
            Target::Cluster(seeds) => {
                let client = connection::cluster_client(seeds, &self.tls, patience, patience)
                    .map_err(|e| unusable(format!("not Redis URLs ({e})")))?;
                let connected =
                    match tokio::time::timeout(patience, client.get_async_connection()).await {
                        Ok(Ok(connection)) => Ok(connection),
                        Ok(Err(e)) => Err(describe(&e)),
                        Err(_) => Err(format!("no answer in {patience:?} (connecting)")),
                    };
                let connection = match connected {
                    Ok(connection) => connection,
                    Err(what) => {
                        for seed in seeds.iter().filter(|s| s.starts_with("rediss://")) {
                            if plain_redis_at(seed).await {
                                return Err(unusable(PLAIN_PORT.to_owned()));
                            }
                        }
                        return Err(unusable(what));
                    }
                };
                Connection::Cluster(connection)
            }
            Target::Sentinel {
                sentinels,
                master,
                auth,
            } => {
                let connection =
                    Connection::sentinel(sentinels, master, auth.as_ref(), self.timeout);
                let connection = tokio::time::timeout(patience, connection)
                    .await
                    .map_err(in_time("asking the Sentinels"))?
                    .map_err(|e| unusable(describe(&e)))?;
                connection
            }
        };
        // A cluster connection asks every primary and answers with a map of their texts.
        let info: redis::Value = tokio::time::timeout(
            patience,
            redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut connection),
        )
        .await
        .map_err(in_time("INFO"))?
        .map_err(|e| unusable(describe(&e)))?;
        let is_cluster_node = has_line(&info, "cluster_enabled:1");
        match (&self.target, is_cluster_node) {
            (Target::Single(_) | Target::Sentinel { .. }, true) => {
                return Err(unusable(
                    "it is a Redis Cluster node, and a cluster node answers most keys with \
                     MOVED: use RedisStore::cluster with the cluster's nodes"
                        .to_owned(),
                ))
            }
            (Target::Cluster(_), false) => {
                return Err(unusable(
                    "it is not a Redis Cluster (cluster_enabled:0): use RedisStore::builder"
                        .to_owned(),
                ))
            }
            _ => {}
        }
        if let Target::Single(_) = &self.target {
            // A replica answers reads and refuses every write: denials would pass, and every
            // allowed request would fail.
            let replication: redis::Value = tokio::time::timeout(
                patience,
                redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut connection),
            )
            .await
            .map_err(in_time("INFO"))?
            .map_err(|e| unusable(describe(&e)))?;
            if has_line(&replication, "role:slave") {
                return Err(unusable(
                    "it is a replica, which refuses writes: give the primary (or use \
                     RedisStore::sentinel to follow it)"
                        .to_owned(),
                ));
            }
        }
        if let Target::Cluster(_) = &self.target {
            let state: redis::Value = tokio::time::timeout(
                patience,
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut connection),
            )
            .await
            .map_err(in_time("CLUSTER INFO"))?
            .map_err(|e| unusable(describe(&e)))?;
            if !has_line(&state, "cluster_state:ok") {
                return Err(unusable(
                    "the cluster is not serving every slot (cluster_state is not ok)".to_owned(),
                ));
            }
        }
        let mut scripts = vec![
            super::script::DECIDE,
            super::script::REFUND,
            super::script::WRITE_BACK,
        ];
        let batching_on_a_cluster = self.batching && matches!(self.target, Target::Cluster(_));
        if batching_on_a_cluster {
            scripts.push(super::script::DECIDE_ACROSS_SLOTS);
        }
        for script in scripts {
            let loaded: Result<redis::Value, _> = tokio::time::timeout(
                patience,
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(script)
                    .query_async(&mut connection),
            )
            .await
            .map_err(in_time("SCRIPT LOAD"))?;
            loaded.map_err(|e| {
                let needs = if script == super::script::DECIDE_ACROSS_SLOTS {
                    " (batching on a cluster needs Redis 7 or later: upgrade, or turn it off \
                     with batching(false))"
                } else {
                    ""
                };
                unusable(format!("cannot load the script{needs}: {}", describe(&e)))
            })?;
        }
        // One decision as requests will make it (a peek: nothing is written), so that an ACL
        // user who may not run the script or touch the store's keys is refused here.
        let check_key = format!("{}:{{tollgate-start-up-check}}:check:1:1", self.prefix);
        let check = super::script::evalsha(
            &redis::Script::new(super::script::DECIDE),
            std::iter::once(check_key.as_bytes()),
            // One decision: one quota, cost 0, no wait, nothing carried; interval and window 1;
            // Redis's own time.
            [1, 1, 0, 0, 0, 1, 1, 0],
        );
        let decided: Result<redis::Value, _> =
            tokio::time::timeout(patience, check.query_async(&mut connection))
                .await
                .map_err(in_time("a first decision"))?;
        decided.map_err(|e| {
            unusable(format!(
                "a first decision failed (an ACL user needs EVALSHA and the keys under \
                 \"{}:\"): {}",
                self.prefix,
                describe(&e)
            ))
        })?;
        // The checked connection is the store's.
        let store = RedisStore::assemble(self, connection);
        if store.inner.subjects.in_clear() {
            tracing::warn!(
                target: "tollgate::store::redis",
                store = %shown,
                "no key secret: keys that may be secrets (API keys and tokens from headers, \
                 string keys) are written into Redis key names in clear, and long ones as \
                 an unsalted SHA-1; set RedisStoreBuilder::key_secret (TOLLGATE_KEY_SECRET in \
                 the example server). Client addresses and host names are written in clear \
                 either way"
            );
        }
        Ok(store)
    }

    /// The store. Connects lazily, in the background: Redis need not be up yet (until it is,
    /// the failure policy applies); [`connect`](Self::connect) checks it at start-up instead.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the URL is not a Redis URL, or for a store through
    /// Sentinel, which must ask the Sentinels first: use [`connect`](Self::connect).
    pub fn build(self) -> Result<RedisStore, StoreError> {
        self.check_key_secret().map_err(StoreError::Unusable)?;
        let connection = Connection::lazy(&self.target, &self.tls, self.timeout)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(RedisStore::assemble(self, connection))
    }
}

/// Whether a text in `value` (a text, or a map or array of them) has the line `wanted`.
impl RedisStoreBuilder {
    fn check_key_secret(&self) -> Result<(), String> {
        match &self.key_secret {
            Some(secret) if secret.len() < super::key::MIN_SECRET => Err(format!(
                "the key secret has {} bytes, fewer than {}: use a long random one (32 bytes \
                 or more)",
                secret.len(),
                super::key::MIN_SECRET
            )),
            None if self.hash_all_keys => {
                Err("hash_all_keys needs a key secret (RedisStoreBuilder::key_secret)".to_owned())
            }
            _ => Ok(()),
        }
    }
}

fn has_line(value: &redis::Value, wanted: &str) -> bool {
    use redis::Value;
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes)
            .lines()
            .any(|line| line.trim() == wanted),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => {
            text.lines().any(|line| line.trim() == wanted)
        }
        Value::Array(values) | Value::Set(values) => values.iter().any(|v| has_line(v, wanted)),
        Value::Map(pairs) => pairs.iter().any(|(_, v)| has_line(v, wanted)),
        _ => false,
    }
}

/// A Redis URL with its password, if any, replaced by `***`.
pub(super) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first '/' after its last '@' (a password may hold a '/').
    let host_start = rest.rfind('@').map_or(0, |at| at + 1);
    let end = rest[host_start..]
        .find('/')
        .map_or(rest.len(), |e| host_start + e);
    let (authority, path) = rest.split_at(end);
    let mut shown = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => format!("{scheme}://{authority}{path}"),
    };
    // `redis+unix:///path?pass=…` carries it in the query.
    if let Some(at) = shown.find("pass=") {
        let end = shown[at..].find('&').map_or(shown.len(), |e| at + e);
        shown.replace_range(at + 5..end, "***");
    }
    shown
}

/// What a `rediss://` URL to a port without TLS is told.
const PLAIN_PORT: &str = "this port speaks Redis without TLS (it answered a plain PING): use \
     redis:// for it, or give the port Redis serves TLS on (`tls-port`)";

/// Whether `url` (a `rediss://` one) names a port that answers a plain-text `PING` as Redis
/// does, within half a second: the reason a TLS handshake there never ends.
async fn plain_redis_at(url: &str) -> bool {
    use redis::IntoConnectionInfo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(info) = url.into_connection_info() else {
        return false;
    };
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::TcpTls { host, port, .. }
        | redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        _ => return false,
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.ok()?;
        // `+PONG`, or `-NOAUTH …` from a Redis that wants a password.
        Some(matches!(first[0], b'+' | b'-'))
    };
    tokio::time::timeout(Duration::from_millis(500), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// What a connection error means, in words an operator can act on.
fn describe(error: &redis::RedisError) -> String {
    let text = error.to_string();
    let upper = text.to_ascii_uppercase();
    if upper.contains("UNKNOWNISSUER") {
        return format!(
            "the server's TLS certificate is signed by a certificate authority this store does \
             not trust: give that CA's certificate (PEM) to tls_root_certificates ({text})"
        );
    }
    if upper.contains("NOTVALIDFORNAME") {
        return format!(
            "the server's TLS certificate is not for the host name in the URL: connect by a \
             name the certificate lists ({text})"
        );
    }
    if upper.contains("CLUSTERCONNECTIONNOTFOUND") || upper.contains("SLOT NOT COVERED") {
        return format!(
            "no node serves the cluster's slots: is the cluster created (`redis-cli --cluster \
             create`) and every slot assigned (`CLUSTER INFO` says cluster_state:ok)? ({text})"
        );
    }
    if upper.contains("WRONGPASS")
        || upper.contains("INVALID PASSWORD")
        || upper.contains("AUTHENTICATION FAILED")
        || upper.contains("AUTHENTICATIONFAILED")
    {
        format!("the password or ACL user was refused ({text})")
    } else if upper.contains("NOAUTH") {
        format!("it asks for a password, and the URL gives none ({text})")
    } else if upper.contains("CERTIFICATE") || upper.contains("TLS") || upper.contains("HANDSHAKE")
    {
        format!("the TLS handshake failed ({text})")
    } else if upper.contains("CLUSTER SUPPORT DISABLED") {
        "it is not a Redis Cluster (cluster support disabled): use RedisStore::builder".to_owned()
    } else if error.is_connection_refusal() || error.is_io_error() {
        format!("cannot connect ({text})")
    } else {
        text
    }
}

impl RedisStoreBuilder {
    /// The certificates and key given for TLS are PEM: a file that holds none (DER, a key
    /// where a certificate goes, an empty file) would only fail the handshake later, as an
    /// unknown issuer.
    fn check_pem(&self) -> Result<(), String> {
        let has = |pem: &[u8], label: &str| {
            String::from_utf8_lossy(pem).lines().any(|line| {
                line.trim().starts_with("-----BEGIN ")
                    && line.trim().ends_with(&format!("{label}-----"))
            })
        };
        if let Some(roots) = &self.tls.roots {
            if !has(roots, " CERTIFICATE") {
                return Err(
                    "the CA given to tls_root_certificates holds no PEM certificate (no \
                     `-----BEGIN CERTIFICATE-----` line): give the CA's certificate in PEM"
                        .to_owned(),
                );
            }
        }
        if let Some((certificate, key)) = &self.tls.client {
            if !has(certificate, " CERTIFICATE") {
                return Err(
                    "the client certificate given to tls_client_certificate holds no \
                     PEM certificate (no `-----BEGIN CERTIFICATE-----` line)"
                        .to_owned(),
                );
            }
            if !has(key, "PRIVATE KEY") {
                return Err(
                    "the key given to tls_client_certificate holds no PEM private key \
                     (no `-----BEGIN … PRIVATE KEY-----` line)"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .field("fleet_size", &self.fleet_size)
            .field("over_limit_cache", &self.over_limit_cache)
            .field("batching", &self.batching)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redacted("redis://user:hunter2@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redacted("redis://:hunter2@host"), "redis://:***@host");
        assert_eq!(
            redacted("redis://:hunter2/x@127.0.0.1:6380/0"),
            "redis://:***@127.0.0.1:6380/0"
        );
        assert_eq!(redacted("rediss://host:6380"), "rediss://host:6380");
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=1&pass=hunter2&user=u"),
            "redis+unix:///run/redis.sock?db=1&pass=***&user=u"
        );
    }
}
