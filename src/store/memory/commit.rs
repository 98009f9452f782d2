//! Deciding on atomic TATs: one compare-and-swap for a lone quota, all-or-nothing commits for
//! several, and carry-over between quota sets. Lock-free: these run under a shard's read lock
//! (or on the global slots), so they change TATs with atomic operations only.

use crate::gcra::{Gcra, Step};
use crate::quota::{MAX_CARRIED, MAX_QUOTAS};
use crate::store::table::{self, Tat};
use crate::{Decision, Quotas};

pub(super) const NO_STEP: Step = Step {
    allowed: true,
    tat: 0,
    wait: 0,
};

/// Decides one request against a single quota's TAT: the classic compare-and-swap loop.
#[inline(always)]
pub(super) fn decide_one<T: Tat>(
    gcra: Gcra,
    tat: &T,
    now: u64,
    cost: u32,
    max_wait: u64,
) -> Decision {
    let mut current = table::load(tat);
    loop {
        let step = gcra.step(current, now, cost, max_wait);
        if !step.allowed {
            return Decision::single(gcra, step, now);
        }
        match table::swap(tat, current, step.tat) {
            Ok(()) => return Decision::single(gcra, step, now),
            Err(actual) => current = actual,
        }
    }
}

/// Decides one request of `cost` against every quota of `quotas` (their TATs `tats`), all
/// charged or none.
pub(super) fn decide_set<T: Tat>(
    quotas: &Quotas,
    tats: &[&T],
    now: u64,
    cost: u32,
    max_wait: u64,
) -> Decision {
    let mut gcras = [Gcra::from_nanos(1, 1); MAX_QUOTAS];
    for (gcra, quota) in gcras.iter_mut().zip(quotas) {
        *gcra = Gcra::new(quota);
    }
    let steps = commit_all(&gcras[..tats.len()], tats, now, cost, max_wait);
    Decision::from_steps(quotas, &steps[..tats.len()], now)
}

/// Decides one request against every TAT of `tats` (one per GCRA of `gcras`) and charges all
/// or none: read all, decide all, then commit each with a compare-and-swap. If another
/// request changed a TAT in between, undo the commits made so far and start again.
pub(super) fn commit_all<T: Tat>(
    gcras: &[Gcra],
    tats: &[&T],
    now: u64,
    cost: u32,
    max_wait: u64,
) -> [Step; MAX_QUOTAS] {
    let n = tats.len();
    // One state listed twice (the same key and quota in two parts of a decision) is charged
    // once, as a single Redis does: its second listing is decided but not committed.
    let mut repeated = [false; MAX_QUOTAS];
    for j in 1..n {
        repeated[j] = tats[..j].iter().any(|tat| std::ptr::eq(*tat, tats[j]));
    }
    // Commits go in address order, whatever order the ask lists its states in: of two asks
    // over the same states, the one that charges the first state first cannot be undone by
    // the other, so a race leaves one of them standing (in the asks' orders, both could undo
    // each other and both be refused on the other's half-commit).
    let mut order = [0usize; MAX_QUOTAS];
    for (i, slot) in order.iter_mut().enumerate().take(n) {
        *slot = i;
    }
    order[..n].sort_unstable_by_key(|&i| std::ptr::from_ref(tats[i]).addr());
    let mut current = [0u64; MAX_QUOTAS];
    let mut steps = [NO_STEP; MAX_QUOTAS];
    'again: loop {
        for i in 0..n {
            current[i] = table::load(tats[i]);
            steps[i] = gcras[i].step(current[i], now, cost, max_wait);
        }
        crate::gcra::keep_in_windows(&gcras[..n], &mut steps[..n], now, cost);
        if cost == 0 || steps[..n].iter().any(|s| !s.allowed) {
            return steps;
        }
        let commits = order[..n].iter().copied().filter(|&i| !repeated[i]);
        for (done, i) in commits.clone().enumerate() {
            if table::swap(tats[i], current[i], steps[i].tat).is_err() {
                for j in commits.take(done) {
                    table::subtract(tats[j], gcras[j].charge(cost));
                }
                continue 'again;
            }
        }
        return steps;
    }
}

