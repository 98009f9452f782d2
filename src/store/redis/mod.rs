//! [`RedisStore`]: the Redis store, its connection, scripts, batching, breaker and fallback.

mod batch;
mod breaker;
mod builder;
mod connection;
mod fallback;
mod fleet;
mod key;
mod lease;
mod over_limit;
pub(crate) mod script;
pub(crate) mod slots;

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use builder::RedisStoreBuilder;

use self::batch::{Batcher, Route};
use self::breaker::{Breaker, CLOSE_AFTER, TRIP_AFTER};
use self::connection::{Connection, Target};
use self::fallback::Local;
use self::lease::{Leased, Leases};
use self::over_limit::OverLimit;
use self::script::{
    decision_args, evalsha, interval_us, run, Answer, ScriptTime, DECIDE, DECIDE_ACROSS_SLOTS,
    FULL, LEASE, REFUND, WRITE_BACK,
};
use self::slots::SlotMap;
use super::{Ask, Decision, MemoryStore, Store, StoreError};
use crate::clock::{Clock, MonotonicClock};
use crate::gcra::Gcra;
use crate::key::RedisKey;
use crate::quota::MAX_QUOTAS;
use crate::Quotas;

/// The default timeout of a call to Redis.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The default key prefix.
pub(crate) const DEFAULT_PREFIX: &str = "tollgate";

/// What a [`RedisStore`] does when Redis cannot answer in time.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum OnFailure {
    /// Fail open: allow the request. The headers then describe a full bucket.
    Allow,
    /// Fail closed: refuse it (HTTP 503 from the layer, [`StoreError`] elsewhere).
    Deny,
    /// Decide with this local store, per instance, until Redis answers again: with the
    /// instance's share of each quota ([`RedisStoreBuilder::fleet_size`]), starting from the
    /// state Redis last gave, and writing the local debt back when Redis returns.
    Local(MemoryStore),
}

/// Called on every failed call to Redis.
type ErrorHook = Arc<dyn Fn(&StoreError) + Send + Sync>;

