//! Token leases: a key that is hot on this instance takes its tokens from Redis in advance,
//! a lease at a time, and spends them here at memory speed.
//!
//! - **Charged when leased.** The lease script takes as many tokens as every quota of the key
//!   has left, up to the number asked, and charges the key for them in Redis: the fleet never
//!   admits more than the limit, whoever holds the tokens.
//! - **Hot keys only.** Decisions are counted per key in a fixed table of counters (a count per
//!   slot per [`HEAT_WINDOW`], so that a flood of keys costs no memory); a key seen [`HOT`]
//!   times in one window, whose quotas let a lease hold at least [`MIN_LEASE`] tokens, is
//!   leased. Cold keys keep the per-request path and its batching. At most [`MAX_LEASES`]
//!   keys are leased at once.
//! - **Sized to the instance's own demand**: [`LEASE_SPAN`] of the decisions it has seen on the
//!   key, never more than 1/[`LEASE_SHARE`] of the smallest burst, so that ten instances
//!   together hold at most the whole burst and none is starved for long; renewed in the
//!   background when half is spent, so that a request never waits for it. A lease that comes
//!   back short (the fleet has spent the limit) is renewed [`SHORT_PAUSE`] later at the
//!   earliest: the requests in between are refused here, without a call. A lease spent before
//!   its renewal came back, while the fleet had tokens to spare, sends the requests in between
//!   to Redis one by one, as cold keys go.
//! - **Given back** ([`REFUND`](super::script::REFUND)) when the key cools (no decision for
//!   [`IDLE`]), when the lease is [`TERM`] old without a renewal (each at most the smallest
//!   window of the key's quotas, so that tokens held do not outlive the window they were
//!   charged in), and at shutdown ([`RedisStore::release_leases`](super::RedisStore::release_leases)).
//!   A reset forgets this instance's lease with the key; other instances spend or give back
//!   theirs as usual. A refund of a leased key's charge goes to Redis, as for any key: the
//!   charge is there whether the lease or a round trip paid it.
//! - **Exact through partitions.** A lease is already paid for: an instance that cannot reach
//!   Redis spends what it holds, then refuses the key until Redis answers (unless the policy
//!   is [`OnFailure::Allow`](super::OnFailure::Allow)). A partition costs under-admission,
//!   never over-admission. Before its first lease lands, a leased key holds nothing. A cost
//!   charged after the fact (the request went ahead) goes where the failure policy records
//!   charges, and from there back to Redis. No key is leased while Redis is down.
//! - **Honest headers.** A decision from a lease reads the key's TATs as Redis gave them with
//!   the lease, less the tokens still held here: what the fleet has left, as well as this
//!   instance knows it.
//!
//! Not leased: requests across several keys, carried-over quotas (a live change), calendar
//! quotas, and peeks (cost 0). A request that may wait, or costs more than a lease can hold,
//! goes to Redis when the lease cannot pay for it, and takes its slot there: after every token
//! leased so far, so that requests paid from a lease renewed meanwhile may go before it (the
//! order per key holds among waits, not between a wait and a lease's requests).
//!
//! A client that makes many keys hot takes leases for them (at most [`MAX_LEASES`]; past
//! that, keys keep the per-request path, correct but dearer): each lease is charged to its
//! own key, so it gains nothing over asking one request at a time.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use std::sync::atomic::fence;

use super::script::{evalsha, interval_us, run, window_us, FULL};
use super::{Inner, OnFailure};
use crate::gcra::{Gcra, Step};
use crate::quota::MAX_QUOTAS;
use crate::store::{Decision, StoreError};
use crate::Quotas;

