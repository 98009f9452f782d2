//! A store on Redis (or Valkey): one limit shared by every instance of a service.
//!
//! ```no_run
//! use tollgate::key::PeerIp;
//! use tollgate::store::{OnFailure, RedisStore};
//! use tollgate::{Quota, RateLimitLayer};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379")
//!     .prefix("myapp")
//!     .on_failure(OnFailure::Local(tollgate::MemoryStore::new()))
//!     .build()?;
//! let layer = RateLimitLayer::new(Quota::per_second(5)?).key(PeerIp::new()).store(store);
//! # drop(layer); Ok(()) }
//! ```
//!
//! # How a decision is made
//!
//! One round trip: a Lua script, loaded once and then called by its SHA1 (and loaded again
//! when Redis answers `NOSCRIPT`), runs the same GCRA as the memory store ([`crate::gcra`]) on
//! every quota of the key at once. It reads the time from Redis `TIME`, so that the instances'
//! clocks never disagree; keeps one value per key and quota, the TAT in integer microseconds,
//! expiring when the bucket is full again; charges all the quotas or none; and writes nothing
//! on a denial. Its numbers are integers below 2⁵³, which Lua's doubles and Redis's integer
//! replies keep exact; the values it stores go through `string.format`, since Lua's own
//! conversion would round them.
//!
//! Keys read `PREFIX:{SUBJECT}:QUOTA:INTERVAL_US:BURST`, for example
//! `tollgate:{ip:203.0.113.7}:hello:200000:10`: the braces are a Redis Cluster hash tag, so
//! that the quotas of one subject share a slot and one script can touch them all. Braces and
//! `%` inside a subject are percent-escaped.
//!
//! Microseconds are Redis's unit: intervals are rounded down to a whole microsecond (at least
//! one), so quotas faster than a million per second are not expressible here.
//!
//! # When Redis fails
//!
//! Every call has a timeout ([`DEFAULT_TIMEOUT`], 50 ms, by default). When Redis is down, slow
//! or in error, [`OnFailure`] decides: allow, deny (HTTP 503 from the layer, or a
//! [`StoreError`] to other callers), or decide with a local [`MemoryStore`] until Redis is
//! back. No request waits longer than the timeout, and after three failed calls in a row none
//! waits at all: Redis counts as down, the policy decides at once (13.9 µs for the slowest of
//! 50 decisions in `a_stalled_redis_costs_the_timeout_three_times_then_nothing_until_it_answers`),
//! and a background probe `PING`s it with backoff (50 ms doubling to 1 s) until it answers.
//! Failed calls are counted ([`RedisStore::errors`]), reported to a hook, and logged, the
//! first at once and then at most once a second; the connection is re-established in the
//! background, and decisions go back to Redis as soon as the probe reaches it.
//!
//! # Fewer round trips
//!
//! A key that was just denied is answered locally until its retry-after, without asking Redis
//! (the over-limit cache of Envoy's rate-limit service): a client hammering a denied key costs
//! Redis nothing. It is on by default ([`RedisStoreBuilder::over_limit_cache`]).

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::table::Table;
use super::{Decision, MemoryStore, Store, StoreError};
use crate::clock::{Clock, MonotonicClock};
use crate::gcra::{Gcra, Step};
use crate::key::Global;
use crate::quota::MAX_QUOTAS;
use crate::Quotas;

/// The default timeout of a call to Redis.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tollgate";

/// What a [`RedisStore`] does when Redis cannot answer in time.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum OnFailure {
    /// Fail open: allow the request. The headers then describe a full bucket.
    Allow,
    /// Fail closed: refuse it (HTTP 503 from the layer, [`StoreError`] elsewhere).
    Deny,
    /// Decide with this local store, per instance, until Redis answers again.
    Local(MemoryStore),
}

/// The decision script: every quota of one key, charged together or not at all.
const DECIDE: &str = r#"
-- KEYS[i]: the TAT of quota i, in microseconds.
-- ARGV: cost, max_wait_us, then interval_us and window_us of each quota.
-- Returns now_us, then for each quota: allowed (0/1), TAT_us (the new one if allowed), wait_us.
-- All are integers below 2^53, which Lua's doubles and Redis's replies keep exact; values
-- written to keys go through string.format, since tostring would round them.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local cost = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local out = { now }
local all = true
for i = 1, #KEYS do
  local interval = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  local new = math.max(tat, now) + interval * cost
  local wait = math.max(new - window - now, 0)
  local ok = wait <= max_wait
  if not ok then all = false end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = ok and new or tat
  out[#out + 1] = wait
end
if all and cost > 0 then
  for i = 1, #KEYS do
    local new = out[3 * i]
    redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.max(math.ceil((new - now) / 1000), 1))
  end