/// A store on Redis (or Valkey): one limit shared by every instance of a service, on one
/// Redis, the primary Redis Sentinels name, or a Redis Cluster, plain or over TLS.
///
/// ```no_run
/// use tollgate::key::PeerIp;
/// use tollgate::store::{OnFailure, RedisStore};
/// use tollgate::{Quota, RateLimitLayer};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // One Redis (`rediss://` with the `redis-tls` feature); checked now, not at the first request.
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("myapp")
///     .on_failure(OnFailure::Local(tollgate::MemoryStore::new()))
///     .fleet_size(4)
///     .connect()
///     .await?;
/// let layer = RateLimitLayer::new(Quota::per_second(5)?).key(PeerIp::new()).store(store);
///
/// // A Redis Cluster, found from any of its nodes.
/// let cluster = RedisStore::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
///     .connect()
///     .await?;
/// # drop((layer, cluster)); Ok(()) }
/// ```
///
/// # How a decision is made
///
/// One round trip: a Lua script, loaded once and then called by its SHA1 (and loaded again
/// when Redis answers `NOSCRIPT`), runs the same GCRA as the memory store on
/// every quota of the key at once. It reads the time from Redis `TIME`, so that the instances'
/// clocks never disagree; keeps one value per key and quota, the TAT in integer microseconds,
/// expiring when the bucket is full again; charges all the quotas or none; and writes nothing
/// on a denial.
///
/// Keys read `PREFIX:{SUBJECT}:QUOTA:INTERVAL_US:BURST`, for example
/// `tollgate:{ip:203.0.113.7}:hello:200000:10`: the braces are a Redis Cluster hash tag, so
/// that the quotas of one subject share a slot and one script can touch them all, on a
/// cluster as on one node. Braces and `%` inside a subject are percent-escaped, so that no
/// client moves its key to another subject's slot.
///
/// Subjects that may be secrets (API keys, tokens) are written as an HMAC under the fleet's
/// [`key_secret`](RedisStoreBuilder::key_secret), never in clear, so that `MONITOR`, the slow
/// log, replicas and backups do not hold them; without a secret, [`connect`](RedisStoreBuilder::connect)
/// warns at start-up. A subject left in clear and longer than 128 bytes (a 400 KB header,
/// say) goes into key names as its SHA-1, so that a client cannot make Redis, or an outage's
/// write-back list, hold its megabytes.
///
/// Microseconds are Redis's unit: intervals are rounded down to a whole microsecond (at least
/// one), so quotas faster than a million per second are not expressible here.
///
/// # Redis Cluster
///
/// [`RedisStore::cluster`] takes seed nodes and finds the rest. Each decision goes to the node
/// of its subject's slot; `MOVED` and `ASK` are followed, and the slot map is refreshed when
/// a node fails over. A subject's keys share a slot, so its decision stays one atomic script
/// call. [`connect`](RedisStoreBuilder::connect) refuses a cluster node given to
/// [`RedisStore::builder`] (a single-node client would get `MOVED` for most keys) and a lone
/// Redis given to [`RedisStore::cluster`]. A failover is followed: tested by killing a primary,
/// whose keys stay limited once its replica takes over.
///
/// # Redis Sentinel, TLS and credentials
///
/// [`RedisStore::sentinel`] asks the Sentinels for the primary, switches to the replica a
/// failover promotes at their first word of it (`+failover-state-send-slaveof-noone`, about a
/// second before they name it; the writes of that second would go to the old primary and be
/// lost when Sentinel demotes it), follows them when they name a new one (`+switch-master`),
/// and asks again when calls fail. Tested with `SENTINEL FAILOVER`: new keys are written on
/// the new primary, spent keys stay spent, and a hot key on two instances admits 0.998× its
/// bound through the failover (1.13× when the store waited for the naming).
///
/// `rediss://` (the `redis-tls` feature, rustls) trusts the system's roots, or a private CA
/// given to [`tls_root_certificates`](RedisStoreBuilder::tls_root_certificates);
/// [`tls_client_certificate`](RedisStoreBuilder::tls_client_certificate) answers servers that
/// ask for one. Passwords and ACL users come from the URL (`redis://user:password@host`),
/// and for a Sentinel's primary from [`master_auth`](RedisStoreBuilder::master_auth).
/// [`connect`](RedisStoreBuilder::connect) checks all of it at start-up, so that a wrong
/// URL, password, ACL user or certificate stops the server with a message that says which
/// (never showing the password); [`build`](RedisStoreBuilder::build) connects lazily instead.
///
/// # Throughput
///
/// Decisions queued on the connection are *batched*: while calls are out, the decisions that
/// arrive wait for the next call, and all of them go in it, one `EVALSHA`, one `TIME` and one
/// read of every key for many (see `BENCHMARKS.md` for the figures). Nothing waits to fill a
/// batch: under light load each decision has its own call. On a cluster the decisions of one
/// node go together: grouped by a slot map read with `CLUSTER SLOTS`, in a script that may
/// touch the slots of its node (the `allow-cross-slot-keys` flag of Redis 7); if a slot has
/// moved, that call changes nothing and its decisions go again one at a time while the map is
/// read again. [`RedisStoreBuilder::batching`] turns batching off.
///
/// # When Redis fails
///
/// Every call has a timeout (50 ms by default). When Redis is down, slow
/// or in error, [`OnFailure`] decides: allow, deny (HTTP 503 from the layer, or a
/// [`StoreError`] to other callers), or decide with a local [`MemoryStore`] until Redis is
/// back. No request waits longer than the timeout, and after three failed calls in a row none
/// waits at all: Redis counts as down, the policy decides at once (13.9 µs for the slowest of
/// 50 decisions in `a_stalled_redis_costs_the_timeout_three_times_then_nothing_until_it_answers`),
/// and a background probe `PING`s it with backoff (50 ms doubling to 1 s) until it answers.
/// On a cluster this is kept per group of hash slots, so that one dead node does not send
/// the other nodes' keys to the policy.
/// Failed calls are counted ([`RedisStore::errors`]), reported to a hook, and logged, the
/// first at once and then at most once a second; the connection is re-established in the
/// background, and decisions go back to Redis once the probe has had three quick answers in a
/// row (each within half the timeout), or answers to every probe for 5 s however slow: a
/// Redis in a brown-out (some answers late, some lost) holds the breaker tripped, and
/// decisions stay quick, instead of flapping between the two.
///
/// With [`OnFailure::Local`], the fleet stays near one limit through an outage:
///
/// - each instance decides with its share of every quota, 1/(the instances that announced
///   themselves in Redis within the last 3 s before the outage; [`RedisStore::fleet`]), or
///   1/[`fleet_size`](RedisStoreBuilder::fleet_size) when set;
/// - the local store starts where Redis left off: every answer from Redis is mirrored into it
///   (one local write beside the round trip), so a hot key gets no fresh burst when Redis goes
///   away;
/// - when Redis answers again, the debt of every key decided locally is written back to it as
///   a max-merge of TATs, so the return brings no fresh burst either.
///
/// While Redis is away, the decisions (and so the `RateLimit` header) describe the instance's
/// share (2 left at most where the whole is 10 on 5 instances), while `RateLimit-Policy` still
/// names the whole quota.
///
/// Two and four instances hammering one key through a 5 s outage admitted 0.995× the bound
/// (`tests-integration/tests/redis_outage.rs`), where each instance keeping the whole limit admitted 1.5–2.75×.
/// A share is at least one request: with a burst smaller than the fleet (3 logins a minute
/// over 4 instances), the fleet admits one per instance at once during an outage. At most
/// 100,000 keys are remembered for the write-back per outage.
///
/// # Leases
///
/// A key that is hot on an instance (64 decisions within 100 ms) takes its tokens from Redis
/// in advance: one script call charges the key for a lease of tokens (about 100 ms of this
/// instance's demand on it, never more than a tenth of the smallest burst, so that ten
/// instances together hold at most one burst), and the instance spends them at memory speed,
/// renewing in the background when half is spent. The fleet never admits more than the
/// limit, since every token is charged in Redis before it is spent; what is not spent goes
/// back when the key cools (250 ms without a decision), when a lease is a second old without
/// a renewal (each at most the quota's window), and at shutdown
/// ([`release_leases`](Self::release_leases)).
/// Past the limit, a lease comes back short, and the instance refuses the key's requests
/// itself until its next renewal, 50 ms later at the earliest. Cold keys keep the round trip
/// per request. Two instances 10,000 requests a second each past a limit of 2,000 a second
/// admitted 0.99× the bound with 0.005 calls to Redis per decision
/// (`tests-integration/tests/redis_leases.rs`).
///
/// The decisions from a lease tell what the fleet has left as this instance knows it (Redis's
/// state at the last lease, less the tokens the instance still holds). Requests that may wait
/// or cost more than a lease holds go to Redis when the lease cannot pay for them, and take
/// their slot there; requests across several keys, calendar quotas, sets that carry quotas
/// over and keys with a burst under 80 are never leased.
///
/// **Through a partition**, an instance spends only the lease it holds: a leased key is then
/// refused until Redis answers again (allowed under [`OnFailure::Allow`]), never decided by
/// [`OnFailure::Local`]'s share, which would add to what the rest of the fleet admits through
/// Redis. One instance of four cut off for 15 s cost the fleet nothing over its bound (0.998×;
/// 1.19× with leases off). The price is a whole outage: hot keys are then refused once their
/// leases are spent. [`RedisStoreBuilder::leases`]`(false)` keeps every key on the round trip
/// and the local share.
///
/// # Fewer round trips
///
/// A key that was just denied is answered locally until its retry-after, without asking Redis
/// (the over-limit cache of Envoy's rate-limit service): a client hammering a denied key costs
/// Redis nothing. It is on by default ([`RedisStoreBuilder::over_limit_cache`]). It answers
/// requests of cost 1 that do not wait, per key and quota as Redis keeps them, and forgets a
/// key's denials when a larger cost or a wait charges it, when it is given back or reset, and
/// when a set carries their debt over to other quotas (a live change, a tier move); denials
/// under such a set are not remembered, as charges under the quotas it carries from add to
/// its debt unseen. Another
/// instance's charges and refunds are not seen: a remembered denial holds until its
/// retry-after, never admitting more than Redis would.
///
/// # In the example server
///
/// The example server uses Redis when `REDIS_URL` is set, a cluster when `REDIS_CLUSTER` lists
/// seed nodes, or the Sentinels' primary when `REDIS_SENTINELS` lists Sentinels
/// (`REDIS_SENTINEL_MASTER`, default `mymaster`); `REDIS_CA_FILE` names a private CA,
/// `TOLLGATE_KEY_SECRET` the key secret, and `FLEET_SIZE` overrides the count of copies they
/// make in Redis. Two copies share one limit:
///
/// ```text
/// REDIS_URL=redis://127.0.0.1:6379 PORT=3000 cargo run --example server --features redis &
/// REDIS_URL=redis://127.0.0.1:6379 PORT=3001 cargo run --example server --features redis &
/// for i in $(seq 8); do curl -s -o /dev/null -w '%{http_code} ' localhost:3000/api/hello;
///   curl -s -o /dev/null -w '%{http_code} ' localhost:3001/api/hello; done; echo
/// # 200 200 200 200 200 200 200 200 200 200 429 429 ...: one burst of 10 across both
/// REDIS_CLUSTER=redis://10.0.0.1:6379,redis://10.0.0.2:6379 PORT=3000 cargo run --example server --features redis
/// ```
///
/// # Tests
///
/// One conformance suite runs against the memory store, one Redis and a 3-master cluster.
/// The Redis tests start their own servers: `redis-server` on a unix socket in a temporary
/// directory, a 3-master cluster (with replicas for the failover test) on loopback ports, a
/// primary with a replica and a Sentinel, and a TLS server with certificates made by
/// `openssl` for the test. Without `redis-server` they print `SKIPPED`;
/// `TOLLGATE_REQUIRE_REDIS=1` (set by `.ci/run`) turns a skip into a failure.
///
/// # Clone
///
/// Clones share the connection (one multiplexed connection, re-established when lost; on a
/// cluster, one per node), the over-limit cache and the error count.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    /// Natural batching of decisions, on a single Redis.
    batcher: Option<Batcher>,
    prefix: String,
    /// How subjects are written into key names (hashed with the key secret).
    subjects: key::Subjects,
    timeout: Duration,
    on_failure: OnFailure,
    /// The local store of [`OnFailure::Local`], with its share and what it owes Redis.
    local: Option<Local>,
    decide: redis::Script,
    refund: redis::Script,
    write_back: redis::Script,
    lease: redis::Script,
    /// The leases of hot keys ([`RedisStoreBuilder::leases`]).
    leases: Option<Leases>,
    over_limit: Option<OverLimit>,
    errors: AtomicU64,
    /// Failures are logged at most once a second.
    failure_log: crate::logs::Every,
    clock: MonotonicClock,
    /// The time the scripts decide at: Redis's, or a test's clock.
    time: ScriptTime,
    hook: Option<ErrorHook>,
    /// Which groups of keys count as down (one group on a single Redis).
    breaker: Breaker,
    /// On a cluster, which node serves each slot, as the batcher last read it (`CLUSTER
    /// SLOTS`): the breaker's failures count per node by it.
    slot_map: Option<Arc<SlotMap>>,
}

