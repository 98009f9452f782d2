//! Deciding on atomic TATs: one compare-and-swap for a lone quota, all-or-nothing commits for
//! several, and carry-over between quota sets. Lock-free: these run under a shard's read lock
//! (or on the global slots), so they change TATs with atomic operations only.

use std::sync::atomic::AtomicU64;

use crate::gcra::{Gcra, Step};
use crate::quota::{MAX_CARRIED, MAX_QUOTAS};
use crate::store::table;
use crate::{Decision, Quotas};

pub(super) const NO_STEP: Step = Step {
    allowed: true,
    tat: 0,
    wait: 0,
};

/// Decides one request against a single quota's TAT: the classic compare-and-swap loop.
#[inline(always)]
pub(super) fn decide_one(
    gcra: Gcra,
    tat: &AtomicU64,
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
pub(super) fn decide_set(
    quotas: &Quotas,
    tats: &[&AtomicU64],
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
pub(super) fn commit_all(
    gcras: &[Gcra],
    tats: &[&AtomicU64],
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
    let mut current = [0u64; MAX_QUOTAS];
    let mut steps = [NO_STEP; MAX_QUOTAS];
    'again: loop {
        for i in 0..n {
            current[i] = table::load(tats[i]);
            steps[i] = gcras[i].step(current[i], now, cost, max_wait);
        }
        if cost == 0 || steps[..n].iter().any(|s| !s.allowed) {
            return steps;
        }
        for i in (0..n).filter(|&i| !repeated[i]) {
            if table::swap(tats[i], current[i], steps[i].tat).is_err() {
                for j in (0..i).filter(|&j| !repeated[j]) {
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
/// decision. A lost race moves nothing this time; the next decision moves it.
pub(super) fn carry_over(
    quotas: &Quotas,
    tats: &[&AtomicU64],
    earlier: &[Option<&AtomicU64>],
    now: u64,
) {
    if earlier.iter().all(Option::is_none) {
        return;
    }
    let mut current = [0; MAX_QUOTAS];
    for (value, tat) in current.iter_mut().zip(tats) {
        *value = table::load(tat);
    }
    let mut before = [0; MAX_CARRIED];
    for (value, tat) in before.iter_mut().zip(earlier) {
        *value = tat.map_or(0, table::load);
    }
    let (mut after, mut left) = (current, before);
    crate::store::carry_over(
        quotas,
        &mut after[..tats.len()],
        &mut left[..earlier.len()],
        now,
    );
    let mut moved = [false; MAX_QUOTAS];
    for (i, tat) in tats.iter().enumerate() {
        moved[i] = after[i] != current[i] && table::swap(tat, current[i], after[i]).is_ok();
    }
    for (j, carried) in quotas.carried().iter().enumerate() {
        if let (true, Some(tat)) = (moved[carried.index], earlier[j]) {
            let debt = before[j] - left[j];
            if debt > 0 {
                table::subtract(tat, debt);
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
