//! What a limit is: `n` requests per period, a burst, a name; validated once, when built.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{Quota, Quotas};
//!
//! # fn main() -> Result<(), tollgate::QuotaError> {
//! // Ten requests per second; up to twenty at once after a quiet spell.
//! let per_second = Quota::per_second(10)?.with_burst(20)?.named("burst")?;
//! // One request every two seconds: a fractional rate.
//! let slow = Quota::every(Duration::from_secs(2))?;
//! assert_eq!(slow.interval(), Duration::from_secs(2));
//!
//! // Several quotas on one key: a request passes only when every one allows it.
//! let both = Quotas::new([per_second, Quota::per_hour(1000)?.named("hourly")?])?;
//! assert_eq!(both.len(), 2);
//!
//! // Mistakes are errors here, never panics inside a request.
//! assert_eq!(Quota::per_second(0), Err(tollgate::QuotaError::ZeroCount));
//! # Ok(())
//! # }
//! ```
//!
//! # Arithmetic
//!
//! A quota of `n` per `period` admits one request every `period / n` (the *interval*),
//! kept in integer nanoseconds and rounded down, so a quota is never stricter than written
//! (`per_second(3)` admits one request every 333,333,333 ns). The *burst* is how many requests
//! may pass at once after a quiet spell; it defaults to `n`. The time a full burst takes to
//! come back, `interval × burst`, is the quota's [`window`](Quota::window).
//!
//! # Calendar quotas
//!
//! [`Quota::per_calendar_day`] and [`Quota::per_calendar_month`] count requests in windows
//! aligned to the calendar, as API plans sell them: `n` requests from midnight to midnight,
//! or from the first of the month to the first of the next, in UTC unless
//! [`with_utc_offset`](Quota::with_utc_offset) says otherwise. All `n` may pass at once; a
//! refusal's retry-after is the time to the window's end. They compose with the others in a
//! [`Quotas`] set ("10 a second and 10,000 a month", all or nothing) and work on every store.
//!
//! ```
//! use tollgate::{MemoryStore, Quota, Quotas, RateLimiter};
//!
//! # fn main() -> Result<(), tollgate::QuotaError> {
//! let plan = Quotas::new([
//!     Quota::per_second(10)?.named("burst")?,
//!     Quota::per_calendar_month(10_000)?.named("monthly")?,
//! ])?;
//! let limiter = RateLimiter::new(plan).store(MemoryStore::new());
//! assert!(limiter.check().is_ok());
//! # Ok(())
//! # }
//! ```
//!
//! They read the store's clock as nanoseconds since the Unix epoch, as the crate's clocks
//! count ([`crate::clock`]); on Redis, Redis's `TIME`. A request never waits into the next
//! window: in wait mode it is refused as at once (no one waits for a day).

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use crate::calendar::{Calendar, MAX_OFFSET};

/// The longest window a quota may have: `interval × burst` stays below 2⁶² ns (about 146
/// years), which leaves headroom for the sums of the algorithm without overflow.
const MAX_WINDOW_NANOS: u64 = 1 << 62;

/// The most quotas one [`Quotas`] set may hold.
pub(crate) const MAX_QUOTAS: usize = 8;

/// A rate limit: a steady rate and a burst, with a name for the rate-limit headers.
///
/// Build one with [`Quota::per_second`], [`per_minute`](Quota::per_minute),
/// [`per_hour`](Quota::per_hour), [`per_day`](Quota::per_day), [`per`](Quota::per) or
/// [`every`](Quota::every); every constructor checks its input and returns a [`QuotaError`]
/// rather than panicking. See the [module docs](self) for the arithmetic.
#[derive(Clone, PartialEq, Eq)]
pub struct Quota {
    interval: u64,
    window: u64,
    burst: u32,
    name: Arc<str>,
    id: u64,
    calendar: Option<Calendar>,
}

/// What one request moves a calendar quota's state by (see [`crate::calendar`]): a
/// microsecond, so that the Redis scripts count in whole microseconds too.
const CALENDAR_STEP: u64 = 1_000;