/// The probe's first pause, doubled after each failure up to [`PROBE_MAX_PAUSE`]. The
/// longest pause is short: until every instance's probe finds Redis back, the instances that
/// returned decide in Redis beside those still deciding with their share, so the fleet admits
/// more than the limit for about that long (one `EXISTS` per pause costs Redis nothing).
const PROBE_FIRST_PAUSE: Duration = Duration::from_millis(50);
const PROBE_MAX_PAUSE: Duration = Duration::from_millis(200);
/// How long a Redis that answers every probe, each slower than half the timeout, takes to
/// count as back: one whose normal latency is that slow, not one in a brown-out (which fails
/// some of them).
const SLOW_BUT_ANSWERING: Duration = Duration::from_secs(5);
/// Write-back calls (and lease give-backs) out at once.
const WRITE_BACK_CONCURRENCY: usize = 64;
/// Keys per write-back call on one Redis (a max-merge each, in one script).
const WRITE_BACK_KEYS_PER_CALL: usize = 256;

impl RedisStore {
    /// Configures a store for the Redis at `url`: `redis://[user:password@]host:port/db`,
    /// `redis+unix:///path/to/socket`, or `rediss://` (TLS, with the `redis-tls` feature).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Single(url.into()))
    }

    /// Configures a store for a Redis Cluster, found from these seed nodes
    /// (`redis://[user:password@]host:port` or `rediss://` URLs; one reachable node is
    /// enough, and the others are learned from it).
    pub fn cluster<I, S>(seeds: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisStoreBuilder::new(Target::Cluster(seeds.into_iter().map(Into::into).collect()))
    }

    /// Configures a store for the primary that Redis Sentinels (`redis://host:26379` URLs)
    /// name for `master`. When the Sentinels fail the primary over, the store follows: after
    /// three failed calls in a row (the old primary gone, or refusing writes as a replica) it
    /// asks them again. The primary's credentials are set with
    /// [`master_auth`](RedisStoreBuilder::master_auth). Made with
    /// [`connect`](RedisStoreBuilder::connect) only.
    pub fn sentinel<I, S>(sentinels: I, master: impl Into<String>) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisStoreBuilder::new(Target::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master: master.into(),
            auth: None,
        })
    }

    fn assemble(builder: RedisStoreBuilder, connection: Connection) -> Self {
        // The fleet counts itself unless told its size, when an outage needs it.
        let announce =
            builder.fleet_size.is_none() && matches!(builder.on_failure, OnFailure::Local(_));
        let decide = redis::Script::new(DECIDE);
        let connection_is_cluster = connection.is_cluster();
        let slot_map = connection_is_cluster.then(|| Arc::new(SlotMap::new()));
        let route = if let Some(map) = &slot_map {
            Route::Cluster {
                across_slots: redis::Script::new(DECIDE_ACROSS_SLOTS),
                one: decide.clone(),
                map: Arc::clone(map),
            }
        } else {
            Route::Single {
                script: decide.clone(),
            }
        };
        let batcher = builder.batching.then(|| {
            Batcher::start(
                connection.clone(),
                route,
                builder.timeout,
                builder.time.clone(),
            )
        });
        let local = match &builder.on_failure {
            OnFailure::Local(store) => {
                Some(Local::new(store.clone(), builder.fleet_size.unwrap_or(1)))
            }
            _ => None,
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                connection,
                batcher,
                prefix: builder.prefix,
                subjects: key::Subjects::new(builder.key_secret.as_deref(), builder.hash_all_keys),
                timeout: builder.timeout,
                on_failure: builder.on_failure,
                local,
                decide,
                refund: redis::Script::new(REFUND),
                write_back: redis::Script::new(WRITE_BACK),
                lease: redis::Script::new(LEASE),
                leases: builder.leases.then(Leases::new),
                over_limit: builder.over_limit_cache.then(OverLimit::new),
                errors: AtomicU64::new(0),
                failure_log: crate::logs::Every::new(1_000_000_000),
                breaker: Breaker::new(connection_is_cluster),
                slot_map,
                clock: MonotonicClock::new(),
                time: builder.time,
                hook: builder.hook,
            }),
        };
        if announce {
            fleet::start(&store.inner);
        }
        if store.inner.leases.is_some() {
            lease::start_sweeping(&store.inner);
        }
        store
    }

    /// How many instances this store counts in its fleet: the builder's
    /// [`fleet_size`](RedisStoreBuilder::fleet_size), or else those that announced themselves
    /// in Redis within the last 3 s (1 before the first announcement). Only
    /// [`OnFailure::Local`] needs it, and without it the store counts 1.
    pub fn fleet(&self) -> u32 {
        self.inner.local.as_ref().map_or(1, Local::fleet)
    }

    /// The Lua source of the decision script (for tools such as `redis-benchmark`). Its
    /// arguments: the number of decisions, then for each its number of quotas, cost, most
    /// microseconds it may wait, number of earlier quotas it carries states over from (0
    /// unless built with [`Quotas::carry_over_from`]), each quota's interval and window in
    /// microseconds, and each earlier quota's index (from 1) and window; last, 0 (the script
    /// then reads Redis's own `TIME`).
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

    /// Decisions this instance made alone while Redis was away ([`OnFailure::Local`]), since
    /// the store was built (also the `tollgate_store_local_decisions_total` metric).
    pub fn local_decisions(&self) -> u64 {
        self.inner.local.as_ref().map_or(0, Local::decided)
    }

    /// Keys decided alone whose debt waits to be written back to Redis when it answers again
    /// (also the `tollgate_store_local_keys` gauge): 0 while Redis decides.
    pub fn local_keys(&self) -> usize {
        self.inner.local.as_ref().map_or(0, Local::keys)
    }

    /// Keys decided locally during outages whose debt is not written back to Redis: past
    /// 100,000 keys in one outage, a newcomer that owes no more than the oldest keys is not
    /// remembered, and one that owes more takes the place of one of them.
    pub fn unrecorded_local_decisions(&self) -> u64 {
        self.inner.local.as_ref().map_or(0, Local::unrecorded)
    }

    /// Keys this instance holds a lease of tokens for (see [Leases](RedisStore#leases)).
    pub fn leased_keys(&self) -> usize {
        self.inner.leases.as_ref().map_or(0, Leases::len)
    }

    /// Gives every lease's unspent tokens back to Redis, and forgets the leases (their keys
    /// go back to the per-request path until they turn hot again): call it at shutdown, so that
    /// the rest of the fleet can spend them at once rather than when the instance's leases would
    /// have cooled. Returns how many leases were given back.
    pub async fn release_leases(&self) -> usize {
        match &self.inner.leases {
            Some(leases) => leases.sweep(&self.inner, true).await,
            None => 0,
        }
    }

    /// The key of `subject`'s state under `quota` (for inspection with `redis-cli`).
    pub fn key_of<K: RedisKey + ?Sized>(&self, subject: &K, quota: &crate::Quota) -> String {
        String::from_utf8_lossy(&self.inner.key(subject, quota)).into_owned()
    }

    /// The state of `key` under `quotas`, without consuming anything: Redis's, so tokens that
    /// instances hold in [leases](RedisStore#leases) and have not spent yet count as spent
    /// (they are charged there until given back).
    pub async fn status<K: RedisKey + ?Sized>(
        &self,
        key: &K,
        quotas: &Quotas,
    ) -> Result<Decision, StoreError> {
        let answer = self.inner.call(key, quotas, 0, 0).await?;
        answer_decision(quotas, 0, &answer)
    }

    /// Forgets `key`'s state under `quotas`: its buckets are full again.
    pub async fn reset<K: RedisKey + std::hash::Hash>(
        &self,
        key: &K,
        quotas: &Quotas,
    ) -> Result<(), StoreError> {
        // Nor is anything carried over from earlier quotas.
        let keys = self.inner.decision_keys(key, quotas);
        let mut connection = self.inner.connection.clone();
        // One DEL per key: a subject's keys share a slot, but a DEL of several keys is still
        // refused by some cluster proxies.
        let deleted: redis::RedisResult<()> = tokio::time::timeout(self.inner.timeout, async {
            for key in &keys {
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<i64>(&mut connection)
                    .await?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "timed out").into()));
        if let Some(over_limit) = &self.inner.over_limit {
            over_limit.forget(key, quotas);
        }
        if let Some(local) = &self.inner.local {
            local.reset(key, quotas);
        }
        if let Some(leases) = &self.inner.leases {
            leases.forget(key, quotas);
        }
        deleted.map_err(|e| StoreError::Backend(Box::new(e)))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.inner.connection.is_cluster())
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("batching", &self.inner.batcher.is_some())
            .field("errors", &self.errors())
            .finish_non_exhaustive()
    }
}

