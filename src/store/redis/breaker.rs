//! When to stop asking Redis: after [`TRIP_AFTER`] failed calls in a row, requests are decided
//! by the failure policy at once, without paying the timeout, until a background probe gets
//! [`CLOSE_AFTER`] quick answers in a row (each within half the timeout), or answers to every
//! probe for 5 s however slow. A Redis in a brown-out (replies held 30–70 ms against a 50 ms
//! timeout) therefore trips the breaker once and holds it while it lasts, instead of closing it
//! at each answer that made it in time.
//!
//! On a cluster, one node failing must not send the keys of the healthy nodes to the policy:
//! the breaker is kept per group of 64 consecutive hash slots (256 groups), and each group's
//! probe asks the node that serves its slots now, so it answers once a replica has taken
//! over. A failure counts for every group of the node that serves it (by the batcher's slot
//! map), so that three failures of a node trip all of its keys at once. On a single Redis
//! there is one group.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Failed calls in a row after which requests stop paying the timeout.
pub(super) const TRIP_AFTER: u32 = 3;

/// Quick probe answers in a row after which a tripped group's requests go to Redis again.
pub(super) const CLOSE_AFTER: u32 = 3;

use super::slots::SLOTS;

/// Groups of consecutive slots with a breaker each, on a cluster.
const GROUPS: usize = 256;

pub(super) struct Breaker {
    groups: Box<[Group]>,
}

#[derive(Default)]
struct Group {
    failures_in_a_row: AtomicU32,
    probing: AtomicBool,
}

impl Breaker {
    pub(super) fn new(cluster: bool) -> Self {
        let groups = if cluster { GROUPS } else { 1 };
        Self {
            groups: (0..groups).map(|_| Group::default()).collect(),
        }
    }

    /// The group of a key in hash slot `slot` (asked only on a cluster).
    pub(super) fn group_of(&self, slot: impl FnOnce() -> u16) -> usize {
        if self.groups.len() == 1 {
            return 0;
        }
        usize::from(slot()) * GROUPS / SLOTS
    }

    /// How many groups there are.
    pub(super) fn len(&self) -> usize {
        self.groups.len()
    }

    /// The first hash slot of `group`.
    pub(super) fn first_slot(&self, group: usize) -> u16 {
        u16::try_from(group * SLOTS / self.groups.len()).unwrap_or(0)
    }

    /// Whether the group counts as down: its requests are decided by the policy at once.
    pub(super) fn is_down(&self, group: usize) -> bool {
        self.groups[group].failures_in_a_row.load(Ordering::Acquire) >= TRIP_AFTER
    }

    /// A failed call; `true` when this one tripped the group (the caller starts a probe).
    pub(super) fn failed(&self, group: usize) -> bool {
        self.groups[group]
            .failures_in_a_row
            .fetch_add(1, Ordering::AcqRel)
            + 1
            == TRIP_AFTER
    }

    /// A call Redis answered: its group's failures in a row end, unless the group is down.
    /// Only the group's probe brings a down group back ([`Breaker::close`]): a call sent
    /// before the trip that a slow Redis answers late says little, and closing on it made a
    /// brown-out (replies held 30–70 ms) trip the breaker again and again.
    pub(super) fn answered(&self, group: usize) {
        let failures = &self.groups[group].failures_in_a_row;
        let seen = failures.load(Ordering::Relaxed);
        if seen != 0 && seen < TRIP_AFTER {
            // A failure or a trip meanwhile wins.
            let _ = failures.compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// The group's probe found Redis healthy again: its requests go to Redis.
    pub(super) fn close(&self, group: usize) {
        self.groups[group]
            .failures_in_a_row
            .store(0, Ordering::Release);
    }

    /// Claims the group's probe; `false` if one runs already.
    pub(super) fn start_probe(&self, group: usize) -> bool {
        !self.groups[group].probing.swap(true, Ordering::AcqRel)
    }

    pub(super) fn end_probe(&self, group: usize) {
        self.groups[group].probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_runs_of_64_slots() {
        let breaker = Breaker::new(true);
        assert_eq!(breaker.group_of(|| 0), 0);
        assert_eq!(breaker.group_of(|| 63), 0);
        assert_eq!(breaker.group_of(|| 12182), 12182 / 64);
        assert_eq!(breaker.group_of(|| 16383), 255);
        assert_eq!(Breaker::new(false).group_of(|| unreachable!()), 0);
    }

    #[test]
    fn a_group_trips_after_three_failures_and_alone() {
        let breaker = Breaker::new(true);
        assert!(!breaker.failed(7) && !breaker.failed(7));
        assert!(breaker.failed(7), "the third trips it");
        assert!(!breaker.failed(7), "once");
        assert!(breaker.is_down(7) && !breaker.is_down(8));
        breaker.answered(7);
        assert!(
            breaker.is_down(7),
            "a late answer does not close a tripped group"
        );
        breaker.close(7);
        assert!(!breaker.is_down(7));
    }

    #[test]
    fn an_answer_ends_failures_in_a_row_below_the_trip() {
        let breaker = Breaker::new(false);
        assert!(!breaker.failed(0) && !breaker.failed(0));
        breaker.answered(0);
        assert!(
            !breaker.failed(0) && !breaker.failed(0),
            "counted from zero again"
        );
        assert!(breaker.failed(0));
    }
}