/// The window decisions are counted in to find hot keys.
pub(super) const HEAT_WINDOW: Duration = Duration::from_millis(100);
/// Decisions on one key in one [`HEAT_WINDOW`] that make it hot (640 a second).
pub(super) const HOT: u32 = 64;
/// A lease holds about this long of the instance's demand on its key.
pub(super) const LEASE_SPAN: Duration = Duration::from_millis(100);
/// A lease holds at most 1/this of the smallest burst of its key's quotas.
pub(super) const LEASE_SHARE: u64 = 10;
/// Keys whose lease could hold fewer tokens than this (a burst under 80) are not leased: a
/// lease so small would save few calls.
pub(super) const MIN_LEASE: u64 = 8;
/// The least time between renewals of a lease that came back short.
pub(super) const SHORT_PAUSE: Duration = Duration::from_millis(50);
/// The least time between renewals after one failed.
const FAILED_PAUSE: Duration = Duration::from_millis(50);
/// How stale a lease's time of last use may be (it is written at most this often).
const TOUCH: Duration = Duration::from_millis(10);
/// A lease with no decision for this long is given back, and its key forgotten.
pub(super) const IDLE: Duration = Duration::from_millis(250);
/// A lease not renewed for this long is given back, and its key forgotten.
pub(super) const TERM: Duration = Duration::from_secs(1);
/// The most keys leased at once.
pub(super) const MAX_LEASES: usize = 4096;
/// Counters of the heat table (a power of two).
const HEAT_SLOTS: usize = 4096;
/// How often leases are looked over for giving back.
pub(super) const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// What the leases say of a decision.
pub(super) enum Leased {
    /// Decided here: from the key's lease, or refused while it is spent.
    Decided(Result<Decision, StoreError>),
    /// A leased key's request that the lease cannot pay for and that may take a slot in Redis
    /// (a wait, a cost above a lease): Redis decides it, and if Redis cannot, it is refused.
    ByRedis,
    /// Not a leased key: the per-request path.
    No,
}

/// The leases of one store, and the heat of its keys.
pub(super) struct Leases {
    /// Lease id → lease. Read on every decision without a lock; written (copied) only when a
    /// key is leased or forgotten.
    map: ArcSwap<HashMap<u64, Arc<Lease>, foldhash::fast::FixedState>>,
    /// Writers of `map`, one at a time.
    changing: Mutex<()>,
    /// Per slot: the heat window's number (high 32 bits) and the decisions in it.
    heat: Box<[AtomicU64]>,
    ids: foldhash::fast::RandomState,
}

/// One key's lease.
pub(super) struct Lease {
    /// Tokens held, paid for in Redis.
    tokens: AtomicU64,
    /// What Redis said with the last lease (before the first: nothing held, an empty bucket).
    view: ViewCell,
    /// How long the lease is kept without a decision, and without a renewal: [`IDLE`] and
    /// [`TERM`], or the smallest window of its quotas if shorter, so that tokens held do not
    /// outlive the window they were charged in.
    idle: u64,
    term: u64,
    renewing: AtomicBool,
    /// Set when the lease is given back: a renewal that lands later gives its tokens back too.
    retired: AtomicBool,
    /// Decisions since the last renewal was sent that the lease did not pay for (those it
    /// paid for are what it spent): with them, the demand a renewal is sized to.
    unpaid: AtomicU64,
    /// The store's time of the last decision.
    last_used: AtomicU64,
    keys: Vec<Vec<u8>>,
    quotas: Quotas,
    /// Each quota's interval, in nanoseconds of whole microseconds (as Redis counts).
    intervals: [u64; MAX_QUOTAS],
    /// The most tokens a lease holds.
    cap: u64,
    group: usize,
}