fn answer_decision(quotas: &Quotas, cost: u32, answer: &Answer) -> Result<Decision, StoreError> {
    answer.decision(quotas, cost).ok_or_else(|| {
        StoreError::Backend("the decision script answered in an unexpected shape".into())
    })
}

impl Inner {
    /// The store's own time, in nanoseconds: its monotonic clock, or the test's clock that
    /// the scripts decide at.
    fn now(&self) -> u64 {
        self.time.local().unwrap_or_else(|| self.clock.now())
    }

    fn key<K: RedisKey + ?Sized>(&self, subject: &K, quota: &crate::Quota) -> Vec<u8> {
        let gcra = Gcra::new(quota);
        let mut key = Vec::with_capacity(self.prefix.len() + 64);
        key.extend_from_slice(self.prefix.as_bytes());
        key.extend_from_slice(b":{");
        key.extend_from_slice(&self.subjects.tag(subject));
        key.extend_from_slice(b"}:");
        key.extend_from_slice(quota.name().as_bytes());
        // Written straight into the key, without an intermediate String.
        let _ = write!(key, ":{}:{}", interval_us(&gcra), quota.burst());
        // A calendar quota's period and offset (`:c` and its code), apart from any other.
        if let Some(calendar) = quota.calendar() {
            let _ = write!(key, ":c{}", calendar.code());
        }
        key
    }

    /// The breaker group of `subject`'s keys (their hash slot's, on a cluster).
    fn group<K: RedisKey + ?Sized>(&self, subject: &K) -> usize {
        self.breaker
            .group_of(|| slots::slot_of(&self.subjects.tag(subject)))
    }

    fn keys<K: RedisKey + ?Sized>(&self, subject: &K, quotas: &Quotas) -> Vec<Vec<u8>> {
        quotas
            .as_slice()
            .iter()
            .map(|q| self.key(subject, q))
            .collect()
    }

    /// The keys a decision reads: one per quota, then one per quota the set carries states
    /// over from ([`Quotas::carry_over_from`]).
    fn decision_keys<K: RedisKey + ?Sized>(&self, subject: &K, quotas: &Quotas) -> Vec<Vec<u8>> {
        let mut keys = self.keys(subject, quotas);
        keys.extend(quotas.carried().iter().map(|c| self.key(subject, &c.quota)));
        keys
    }