impl Quota {
    /// `count` requests per second, with a burst of `count`.
    pub fn per_second(count: u32) -> Result<Self, QuotaError> {
        Self::per(Duration::from_secs(1), count)
    }

    /// `count` requests per minute, with a burst of `count`.
    pub fn per_minute(count: u32) -> Result<Self, QuotaError> {
        Self::per(Duration::from_secs(60), count)
    }

    /// `count` requests per hour, with a burst of `count`.
    pub fn per_hour(count: u32) -> Result<Self, QuotaError> {
        Self::per(Duration::from_secs(3600), count)
    }

    /// `count` requests per day (86,400 s), with a burst of `count`.
    pub fn per_day(count: u32) -> Result<Self, QuotaError> {
        Self::per(Duration::from_secs(86_400), count)
    }

    /// One request every `interval`, with a burst of one: `every(2 s)` is half a request per
    /// second.
    pub fn every(interval: Duration) -> Result<Self, QuotaError> {
        Self::per(interval, 1)
    }

    /// `count` requests per `period`, with a burst of `count`.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCount`], [`QuotaError::ZeroPeriod`], [`QuotaError::TooFast`] when the
    /// interval `period / count` is under one nanosecond, [`QuotaError::TooLong`] when the
    /// window does not fit the arithmetic.
    pub fn per(period: Duration, count: u32) -> Result<Self, QuotaError> {
        if count == 0 {
            return Err(QuotaError::ZeroCount);
        }
        if period.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        let interval = period.as_nanos() / u128::from(count);
        if interval == 0 {
            return Err(QuotaError::TooFast);
        }
        let interval = u64::try_from(interval).map_err(|_| QuotaError::TooLong)?;
        Self::build(interval, count, Arc::from(DEFAULT_NAME), None)
    }