/// The key's state as the last lease answer gave it.
#[derive(Clone, Copy)]
struct View {
    /// Redis's time of the answer, and the store's, in nanoseconds.
    redis_at: u64,
    local_at: u64,
    /// Each quota's TAT after the lease, in nanoseconds.
    tats: [u64; MAX_QUOTAS],
    /// The size of the lease (what it held after the answer).
    size: u64,
    /// Whether the lease came back short: the fleet had spent the limit.
    short: bool,
    /// The store's time before which no renewal is sent.
    not_before: u64,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Leases {
    pub(super) fn new() -> Self {
        Self {
            map: ArcSwap::from_pointee(HashMap::default()),
            changing: Mutex::new(()),
            heat: (0..HEAT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            ids: foldhash::fast::RandomState::default(),
        }
    }

    /// The id of `key`'s lease under `quotas`.
    #[inline]
    fn id<K: Hash + ?Sized>(&self, key: &K, quotas: &Quotas) -> u64 {
        let quotas_id = match quotas.single() {
            Some(single) => single.id,
            None => quotas
                .as_slice()
                .iter()
                .fold(0, |id: u64, q| id.rotate_left(7) ^ q.id()),
        };
        self.ids.hash_one(key) ^ quotas_id
    }

    /// How many keys are leased.
    pub(super) fn len(&self) -> usize {
        self.map.load().len()
    }

    /// Decides `key`'s request from its lease, if it has one; counts its heat, and leases it
    /// when it turns hot.
    pub(super) fn decide<K: crate::key::RedisKey + Hash + ?Sized>(
        &self,
        inner: &Arc<Inner>,
        key: &K,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Leased {
        if cost == 0 {
            return Leased::No;
        }
        let id = self.id(key, quotas);
        let map = self.map.load();
        let Some(lease) = map.get(&id) else {
            drop(map);
            if self.heats(id, inner.now()) {
                self.lease(inner, id, key, quotas);
            }
            return Leased::No;
        };
        let view = lease.view.load(quotas.len());
        let now = inner.now();
        // Coarsely, so that the hot path writes no shared line on most decisions.
        if now.saturating_sub(lease.last_used.load(Ordering::Relaxed)) > nanos(TOUCH) {
            lease.last_used.store(now, Ordering::Relaxed);
        }
        let cost = u64::from(cost);
        let spent = lease
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_sub(cost)
            });
        match spent {
            Ok(held) => {
                let left = held - cost;
                if left <= view.size / 2 {
                    lease.renew(inner, &view, now);
                }
                Leased::Decided(Ok(lease.allowed(&view, left, now)))
            }
            Err(held) => {
                lease.unpaid.fetch_add(cost, Ordering::Relaxed);
                lease.renew(inner, &view, now);
                let down = inner.breaker.is_down(lease.group);
                if down {
                    if matches!(inner.on_failure, OnFailure::Allow) {
                        let steps = [FULL; MAX_QUOTAS];
                        let steps = &steps[..quotas.len()];
                        let allowed = Decision::from_steps(quotas, steps, 0).alone();
                        return Leased::Decided(Ok(allowed));
                    }
                    // A cost charged after the fact (`max_wait` of `Duration::MAX`: the
                    // request went ahead) is recorded where the failure policy records it, and
                    // written back to Redis from there.
                    if max_wait == Duration::MAX {
                        return Leased::No;
                    }
                    let refused = lease.refused(&view, held, cost, now, down).alone();
                    return Leased::Decided(Ok(refused));
                }
                // A lease spent before its renewal came back (or before the first one), while
                // the fleet had tokens to spare (a burst faster than a round trip): Redis
                // decides, as for a cold key. One that came back short (the fleet spent the
                // limit) refuses here, unless the request may take a later slot.
                if !view.short || !max_wait.is_zero() || cost > lease.cap {
                    return Leased::ByRedis;
                }
                Leased::Decided(Ok(lease.refused(&view, held, cost, now, down)))
            }
        }
    }

    /// Counts a decision of the key `id` in its heat slot; whether the key just turned hot.
    #[inline]
    fn heats(&self, id: u64, now: u64) -> bool {
        let window = now / nanos(HEAT_WINDOW);
        let slot = &self.heat[(id as usize) & (HEAT_SLOTS - 1)];
        let current = slot.load(Ordering::Relaxed);
        if current >> 32 != window & 0xffff_ffff {
            slot.store((window << 32) | 1, Ordering::Relaxed);
            return false;
        }
        let count = slot.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
        count + 1 == u64::from(HOT)
    }

    /// Leases `key` under `quotas`, if they can be leased and room is left: the lease is made
    /// empty, and its first tokens asked for in the background.
    fn lease<K: crate::key::RedisKey + ?Sized>(
        &self,
        inner: &Arc<Inner>,
        id: u64,
        key: &K,
        quotas: &Quotas,
    ) {
        let leasable =
            quotas.carried().is_empty() && quotas.as_slice().iter().all(|q| q.calendar().is_none());
        let cap = quotas
            .as_slice()
            .iter()
            .map(|q| u64::from(q.burst()) / LEASE_SHARE)
            .min()
            .unwrap_or(0);
        // Not while Redis is down: the key is decided as a cold one until it answers.
        if !leasable || cap < MIN_LEASE || inner.breaker.is_down(inner.group(key)) {
            return;
        }
        let mut intervals = [0; MAX_QUOTAS];
        for (interval, quota) in intervals.iter_mut().zip(quotas.as_slice()) {
            *interval = interval_us(&Gcra::new(quota)).saturating_mul(1000);
        }
        let now = inner.now();
        // Until the first lease lands: nothing held, the bucket taken for empty.
        let window =
            |i: usize| intervals[i].saturating_mul(u64::from(quotas.as_slice()[i].burst()));
        let mut tats = [0; MAX_QUOTAS];
        for (i, tat) in tats.iter_mut().enumerate().take(quotas.len()) {
            *tat = now.saturating_add(window(i));
        }
        let smallest_window = (0..quotas.len()).map(window).min().unwrap_or(0);
        let lease = Arc::new(Lease {
            tokens: AtomicU64::new(0),
            view: ViewCell::new(&View {
                redis_at: now,
                local_at: now,
                tats,
                size: 0,
                short: false,
                not_before: now,
            }),
            idle: nanos(IDLE).min(smallest_window),
            term: nanos(TERM).min(smallest_window),
            renewing: AtomicBool::new(true),
            retired: AtomicBool::new(false),
            unpaid: AtomicU64::new(u64::from(HOT)),
            last_used: AtomicU64::new(now),
            keys: inner.keys(key, quotas),
            quotas: quotas.clone(),
            intervals,
            cap,
            group: inner.group(key),
        });
        {
            let _one = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
            let map = self.map.load();
            if map.contains_key(&id) || map.len() >= MAX_LEASES {
                return;
            }
            let mut next = HashMap::clone(&map);
            next.insert(id, Arc::clone(&lease));
            self.map.store(Arc::new(next));
        }
        lease.spawn_renewal(inner, now.saturating_sub(nanos(HEAT_WINDOW)));
    }

    /// Gives back and forgets the leases that cooled or reached their term (all of them with
    /// `all`); waits for the give-backs.
    pub(super) async fn sweep(&self, inner: &Arc<Inner>, all: bool) -> usize {
        let now = inner.now();
        let stale = |lease: &Lease| {
            if all {
                return true;
            }
            // Kept while Redis is down: the tokens could not go back, and the key, still
            // leased, is refused once they are spent rather than decided by the local share.
            if inner.breaker.is_down(lease.group) {
                return false;
            }
            let idle = now.saturating_sub(lease.last_used.load(Ordering::Relaxed)) > lease.idle;
            let renewed = lease.view.load(0).local_at;
            let old =
                now.saturating_sub(renewed) > lease.term && !lease.renewing.load(Ordering::Acquire);
            idle || old
        };
        let retired: Vec<Arc<Lease>> = {
            let _one = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
            let map = self.map.load();
            if !map.values().any(|lease| stale(lease)) {
                return 0;
            }
            let mut next = HashMap::clone(&map);
            let mut retired = Vec::new();
            next.retain(|_, lease| {
                if stale(lease) {
                    retired.push(Arc::clone(lease));
                    false
                } else {
                    true
                }
            });
            self.map.store(Arc::new(next));
            retired
        };
        use futures_util::stream::{self, StreamExt};
        let give_backs = retired.into_iter().map(|lease| {
            let inner = Arc::clone(inner);
            async move {
                lease.retired.store(true, Ordering::Release);
                let held = lease.tokens.swap(0, Ordering::AcqRel);
                held > 0 && inner.give_back(&lease.keys, &lease.intervals, held).await
            }
        });
        let given: Vec<bool> = stream::iter(give_backs)
            .buffer_unordered(super::WRITE_BACK_CONCURRENCY)
            .collect()
            .await;
        given.into_iter().filter(|&given| given).count()
    }

    /// Forgets `key`'s lease under `quotas` (a reset: Redis forgets the key, tokens and all).
    pub(super) fn forget<K: Hash + ?Sized>(&self, key: &K, quotas: &Quotas) {
        let id = self.id(key, quotas);
        let _one = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let map = self.map.load();
        if let Some(lease) = map.get(&id) {
            lease.retired.store(true, Ordering::Release);
            lease.tokens.store(0, Ordering::Release);
            let mut next = HashMap::clone(&map);
            next.remove(&id);
            self.map.store(Arc::new(next));
        }
    }
}

impl Lease {
    /// The decision of a request paid from the lease, `left` tokens remaining in it.
    fn allowed(&self, view: &View, left: u64, now: u64) -> Decision {
        let at = view.redis_at + now.saturating_sub(view.local_at);
        let mut steps = [FULL; MAX_QUOTAS];
        for (i, step) in steps.iter_mut().enumerate().take(self.quotas.len()) {
            *step = Step {
                allowed: true,
                tat: view.tats[i].saturating_sub(left.saturating_mul(self.intervals[i])),
                wait: 0,
            };
        }
        Decision::from_steps(&self.quotas, &steps[..self.quotas.len()], at)
    }