end
return out
"#;

/// The refund script: gives back `charge_us` on each quota of one key.
const REFUND: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    local new = tat - tonumber(ARGV[i])
    if new <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.max(math.ceil((new - now) / 1000), 1))
    end
  end
end
return 1
"#;

/// Called on every failed call to Redis.
type ErrorHook = Arc<dyn Fn(&StoreError) + Send + Sync>;

/// A store on Redis: see the [module docs](self).
///
/// # Clone
///
/// Clones share the connection (one multiplexed connection, re-established when lost), the
/// over-limit cache and the error count.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    on_failure: OnFailure,
    decide: redis::Script,
    refund: redis::Script,
    over_limit: Option<OverLimit>,
    errors: AtomicU64,
    /// When the last failure was logged, in clock nanoseconds plus one (0: never).
    last_logged: AtomicU64,
    clock: MonotonicClock,
    hook: Option<ErrorHook>,
    /// Calls that failed in a row; from [`TRIP_AFTER`] on, Redis counts as down.
    failures_in_a_row: AtomicU32,
    /// A background probe is running.
    probing: AtomicBool,
}

/// Failed calls in a row after which requests stop paying the timeout: they are decided by
/// the failure policy at once while a background probe waits for Redis.
const TRIP_AFTER: u32 = 3;
/// The probe's first pause, doubled after each failure up to [`PROBE_MAX_PAUSE`].
const PROBE_FIRST_PAUSE: Duration = Duration::from_millis(50);
const PROBE_MAX_PAUSE: Duration = Duration::from_secs(1);

/// Denials remembered until their retry-after: entry id → when the key may pass, in the low
/// three bits of which the binding quota's index is kept.
struct OverLimit {
    table: Table,
    hasher: foldhash::quality::RandomState,
}

/// Configures a [`RedisStore`].
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    on_failure: OnFailure,
    over_limit_cache: bool,
    hook: Option<ErrorHook>,
}

impl RedisStore {
    /// Configures a store for the Redis at `url` (`redis://host:port/db`,
    /// `redis+unix:///path/to/socket`, `rediss://` is not enabled).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            on_failure: OnFailure::Deny,
            over_limit_cache: true,
            hook: None,
        }
    }

    /// The Lua source of the decision script (for tools such as `redis-benchmark`).
    pub fn decision_script() -> &'static str {
        DECIDE
    }

    /// The SHA1 the decision script is called by (`EVALSHA`).
    pub fn decision_script_sha(&self) -> &str {
        self.inner.decide.get_hash()
    }

    /// Calls to Redis that failed or timed out since the store was built.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// The key of `subject`'s state under `quota` (for inspection with `redis-cli`).
    pub fn key_of<K: RedisKey + ?Sized>(&self, subject: &K, quota: &crate::Quota) -> String {
        String::from_utf8_lossy(&self.inner.key(subject, quota)).into_owned()
    }

    /// The state of `key` under `quotas`, without consuming anything.
    pub async fn status<K: RedisKey + ?Sized>(
        &self,
        key: &K,
        quotas: &Quotas,
    ) -> Result<Decision, StoreError> {
        self.inner.decide(key, quotas, 0, 0).await
    }

    /// Forgets `key`'s state under `quotas`: its buckets are full again.
    pub async fn reset<K: RedisKey + ?Sized>(
        &self,
        key: &K,
        quotas: &Quotas,
    ) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = quotas
            .as_slice()
            .iter()
            .map(|q| self.inner.key(key, q))
            .collect();
        let mut connection = self.inner.connection.clone();
        let deleted: redis::RedisResult<i64> = tokio::time::timeout(self.inner.timeout, async {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut connection)
                .await
        })
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "timed out").into()));
        if let Some(over_limit) = &self.inner.over_limit {
            over_limit.forget(key, quotas);
        }
        deleted
            .map(drop)
            .map_err(|e| StoreError::Backend(Box::new(e)))
    }
}

