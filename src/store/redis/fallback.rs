//! Deciding locally while Redis is away ([`OnFailure::Local`](super::OnFailure::Local)),
//! without letting the fleet admit more than one limit.
//!
//! Three things keep N instances near one limit through an outage:
//!
//! - **A share, not the whole.** With [`fleet_size`](super::RedisStoreBuilder::fleet_size)
//!   N, each instance decides with 1/N of every quota: its rate divided by N, its burst
//!   divided by N (at least 1). Together they admit about one limit.
//! - **A warm start.** Every answer from Redis is mirrored into the local store (one local
//!   write beside a network round trip), so an outage starts from the debt Redis knew, not
//!   from full buckets: a hot key does not get a fresh burst because Redis went away.
//! - **A write-back.** Keys decided locally are remembered (up to [`MAX_OWED`] of them; when
//!   the list is full, a newcomer takes the place of one of the oldest keys that owes less, so
//!   a flood of one-request keys cannot push out a client that spent its limit), and when Redis
//!   answers again their local debt is written back as a max-merge of TATs (256 keys a call on
//!   one Redis, one on a cluster): the return brings no fresh burst either.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use super::script::Answer;
use crate::calendar::Calendar;
use crate::clock::Clock;
use crate::gcra::Gcra;
use crate::quota::MAX_QUOTAS;
use crate::store::{Ask, Decision, MemoryStore, StoreError};
use crate::{Quota, Quotas};

/// The most keys remembered for the write-back; beyond it, keys decided locally are not
/// written back (counted in [`Local::unrecorded`]).
pub(super) const MAX_OWED: usize = 100_000;

/// Quota sets remembered with their share; beyond it shares are computed per call.
const MAX_SHARES: usize = 1024;

/// The local store and what it owes Redis.
pub(super) struct Local {
    store: MemoryStore,
    /// The instances sharing the limits: set by the builder, or announced in Redis (see
    /// [`super::fleet`]).
    fleet: AtomicU32,
    /// Quota set identity → (the set, kept alive so its identity is not reused; the fleet's
    /// size it was divided by; its share).
    shares: RwLock<HashMap<usize, (Quotas, u32, Quotas)>>,
    /// First Redis key of a subject → what it owes, and the keys in the order they came.
    owed: Mutex<Ledger>,
    unrecorded: AtomicU64,
    /// Decisions made here since the store was built.
    decided: AtomicU64,
    /// How many keys the ledger holds, readable without its lock.
    owed_keys: AtomicUsize,
}

/// The keys decided locally, and their arrival order: when the list is full, a newcomer takes
/// the place of an earlier key that owes less than it does (a flood of one-request keys then
/// cannot push out a client that spent its limit).
#[derive(Default)]
struct Ledger {
    entries: HashMap<Vec<u8>, Owed>,
    order: std::collections::VecDeque<Vec<u8>>,
}

/// Earlier keys looked at for a place when the list is full.
const LOOK_AT: usize = 8;

/// A key decided locally: its Redis keys, and its local TATs per quota with each quota's
/// global and local windows.
#[derive(Clone)]
struct Owed {
    keys: Vec<Vec<u8>>,
    tats: [u64; MAX_QUOTAS],
    windows: [(u64, u64); MAX_QUOTAS],
    calendars: [Option<Calendar>; MAX_QUOTAS],
}

/// Which keys to take, by their first Redis key.
pub(super) type KeyFilter<'a> = dyn Fn(&[u8]) -> bool + 'a;

impl Owed {
    /// The largest share of a window this key owes at `now`, in millionths.
    fn owes(&self, now: u64) -> u64 {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let (_, local) = self.windows[i];
                rescale(self.tats[i].saturating_sub(now), local.max(1), 1_000_000)
            })
            .max()
            .unwrap_or(0)
    }
}

/// What to write back for one key: its Redis keys and the debt of each, in microseconds.
pub(super) struct Debt {
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) debts_us: Vec<u64>,
    /// Each quota's calendar code (0 for none): a calendar quota's debt counts from its
    /// window's end.
    pub(super) codes: Vec<u64>,
}

impl Local {
    pub(super) fn new(store: MemoryStore, fleet: u32) -> Self {
        Self {
            store,
            fleet: AtomicU32::new(fleet.max(1)),
            shares: RwLock::new(HashMap::new()),
            owed: Mutex::new(Ledger::default()),
            unrecorded: AtomicU64::new(0),
            decided: AtomicU64::new(0),
            owed_keys: AtomicUsize::new(0),
        }
    }