    /// The refusal of a request of `cost` the lease (holding `held`) cannot pay for: until the
    /// fleet's state has room for it, and not before the next renewal can answer (the probe's
    /// longest pause while Redis is down).
    fn refused(&self, view: &View, held: u64, cost: u64, now: u64, down: bool) -> Decision {
        let at = view.redis_at + now.saturating_sub(view.local_at);
        let renewal = if down {
            nanos(super::PROBE_MAX_PAUSE)
        } else {
            view.not_before
                .saturating_sub(now)
                .max(nanos(Duration::from_millis(1)))
        };
        let mut steps = [FULL; MAX_QUOTAS];
        for (i, (step, quota)) in steps.iter_mut().zip(self.quotas.as_slice()).enumerate() {
            let tat = view.tats[i].saturating_sub(held.saturating_mul(self.intervals[i]));
            let window = self.intervals[i].saturating_mul(u64::from(quota.burst()));
            let passes = tat
                .max(at)
                .saturating_add(cost.saturating_mul(self.intervals[i]))
                .saturating_sub(window)
                .saturating_sub(at);
            *step = Step {
                allowed: false,
                tat,
                wait: passes.max(renewal),
            };
        }
        Decision::from_steps(&self.quotas, &steps[..self.quotas.len()], at)
    }