impl RedisStoreBuilder {
    /// The first part of every key (default [`DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a call to Redis may take before the failure policy applies (default
    /// [`DEFAULT_TIMEOUT`], 50 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do when Redis fails or is too slow (default [`OnFailure::Deny`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// Whether to answer keys that were just denied locally, until their retry-after (default
    /// on).
    pub fn over_limit_cache(mut self, on: bool) -> Self {
        self.over_limit_cache = on;
        self
    }

    /// Calls `hook` on every failed call to Redis.
    pub fn on_error(mut self, hook: impl Fn(&StoreError) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The store, checked at start-up: connects, authenticates, makes sure the server is not
    /// a Redis Cluster node (this store talks to one node; a cluster node would answer most
    /// keys with `MOVED`), and loads the scripts. A wrong URL, an unreachable server, a wrong
    /// password or ACL user, or a cluster node is an error here, with a message that says
    /// which (and no password in it), instead of a server that starts and then decides every
    /// request by its failure policy.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tollgate::StoreError> {
    /// use tollgate::store::RedisStore;
    /// let store = RedisStore::builder("redis://:s3cret@127.0.0.1:6379").connect().await?;
    /// # drop(store); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::Unusable`] saying what is wrong.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let shown = redacted(&self.url);
        let unusable = |what: String| StoreError::Unusable(format!("Redis at {shown}: {what}"));
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| unusable(format!("not a Redis URL ({e})")))?;
        let patience = self.timeout.max(Duration::from_secs(2));
        let mut connection =
            tokio::time::timeout(patience, client.get_multiplexed_async_connection())
                .await
                .map_err(|_| unusable(format!("no answer in {patience:?}")))?
                .map_err(|e| unusable(describe(&e)))?;
        let info: String = tokio::time::timeout(
            patience,
            redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut connection),
        )
        .await
        .map_err(|_| unusable(format!("no answer in {patience:?}")))?
        .map_err(|e| unusable(describe(&e)))?;
        if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
            return Err(unusable(
                "it is a Redis Cluster node; this store talks to a single Redis (or a primary \
                 behind a proxy), and a cluster node would answer most keys with MOVED"
                    .to_owned(),
            ));
        }
        for script in [DECIDE, REFUND] {
            let loaded: Result<String, _> = tokio::time::timeout(
                patience,
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(script)
                    .query_async(&mut connection),
            )
            .await
            .map_err(|_| unusable(format!("no answer in {patience:?}")))?;
            loaded.map_err(|e| unusable(format!("cannot load the script: {}", describe(&e))))?;
        }
        self.build()
    }

    /// The store. Connects lazily, in the background: Redis need not be up yet (until it is,
    /// the failure policy applies); [`connect`](Self::connect) checks it at start-up instead.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the URL is not a Redis URL.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let client =
            redis::Client::open(self.url.as_str()).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(100))))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connection,
                prefix: self.prefix,
                timeout: self.timeout,
                on_failure: self.on_failure,
                decide: redis::Script::new(DECIDE),
                refund: redis::Script::new(REFUND),
                over_limit: self.over_limit_cache.then(|| OverLimit {
                    table: Table::new(16, 1 << 16),
                    hasher: foldhash::quality::RandomState::default(),
                }),
                errors: AtomicU64::new(0),
                last_logged: AtomicU64::new(0),
                failures_in_a_row: AtomicU32::new(0),
                probing: AtomicBool::new(false),
                clock: MonotonicClock::new(),
                hook: self.hook,
            }),
        })
    }
}

/// A Redis URL with its password, if any, replaced by `***`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
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

/// What a connection error means, in words an operator can act on.
fn describe(error: &redis::RedisError) -> String {
    let text = error.to_string();
    let upper = text.to_ascii_uppercase();
    if upper.contains("WRONGPASS")
        || upper.contains("INVALID PASSWORD")
        || upper.contains("AUTHENTICATION FAILED")
        || upper.contains("AUTHENTICATIONFAILED")
    {
        format!("the password or ACL user was refused ({text})")
    } else if upper.contains("NOAUTH") {
        format!("it asks for a password, and the URL gives none ({text})")
    } else if error.is_connection_refusal() || error.is_io_error() {
        format!("cannot connect ({text})")
    } else {
        text
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .field("over_limit_cache", &self.over_limit_cache)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("errors", &self.errors())
            .finish_non_exhaustive()
    }
}