    /// This instance's share of `quotas`.
    pub(super) fn share(&self, quotas: &Quotas) -> Quotas {
        let fleet = self.fleet();
        if fleet == 1 {
            return quotas.clone();
        }
        let identity = quotas.identity();
        if let Some((_, of, share)) = read(&self.shares).get(&identity) {
            if *of == fleet {
                return share.clone();
            }
        }
        let share = share_of(quotas, fleet);
        let mut shares = write(&self.shares);
        if shares.len() < MAX_SHARES || shares.contains_key(&identity) {
            shares.insert(identity, (quotas.clone(), fleet, share.clone()));
        }
        share
    }

    /// How many instances share the limits.
    pub(super) fn fleet(&self) -> u32 {
        self.fleet.load(Ordering::Relaxed)
    }

    /// The fleet's size, as the instances announced it.
    pub(super) fn set_fleet(&self, instances: u32) {
        self.fleet.store(instances.max(1), Ordering::Relaxed);
    }

    /// Decides locally with this instance's share, and remembers the key for the write-back.
    pub(super) fn decide<K: Hash>(
        &self,
        key: &K,
        redis_keys: impl FnOnce() -> Vec<Vec<u8>>,
        quotas: &Quotas,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Decision, StoreError> {
        let share = self.share(quotas);
        let decision = self.store.decide_now(
            &Ask::new(key, &share)
                .with_cost(cost)
                .with_max_wait(max_wait),
        )?;
        // Denied keys too: their debt (mirrored from Redis) must survive a Redis that comes
        // back empty.
        if cost > 0 {
            self.remember(key, redis_keys(), quotas, &share);
        }
        self.decided.fetch_add(1, Ordering::Relaxed);
        crate::metrics::decided_locally("redis", self.keys());
        Ok(decision)
    }

    fn remember<K: Hash>(
        &self,
        key: &K,
        redis_keys: Vec<Vec<u8>>,
        quotas: &Quotas,
        share: &Quotas,
    ) {
        let tats = self.store.tats(key, share);
        let mut windows = [(0, 0); MAX_QUOTAS];
        let mut calendars = [None; MAX_QUOTAS];
        for ((window, calendar), (global, local)) in windows
            .iter_mut()
            .zip(&mut calendars)
            .zip(quotas.as_slice().iter().zip(share.as_slice()))
        {
            *window = (global.window_nanos(), local.window_nanos());
            *calendar = global.calendar();
        }
        let now = self.store.clock().now();
        let newcomer = Owed {
            keys: redis_keys,
            tats,
            windows,
            calendars,
        };
        let mut ledger = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        let ledger = &mut *ledger;
        if let Some(entry) = ledger.entries.get_mut(&newcomer.keys[0]) {
            entry.tats = newcomer.tats;
            return;
        }
        if ledger.entries.len() >= MAX_OWED {
            // Full: take the place of an earlier key that owes less, if one of the oldest does.
            let owes = newcomer.owes(now);
            let mut room = false;
            let mut looked = 0;
            while looked < LOOK_AT {
                let Some(oldest) = ledger.order.pop_front() else {
                    break;
                };
                match ledger.entries.get(&oldest) {
                    Some(entry) if entry.owes(now) < owes => {
                        ledger.entries.remove(&oldest);
                        room = true;
                        break;
                    }
                    Some(_) => {
                        ledger.order.push_back(oldest);
                        looked += 1;
                    }
                    // A key paid since: dropped from the order, not counted as looked at.
                    None => {}
                }
            }
            if !room {
                self.unrecorded.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.unrecorded.fetch_add(1, Ordering::Relaxed);
        }
        ledger.order.push_back(newcomer.keys[0].clone());
        ledger.entries.insert(newcomer.keys[0].clone(), newcomer);
        self.owed_keys
            .store(ledger.entries.len(), Ordering::Relaxed);
    }

    /// Mirrors Redis's answer for `key` into the local store, rescaled to the share.
    pub(super) fn mirror<K: Hash>(&self, key: &K, quotas: &Quotas, answer: &Answer) {
        let share = self.share(quotas);
        let now = self.store.clock().now();
        let mut tats = [0; MAX_QUOTAS];
        for (i, (tat, (global, local))) in tats
            .iter_mut()
            .zip(quotas.as_slice().iter().zip(share.as_slice()))
            .enumerate()
        {
            // A calendar quota's debt counts from its window's end (see `crate::calendar`).
            let read_at = |now| Gcra::new(global).at(now);
            let debt_ns = answer
                .tat_us(i)
                .saturating_mul(1000)
                .saturating_sub(read_at(answer.now_us.saturating_mul(1000)));
            if debt_ns > 0 {
                *tat = read_at(now).saturating_add(rescale(
                    debt_ns,
                    global.window_nanos(),
                    local.window_nanos(),
                ));
            }
        }
        self.store.set_tats(key, &share, &tats[..quotas.len()]);
    }

    pub(super) fn refund<K: Hash>(&self, key: &K, quotas: &Quotas, cost: u32, charged_at: u64) {
        self.store
            .give_back(key, &self.share(quotas), cost, charged_at);
    }

    pub(super) fn reset<K: Hash>(&self, key: &K, quotas: &Quotas) {
        self.store.reset(key, &self.share(quotas));
    }

    /// Takes what the keys decided locally owe Redis now: each one's remaining local debt,
    /// rescaled from the share to the whole quota.
    /// Only the keys whose first Redis key passes `which` are taken.
    /// `None` takes them all, in one swap under the lock (requests deciding locally meanwhile
    /// wait for nothing more).
    pub(super) fn take_debts(&self, which: Option<&KeyFilter<'_>>) -> Vec<Debt> {
        let taken: Vec<Owed> = match which {
            None => {
                let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
                let all = std::mem::take(&mut *owed);
                self.owed_keys.store(0, Ordering::Relaxed);
                all.entries.into_values().collect()
            }
            Some(which) => {
                let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
                let keys: Vec<Vec<u8>> = (owed.entries.keys())
                    .filter(|k| which(k))
                    .cloned()
                    .collect();
                let taken = keys.iter().filter_map(|k| owed.entries.remove(k)).collect();
                let Ledger { entries, order } = &mut *owed;
                order.retain(|k| entries.contains_key(k));
                self.owed_keys.store(entries.len(), Ordering::Relaxed);
                taken
            }
        };
        crate::metrics::local_keys("redis", self.keys());
        self.debts_of(taken)
    }

    /// What the key whose first Redis key is `first_key` owes Redis, if it was decided here,
    /// left in the ledger: Redis must hear it before it decides that key again, and the key
    /// owes it until [`Local::paid`] says it was written (a write cancelled or failed midway
    /// loses nothing; writing it twice changes nothing, as the write-back is a max-merge).
    pub(super) fn debt_of(&self, first_key: &[u8]) -> Option<(Debt, [u64; MAX_QUOTAS])> {
        let owed = {
            let ledger = self.owed.lock().unwrap_or_else(|e| e.into_inner());
            ledger.entries.get(first_key)?.clone()
        };
        let tats = owed.tats;
        let debt = self.debts_of(vec![owed]).pop();
        match debt {
            Some(debt) => Some((debt, tats)),
            // Nothing left to owe (paid off by time): forget the key.
            None => {
                self.paid(first_key, tats);
                None
            }
        }
    }

    /// The debt [`Local::debt_of`] gave for `first_key` was written: the key owes nothing more,
    /// unless it was decided here again since (its state moved on from `tats`).
    pub(super) fn paid(&self, first_key: &[u8], tats: [u64; MAX_QUOTAS]) {
        {
            let mut ledger = self.owed.lock().unwrap_or_else(|e| e.into_inner());
            if ledger
                .entries
                .get(first_key)
                .is_none_or(|owed| owed.tats != tats)
            {
                return;
            }
            ledger.entries.remove(first_key);
            // `order` keeps the key until a newcomer looks for a place (it skips keys gone),
            // or until it holds twice the keys.
            let Ledger { entries, order } = &mut *ledger;
            if order.len() > 2 * entries.len() + 64 {
                order.retain(|k| entries.contains_key(k));
            }
            self.owed_keys.store(entries.len(), Ordering::Relaxed);
        }
        crate::metrics::local_keys("redis", self.keys());
    }

    /// Each key's remaining local debt now, rescaled from the share to the whole quota.
    fn debts_of(&self, taken: Vec<Owed>) -> Vec<Debt> {
        let now = self.store.clock().now();
        taken
            .into_iter()
            .filter_map(|owed| {
                let debts_us: Vec<u64> = owed
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, _)| {
                        let (global, local) = owed.windows[i];
                        // A calendar quota's debt counts from its window's end.
                        let at = owed.calendars[i].map_or(now, |calendar| calendar.end(now));
                        rescale(owed.tats[i].saturating_sub(at), local, global) / 1000
                    })
                    .collect();
                let codes = owed.calendars[..owed.keys.len()]
                    .iter()
                    .map(|calendar| calendar.map_or(0, Calendar::code))
                    .collect();
                debts_us.iter().any(|&d| d > 0).then_some(Debt {
                    keys: owed.keys,
                    debts_us,
                    codes,
                })
            })
            .collect()
    }