    /// `count` requests a calendar day, from midnight to midnight (UTC unless
    /// [`with_utc_offset`](Self::with_utc_offset) says otherwise); all may pass at once. See
    /// [Calendar quotas](self#calendar-quotas).
    ///
    /// ```
    /// use tollgate::{MemoryStore, Quota, RateLimiter};
    ///
    /// let limiter = RateLimiter::new(Quota::per_calendar_day(3).unwrap()).store(MemoryStore::new());
    /// for _ in 0..3 {
    ///     assert!(limiter.check().is_ok());
    /// }
    /// // Refused until the next midnight, UTC.
    /// let refused = limiter.check().unwrap_err();
    /// assert!(refused.retry_after().unwrap() <= std::time::Duration::from_secs(86_400));
    /// ```
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCount`] for 0.
    pub fn per_calendar_day(count: u32) -> Result<Self, QuotaError> {
        Self::aligned(count, false)
    }

    /// `count` requests a calendar month, from the first of the month to the first of the
    /// next (UTC unless [`with_utc_offset`](Self::with_utc_offset) says otherwise); all may
    /// pass at once.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroCount`] for 0.
    pub fn per_calendar_month(count: u32) -> Result<Self, QuotaError> {
        Self::aligned(count, true)
    }

    fn aligned(count: u32, month: bool) -> Result<Self, QuotaError> {
        if count == 0 {
            return Err(QuotaError::ZeroCount);
        }
        let calendar = Calendar { month, offset: 0 };
        Self::build(
            CALENDAR_STEP,
            count,
            Arc::from(DEFAULT_NAME),
            Some(calendar),
        )
    }

    /// The same calendar quota with windows that start at midnight `seconds` east of UTC
    /// (`-5 * 3600` for New York in winter, `19_800` for India), a fixed offset: no daylight
    /// saving time.
    ///
    /// # Errors
    ///
    /// [`QuotaError::UtcOffset`] beyond ±14 h, or for a quota that is not a calendar one.
    pub fn with_utc_offset(self, seconds: i32) -> Result<Self, QuotaError> {
        match self.calendar {
            Some(calendar) if seconds.unsigned_abs() <= MAX_OFFSET.unsigned_abs() => {
                let calendar = Calendar {
                    offset: seconds,
                    ..calendar
                };
                Self::build(self.interval, self.burst, self.name, Some(calendar))
            }
            _ => Err(QuotaError::UtcOffset(seconds)),
        }
    }

    /// The same rate with a different burst: how many requests may pass at once after a
    /// quiet spell.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroBurst`] for 0, [`QuotaError::TooLong`] when `interval × burst` does
    /// not fit the arithmetic.
    pub fn with_burst(self, burst: u32) -> Result<Self, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        if self.calendar.is_some() {
            return Err(QuotaError::CalendarBurst);
        }
        Self::build(self.interval, burst, self.name, None)
    }

    /// The same quota under another name, shown in the `RateLimit` and `RateLimit-Policy`
    /// headers. The default name is `"default"`.
    ///
    /// # Errors
    ///
    /// [`QuotaError::InvalidName`] unless the name is 1 to 64 printable ASCII characters
    /// other than `"` and `\` (it travels in an HTTP structured-field string).
    pub fn named(self, name: impl AsRef<str>) -> Result<Self, QuotaError> {
        let name = name.as_ref();
        let printable = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
        if name.is_empty() || name.len() > 64 || !name.bytes().all(printable) {
            return Err(QuotaError::InvalidName(name.to_owned()));
        }
        Self::build(self.interval, self.burst, Arc::from(name), self.calendar)
    }

    fn build(
        interval: u64,
        burst: u32,
        name: Arc<str>,
        calendar: Option<Calendar>,
    ) -> Result<Self, QuotaError> {
        let window = interval
            .checked_mul(u64::from(burst))
            .filter(|w| *w <= MAX_WINDOW_NANOS)
            .ok_or(QuotaError::TooLong)?;
        debug_assert!(window > 0);
        let id = quota_id(interval, burst, &name, calendar);
        Ok(Self {
            interval,
            window,
            burst,
            name,
            id,
            calendar,
        })
    }

    /// Time between two requests at the steady rate. A calendar quota has no steady rate: its
    /// interval is 1 µs, what one request moves its state by.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// How many requests may pass at once after a quiet spell: the size of the bucket.
    #[inline]
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The time an empty bucket takes to fill again: `interval × burst`. For a calendar
    /// quota, the longest its window lasts: a day, or 31 days.
    pub fn window(&self) -> Duration {
        match self.calendar {
            Some(calendar) => Duration::from_secs(calendar.longest_secs()),
            None => Duration::from_nanos(self.window_nanos()),
        }
    }

    /// This calendar quota's `1/fleet` (at least one request a window), for an instance that
    /// decides alone while Redis is away.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn share_of_calendar(&self, fleet: u32) -> Quota {
        let count = (self.burst / fleet.max(1)).max(1);
        Self::build(self.interval, count, self.name.clone(), self.calendar)
            .unwrap_or_else(|_| self.clone())
    }

    /// The calendar the quota's windows follow, if it is a calendar quota.
    #[inline]
    pub(crate) fn calendar(&self) -> Option<Calendar> {
        self.calendar
    }

    /// The name shown in rate-limit headers.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interval in nanoseconds.
    #[inline]
    pub(crate) fn interval_nanos(&self) -> u64 {
        self.interval
    }

    /// The window in nanoseconds; never overflows (checked when built).
    #[inline]
    pub(crate) fn window_nanos(&self) -> u64 {
        self.window
    }

    /// A stable identifier of rate, burst and name, never 0: stores keep one state per key and
    /// quota id, so two tiers of one name never share a bucket. (A set built with
    /// [`Quotas::carry_over_from`] moves states from one id to another, rescaled.)
    #[inline]
    pub fn id(&self) -> u64 {
        self.id
    }
}

const DEFAULT_NAME: &str = "default";

fn quota_id(interval: u64, burst: u32, name: &str, calendar: Option<Calendar>) -> u64 {
    let hasher = foldhash::quality::FixedState::with_seed(0x746f_6c6c_6761_7465);
    let id = match calendar {
        // A GCRA quota's id is what it was before calendar quotas existed: states in Redis
        // keep their keys across the upgrade.
        None => hasher.hash_one((interval, burst, name)),
        Some(calendar) => hasher.hash_one((interval, burst, name, calendar)),
    };
    id | 1
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut quota = f.debug_struct("Quota");
        quota.field("name", &&*self.name);
        match self.calendar {
            Some(calendar) => quota.field("calendar", &calendar),
            None => quota.field("interval", &self.interval()),
        };
        quota.field("burst", &self.burst).finish()
    }
}

