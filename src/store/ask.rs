//! [`Ask`]: what a request asks of a store, the one value that goes from the key extractor
//! through admission to the store and back to the ledger that gives a reservation back.

use std::fmt;
use std::time::Duration;

use crate::gcra::{Gcra, Step};
use crate::quota::{self, MAX_QUOTAS};
use crate::{Decision, Quota, Quotas};

/// What a request asks of a [`Store`](super::Store): the parts it is counted under (one key
/// and its quotas, or several keys each with its own, decided all or nothing), how many units
/// it costs, and how long it may wait for its slot.
///
/// An `Ask` borrows its keys and quotas: asking costs no allocation, and a store that answers
/// later copies what it needs.
///
/// ```
/// use std::time::Duration;
/// use tollgate::store::Ask;
/// use tollgate::{MemoryStore, Quota, Quotas, Store};
///
/// let store = MemoryStore::new();
/// let per_minute = Quotas::from(Quota::per_minute(2).unwrap());
/// let ask = Ask::new(&"alice", &per_minute);
/// assert!(store.decide(&ask).into_inner().unwrap().is_allowed());
/// assert_eq!(store.decide(&ask.with_cost(0)).into_inner().unwrap().remaining(), 1); // a peek
///
/// // Per user *and* for everyone, all or nothing: a refusal by one spends nothing of the other.
/// let global = Quotas::from(Quota::per_minute(1).unwrap().named("global").unwrap());
/// let parts = [("bob", per_minute.clone()), ("everyone", global)];
/// assert!(store.decide(&Ask::across(&parts)).into_inner().unwrap().is_allowed());
/// let refused = store.decide(&Ask::across(&parts)).into_inner().unwrap();
/// assert!(!refused.is_allowed());
/// assert_eq!(refused.part(), 1); // the global part refused...
/// assert_eq!(store.status(&"bob", &per_minute).remaining(), 1); // ...and bob kept his token
/// ```
pub struct Ask<'a, K> {
    parts: Parts<'a, K>,
    cost: u32,
    max_wait: Duration,
    /// For a refund: the store's time of the decision that charged it (0: not said).
    charged_at: u64,
}

enum Parts<'a, K> {
    One(&'a K, &'a Quotas),
    Many(&'a [(K, Quotas)]),
}

impl<K> Clone for Parts<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Parts<'_, K> {}

impl<K> Clone for Ask<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Ask<'_, K> {}

impl<'a, K> Ask<'a, K> {
    /// One unit for `key` under `quotas`, without waiting.
    #[inline]
    pub fn new(key: &'a K, quotas: &'a Quotas) -> Self {
        Self {
            parts: Parts::One(key, quotas),
            cost: 1,
            max_wait: Duration::ZERO,
            charged_at: 0,
        }
    }

    /// One unit for every key of `parts` under its own quotas, all or nothing; without waiting.
    /// A key listed twice (under the same quotas: a key names one set in an ask) is charged
    /// once and given back once by the memory store, a single Redis and a store built on
    /// [`apply`](Self::apply) that keeps one TAT per state; a Redis Cluster decides parts one
    /// after another and charges it once per listing.
    pub fn across(parts: &'a [(K, Quotas)]) -> Self {
        Self {
            parts: Parts::Many(parts),
            cost: 1,
            max_wait: Duration::ZERO,
            charged_at: 0,
        }
    }

    /// Asks for `cost` units instead. Cost 0 is a *peek*: always allowed, nothing changes.
    #[inline]
    #[must_use]
    pub fn with_cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// May wait up to `max_wait` for its slot: a request whose slot comes that soon is allowed
    /// with [`Decision::wait`] set and its slot reserved.
    #[inline]
    #[must_use]
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// As a refund ([`Store::refund`](super::Store::refund)), of what `decision` charged: a
    /// calendar quota then takes it back only within the window that counted the charge (a
    /// charge of yesterday given back today would credit today's count). A refund that does
    /// not say what it refunds is taken by every quota.
    #[must_use]
    pub fn refunding(mut self, decision: &Decision) -> Self {
        self.charged_at = decision.decided_at();
        self
    }

    /// As a refund of what a decision made at `at` (the store's time) charged.
    #[inline]
    pub(crate) fn charged_at_time(mut self, at: u64) -> Self {
        self.charged_at = at;
        self
    }

    /// Whether `quota` takes a refund of this ask at `now` (see [`refunding`](Self::refunding)).
    #[inline]
    pub(crate) fn takes_back(&self, quota: &Quota, now: u64) -> bool {
        takes_back(quota, self.charged_at, now)
    }