/// Moves a key's debt under the quotas `quotas` replaced (`earlier`, where tracked) onto its
/// states under `quotas` (`tats`), rescaled ([`crate::store::carry_over`]); the debt moved is
/// taken off the earlier states, so that a key that moves back (a tier change undone) carries
/// its debt back, and a charge that lands on an earlier state meanwhile is moved by the next
/// decision.
///
/// Each debt is added to its successor first, then claimed from the earlier state with a
/// compare-and-swap that leaves it full; a lost claim (another request moved it, or charged
/// the earlier state) takes the addition back. So a debt moves once however many requests
/// race to move it, and no request passes on a successor before the debt it carries lands
/// there (a racing one may be refused on a debt about to be taken back: never more admitted).
pub(super) fn carry_over<T: Tat>(quotas: &Quotas, tats: &[&T], earlier: &[Option<&T>], now: u64) {
    let mut moved = [false; MAX_QUOTAS];
    for (carried, tat) in quotas.carried().iter().zip(earlier) {
        let Some(tat) = *tat else { continue };
        let before = table::load(tat);
        let quota = &quotas.as_slice()[carried.index];
        // Read where the quotas read their states: a calendar quota at its window's end (both
        // quotas follow one calendar: see `Quotas::carry_over_from`).
        let at = Gcra::new(quota).at(now);
        let debt = crate::quota::rescaled_tat(
            before,
            at,
            carried.quota.window_nanos(),
            quota.window_nanos(),
        )
        .saturating_sub(at);
        if debt == 0 {
            continue;
        }
        let successor = tats[carried.index];
        successor.update_tat(|t| t.max(at).saturating_add(debt));
        if table::swap(tat, before, now).is_ok() {
            moved[carried.index] = true;
        } else {
            table::subtract(successor, debt);
        }
    }
    // An earlier state of a successor that took debt is left full, even one whose debt was too
    // small to move (as Redis drops the earlier keys of a quota that took debt).
    for (carried, tat) in quotas.carried().iter().zip(earlier) {
        if let (true, Some(tat)) = (moved[carried.index], *tat) {
            let before = table::load(tat);
            if before > now {
                let _ = table::swap(tat, before, now);
            }
        }
    }
}

/// The TATs a status reads: the states of `quotas` (`tats`, at `now`), with what they would
/// carry over from `earlier`.
pub(super) fn with_carried(quotas: &Quotas, tats: &mut [u64], earlier: &[u64], now: u64) {
    let mut left = [0; MAX_CARRIED];
    left[..earlier.len()].copy_from_slice(earlier);
    crate::store::carry_over(quotas, tats, &mut left[..earlier.len()], now);
}

/// Every interleaving of two requests on the lock-free decisions, model-checked with loom
/// (loom's atomics stand in for the table's through [`Tat`]): no lost update, no partial
/// commit, no double refund, debt carried over once.
#[cfg(test)]
mod interleavings {
    use std::time::Duration;

    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    use super::*;
    use crate::Quota;

    impl Tat for AtomicU64 {
        fn load_tat(&self) -> u64 {
            self.load(Ordering::Acquire)
        }

        fn swap_tat(&self, current: u64, new: u64) -> Result<(), u64> {
            self.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
                .map(drop)
        }