    /// One decision by Redis: through the batcher on a single Redis, in its own call on a
    /// cluster (or with batching off).
    async fn call<K: RedisKey + ?Sized>(
        &self,
        subject: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait_us: u64,
    ) -> Result<Answer, StoreError> {
        let keys = self.decision_keys(subject, quotas);
        let args = decision_args(quotas, cost, max_wait_us);
        self.send(keys, args, quotas.len()).await
    }

    /// One decision across several subjects' keys, all or nothing, in one script call (on a
    /// single Redis, where every key is on the one node): each part's share of the answer.
    async fn call_parts<K: RedisKey>(
        &self,
        parts: &[(K, Quotas)],
        cost: u32,
        max_wait_us: u64,
    ) -> Result<Vec<Answer>, StoreError> {
        let quotas: Vec<&crate::Quota> = parts.iter().flat_map(|(_, q)| q.as_slice()).collect();
        let mut keys: Vec<Vec<u8>> = parts
            .iter()
            .flat_map(|(subject, quotas)| self.keys(subject, quotas))
            .collect();
        // One decision over every part's quotas: each part's earlier quotas carry over to its
        // own, whose places in the decision start after the earlier parts'.
        let mut carried = Vec::new();
        let mut first = 0;
        for (subject, set) in parts {
            for earlier in set.carried() {
                keys.push(self.key(subject, &earlier.quota));
                carried.push(crate::quota::Carried {
                    index: first + earlier.index,
                    quota: earlier.quota.clone(),
                });
            }
            first += set.len();
        }
        let args = script::decision_args_of(quotas.iter().copied(), &carried, cost, max_wait_us);
        let answer = self.send(keys, args, quotas.len()).await?;
        let lens: Vec<usize> = parts.iter().map(|(_, quotas)| quotas.len()).collect();
        answer.parts(&lens).ok_or_else(|| {
            StoreError::Backend("the decision script answered in an unexpected shape".into())
        })
    }

    /// Sends one decision (its keys, and its arguments for [`DECIDE`] with `n` quotas):
    /// through the batcher on a single Redis, in its own call on a cluster (or with batching
    /// off).
    async fn send(
        &self,
        keys: Vec<Vec<u8>>,
        args: Vec<u64>,
        n: usize,
    ) -> Result<Answer, StoreError> {
        if let Some(batcher) = &self.batcher {
            let answer = batcher.submit(keys, args);
            return match tokio::time::timeout(self.timeout, answer).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(StoreError::Backend("the batching task ended".into())),
                Err(_) => Err(StoreError::Timeout(self.timeout)),
            };
        }
        let cmd = evalsha(
            &self.decide,
            keys.iter().map(Vec::as_slice),
            std::iter::once(1).chain(args).chain([self.time.arg()]),
        );
        let mut connection = self.connection.clone();
        let raw: Vec<i64> = match tokio::time::timeout(
            self.timeout,
            run(&self.decide, &cmd, &mut connection),
        )
        .await
        {
            Ok(Ok(raw)) => raw,
            Ok(Err(error)) => return Err(StoreError::Backend(Box::new(error))),
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        Answer::split(&raw, &[n])
            .and_then(|mut answers| answers.pop())
            .ok_or_else(|| {
                StoreError::Backend("the decision script answered in an unexpected shape".into())
            })
    }

    /// Counts a failed call (logged at once the first time, then at most once a second), and
    /// applies the failure policy to it.
    #[allow(clippy::too_many_arguments)]
    fn failed<K: RedisKey + std::hash::Hash>(
        self: &Arc<Self>,
        error: StoreError,
        group: usize,
        subject: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Decision, StoreError> {
        self.note_failure(&error, group, subject, quotas);
        self.policy(error, subject, quotas, cost, max_wait)
    }

    /// Counts a failed call, logs it (at once the first time, then at most once a second),
    /// and trips `group`'s breaker after repeated failures.
    fn note_failure<K: RedisKey + ?Sized>(
        self: &Arc<Self>,
        error: &StoreError,
        group: usize,
        subject: &K,
        quotas: &Quotas,
    ) {
        self.note_failure_of(error, group, || self.key(subject, &quotas.as_slice()[0]));
    }

    /// [`note_failure`](Self::note_failure), with the key the probe asks for if the breaker
    /// trips.
    fn note_failure_of(
        self: &Arc<Self>,
        error: &StoreError,
        group: usize,
        probe_key: impl FnOnce() -> Vec<u8>,
    ) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        crate::metrics::store_error("redis");
        if self.failure_log.due(self.clock.now()) {
            tracing::warn!(target: "tollgate::store::redis", %error, errors = self.errors.load(Ordering::Relaxed), policy = ?self.on_failure, "Redis did not decide");
        }
        if let Some(hook) = &self.hook {
            hook(error);
        }
        // On a cluster, a failure counts for every group of the node serving `group`: three
        // failures of a node, wherever its keys fall, send all of its keys to the policy at
        // once, and one probe brings them back together.
        let together = self.node_groups(group);
        let mut tripped = false;
        for &g in &together {
            tripped |= self.breaker.failed(g);
        }
        if tripped {
            tracing::warn!(target: "tollgate::store::redis", failures = TRIP_AFTER, group, groups = together.len(), policy = ?self.on_failure, "Redis is down: deciding by the failure policy at once, probing in the background");
            self.probe(group, probe_key(), together);
        }
    }

    /// Whether Redis answers a probe for `probe_key`: `EXISTS` on the node serving its slot,
    /// and through Sentinel, `ROLE` says that node is a primary (a replica being promoted, or
    /// one a failed failover left, answers reads but refuses the decisions' writes).
    async fn answers(&self, probe_key: &[u8]) -> bool {
        let mut connection = self.connection.clone();
        let mut exists = redis::cmd("EXISTS");
        let exists = exists.arg(probe_key).query_async::<i64>(&mut connection);
        if exists.await.is_err() {
            return false;
        }
        if !self.connection.is_sentinel() {
            return true;
        }
        let role = redis::cmd("ROLE");
        match role.query_async::<redis::Value>(&mut connection).await {
            Ok(redis::Value::Array(parts)) => matches!(
                parts.first(),
                Some(redis::Value::BulkString(role)) if role == b"master"
            ),
            _ => false,
        }
    }