    /// When the decision this refund gives back was made (0: not said), in the store's time.
    #[inline]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn charged_at(&self) -> u64 {
        self.charged_at
    }

    /// The units asked for.
    #[inline]
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The longest wait accepted.
    #[inline]
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// How many parts (keys) the ask has: 1 unless made with [`across`](Self::across).
    #[inline]
    pub fn len(&self) -> usize {
        match self.parts {
            Parts::One(..) => 1,
            Parts::Many(parts) => parts.len(),
        }
    }

    /// Whether the ask has no part (an empty [`across`](Self::across), which stores refuse
    /// with [`QuotaError::Empty`](crate::QuotaError::Empty)).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Part `i`: its key and its quotas.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`len`](Self::len).
    #[inline]
    pub fn part(&self, i: usize) -> (&'a K, &'a Quotas) {
        match self.parts {
            Parts::One(key, quotas) => {
                assert_eq!(i, 0, "part {i} of a single key");
                (key, quotas)
            }
            Parts::Many(parts) => {
                let (key, quotas) = &parts[i];
                (key, quotas)
            }
        }
    }

    /// Every part: its key and its quotas, in order.
    pub fn parts(&self) -> impl ExactSizeIterator<Item = (&'a K, &'a Quotas)> + '_ {
        (0..self.len()).map(|i| self.part(i))
    }

    /// The one key and its quotas, unless the ask has several parts.
    #[inline]
    pub(crate) fn single(&self) -> Option<(&'a K, &'a Quotas)> {
        match self.parts {
            Parts::One(key, quotas) => Some((key, quotas)),
            Parts::Many(_) => None,
        }
    }

    /// The same ask for another cost and wait (a charge or a refund of a held request).
    pub(crate) fn again(&self, cost: u32, max_wait: Duration) -> Self {
        Self {
            parts: self.parts,
            cost,
            max_wait,
            charged_at: self.charged_at,
        }
    }

    /// Every state a decision reads, in the order [`apply`](Self::apply) takes their TATs:
    /// for each part, the key with each of its quotas, then the key with each quota its set
    /// carries states over from ([`Quotas::carry_over_from`]). A store keeps one TAT per key
    /// and [`Quota::id`].
    pub fn states(&self) -> impl Iterator<Item = (&'a K, &'a Quota)> + '_ {
        self.parts().flat_map(|(key, quotas)| {
            let carried = quotas.carried().iter().map(|carried| &carried.quota);
            quotas
                .as_slice()
                .iter()
                .chain(carried)
                .map(move |q| (key, q))
        })
    }

    /// Decides this ask at `now` on the TATs of its [`states`](Self::states), in that order
    /// (0 for a state not kept: a full bucket), and updates them: the arithmetic of every
    /// store, for a store written outside this crate, which only has to read the TATs, call
    /// this, and write them all back, atomically (under one lock, say).
    ///
    /// It moves each key's debt from the quotas its set carries over from to their successors,
    /// then decides every quota of every part: allowed only if all allow, and then all
    /// charged; refused, nothing charged. `now` and the TATs are nanoseconds on the store's own
    /// monotonic clock (never 0 for a time that has come).
    ///
    /// # Errors
    ///
    /// [`QuotaError`](crate::QuotaError) when the ask can never pass (no part, too many
    /// quotas, a cost above a burst).
    ///
    /// # Panics
    ///
    /// If `tats` does not hold one TAT per state.
    pub fn apply(&self, tats: &mut [u64], now: u64) -> Result<Decision, crate::QuotaError> {
        self.check()?;
        assert_eq!(tats.len(), self.states().count(), "one TAT per state");
        if self.cost == 0 {
            // A peek changes nothing, not even where carried-over debt sits: it reads a copy.
            return Ok(self.decide_on(&mut tats.to_vec(), now));
        }
        Ok(self.decide_on(tats, now))
    }

    /// [`apply`](Self::apply), once the ask is known to be possible.
    fn decide_on(&self, tats: &mut [u64], now: u64) -> Decision {
        let mut at = 0;
        for (_, quotas) in self.parts() {
            let (current, earlier) =
                tats[at..at + quotas.len() + quotas.carried().len()].split_at_mut(quotas.len());
            carry_over(quotas, current, earlier, now);
            at += quotas.len() + quotas.carried().len();
        }
        // Every quota of every part, in order, with where its TAT is in `tats`.
        let mut steps = [Step {
            allowed: true,
            tat: 0,
            wait: 0,
        }; MAX_QUOTAS];
        let mut index = [0; MAX_QUOTAS];
        let mut gcras = [Gcra::from_nanos(1, 1); MAX_QUOTAS];
        let (mut n, mut at) = (0, 0);
        for (_, quotas) in self.parts() {
            for (i, quota) in quotas.as_slice().iter().enumerate() {
                index[n] = at + i;
                gcras[n] = Gcra::new(quota);
                steps[n] = gcras[n].step(tats[at + i], now, self.cost, nanos(self.max_wait));
                n += 1;
            }
            at += quotas.len() + quotas.carried().len();
        }
        crate::gcra::keep_in_windows(&gcras[..n], &mut steps[..n], now, self.cost);
        if self.cost > 0 && steps[..n].iter().all(|s| s.allowed) {
            for (step, &i) in steps[..n].iter().zip(&index[..n]) {
                tats[i] = step.tat;
            }
        }
        self.decision(&steps[..n], now)
    }

    /// Gives `cost` back on every quota of every part at `now`, on the TATs of its
    /// [`states`](Self::states): the arithmetic of [`Store::refund`](super::Store::refund). A
    /// calendar quota whose window ended since the charge ([`refunding`](Self::refunding))
    /// keeps it.
    ///
    /// # Panics
    ///
    /// If `tats` does not hold one TAT per state.
    pub fn give_back(&self, tats: &mut [u64], cost: u32, now: u64) {
        assert_eq!(tats.len(), self.states().count(), "one TAT per state");
        let mut at = 0;
        for (_, quotas) in self.parts() {
            for (i, quota) in quotas.as_slice().iter().enumerate() {
                if self.takes_back(quota, now) {
                    tats[at + i] = Gcra::new(quota).refund(tats[at + i], cost);
                }
            }
            at += quotas.len() + quotas.carried().len();
        }
    }

    /// Checks what makes an ask impossible: no part, too many quotas in all, a cost above a
    /// burst.
    pub(crate) fn check(&self) -> Result<(), crate::QuotaError> {
        if self.is_empty() {
            return Err(crate::QuotaError::Empty);
        }
        let quotas: usize = self.parts().map(|(_, quotas)| quotas.len()).sum();
        if quotas > MAX_QUOTAS {
            return Err(crate::QuotaError::TooMany(quotas));
        }
        self.parts()
            .try_for_each(|(_, quotas)| quotas.check_cost(self.cost))
    }

    /// The decision of `steps` (every quota of every part, in order) at `now`.
    pub(crate) fn decision(&self, steps: &[Step], now: u64) -> Decision {
        if let Some((_, quotas)) = self.single() {
            return Decision::from_steps(quotas, steps, now);
        }
        let mut decisions = [Decision::empty(); MAX_QUOTAS];
        let mut at = 0;
        for (i, (_, quotas)) in self.parts().enumerate() {
            decisions[i] = Decision::from_steps(quotas, &steps[at..at + quotas.len()], now);
            at += quotas.len();
        }
        Decision::of_parts(&decisions[..self.len()])
    }
}