impl fmt::Display for Quota {
    /// `"default": burst 10, one every 200 ms`, or `"monthly": 10000 a calendar month (UTC)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(calendar) = self.calendar {
            let period = if calendar.month { "month" } else { "day" };
            write!(
                f,
                "\"{}\": {} a calendar {period} (UTC",
                self.name, self.burst
            )?;
            if calendar.offset != 0 {
                let (sign, offset) = (
                    if calendar.offset < 0 { '-' } else { '+' },
                    calendar.offset.unsigned_abs(),
                );
                write!(f, "{sign}{:02}:{:02}", offset / 3600, offset % 3600 / 60)?;
            }
            return f.write_str(")");
        }
        write!(
            f,
            "\"{}\": burst {}, one every {}",
            self.name,
            self.burst,
            crate::human::Human(self.interval())
        )
    }
}

/// The quotas that apply to one key together: a request passes only when every one of them
/// allows it, and a denial by one consumes nothing from the others.
///
/// Cheap to clone (one `Arc`). Holds 1 to 8 quotas with distinct names.
#[derive(Clone, PartialEq, Eq)]
pub struct Quotas {
    /// The only quota's numbers when the set holds one, kept inline so that the hot path of
    /// a decision reads nothing behind the `Arc`.
    single: Option<Single>,
    inner: Arc<QuotasInner>,
}

/// What a decision needs of a lone quota, copied out of it once (the GCRA's two numbers are
/// built from `interval` and `window` by the store, which knows the algorithm).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Single {
    pub(crate) interval: u64,
    pub(crate) window: u64,
    pub(crate) id: u64,
    pub(crate) burst: u32,
}

impl Single {
    fn of(quota: &Quota) -> Self {
        Self {
            interval: quota.interval_nanos(),
            window: quota.window_nanos(),
            id: quota.id,
            burst: quota.burst,
        }
    }
}

#[derive(PartialEq, Eq)]
struct QuotasInner {
    list: Box<[Quota]>,
    max_cost: u32,
    /// The quotas this set replaced, whose states it carries over (see
    /// [`Quotas::carry_over_from`]).
    carried: Box<[Carried]>,
}

/// The most earlier quotas a set carries states over from: the last few changes of a live
/// limit, or the other tiers of a [`Tiers`](crate::rate_limit::Tiers).
pub(crate) const MAX_CARRIED: usize = 8;

/// A quota a set replaced: a key with no state under the set's quota `index` takes its state
/// from `quota`'s, rescaled.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Carried {
    pub(crate) index: usize,
    pub(crate) quota: Quota,
}

/// Where a key's debt under an earlier quota of window `from_window` puts its TAT under a
/// quota of window `to_window`: the same fraction of the window spent, from `now`.
/// `tat <= now` (nothing owed) carries nothing over (0).
#[inline]
pub(crate) fn rescaled_tat(tat: u64, now: u64, from_window: u64, to_window: u64) -> u64 {
    if tat <= now || from_window == 0 {
        return 0;
    }
    let debt = u128::from(tat - now) * u128::from(to_window) / u128::from(from_window);
    now.saturating_add(u64::try_from(debt).unwrap_or(u64::MAX))
}

impl Quotas {
    /// A set of quotas that all apply at once.
    ///
    /// # Errors
    ///
    /// [`QuotaError::Empty`], [`QuotaError::TooMany`] past 8, or
    /// [`QuotaError::DuplicateName`] when two quotas share a name (give each its own with
    /// [`Quota::named`]).
    pub fn new(quotas: impl IntoIterator<Item = Quota>) -> Result<Self, QuotaError> {
        let list: Box<[Quota]> = quotas.into_iter().collect();
        if list.is_empty() {
            return Err(QuotaError::Empty);
        }
        if list.len() > MAX_QUOTAS {
            return Err(QuotaError::TooMany(list.len()));
        }
        for (i, quota) in list.iter().enumerate() {
            if list[..i].iter().any(|other| other.name == quota.name) {
                return Err(QuotaError::DuplicateName(quota.name().to_owned()));
            }
        }
        Ok(Self::build(list, Box::new([])))
    }