/// The microsecond interval Redis works with: at least 1.
fn interval_us(gcra: &Gcra) -> u64 {
    (gcra.interval_nanos() / 1000).max(1)
}

impl Inner {
    fn key<K: RedisKey + ?Sized>(&self, subject: &K, quota: &crate::Quota) -> Vec<u8> {
        let gcra = Gcra::new(quota);
        let mut key = Vec::with_capacity(self.prefix.len() + 64);
        key.extend_from_slice(self.prefix.as_bytes());
        key.extend_from_slice(b":{");
        subject.write_key(&mut KeyWriter(&mut key));
        key.extend_from_slice(b"}:");
        key.extend_from_slice(quota.name().as_bytes());
        key.extend_from_slice(format!(":{}:{}", interval_us(&gcra), quota.burst()).as_bytes());
        key
    }

    async fn decide<K: RedisKey + ?Sized>(
        &self,
        subject: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait_us: u64,
    ) -> Result<Decision, StoreError> {
        let mut invocation = self.decide.prepare_invoke();
        for quota in quotas {
            invocation.key(self.key(subject, quota));
        }
        invocation.arg(cost).arg(max_wait_us);
        for quota in quotas {
            let gcra = Gcra::new(quota);
            let interval = interval_us(&gcra);
            invocation
                .arg(interval)
                .arg(interval.saturating_mul(u64::from(quota.burst())));
        }
        let mut connection = self.connection.clone();
        let answer: Vec<u64> = match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return Err(StoreError::Backend(Box::new(error))),
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        decision_from(quotas, &answer).ok_or_else(|| {
            StoreError::Backend("the decision script answered in an unexpected shape".into())
        })
    }

    /// Counts a failed call (logged at once the first time, then at most once a second), and
    /// applies the failure policy to it.
    fn failed<K: std::hash::Hash>(
        self: &Arc<Self>,
        error: StoreError,
        subject: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Decision, StoreError> {
        self.errors.fetch_add(1, Ordering::Relaxed);
        crate::metrics::store_error("redis");
        let now = self.clock.now();
        let last = self.last_logged.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last - 1) >= 1_000_000_000;
        if due
            && self
                .last_logged
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(target: "tollgate::store::redis", %error, errors = self.errors.load(Ordering::Relaxed), policy = ?self.on_failure, "Redis did not decide");
        }
        if let Some(hook) = &self.hook {
            hook(&error);
        }
        if self.failures_in_a_row.fetch_add(1, Ordering::AcqRel) + 1 == TRIP_AFTER {
            tracing::warn!(target: "tollgate::store::redis", failures = TRIP_AFTER, policy = ?self.on_failure, "Redis is down: deciding by the failure policy at once, probing in the background");
            self.probe();
        }
        self.policy(error, subject, quotas, cost, max_wait)
    }

    /// Whether Redis counts as down: requests are decided by the policy without calling it.
    fn is_down(&self) -> bool {
        self.failures_in_a_row.load(Ordering::Acquire) >= TRIP_AFTER
    }

    /// A call Redis answered: it is up.
    fn answered(&self) {
        if self.failures_in_a_row.load(Ordering::Relaxed) != 0 {
            self.failures_in_a_row.store(0, Ordering::Release);
        }
    }

    /// Starts a background probe, unless one runs: `PING` with backoff until Redis answers,
    /// then requests go to Redis again. The probe holds the store weakly: it ends with it.
    fn probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut pause = PROBE_FIRST_PAUSE;
            loop {
                tokio::time::sleep(pause).await;
                let Some(inner) = weak.upgrade() else { return };
                let mut connection = inner.connection.clone();
                let ping = redis::cmd("PING");
                let answer = ping.query_async::<String>(&mut connection);
                if let Ok(Ok(_)) = tokio::time::timeout(inner.timeout, answer).await {
                    inner.answered();
                    inner.probing.store(false, Ordering::Release);
                    tracing::info!(target: "tollgate::store::redis", "Redis answers again");
                    return;
                }
                pause = (pause * 2).min(PROBE_MAX_PAUSE);
            }
        });
    }

    /// The failure policy's decision.
    fn policy<K: std::hash::Hash>(
        &self,
        error: StoreError,
        subject: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Decision, StoreError> {
        match &self.on_failure {
            OnFailure::Deny => Err(error),
            OnFailure::Allow => {
                let steps = [FULL; MAX_QUOTAS];
                Ok(Decision::from_steps(quotas, &steps[..quotas.len()], 0))
            }
            OnFailure::Local(store) => store
                .check_or_wait(subject, quotas, cost, max_wait)
                .map_err(StoreError::from),
        }
    }
}