impl<K: fmt::Debug> fmt::Debug for Ask<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = f.debug_list();
        for (key, quotas) in self.parts() {
            parts.entry(&(key, quotas));
        }
        parts.finish()?;
        write!(f, " cost {} wait ≤ {:?}", self.cost, self.max_wait)
    }
}

/// Whether `quota` takes back at `now` a charge made at `charged_at` (0: not said): a calendar
/// quota only within the window that counted it.
#[inline]
pub(crate) fn takes_back(quota: &Quota, charged_at: u64, now: u64) -> bool {
    match quota.calendar() {
        Some(calendar) if charged_at != 0 => calendar.end(charged_at) == calendar.end(now),
        _ => true,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Moves a key's debt under the quotas `quotas` replaced (`earlier`, their TATs) onto its
/// states under `quotas` (`current`), rescaled to each successor's window: the same fraction
/// of the window stays spent. The debt moved is taken off the earlier states, so that a key
/// that moves back (a tier change undone) carries its debt back.
pub(crate) fn carry_over(quotas: &Quotas, current: &mut [u64], earlier: &mut [u64], now: u64) {
    let mut seeds = [0u64; MAX_QUOTAS];
    for (carried, &tat) in quotas.carried().iter().zip(earlier.iter()) {
        let i = carried.index;
        let quota = &quotas.as_slice()[i];
        // Read where the quotas read their states: a calendar quota at its window's end (both
        // quotas follow one calendar: see `Quotas::carry_over_from`).
        let at = Gcra::new(quota).at(now);
        let debt = quota::rescaled_tat(tat, at, carried.quota.window_nanos(), quota.window_nanos())
            .saturating_sub(at);
        if debt > 0 {
            let base = if seeds[i] > 0 {
                seeds[i]
            } else {
                current[i].max(at)
            };
            seeds[i] = base.saturating_add(debt);
        }
    }
    for (tat, &seed) in current.iter_mut().zip(&seeds) {
        if seed > 0 {
            *tat = seed;
        }
    }
    for (carried, tat) in quotas.carried().iter().zip(earlier.iter_mut()) {
        if seeds[carried.index] > 0 {
            *tat = (*tat).min(now);
        }
    }
}