    fn build(list: Box<[Quota]>, carried: Box<[Carried]>) -> Self {
        let max_cost = list.iter().map(Quota::burst).min().unwrap_or(0);
        Self {
            // A set that carries states over takes the general path, which looks for them, and
            // so does a calendar quota.
            single: (list.len() == 1 && carried.is_empty() && list[0].calendar.is_none())
                .then(|| Single::of(&list[0])),
            inner: Arc::new(QuotasInner {
                list,
                max_cost,
                carried,
            }),
        }
    }

    /// This set, carrying each key's state over from `previous`: a key that has no state under
    /// one of these quotas takes the state it has under `previous`'s quota of the same name,
    /// rescaled so that the same fraction of the burst stays spent. Raising a limit does not
    /// forgive a key that spent its burst, and lowering one does not reset it.
    ///
    /// The state moves on a key's first request under the new set; states under `previous`
    /// are left to expire. What `previous` itself carried over from comes along, up to
    /// 8 earlier quotas in all, the most recent first: a key that makes no
    /// request through more than that many changes of its quota starts afresh. Quotas are
    /// matched by name: give a quota a new name to start it afresh.
    ///
    /// Debt is added, not only taken by keys that owe nothing under the new quota: a request
    /// admitted under `previous` that settles its cost after the change charges `previous`'s
    /// state, and the key's next decision moves that charge over too.
    ///
    /// ```
    /// use tollgate::store::Ask;
    /// use tollgate::{MemoryStore, Quota, Quotas, Store};
    ///
    /// let store = MemoryStore::new();
    /// let old = Quotas::from(Quota::per_minute(10).unwrap());
    /// for _ in 0..8 {
    ///     store.decide(&Ask::new(&"alice", &old)).into_inner().unwrap();
    /// }
    /// // Ten times the rate and the burst: alice has spent 80% of hers, so 20 of 100 are left.
    /// let raised = Quotas::from(Quota::per_minute(100).unwrap()).carry_over_from(&old);
    /// assert_eq!(store.status(&"alice", &raised).remaining(), 20);
    /// // A new key starts full.
    /// assert_eq!(store.status(&"bob", &raised).remaining(), 100);
    /// ```
    #[must_use]
    pub fn carry_over_from(self, previous: &Quotas) -> Quotas {
        let earlier = previous
            .as_slice()
            .iter()
            .chain(previous.inner.carried.iter().map(|c| &c.quota));
        self.carrying(earlier)
    }