    /// Sends a renewal in the background, unless one is out or it is too soon.
    fn renew(self: &Arc<Self>, inner: &Arc<Inner>, view: &View, now: u64) {
        if now < view.not_before || inner.breaker.is_down(self.group) {
            return;
        }
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.spawn_renewal(inner, view.local_at);
    }

    /// Asks Redis for tokens, in the background (`renewing` is set): enough to hold
    /// [`LEASE_SPAN`] of the demand seen since `since`.
    fn spawn_renewal(self: &Arc<Self>, inner: &Arc<Inner>, since: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.renewing.store(false, Ordering::Release);
            return;
        };
        let (inner, lease) = (Arc::clone(inner), Arc::clone(self));
        runtime.spawn(async move {
            lease.renewal(&inner, since).await;
            lease.renewing.store(false, Ordering::Release);
        });
    }

    async fn renewal(&self, inner: &Arc<Inner>, since: u64) {
        let now = inner.now();
        let elapsed = now
            .saturating_sub(since)
            .max(nanos(Duration::from_millis(1)));
        let held = self.tokens.load(Ordering::Acquire);
        let spent = self.view.load(0).size.saturating_sub(held);
        let demand = spent + self.unpaid.swap(0, Ordering::Relaxed);
        let span = u128::from(demand) * u128::from(nanos(LEASE_SPAN)) / u128::from(elapsed);
        let size = u64::try_from(span).unwrap_or(u64::MAX).clamp(1, self.cap);
        let want = size.saturating_sub(held).max(1);
        let mut args = Vec::with_capacity(2 + 2 * self.quotas.len());
        args.push(want);
        for quota in self.quotas.as_slice() {
            args.extend([interval_us(&Gcra::new(quota)), window_us(quota)]);
        }
        args.push(inner.time.arg());
        let cmd = evalsha(&inner.lease, self.keys.iter().map(Vec::as_slice), args);
        let mut connection = inner.connection.clone();
        let answer = tokio::time::timeout(
            inner.timeout,
            run::<Vec<i64>>(&inner.lease, &cmd, &mut connection),
        )
        .await;
        let raw = match answer {
            Ok(Ok(raw)) if raw.len() == 2 + self.quotas.len() => raw,
            failed => {
                let error = match failed {
                    Ok(Ok(_)) => StoreError::Backend(
                        "the lease script answered in an unexpected shape".into(),
                    ),
                    Ok(Err(error)) => StoreError::Backend(Box::new(error)),
                    Err(_) => StoreError::Timeout(inner.timeout),
                };
                inner.note_failure_of(&error, self.group, || self.keys[0].clone());
                self.store_view(|view| View {
                    not_before: inner.now() + nanos(FAILED_PAUSE),
                    ..*view
                });
                return;
            }
        };
        inner.breaker.answered(self.group);
        let taken = u64::try_from(raw[1]).unwrap_or(0);
        let mut tats = [0; MAX_QUOTAS];
        for (tat, raw) in tats.iter_mut().zip(&raw[2..]) {
            *tat = u64::try_from(*raw).unwrap_or(0).saturating_mul(1000);
        }
        let local_at = inner.now();
        if self.retired.load(Ordering::Acquire) {
            // Given back while this renewal was out: so are its tokens.
            if taken > 0 {
                inner.give_back(&self.keys, &self.intervals, taken).await;
            }
            return;
        }
        // The view first, then the tokens: a decision that sees the tokens sees the state
        // Redis charged them in.
        let held = self.tokens.load(Ordering::Acquire) + taken;
        // Short: the fleet has spent the limit; the next renewal waits for it to refill.
        let pause = if taken < want { nanos(SHORT_PAUSE) } else { 0 };
        self.view.store(&View {
            redis_at: u64::try_from(raw[0]).unwrap_or(0).saturating_mul(1000),
            local_at,
            tats,
            size: held.max(size),
            short: taken < want,
            not_before: local_at + pause,
        });
        self.tokens.fetch_add(taken, Ordering::AcqRel);
        // Given back in between: the tokens go back too.
        if self.retired.load(Ordering::Acquire) {
            let held = self.tokens.swap(0, Ordering::AcqRel);
            if held > 0 {
                inner.give_back(&self.keys, &self.intervals, held).await;
            }
        }
    }