/// The error of a request decided while Redis is down.
fn down() -> StoreError {
    StoreError::Backend("Redis is down; the failure policy decides until a probe reaches it".into())
}

const FULL: Step = Step {
    allowed: true,
    tat: 0,
    wait: 0,
};

/// A decision from the script's answer: now, then allowed, TAT and wait per quota, all in
/// microseconds.
fn decision_from(quotas: &Quotas, answer: &[u64]) -> Option<Decision> {
    if answer.len() != 1 + 3 * quotas.len() {
        return None;
    }
    let nanos = |i: usize| answer[i].saturating_mul(1000);
    let now = nanos(0);
    let mut steps = [FULL; MAX_QUOTAS];
    for (i, step) in steps.iter_mut().enumerate().take(quotas.len()) {
        *step = Step {
            allowed: answer[1 + 3 * i] == 1,
            tat: nanos(2 + 3 * i),
            wait: nanos(3 + 3 * i),
        };
    }
    Some(Decision::from_steps(quotas, &steps[..quotas.len()], now))
}

impl OverLimit {
    fn id<K: RedisKey + ?Sized>(&self, subject: &K, quotas: &Quotas) -> u64 {
        use std::hash::BuildHasher;
        let mut bytes = Vec::with_capacity(64);
        subject.write_key(&mut KeyWriter(&mut bytes));
        // Never 0, the table's empty slot.
        self.hasher.hash_one((bytes, quotas.identity())) | 1
    }

    /// A remembered denial, as a decision.
    fn check<K: RedisKey + ?Sized>(
        &self,
        subject: &K,
        quotas: &Quotas,
        cost: u32,
        now: u64,
    ) -> Option<Decision> {
        let id = self.id(subject, quotas);
        let until = self.table.load(id, &[id])[0];
        if until <= now {
            return None;
        }
        let index = (until & 0b111) as usize;
        let quota = quotas.as_slice().get(index)?;
        let gcra = Gcra::new(quota);
        let wait = until - now;
        // For the request that was denied, debt = wait + window - cost × interval.
        let debt = wait
            .saturating_add(gcra.window_nanos())
            .saturating_sub(gcra.charge(cost));
        Some(Decision::denied(index, wait, debt, gcra))
    }

    fn remember<K: RedisKey + ?Sized>(
        &self,
        subject: &K,
        quotas: &Quotas,
        decision: &Decision,
        now: u64,
    ) {
        let id = self.id(subject, quotas);
        let wait = u64::try_from(decision.retry_after().as_nanos()).unwrap_or(u64::MAX);
        let until =
            (now.saturating_add(wait).saturating_add(7) & !0b111) | decision.quota_index() as u64;
        self.table.update_one(
            id,
            id,
            || now,
            |_evicted| {},
            |tat| tat.store(until, Ordering::Release),
        );
    }

    fn forget<K: RedisKey + ?Sized>(&self, subject: &K, quotas: &Quotas) {
        let id = self.id(subject, quotas);
        self.table.reset(id, &[id]);
    }
}