    /// This set, carrying states over from `earlier` quotas (matched by name, the first
    /// [`MAX_CARRIED`] that differ from this set's), and from nothing else.
    pub(crate) fn carrying<'q>(self, earlier: impl IntoIterator<Item = &'q Quota>) -> Quotas {
        let mut carried: Vec<Carried> = Vec::new();
        for quota in earlier {
            // A calendar quota's state means a count in a window, a GCRA's a debt in time:
            // states move between quotas of one kind (and one calendar) only.
            let Some(index) = self
                .as_slice()
                .iter()
                .position(|q| q.name == quota.name && q.calendar == quota.calendar)
            else {
                continue;
            };
            let known = self.as_slice()[index].id == quota.id
                || carried.iter().any(|c| c.quota.id == quota.id);
            if !known && carried.len() < MAX_CARRIED {
                carried.push(Carried {
                    index,
                    quota: quota.clone(),
                });
            }
        }
        let list = self.inner.list.clone();
        Self::build(list, carried.into_boxed_slice())
    }

    /// The quotas this set carries states over from.
    #[inline]
    pub(crate) fn carried(&self) -> &[Carried] {
        &self.inner.carried
    }

    /// The lone quota's numbers, if the set holds one.
    #[inline]
    pub(crate) fn single(&self) -> Option<Single> {
        self.single
    }

    /// Whether `other` is this very set (a clone of it), not merely an equal one.
    #[inline]
    pub fn same_set(&self, other: &Quotas) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The address of the shared set: equal for clones, distinct for live sets.
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// The quotas, in the order given.
    #[inline]
    pub fn as_slice(&self) -> &[Quota] {
        &self.inner.list
    }

    /// How many quotas the set holds (at least one).
    #[inline]
    pub fn len(&self) -> usize {
        self.inner.list.len()
    }

    /// Always false: a set holds at least one quota. Here for the `len`/`is_empty` convention.
    pub fn is_empty(&self) -> bool {
        self.inner.list.is_empty()
    }

    /// The largest cost a request may have: the smallest burst of the set. A request that
    /// costs more could never pass, and is refused with [`QuotaError::CostExceedsBurst`].
    #[inline]
    pub fn max_cost(&self) -> u32 {
        self.inner.max_cost
    }

    /// Checks that a request of `cost` can ever pass.
    #[inline]
    pub fn check_cost(&self, cost: u32) -> Result<(), QuotaError> {
        if cost <= self.inner.max_cost {
            Ok(())
        } else {
            Err(self.cost_error(cost))
        }
    }

    #[cold]
    fn cost_error(&self, cost: u32) -> QuotaError {
        let quota = self
            .as_slice()
            .iter()
            .find(|q| q.burst < cost)
            .unwrap_or(&self.inner.list[0]);
        QuotaError::CostExceedsBurst {
            cost,
            burst: quota.burst,
            quota: quota.name().to_owned(),
        }
    }
}

impl From<Quota> for Quotas {
    fn from(quota: Quota) -> Self {
        Self::build(Box::new([quota]), Box::new([]))
    }
}

impl<'a> IntoIterator for &'a Quotas {
    type Item = &'a Quota;
    type IntoIter = std::slice::Iter<'a, Quota>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl fmt::Debug for Quotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Why a quota, a set of quotas or a request cost was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaError {
    /// A quota of zero requests per period admits nothing; refuse the route instead.
    ZeroCount,
    /// A zero period has no rate.
    ZeroPeriod,
    /// A burst of zero admits nothing.
    ZeroBurst,
    /// More than one request per nanosecond cannot be represented.
    TooFast,
    /// `interval × burst` exceeds about 146 years.
    TooLong,
    /// A quota name must be 1 to 64 printable ASCII characters other than `"` and `\`.
    InvalidName(String),
    /// A set of quotas must hold at least one.
    Empty,
    /// A set holds at most 8 quotas (and a request across keys 8 in all); this many were
    /// given.
    TooMany(usize),
    /// Two quotas of one set share this name.
    DuplicateName(String),
    /// A UTC offset (in seconds) beyond ±14 h, or given to a quota that is not a calendar
    /// one.
    UtcOffset(i32),
    /// A calendar quota's burst is its count: all of it may pass at once.
    CalendarBurst,
    /// A request costs more than a quota's whole burst, so it could never pass.
    CostExceedsBurst {
        /// The cost of the request.
        cost: u32,
        /// The burst it exceeds.
        burst: u32,
        /// The name of that quota.
        quota: String,
    },
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroCount => f.write_str("a quota must allow at least one request per period"),
            Self::ZeroPeriod => f.write_str("a quota period must be longer than zero"),
            Self::ZeroBurst => f.write_str("a quota burst must be at least one request"),
            Self::TooFast => {
                f.write_str("a quota may allow at most one request per nanosecond")
            }
            Self::TooLong => f.write_str(
                "a quota's interval times its burst must stay under 2^62 ns (about 146 years)",
            ),
            Self::InvalidName(name) => write!(
                f,
                "quota name {name:?} must be 1 to 64 printable ASCII characters other than '\"' and '\\'"
            ),
            Self::Empty => f.write_str("a set of quotas must hold at least one quota"),
            Self::TooMany(n) => write!(f, "a set holds at most {MAX_QUOTAS} quotas, not {n}"),
            Self::DuplicateName(name) => write!(
                f,
                "two quotas of one set are named {name:?}; give each its own name with Quota::named"
            ),
            Self::UtcOffset(seconds) => write!(
                f,
                "a UTC offset of {seconds} s is refused: offsets are within ±14 h (±50400 s) and apply to calendar quotas only"
            ),
            Self::CalendarBurst => f.write_str(
                "a calendar quota's burst is its count (all of it may pass at once): build it with the count you want",
            ),
            Self::CostExceedsBurst { cost, burst, quota } => write!(
                f,
                "a request costing {cost} can never pass quota {quota:?}, whose burst is {burst}"
            ),
        }
    }
}