    /// The breaker groups served by the node that serves `group`'s first slot, by the slot map
    /// (`group` alone on one Redis, or before the map is read).
    fn node_groups(&self, group: usize) -> Vec<usize> {
        let Some(owners) = self.slot_map.as_ref().and_then(|map| map.owners()) else {
            return vec![group];
        };
        let node = owners.node_of_slot(self.breaker.first_slot(group));
        (0..self.breaker.len())
            .filter(|&g| g == group || owners.node_of_slot(self.breaker.first_slot(g)) == node)
            .collect()
    }

    /// Starts a background probe of `group`, unless one runs: `EXISTS probe_key` (which goes
    /// to the node serving the group's slot now) with backoff until Redis answers
    /// [`CLOSE_AFTER`] times in a row, each within half the timeout (a slow Redis holds the
    /// breaker); then the local debt of the group's keys is written back, and its requests go
    /// to Redis again.
    /// The probe holds the store weakly: it ends with it. The groups `together` (those of one
    /// cluster node, `group` among them) come back with it.
    fn probe(self: &Arc<Self>, group: usize, probe_key: Vec<u8>, together: Vec<usize>) {
        if !self.breaker.start_probe(group) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.breaker.end_probe(group);
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut pause = PROBE_FIRST_PAUSE;
            let mut quick_in_a_row = 0;
            // Since when every probe was answered, however slowly.
            let mut answering_since: Option<tokio::time::Instant> = None;
            loop {
                tokio::time::sleep(pause).await;
                let Some(inner) = weak.upgrade() else { return };
                // Through Sentinel, the primary may have moved: ask, and switch to it.
                let patience = inner.timeout.max(Duration::from_secs(1));
                let follow = tokio::time::timeout(patience, inner.connection.follow());
                if let Ok(Some(primary)) = follow.await {
                    tracing::warn!(target: "tollgate::store::redis", %primary, "the Sentinels name a new primary");
                }
                let asked = tokio::time::Instant::now();
                let answered = tokio::time::timeout(inner.timeout, inner.answers(&probe_key)).await;
                let answered = matches!(answered, Ok(true));
                // A slow answer is no better than none: a brown-out holds the breaker. A Redis
                // that answers every probe, however slowly, for `SLOW_BUT_ANSWERING` is back.
                let quick = answered && asked.elapsed() <= inner.timeout / 2;
                quick_in_a_row = if quick { quick_in_a_row + 1 } else { 0 };
                answering_since = if answered {
                    answering_since.or(Some(asked))
                } else {
                    None
                };
                let back = quick_in_a_row >= CLOSE_AFTER
                    || answering_since.is_some_and(|since| since.elapsed() >= SLOW_BUT_ANSWERING);
                if answered && !back {
                    pause = PROBE_FIRST_PAUSE;
                    continue;
                }
                if back {
                    (quick_in_a_row, answering_since) = (0, None);
                    // The groups of the node serving `group` now come back with it (those it
                    // tripped while this probe ran, and found it running, too).
                    let mut together = together.clone();
                    together.extend(inner.node_groups(group));
                    together.sort_unstable();
                    together.dedup();
                    // Write back what was decided locally before Redis decides again (if that
                    // fails, Redis is not back: keep probing), then once more for the
                    // decisions made while the first write-back ran.
                    let (written, failed) = inner.write_back(&together).await;
                    if failed > 0 {
                        pause = (pause * 2).min(PROBE_MAX_PAUSE);
                        continue;
                    }
                    for &g in &together {
                        inner.breaker.close(g);
                    }
                    let (more, _) = inner.write_back(&together).await;
                    inner.breaker.end_probe(group);
                    tracing::info!(target: "tollgate::store::redis", group, keys_written_back = written + more, "Redis answers again");
                    // Failures while this probe was finishing tripped the group again, and
                    // found this probe running: it must go on, or nothing ever would.
                    if !(inner.breaker.is_down(group) && inner.breaker.start_probe(group)) {
                        return;
                    }
                    pause = PROBE_FIRST_PAUSE;
                    continue;
                }
                pause = (pause * 2).min(PROBE_MAX_PAUSE);
            }
        });
    }

    /// Writes what `key` owes Redis, if it was decided here while Redis did not answer (after
    /// failures too few to trip the breaker, or before its probe's write-back reached it):
    /// Redis hears a key's debt before it decides that key again, or it would admit on a
    /// state without it. Costs one atomic load when nothing is owed.
    async fn pay_debt<K: RedisKey + ?Sized>(
        &self,
        key: &K,
        quotas: &Quotas,
    ) -> Result<(), StoreError> {
        let Some(local) = self.local.as_ref().filter(|local| local.owes()) else {
            return Ok(());
        };
        let first = self.key(key, &quotas.as_slice()[0]);
        let Some((debt, tats)) = local.debt_of(&first) else {
            return Ok(());
        };
        match self.write_debts(vec![debt]).await {
            (_, 0) => {
                local.paid(&first, tats);
                Ok(())
            }
            _ => Err(StoreError::Backend(
                "the local debt could not be written back".into(),
            )),
        }
    }

    /// Gives `tokens` back to the keys `keys`, whose quotas' intervals are `intervals`
    /// (nanoseconds): a lease's unspent tokens. Whether Redis took them.
    async fn give_back(&self, keys: &[Vec<u8>], intervals: &[u64], tokens: u64) -> bool {
        let charges: Vec<[u64; 3]> = intervals
            .iter()
            .map(|interval| [(interval / 1000).saturating_mul(tokens), 0, 0])
            .collect();
        self.refund_charges(keys, &charges).await
    }

    /// One call of the [`REFUND`] script: per key, its charge in microseconds, its calendar's
    /// code and the end of the window that counted the charge (0 and 0 for a GCRA quota).
    /// Whether Redis took it.
    async fn refund_charges(&self, keys: &[Vec<u8>], charges: &[[u64; 3]]) -> bool {
        let mut invocation = self.refund.prepare_invoke();
        for (key, [charge, code, end]) in keys.iter().zip(charges) {
            invocation.key(key).arg(charge).arg(code).arg(end);
        }
        invocation.arg(self.time.arg());
        let mut connection = self.connection.clone();
        let done = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await;
        matches!(done, Ok(Ok(_)))
    }

    /// Writes the debt of the keys decided locally back to Redis (a max-merge of TATs, one
    /// script call per key, many at once); returns how many keys were written, and how many
    /// could not be.
    async fn write_back(&self, groups: &[usize]) -> (usize, usize) {
        let Some(local) = &self.local else {
            return (0, 0);
        };
        let cluster = self.connection.is_cluster();
        let debts = if cluster {
            let in_group = |first_key: &[u8]| {
                groups.contains(&self.breaker.group_of(|| slots::slot_of(first_key)))
            };
            local.take_debts(Some(&in_group))
        } else {
            local.take_debts(None)
        };
        self.write_debts(debts).await
    }

    /// Writes `debts` back to Redis; returns how many keys were written, and how many could
    /// not be.
    async fn write_debts(&self, debts: Vec<fallback::Debt>) -> (usize, usize) {
        use futures_util::stream::{self, StreamExt};
        if debts.is_empty() {
            return (0, 0);
        }
        let cluster = self.connection.is_cluster();
        // On one Redis, many keys per call; on a cluster, one key (one slot) per call.
        let per_call = if cluster { 1 } else { WRITE_BACK_KEYS_PER_CALL };
        let mut chunks: Vec<Vec<fallback::Debt>> = Vec::new();
        let mut debts = debts.into_iter();
        loop {
            let chunk: Vec<fallback::Debt> = debts.by_ref().take(per_call).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        let timeout = self.timeout;
        let calls = chunks.into_iter().map(|chunk| {
            let mut connection = self.connection.clone();
            let (script, time) = (self.write_back.clone(), self.time.clone());
            async move {
                let mut invocation = script.prepare_invoke();
                for debt in &chunk {
                    for ((key, owed), code) in debt.keys.iter().zip(&debt.debts_us).zip(&debt.codes)
                    {
                        invocation.key(key).arg(owed).arg(code);
                    }
                }
                invocation.arg(time.arg());
                let done =
                    tokio::time::timeout(timeout, invocation.invoke_async::<i64>(&mut connection));
                (chunk.len(), matches!(done.await, Ok(Ok(_))))
            }
        });
        let results: Vec<(usize, bool)> = stream::iter(calls)
            .buffer_unordered(WRITE_BACK_CONCURRENCY)
            .collect()
            .await;
        let count = |ok: bool| -> usize {
            results
                .iter()
                .filter(|(_, done)| *done == ok)
                .map(|(n, _)| n)
                .sum()
        };
        let (written, failed) = (count(true), count(false));
        if failed > 0 && self.failure_log.due(self.clock.now()) {
            tracing::warn!(target: "tollgate::store::redis", failed, "the local debt of some keys could not be written back to Redis");
        }
        (written, failed)
    }

    /// The failure policy's decision.
    fn policy<K: RedisKey + std::hash::Hash>(
        &self,
        error: StoreError,
        subject: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Decision, StoreError> {
        match (&self.on_failure, &self.local) {
            (OnFailure::Allow, _) => {
                let steps = [FULL; MAX_QUOTAS];
                Ok(Decision::from_steps(quotas, &steps[..quotas.len()], 0).alone())
            }
            (OnFailure::Local(_), Some(local)) => local
                .decide(
                    subject,
                    || self.keys(subject, quotas),
                    quotas,
                    cost,
                    max_wait,
                )
                .map(Decision::alone),
            _ => Err(error),
        }
    }
}

/// The error of a request decided while Redis is down.
fn down() -> StoreError {
    StoreError::Backend("Redis is down; the failure policy decides until a probe reaches it".into())
}

/// The answer of [`RedisStore`] to a decision: at once (the breaker's policy, the over-limit
/// cache) or after a round trip.
type Answering = futures_util::future::Either<
    std::future::Ready<Result<Decision, StoreError>>,
    Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>,
>;

impl<K> Store<K> for RedisStore
where
    K: RedisKey + std::hash::Hash + Clone + Send + Sync + 'static,
{
    type Future = Answering;

    fn decide(&self, ask: &Ask<'_, K>) -> Answering {
        use futures_util::future::Either;
        match ask.single() {
            Some((key, quotas)) => {
                let leased = match &self.inner.leases {
                    Some(leases) => {
                        leases.decide(&self.inner, key, quotas, ask.cost(), ask.max_wait())
                    }
                    None => Leased::No,
                };
                match leased {
                    Leased::Decided(decided) => Either::Left(std::future::ready(decided)),
                    Leased::ByRedis => Either::Right(self.round_trip(key, quotas, ask, true)),
                    Leased::No => match self.decide_at_once(key, quotas, ask) {
                        Some(decided) => Either::Left(std::future::ready(decided)),
                        None => Either::Right(self.round_trip(key, quotas, ask, false)),
                    },
                }
            }
            None => Either::Right(self.round_trip_across(ask)),
        }
    }

    fn refund(&self, ask: &Ask<'_, K>, cost: u32) {
        if let Some((key, quotas)) = ask.single() {
            return self.refund_one(key, quotas, cost, ask.charged_at());
        }
        // One Redis charged a key listed twice once (one script over its states): it is given
        // back once. A cluster decided the parts one after another, charging each listing.
        let once = !self.inner.connection.is_cluster();
        let mut given: Vec<Vec<Vec<u8>>> = Vec::new();
        for (key, quotas) in ask.parts() {
            if once {
                let names = self.inner.keys(key, quotas);
                if given.contains(&names) {
                    continue;
                }
                given.push(names);
            }
            self.refund_one(key, quotas, cost, ask.charged_at());
        }
    }
}

impl RedisStore {
    /// A decision without a round trip, when there is one: while Redis is down (the failure
    /// policy decides), or for a denial the over-limit cache remembers.
    fn decide_at_once<K: RedisKey + std::hash::Hash>(
        &self,
        key: &K,
        quotas: &Quotas,
        ask: &Ask<'_, K>,
    ) -> Option<Result<Decision, StoreError>> {
        let (cost, max_wait) = (ask.cost(), ask.max_wait());
        if self.inner.breaker.is_down(self.inner.group(key)) {
            // No call, no timeout to pay: the policy decides at once.
            return Some(self.inner.policy(down(), key, quotas, cost, max_wait));
        }
        // The cache remembers denials of single requests in reject mode: a peek (cost 0) must
        // read Redis, a larger cost may be denied where a single one passes, and a request
        // that may wait could be given a slot where one that may not was denied.
        if cost != 1 || !max_wait.is_zero() {
            return None;
        }
        let over_limit = self.inner.over_limit.as_ref()?;
        over_limit
            .check(key, quotas, cost, self.inner.now())
            .map(Ok)
    }

    /// One key's decision by Redis. A `leased` key's request is refused if Redis cannot
    /// decide it: its instance spends only what its lease holds (see `lease.rs`).
    fn round_trip<K>(
        &self,
        key: &K,
        quotas: &Quotas,
        ask: &Ask<'_, K>,
        leased: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>
    where
        K: RedisKey + std::hash::Hash + Clone + Send + Sync + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let (key, quotas, cost, max_wait) =
            (key.clone(), quotas.clone(), ask.cost(), ask.max_wait());
        Box::pin(async move {
            if let Err(error) = quotas.check_cost(cost) {
                return Err(StoreError::Quota(error));
            }
            let max_wait_us = u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX);
            let group = inner.group(&key);
            // A leased key's instance spends only what its lease holds: without Redis, the
            // request is refused, never decided by the local share (but allowed under
            // `OnFailure::Allow`, and a cost charged after the fact is recorded as for any key).
            let strict = leased
                && max_wait != Duration::MAX
                && !matches!(inner.on_failure, OnFailure::Allow);
            let fail = |error: StoreError| {
                if strict {
                    inner.note_failure(&error, group, &key, &quotas);
                    Err(error)
                } else {
                    inner.failed(error, group, &key, &quotas, cost, max_wait)
                }
            };
            if inner.breaker.is_down(group) {
                return if strict {
                    Err(down())
                } else {
                    inner.policy(down(), &key, &quotas, cost, max_wait)
                };
            }
            if let Err(error) = inner.pay_debt(&key, &quotas).await {
                return fail(error);
            }
            let answer = match inner.call(&key, &quotas, cost, max_wait_us).await {
                Ok(answer) => answer,
                Err(error) => return fail(error),
            };
            inner.breaker.answered(group);
            let decision = answer_decision(&quotas, cost, &answer)?;
            if let Some(local) = &inner.local {
                local.mirror(&key, &quotas, &answer);
                // Keys decided alone after failures too few to trip the breaker (so no probe
                // ran) still owe Redis: write them back now that it answers.
                if local.owes() {
                    let probe_key = inner.key(&key, &quotas.as_slice()[0]);
                    inner.probe(group, probe_key, inner.node_groups(group));
                }
            }
            if let Some(over_limit) = &inner.over_limit {
                let cached = cost == 1 && max_wait.is_zero();
                let unseen = decision.is_allowed() && !cached && cost > 0;
                if unseen || !quotas.carried().is_empty() {
                    // A charge the cache did not see (a larger cost, a reserved wait) makes
                    // a denial it remembers tell too short a retry-after; a carry-over moves
                    // the debt of the quotas carried from.
                    over_limit.forget(&key, &quotas);
                }
                // Not for a set that carries states over: a charge under the quotas it
                // carries from would move more debt to it, unseen.
                if !decision.is_allowed() && cached && quotas.carried().is_empty() {
                    over_limit.remember(&key, &quotas, &decision, inner.now());
                }
            }
            Ok(decision)
        })
    }

    /// Several keys' decision: on a single Redis, one atomic script call for every part; on a
    /// cluster (the parts' keys may live on different nodes), while a part's Redis is down, or
    /// when the call fails, part by part in order, giving back the earlier parts' charges when
    /// a later one refuses.
    fn round_trip_across<K>(
        &self,
        ask: &Ask<'_, K>,
    ) -> Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>
    where
        K: RedisKey + std::hash::Hash + Clone + Send + Sync + 'static,
    {
        let store = self.clone();
        let parts: Vec<(K, Quotas)> = ask
            .parts()
            .map(|(key, quotas)| (key.clone(), quotas.clone()))
            .collect();
        let (cost, max_wait) = (ask.cost(), ask.max_wait());
        Box::pin(async move {
            let ask = Ask::across(&parts).with_cost(cost).with_max_wait(max_wait);
            ask.check()?;
            let inner = &store.inner;
            let groups: Vec<usize> = parts.iter().map(|(key, _)| inner.group(key)).collect();
            let in_order = inner.connection.is_cluster()
                || groups.iter().any(|&group| inner.breaker.is_down(group));
            if in_order {
                return crate::store::in_order(&store, &ask).await;
            }
            let max_wait_us = u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX);
            for (key, quotas) in &parts {
                if let Err(error) = inner.pay_debt(key, quotas).await {
                    inner.note_failure(&error, groups[0], &parts[0].0, &parts[0].1);
                    return crate::store::in_order(&store, &ask).await;
                }
            }
            let answers = match inner.call_parts(&parts, cost, max_wait_us).await {
                Ok(answers) => answers,
                Err(error) => {
                    inner.note_failure(&error, groups[0], &parts[0].0, &parts[0].1);
                    return crate::store::in_order(&store, &ask).await;
                }
            };
            inner.breaker.answered(groups[0]);
            let mut decisions = Vec::with_capacity(parts.len());
            for ((key, quotas), answer) in parts.iter().zip(&answers) {
                decisions.push(answer_decision(quotas, cost, answer)?);
                if let Some(local) = &inner.local {
                    local.mirror(key, quotas, answer);
                }
            }
            let decision = Decision::of_parts(&decisions);
            if let Some(over_limit) = &inner.over_limit {
                // Charges and carry-overs the cache did not see.
                for (key, quotas) in &parts {
                    if (decision.is_allowed() && cost > 0) || !quotas.carried().is_empty() {
                        over_limit.forget(key, quotas);
                    }
                }
            }
            Ok(decision)
        })
    }

    /// Gives back `cost` of `key`'s charge under `quotas`, in the background.
    fn refund_one<K: RedisKey + std::hash::Hash>(
        &self,
        key: &K,
        quotas: &Quotas,
        cost: u32,
        charged_at: u64,
    ) {
        // While Redis is down, what is given back was decided by the failure policy: by the
        // local store (give it back there), or by no store at all (nothing to give back).
        if self.inner.breaker.is_down(self.inner.group(key)) {
            if let Some(local) = &self.inner.local {
                local.refund(key, quotas, cost, charged_at);
            }
            return;
        }
        // A denial remembered before the refund may no longer hold.
        if let Some(over_limit) = &self.inner.over_limit {
            over_limit.forget(key, quotas);
        }
        let inner = Arc::clone(&self.inner);
        let keys = inner.keys(key, quotas);
        // Per key: the charge, and for a calendar quota its code and the end of the window
        // that counted the charge (0 when not said), which the script checks against its own.
        let charges: Vec<[u64; 3]> = quotas
            .as_slice()
            .iter()
            .map(|q| {
                let charge = interval_us(&Gcra::new(q)).saturating_mul(u64::from(cost));
                match q.calendar() {
                    Some(calendar) if charged_at != 0 => {
                        [charge, calendar.code(), calendar.end(charged_at) / 1000]
                    }
                    _ => [charge, 0, 0],
                }
            })
            .collect();
        let refund = async move {
            if !inner.refund_charges(&keys, &charges).await {
                tracing::debug!(target: "tollgate::store::redis", "a reserved slot could not be given back");
            }
        };
        // Best effort, in the background: refunds happen in `Drop`, which cannot wait.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refund);
        }
    }
}
