use std::time::Duration;

use crate::gcra::{Gcra, Status, Step};
use crate::Quotas;

/// A store's answer for one request: allowed or not, and what headers and callers need to know.
///
/// When several quotas apply, the numbers are those of the *binding* quota: the one that
/// denied (the longest wait among those that did), or, when all allowed, the one with the
/// fewest requests left. [`quota_index`](Self::quota_index) says which, and, for a request
/// asked across several keys ([`Ask::across`](super::Ask::across)), [`part`](Self::part) says
/// whose.
///
/// A `Decision` keeps the raw state and computes the numbers when asked, so a caller that
/// only wants to know "allowed?" pays for no division.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    /// Decided by this instance alone, while the shared store was away (its failure policy).
    alone: bool,
    part: u8,
    quota: u8,
    wait: u64,
    /// `tat - at`: how far the binding bucket is from full when the request goes ahead. For a
    /// calendar quota, what its window has used (`tat - end`).
    debt: u64,
    /// The store's time the binding state is read at: when the request goes ahead (or, denied,
    /// now); 0 for a decision made without the store. A calendar quota's window is the one
    /// holding it, and a refund is checked against it ([`Ask::refunding`](super::Ask::refunding)).
    at: u64,
    gcra: Gcra,
}

/// The debt of a state `tat` read at `at` (see [`Decision`]'s fields).
#[inline]
fn reading(gcra: &Gcra, tat: u64, at: u64) -> u64 {
    match gcra.window_end(at) {
        None => tat.saturating_sub(at),
        Some(end) => tat.saturating_sub(end),
    }
}

impl Decision {
    /// The decision of a single quota.
    #[inline]
    pub(crate) fn single(gcra: Gcra, step: Step, now: u64) -> Self {
        let at = if step.allowed {
            now.saturating_add(step.wait)
        } else {
            now
        };
        Self {
            allowed: step.allowed,
            alone: false,
            part: 0,
            quota: 0,
            wait: step.wait,
            debt: reading(&gcra, step.tat, at),
            at,
            gcra,
        }
    }

    /// The decision as a request in shadow mode goes: at once, whatever it would have waited.
    pub(crate) fn at_once(mut self) -> Self {
        if self.allowed {
            // Its slot is charged where it would have waited: the debt runs from then.
            if !self.gcra.is_calendar() {
                self.debt = self.debt.saturating_add(self.wait);
            }
            self.at = self.at.saturating_sub(self.wait);
        }
        self.wait = 0;
        self
    }

    /// A denial known without the store (a remembered one, a block): `wait` until the request
    /// passes, `debt` between now and the binding quota's TAT (for a calendar quota, its
    /// window spent, until `wait`).
    pub(crate) fn denied(quota: usize, wait: u64, debt: u64, gcra: Gcra, now: u64) -> Self {
        let debt = if gcra.is_calendar() {
            gcra.window_nanos()
        } else {
            debt
        };
        Self {
            allowed: false,
            alone: false,
            part: 0,
            quota: u8::try_from(quota).unwrap_or(u8::MAX),
            wait,
            debt,
            at: now,
            gcra,
        }
    }

    /// A placeholder, for arrays filled before use.
    pub(crate) const fn empty() -> Self {
        Self {
            allowed: true,
            alone: false,
            part: 0,
            quota: 0,
            wait: 0,
            debt: 0,
            at: 0,
            gcra: Gcra::from_nanos(1, 1),
        }
    }