impl std::error::Error for QuotaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_mean_what_they_say() {
        let q = Quota::per_second(10).unwrap();
        assert_eq!(q.interval(), Duration::from_millis(100));
        assert_eq!(q.burst(), 10);
        assert_eq!(q.window(), Duration::from_secs(1));
        assert_eq!(
            Quota::per_minute(3).unwrap().interval(),
            Duration::from_secs(20)
        );
        assert_eq!(
            Quota::per_hour(1).unwrap().interval(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            Quota::per_day(2).unwrap().interval(),
            Duration::from_secs(43_200)
        );
    }

    #[test]
    fn fractional_rates_and_rounding() {
        let q = Quota::every(Duration::from_secs(2)).unwrap();
        assert_eq!((q.interval(), q.burst()), (Duration::from_secs(2), 1));
        // Rounded down: never stricter than written.
        assert_eq!(Quota::per_second(3).unwrap().interval_nanos(), 333_333_333);
    }

    #[test]
    fn invalid_quotas_are_errors() {
        assert_eq!(Quota::per_second(0), Err(QuotaError::ZeroCount));
        assert_eq!(Quota::per(Duration::ZERO, 5), Err(QuotaError::ZeroPeriod));
        assert_eq!(
            Quota::per(Duration::from_nanos(10), 11),
            Err(QuotaError::TooFast)
        );
        assert_eq!(Quota::per(Duration::MAX, 1), Err(QuotaError::TooLong));
        assert_eq!(
            Quota::per_day(1).unwrap().with_burst(u32::MAX),
            Err(QuotaError::TooLong)
        );
        assert_eq!(
            Quota::per_second(1).unwrap().with_burst(0),
            Err(QuotaError::ZeroBurst)
        );
        for bad in ["", "a\"b", "tab\t", "ünï", &"x".repeat(65)] {
            assert!(matches!(
                Quota::per_second(1).unwrap().named(bad),
                Err(QuotaError::InvalidName(_))
            ));
        }
    }

    #[test]
    fn sets_are_checked() {
        let a = Quota::per_second(1).unwrap();
        assert_eq!(Quotas::new([]), Err(QuotaError::Empty));
        assert_eq!(
            Quotas::new([a.clone(), a.clone()]),
            Err(QuotaError::DuplicateName("default".into()))
        );
        let many = (0..9).map(|i| a.clone().named(format!("q{i}")).unwrap());
        assert_eq!(Quotas::new(many), Err(QuotaError::TooMany(9)));
        let set = Quotas::new([
            a.clone().with_burst(5).unwrap(),
            Quota::per_hour(100).unwrap().named("hourly").unwrap(),
        ])
        .unwrap();
        assert_eq!(set.max_cost(), 5);
        assert!(set.check_cost(5).is_ok());
        assert_eq!(
            set.check_cost(6),
            Err(QuotaError::CostExceedsBurst {
                cost: 6,
                burst: 5,
                quota: "default".into()
            })
        );
    }

    #[test]
    fn ids_tell_rate_burst_and_name_apart() {
        let a = Quota::per_second(10).unwrap();
        let ids = [
            a.id(),
            a.clone().with_burst(20).unwrap().id(),
            a.clone().named("other").unwrap().id(),
            Quota::per_second(11).unwrap().id(),
        ];
        for (i, id) in ids.iter().enumerate() {
            assert_ne!(*id, 0);
            assert!(!ids[..i].contains(id));
        }
        assert_eq!(a.id(), Quota::per_second(10).unwrap().id());
    }
}