    /// Replaces the view with `change` of it.
    fn store_view(&self, change: impl Fn(&View) -> View) {
        let view = self.view.load(self.quotas.len());
        self.view.store(&change(&view));
    }
}

/// A lease's [`View`], read on every decision without a lock or a write: a sequence lock.
/// Its one writer is the lease's renewal (one at a time, by `renewing`); a reader that sees
/// the sequence move, or odd (a write under way), reads again.
struct ViewCell {
    sequence: AtomicU64,
    redis_at: AtomicU64,
    local_at: AtomicU64,
    tats: [AtomicU64; MAX_QUOTAS],
    size: AtomicU64,
    short: AtomicBool,
    not_before: AtomicU64,
}

impl ViewCell {
    fn new(view: &View) -> Self {
        let cell = Self {
            sequence: AtomicU64::new(0),
            redis_at: AtomicU64::new(0),
            local_at: AtomicU64::new(0),
            tats: Default::default(),
            size: AtomicU64::new(0),
            short: AtomicBool::new(false),
            not_before: AtomicU64::new(0),
        };
        cell.store(view);
        cell
    }

    /// The view, with the TATs of its first `quotas` quotas (the others read as 0).
    #[inline]
    fn load(&self, quotas: usize) -> View {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut view = View {
                redis_at: self.redis_at.load(Ordering::Relaxed),
                local_at: self.local_at.load(Ordering::Relaxed),
                tats: [0; MAX_QUOTAS],
                size: self.size.load(Ordering::Relaxed),
                short: self.short.load(Ordering::Relaxed),
                not_before: self.not_before.load(Ordering::Relaxed),
            };
            for (tat, cell) in view.tats.iter_mut().zip(&self.tats).take(quotas) {
                *tat = cell.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if self.sequence.load(Ordering::Relaxed) == before {
                return view;
            }
        }
    }

    /// Writes `view` (by the one writer).
    fn store(&self, view: &View) {
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence.store(sequence + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.redis_at.store(view.redis_at, Ordering::Relaxed);
        self.local_at.store(view.local_at, Ordering::Relaxed);
        for (cell, tat) in self.tats.iter().zip(view.tats) {
            cell.store(tat, Ordering::Relaxed);
        }
        self.size.store(view.size, Ordering::Relaxed);
        self.short.store(view.short, Ordering::Relaxed);
        self.not_before.store(view.not_before, Ordering::Relaxed);
        self.sequence.store(sequence + 2, Ordering::Release);
    }
}

/// Looks over the store's leases every [`SWEEP_EVERY`], giving back those that cooled or
/// reached their term, if a tokio runtime runs; the task holds the store weakly and ends
/// with it.
pub(super) fn start_sweeping(inner: &Arc<Inner>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(inner);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let Some(inner) = weak.upgrade() else { return };
            if let Some(leases) = &inner.leases {
                leases.sweep(&inner, false).await;
            }
        }
    });
}