        fn update_tat(&self, mut change: impl FnMut(u64) -> u64) {
            let _ = self.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(change(t)));
        }
    }

    const NOW: u64 = 1_000;
    const INTERVAL: u64 = 10;

    fn gcra(burst: u32) -> Gcra {
        Gcra::from_nanos(INTERVAL, INTERVAL * u64::from(burst))
    }

    /// Every interleaving, without a bound on preemptions (the scenarios are small).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        loom::model(f);
    }

    #[test]
    fn two_requests_for_the_last_token_admit_one() {
        model(|| {
            let tat = Arc::new(AtomicU64::new(0));
            let other = Arc::clone(&tat);
            let t = thread::spawn(move || decide_one(gcra(1), &*other, NOW, 1, 0).is_allowed());
            let here = decide_one(gcra(1), &*tat, NOW, 1, 0).is_allowed();
            let there = t.join().unwrap();
            assert!(
                here ^ there,
                "one of the two requests passes: {here} {there}"
            );
            assert_eq!(tat.load(Ordering::Acquire), NOW + INTERVAL);
        });
    }

    /// Two asks across the same two keys, in opposite orders: each key charged by both (burst
    /// 2) or by exactly one (burst 1), never half an ask.
    fn across_two_keys(burst: u32) {
        model(move || {
            // One allocation: the commit order (by address) is the same in every run.
            let keys = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
            let theirs = Arc::clone(&keys);
            let gcras = [gcra(burst), gcra(burst)];
            let t = thread::spawn(move || {
                commit_all(&gcras, &[&theirs[1], &theirs[0]], NOW, 1, 0)[..2]
                    .iter()
                    .all(|s| s.allowed)
            });
            let here = commit_all(&gcras, &[&keys[0], &keys[1]], NOW, 1, 0)[..2]
                .iter()
                .all(|s| s.allowed);
            let there = t.join().unwrap();
            let passed = u64::from(here) + u64::from(there);
            assert_eq!(passed, u64::from(burst.min(2)), "{here} {there}");
            for tat in keys.iter() {
                assert_eq!(tat.load(Ordering::Acquire), NOW + passed * INTERVAL);
            }
        });
    }

    #[test]
    fn asks_across_keys_commit_all_or_nothing_when_one_fits() {
        across_two_keys(1);
    }

    #[test]
    fn asks_across_keys_commit_both_when_both_fit() {
        across_two_keys(2);
    }

    /// Three asks across three keys, each pair sharing one (burst 1): at most one passes, and
    /// every key holds exactly the charges of the asks that passed.
    #[test]
    fn three_asks_over_overlapping_keys_never_half_commit() {
        let mut builder = loom::model::Builder::new();
        // Three threads with retry loops: bounded, as loom advises for larger scenarios.
        builder.preemption_bound = Some(3);
        builder.check(|| {
            // One allocation, so that the states' addresses (the commit order) keep their
            // order from one explored run to the next.
            let keys = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
            let asks = [[0, 1], [1, 2], [2, 0]];
            let run = |keys: Arc<[AtomicU64; 3]>, ask: [usize; 2]| {
                let tats = [&keys[ask[0]], &keys[ask[1]]];
                commit_all(&[gcra(1), gcra(1)], &tats, NOW, 1, 0)[..2]
                    .iter()
                    .all(|s| s.allowed)
            };
            let threads: Vec<_> = asks[1..]
                .iter()
                .map(|&ask| {
                    let keys = keys.clone();
                    thread::spawn(move || run(keys, ask))
                })
                .collect();
            let mut passed = vec![run(keys.clone(), asks[0])];
            passed.extend(threads.into_iter().map(|t| t.join().unwrap()));
            assert!(passed.iter().filter(|p| **p).count() <= 1, "{passed:?}");
            for (k, tat) in keys.iter().enumerate() {
                let charges = asks
                    .iter()
                    .zip(&passed)
                    .filter(|(ask, passed)| **passed && ask.contains(&k))
                    .count() as u64;
                let tat = tat.load(Ordering::Acquire).max(NOW);
                assert_eq!(tat, NOW + charges * INTERVAL, "key {k}: {passed:?}");
            }
        });
    }

    /// A refund racing with a decision that rolls back half a commit: each subtraction lands
    /// once.
    #[test]
    fn a_refund_racing_a_rolled_back_commit_lands_once() {
        model(|| {
            // `a` owes one request (to be given back), `b` is full: an ask across both fails
            // on `b` after charging `a`, and gives `a` back.
            let a = Arc::new(AtomicU64::new(NOW + INTERVAL));
            let b = Arc::new(AtomicU64::new(NOW + INTERVAL));
            let a2 = Arc::clone(&a);
            let t = thread::spawn(move || table::subtract(&*a2, INTERVAL));
            let steps = commit_all(&[gcra(2), gcra(1)], &[&*a, &*b], NOW, 1, 0);
            t.join().unwrap();
            assert!(!steps[1].allowed);
            assert_eq!(
                a.load(Ordering::Acquire),
                NOW,
                "the refund, and nothing else"
            );
            assert_eq!(b.load(Ordering::Acquire), NOW + INTERVAL);
        });
    }

    fn quota(interval_ns: u64) -> Quota {
        Quota::every(Duration::from_nanos(interval_ns))
            .and_then(|q| q.with_burst(4))
            .and_then(|q| q.named("a"))
            .unwrap()
    }

    /// Two requests of one key right after its quota changed both carry its debt over: it
    /// moves once.
    #[test]
    fn debt_carried_over_by_two_requests_moves_once() {
        model(|| {
            let old = Quotas::new([quota(INTERVAL)]).unwrap();
            let new = Quotas::new([quota(2 * INTERVAL)])
                .unwrap()
                .carry_over_from(&old);
            // Two requests' worth under the old quota: half its window, so half the new one.
            let (earlier, tat) = (
                Arc::new(AtomicU64::new(NOW + 2 * INTERVAL)),
                Arc::new(AtomicU64::new(0)),
            );
            let (earlier2, tat2, new2) = (Arc::clone(&earlier), Arc::clone(&tat), new.clone());
            let t = thread::spawn(move || carry_over(&new2, &[&*tat2], &[Some(&*earlier2)], NOW));
            carry_over(&new, &[&*tat], &[Some(&*earlier)], NOW);
            t.join().unwrap();
            assert_eq!(
                tat.load(Ordering::Acquire),
                NOW + 4 * INTERVAL,
                "half the new window"
            );
            assert!(
                earlier.load(Ordering::Acquire) <= NOW,
                "the old state is left full"
            );
        });
    }
}