    /// Decisions made here since the store was built.
    pub(super) fn decided(&self) -> u64 {
        self.decided.load(Ordering::Relaxed)
    }

    /// Keys decided here whose debt waits to be written back.
    pub(super) fn keys(&self) -> usize {
        self.owed_keys.load(Ordering::Relaxed)
    }

    /// Whether any key decided here waits to be written back.
    #[inline]
    pub(super) fn owes(&self) -> bool {
        self.keys() > 0
    }

    /// Keys decided locally that could not be remembered for the write-back ([`MAX_OWED`]).
    pub(super) fn unrecorded(&self) -> u64 {
        self.unrecorded.load(Ordering::Relaxed)
    }
}

/// `debt` in a window of `from` nanoseconds, as the same fraction of a window of `to`.
fn rescale(debt: u64, from: u64, to: u64) -> u64 {
    if from == to || from == 0 {
        return debt;
    }
    u64::try_from(u128::from(debt) * u128::from(to) / u128::from(from)).unwrap_or(u64::MAX)
}

/// `1/fleet` of each quota: the interval times `fleet`, the burst divided by it (at least 1).
/// A quota that cannot be divided (an interval that would overflow) is kept whole.
fn share_of(quotas: &Quotas, fleet: u32) -> Quotas {
    let shared = quotas.as_slice().iter().map(|quota| {
        if quota.calendar().is_some() {
            return quota.share_of_calendar(fleet);
        }
        quota
            .interval()
            .checked_mul(fleet)
            .and_then(|interval| Quota::every(interval).ok())
            .and_then(|q| q.with_burst((quota.burst() / fleet).max(1)).ok())
            .and_then(|q| q.named(quota.name()).ok())
            .unwrap_or_else(|| quota.clone())
    });
    Quotas::new(shared).unwrap_or_else(|_| quotas.clone())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_gets_its_share_of_every_quota() {
        let quotas = Quotas::new([
            Quota::per_second(10)
                .unwrap()
                .with_burst(10)
                .unwrap()
                .named("a")
                .unwrap(),
            Quota::per_minute(3).unwrap().named("b").unwrap(),
        ])
        .unwrap();
        let local = Local::new(MemoryStore::new(), 4);
        let share = local.share(&quotas);
        let [a, b] = share.as_slice() else { panic!() };
        assert_eq!(
            (a.interval(), a.burst(), a.name()),
            (Duration::from_millis(400), 2, "a")
        );
        assert_eq!(
            (b.interval(), b.burst(), b.name()),
            (Duration::from_secs(80), 1, "b")
        );
        assert!(local.share(&quotas).same_set(&share), "remembered");
        assert!(Local::new(MemoryStore::new(), 1)
            .share(&quotas)
            .same_set(&quotas));
    }

    #[test]
    fn a_flood_of_one_request_keys_does_not_push_out_a_key_that_spent_its_limit() {
        let local = Local::new(MemoryStore::new(), 1);
        let quotas = Quotas::from(Quota::per_minute(10).unwrap());
        let decide = |key: &str| {
            let name = key.as_bytes().to_vec();
            local
                .decide(&key, || vec![name], &quotas, 1, Duration::ZERO)
                .unwrap()
        };
        for i in 0..MAX_OWED {
            decide(&format!("flood{i}"));
        }
        for _ in 0..10 {
            decide("honest");
        }
        let debts = local.take_debts(None);
        assert_eq!(debts.len(), MAX_OWED);
        let honest = debts
            .iter()
            .find(|d| d.keys[0] == b"honest")
            .expect("written back");
        assert!(honest.debts_us[0] > 9 * 6_000_000, "{:?}", honest.debts_us);
    }

    #[test]
    fn debts_keep_their_fraction_of_the_window() {
        assert_eq!(rescale(500, 1000, 4000), 2000);
        assert_eq!(rescale(500, 1000, 1000), 500);
        assert_eq!(rescale(u64::MAX, 1, u64::MAX), u64::MAX);
    }
}