impl<K> Store<K> for RedisStore
where
    K: RedisKey + std::hash::Hash + Clone + Send + Sync + 'static,
{
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn decide_now(
        &self,
        key: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Option<Result<Decision, StoreError>> {
        // The cache remembers denials of single requests in reject mode: a peek (cost 0) must
        // read Redis, a larger cost may be denied where a single one passes, and a request
        // that may wait could be given a slot where one that may not was denied.
        if self.inner.is_down() {
            // No call, no timeout to pay: the policy decides at once.
            return Some(self.inner.policy(down(), key, quotas, cost, max_wait));
        }
        if cost != 1 || !max_wait.is_zero() {
            return None;
        }
        let over_limit = self.inner.over_limit.as_ref()?;
        over_limit
            .check(key, quotas, cost, self.inner.clock.now())
            .map(Ok)
    }

    fn decide(&self, key: &K, quotas: &Quotas, cost: u32, max_wait: Duration) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let (key, quotas) = (key.clone(), quotas.clone());
        Box::pin(async move {
            let max_wait_us = u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX);
            if inner.is_down() {
                return inner.policy(down(), &key, &quotas, cost, max_wait);
            }
            match inner.decide(&key, &quotas, cost, max_wait_us).await {
                Ok(decision) => {
                    inner.answered();
                    if !decision.is_allowed() && cost == 1 && max_wait.is_zero() {
                        if let Some(over_limit) = &inner.over_limit {
                            over_limit.remember(&key, &quotas, &decision, inner.clock.now());
                        }
                    }
                    Ok(decision)
                }
                Err(error) => inner.failed(error, &key, &quotas, cost, max_wait),
            }
        })
    }

    fn reset(&self, key: &K, quotas: &Quotas) -> super::ResetFuture {
        let (store, key, quotas) = (self.clone(), key.clone(), quotas.clone());
        Box::pin(async move { RedisStore::reset(&store, &key, &quotas).await })
    }

    fn refund(&self, key: &K, quotas: &Quotas, cost: u32) {
        // While Redis is down, what is given back was decided by the failure policy: by the
        // local store (give it back there), or by no store at all (nothing to give back).
        if self.inner.is_down() {
            if let OnFailure::Local(store) = &self.inner.on_failure {
                store.refund(key, quotas, cost);
            }
            return;
        }
        // A denial remembered before the refund may no longer hold.
        if let Some(over_limit) = &self.inner.over_limit {
            over_limit.forget(key, quotas);
        }
        let inner = Arc::clone(&self.inner);
        let keys: Vec<Vec<u8>> = quotas
            .as_slice()
            .iter()
            .map(|q| inner.key(key, q))
            .collect();
        let charges: Vec<u64> = quotas
            .as_slice()
            .iter()
            .map(|q| interval_us(&Gcra::new(q)).saturating_mul(u64::from(cost)))
            .collect();
        let refund = async move {
            let mut invocation = inner.refund.prepare_invoke();
            for (key, charge) in keys.iter().zip(&charges) {
                invocation.key(key).arg(charge);
            }
            let mut connection = inner.connection.clone();
            let done = tokio::time::timeout(
                inner.timeout,
                invocation.invoke_async::<i64>(&mut connection),
            )
            .await;
            if !matches!(done, Ok(Ok(_))) {
                tracing::debug!(target: "tollgate::store::redis", "a reserved slot could not be given back");
            }
        };
        // Best effort, in the background: refunds happen in `Drop`, which cannot wait.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refund);
        }
    }
}

/// Writes a key's subject into a Redis key, readable and unambiguous: a type tag, then the
/// value, with `{`, `}` and `%` percent-escaped (braces would move the Cluster hash tag).
///
/// Implemented for the keys of the built-in extractors and for strings and integers;
/// implement it for your own key types to use them with [`RedisStore`].
pub trait RedisKey {
    /// Writes the subject.
    fn write_key(&self, out: &mut KeyWriter<'_>);
}

/// The sink of [`RedisKey::write_key`].
#[derive(Debug)]
pub struct KeyWriter<'a>(&'a mut Vec<u8>);

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
    use crate::Quota;

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
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redacted("redis://user:hunter2@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redacted("redis://:hunter2@host"), "redis://:***@host");
        assert_eq!(redacted("rediss://host:6380"), "rediss://host:6380");
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=1&pass=hunter2&user=u"),
            "redis+unix:///run/redis.sock?db=1&pass=***&user=u"
        );
    }

    #[test]
    fn answers_become_the_memory_stores_decisions() {
        let quotas = Quotas::from(Quota::per_second(2).unwrap());
        let decision = decision_from(&quotas, &[1_000_000, 1, 1_500_000, 0]).unwrap();
        assert!(decision.is_allowed());
        assert_eq!(decision.remaining(), 1);
        let decision = decision_from(&quotas, &[1_000_000, 0, 2_000_000, 500_000]).unwrap();
        assert!(!decision.is_allowed());
        assert_eq!(decision.retry_after(), Duration::from_millis(500));
        for bad in [&[][..], &[1], &[1, 1, 1]] {
            assert!(decision_from(&quotas, bad).is_none());
        }
    }
}