    /// Combines the steps of every quota of a set, each decided at `now` with
    /// [`Gcra::step`]: a request is allowed only if every step allows it.
    ///
    /// # Panics
    ///
    /// If `steps` is empty or longer than `quotas`.
    pub(crate) fn from_steps(quotas: &Quotas, steps: &[Step], now: u64) -> Self {
        assert!(
            !steps.is_empty() && steps.len() <= quotas.len(),
            "one step per quota of the set"
        );
        let gcra = |i: usize| Gcra::new(&quotas.as_slice()[i]);
        let denied = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.allowed)
            .max_by_key(|(_, s)| s.wait);
        if let Some((i, step)) = denied {
            return Self {
                allowed: false,
                alone: false,
                part: 0,
                quota: i as u8,
                wait: step.wait,
                debt: reading(&gcra(i), step.tat, now),
                at: now,
                gcra: gcra(i),
            };
        }
        let wait = steps.iter().map(|s| s.wait).max().unwrap_or(0);
        let at = now.saturating_add(wait);
        let binding = if steps.len() == 1 {
            0
        } else {
            (0..steps.len())
                .min_by_key(|&i| {
                    let status = gcra(i).status(steps[i].tat, at);
                    (status.remaining(), u64::MAX - status.reset_after_nanos())
                })
                .unwrap_or(0)
        };
        Self {
            allowed: true,
            alone: false,
            part: 0,
            quota: binding as u8,
            wait,
            debt: reading(&gcra(binding), steps[binding].tat, at),
            at,
            gcra: gcra(binding),
        }
    }

    /// The decision of a request asked across several keys, from each part's decision, with
    /// the binding part's index in [`part`](Self::part): refused if any part refuses (the one
    /// that waits longest binds); allowed, the part with the fewest requests left binds, and the
    /// request waits for the latest slot.
    ///
    /// # Panics
    ///
    /// If `parts` is empty.
    pub(crate) fn of_parts(parts: &[Decision]) -> Decision {
        assert!(!parts.is_empty(), "at least one part");
        let part = |i: usize, decision: Decision| Decision {
            part: u8::try_from(i).unwrap_or(u8::MAX),
            ..decision
        };
        let alone = parts.iter().any(|d| d.alone);
        let part = |i: usize, decision: Decision| Decision {
            alone,
            ..part(i, decision)
        };
        let refused = parts
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.allowed)
            .max_by_key(|(_, d)| d.wait);
        if let Some((i, decision)) = refused {
            return part(i, *decision);
        }
        let wait = parts.iter().map(|d| d.wait).max().unwrap_or(0);
        let (i, binding) = parts
            .iter()
            .enumerate()
            .min_by_key(|(_, d)| {
                let status = d.status();
                (status.remaining(), u64::MAX - status.reset_after_nanos())
            })
            .map_or((0, parts[0]), |(i, d)| (i, *d));
        let later = wait - binding.wait;
        part(
            i,
            Decision {
                wait,
                // The request goes ahead later: the bucket is that much closer to full then
                // (a calendar window that much closer to its end).
                debt: if binding.gcra.is_calendar() {
                    binding.debt
                } else {
                    binding.debt.saturating_sub(later)
                },
                at: binding.at.saturating_add(later),
                ..binding
            },
        )
    }

    /// This decision, marked as made by this instance alone while the shared store was away.
    #[cfg(feature = "redis")]
    pub(crate) fn alone(self) -> Self {
        Self {
            alone: true,
            ..self
        }
    }

    /// Whether this instance decided alone, without the shared store, which was away: by a
    /// network store's failure policy (the Redis store's `OnFailure`), or refused
    /// once a lease was spent. Counted per layer in [`Stats::decided_alone`](crate::rate_limit::Stats::decided_alone)
    /// and `tollgate_rate_limit_decided_alone_total`.
    pub fn is_alone(&self) -> bool {
        self.alone
    }

    /// `decision`, refused by part `i` of a request asked across several keys.
    #[cfg(feature = "redis")]
    pub(crate) fn of_parts_refused(i: usize, decision: Decision) -> Decision {
        Decision {
            part: u8::try_from(i).unwrap_or(u8::MAX),
            ..decision
        }
    }

    /// Whether the request may pass (after [`wait`](Self::wait), in wait mode).
    #[inline]
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Allowed: how long the request waits for its reserved slot; zero in reject mode.
    /// Denied: zero.
    #[inline]
    pub fn wait(&self) -> Duration {
        if self.allowed {
            Duration::from_nanos(self.wait)
        } else {
            Duration::ZERO
        }
    }

    /// Time until the next request may pass. Denied: until this request (of its cost) would
    /// pass. Allowed: zero while requests remain, else until the next token.
    #[inline]
    pub fn retry_after(&self) -> Duration {
        if self.allowed {
            let status = self.status();
            if status.remaining() > 0 {
                Duration::ZERO
            } else {
                status.refill_after()
            }
        } else {
            Duration::from_nanos(self.wait)
        }
    }

    /// The binding quota's burst.
    #[inline]
    pub fn limit(&self) -> u32 {
        self.status().limit()
    }

    /// How many requests of cost 1 the binding quota would still admit.
    #[inline]
    pub fn remaining(&self) -> u32 {
        self.status().remaining()
    }

    /// Time until the binding quota's bucket is full again.
    #[inline]
    pub fn reset_after(&self) -> Duration {
        self.status().reset_after()
    }

    /// Index, in its part's [`Quotas`] set, of the quota these numbers describe.
    #[inline]
    pub fn quota_index(&self) -> usize {
        usize::from(self.quota)
    }

    /// Index of the part (the key, for a request asked across several) whose quota these
    /// numbers describe; 0 for a request of one key.
    #[inline]
    pub fn part(&self) -> usize {
        usize::from(self.part)
    }

    /// The store's time of the decision (0 for one made without the store).
    #[inline]
    pub(crate) fn decided_at(&self) -> u64 {
        self.at
    }

    /// The binding quota's state when the request goes ahead (or, denied, now).
    #[inline]
    pub(crate) fn status(&self) -> Status {
        match self.gcra.window_end(self.at) {
            None => self.gcra.status(self.debt, 0),
            // Made without the store (a block): its wait is all it knows of the window.
            Some(_) if self.at == 0 => self.gcra.status_of_window(self.debt, self.wait),
            Some(end) => self
                .gcra
                .status_of_window(self.debt, end.saturating_sub(self.at)),
        }
    }
}

impl std::fmt::Debug for Decision {
    /// The numbers callers read, not the raw state.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decision")
            .field("allowed", &self.allowed)
            .field("limit", &self.limit())
            .field("remaining", &self.remaining())
            .field("reset_after", &self.reset_after())
            .field("retry_after", &self.retry_after())
            .field("wait", &self.wait())
            .field("quota_index", &self.quota_index())
            .field("part", &self.part())
            .finish()
    }
}
