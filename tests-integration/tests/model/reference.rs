//! The reference model: what a store promises, written to be read, not to be fast.
//!
//! A key has, under each quota, a bucket of `burst` tokens that refills one token every
//! `interval`. The model keeps, per key and quota, the instant at which that bucket will be
//! full again (its *theoretical arrival time*, TAT: the bucket is full whenever the TAT is not
//! in the future). A request of cost `c` pushes the TAT `c × interval` later; it fits when
//! the bucket then owes no more than its whole size (`window = interval × burst`). Nothing
//! here is shared with the crate: integers, a map, and the rules of the store contract
//! (`Store`'s docs) spelled out one by one.

use std::collections::HashMap;

/// A quota as the model sees it: a name, a refill interval in nanoseconds, a burst.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Bucket {
    pub name: &'static str,
    pub interval: u64,
    pub burst: u32,
}

impl Bucket {
    /// The time an empty bucket takes to fill.
    pub fn window(&self) -> u64 {
        self.interval * u64::from(self.burst)
    }
}

/// A set of quotas in force, and the quotas it carries each key's debt over from (a live
/// change or a tier move), each with the index of its successor in `buckets`.
#[derive(Clone, Debug)]
pub struct Set {
    pub buckets: Vec<Bucket>,
    pub carried: Vec<(usize, Bucket)>,
}

impl Set {
    /// A set that carries nothing over.
    pub fn new(buckets: Vec<Bucket>) -> Self {
        Self {
            buckets,
            carried: Vec::new(),
        }
    }

    /// `self`, replacing `previous`: each quota of `previous` (and what `previous` carried
    /// over from, most recent first) whose name this set also has, unless it is the same
    /// quota, up to eight in all.
    pub fn replacing(mut self, previous: &Set) -> Self {
        let earlier = previous
            .buckets
            .iter()
            .chain(previous.carried.iter().map(|(_, bucket)| bucket));
        for bucket in earlier {
            let Some(index) = self.buckets.iter().position(|b| b.name == bucket.name) else {
                continue;
            };
            let known =
                self.buckets[index] == *bucket || self.carried.iter().any(|(_, b)| b == bucket);
            if !known && self.carried.len() < 8 {
                self.carried.push((index, bucket.clone()));
            }
        }
        self
    }
}

/// What a caller learns from a decision: the numbers of the binding quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    /// Allowed: how long the request waits for its slot. Refused: 0.
    pub wait: u64,
    pub limit: u32,
    pub remaining: u32,
    pub reset_after: u64,
    pub retry_after: u64,
    /// The binding quota's index in its part's set, and the binding part.
    pub quota: usize,
    pub part: usize,
}

/// Why an ask can never pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impossible {
    /// No part at all.
    Empty,
    /// More than eight quotas in all.
    TooMany,
    /// A cost above some quota's burst.
    TooCostly,
}

/// One quota's verdict on one request.
#[derive(Clone, Copy, Debug)]
struct Verdict {
    fits: bool,
    /// The TAT after the request if it fits (or would, with a wait); the TAT as it was if not.
    tat: u64,
    /// Fits: how long until its slot. Does not: how long until it would fit.
    wait: u64,
}

/// Every key's TAT under every quota.
#[derive(Clone, Debug)]
pub struct Model {
    tats: HashMap<(String, Bucket), u64>,
    /// The store's unit of time in nanoseconds: debt carried over between quotas is rounded
    /// down to it (1 for the memory store, 1,000 for Redis, which counts in microseconds).
    resolution: u64,
}

impl Model {
    /// A model of a store whose unit of time is `resolution` nanoseconds.
    pub fn counting_in(resolution: u64) -> Self {
        Self {
            tats: HashMap::new(),
            resolution,
        }
    }

    fn tat(&self, key: &str, bucket: &Bucket) -> u64 {
        self.tats
            .get(&(key.to_owned(), bucket.clone()))
            .copied()
            .unwrap_or(0)
    }

    fn set_tat(&mut self, key: &str, bucket: &Bucket, tat: u64) {
        self.tats.insert((key.to_owned(), bucket.clone()), tat);
    }

    /// Decides a request of `cost` units for every part (a key and its set), all or nothing,
    /// at `now`, willing to wait up to `max_wait`.
    pub fn decide(
        &mut self,
        parts: &[(String, Set)],
        cost: u32,
        max_wait: u64,
        now: u64,
    ) -> Result<Answer, Impossible> {
        check(parts, cost)?;
        if cost == 0 {
            // A peek changes nothing, not even where carried-over debt sits.
            return Ok(self.clone().decide_charging(parts, 0, max_wait, now));
        }
        Ok(self.decide_charging(parts, cost, max_wait, now))
    }

    fn decide_charging(
        &mut self,
        parts: &[(String, Set)],
        cost: u32,
        max_wait: u64,
        now: u64,
    ) -> Answer {
        // First each key's debt moves from the quotas its set replaced to their successors.
        for (key, set) in parts {
            self.carry_over(key, set, now);
        }
        let verdicts: Vec<Vec<Verdict>> = parts
            .iter()
            .map(|(key, set)| {
                set.buckets
                    .iter()
                    .map(|bucket| verdict(bucket, self.tat(key, bucket), now, cost, max_wait))
                    .collect()
            })
            .collect();
        let all_fit = verdicts.iter().flatten().all(|v| v.fits);
        if all_fit && cost > 0 {
            for ((key, set), verdicts) in parts.iter().zip(&verdicts) {
                for (bucket, v) in set.buckets.iter().zip(verdicts) {
                    self.set_tat(key, bucket, v.tat);
                }
            }
        }
        let mut bindings: Vec<Binding> = parts
            .iter()
            .zip(&verdicts)
            .map(|((_, set), verdicts)| binding_of_set(set, verdicts, now))
            .collect();
        if bindings.len() == 1 {
            bindings.remove(0).answer()
        } else {
            binding_of_parts(bindings).answer()
        }
    }

    /// Moves `key`'s debt under the quotas `set` carries over from onto their successors:
    /// what is owed, as a fraction of the old window, is owed of the new one. The debt leaves
    /// the old state (which is left full), so that moving back carries it back.
    fn carry_over(&mut self, key: &str, set: &Set, now: u64) {
        let mut moved: Vec<Option<u64>> = vec![None; set.buckets.len()];
        for (index, old) in &set.carried {
            let old_tat = self.tat(key, old);
            if old_tat <= now {
                continue;
            }
            let owed = u128::from(old_tat - now) * u128::from(set.buckets[*index].window())
                / u128::from(old.window());
            let owed = owed as u64 / self.resolution * self.resolution;
            if owed == 0 {
                continue;
            }
            let from = match moved[*index] {
                Some(tat) => tat,
                None => self.tat(key, &set.buckets[*index]).max(now),
            };
            moved[*index] = Some(from + owed);
        }
        for (bucket, tat) in set.buckets.iter().zip(&moved) {
            if let Some(tat) = tat {
                self.set_tat(key, bucket, *tat);
            }
        }
        for (index, old) in &set.carried {
            if moved[*index].is_some() {
                let left = self.tat(key, old).min(now);
                self.set_tat(key, old, left);
            }
        }
    }

    /// Gives `cost` back on every quota of every part (not on what they carried over from),
    /// once for a state listed twice, as it was charged once.
    pub fn refund(&mut self, parts: &[(String, Set)], cost: u32) {
        let mut given: Vec<(&String, &Bucket)> = Vec::new();
        for (key, set) in parts {
            for bucket in &set.buckets {
                if given.contains(&(key, bucket)) {
                    continue;
                }
                given.push((key, bucket));
                let tat = self
                    .tat(key, bucket)
                    .saturating_sub(bucket.interval * u64::from(cost));
                self.set_tat(key, bucket, tat);
            }
        }
    }

    /// Forgets `key` under `set` and the quotas it carries over from.
    pub fn reset(&mut self, key: &str, set: &Set) {
        for bucket in set.buckets.iter().chain(set.carried.iter().map(|(_, b)| b)) {
            self.tats.remove(&(key.to_owned(), bucket.clone()));
        }
    }

    /// What a peek at `key` under `set` says at `now`.
    pub fn status(&self, key: &str, set: &Set, now: u64) -> Answer {
        self.clone()
            .decide_charging(&[(key.to_owned(), set.clone())], 0, 0, now)
    }

    /// Whether any key owes anything at `now` (for stores that forget full buckets).
    #[allow(dead_code)]
    pub fn tats(&self) -> impl Iterator<Item = (&(String, Bucket), &u64)> {
        self.tats.iter()
    }
}

fn check(parts: &[(String, Set)], cost: u32) -> Result<(), Impossible> {
    if parts.is_empty() {
        return Err(Impossible::Empty);
    }
    if parts
        .iter()
        .map(|(_, set)| set.buckets.len())
        .sum::<usize>()
        > 8
    {
        return Err(Impossible::TooMany);
    }
    let smallest = parts
        .iter()
        .flat_map(|(_, set)| &set.buckets)
        .map(|b| b.burst)
        .min()
        .unwrap_or(u32::MAX);
    if cost > smallest {
        return Err(Impossible::TooCostly);
    }
    Ok(())
}

/// One quota's verdict: the request's tokens are added to what the bucket owes (never less
/// than nothing); it fits when the bucket then owes no more than its window, or will within
/// `max_wait`.
fn verdict(bucket: &Bucket, tat: u64, now: u64, cost: u32, max_wait: u64) -> Verdict {
    let after = tat.max(now) + bucket.interval * u64::from(cost);
    if cost == 0 {
        // A peek takes nothing: it passes, at once.
        return Verdict {
            fits: true,
            tat: after,
            wait: 0,
        };
    }
    let fits_at = after.saturating_sub(bucket.window());
    let wait = fits_at.saturating_sub(now);
    if wait <= max_wait {
        Verdict {
            fits: true,
            tat: after,
            wait,
        }
    } else {
        Verdict {
            fits: false,
            tat,
            wait,
        }
    }
}

/// The numbers of `bucket` when it owes `debt` (nanoseconds until it is full): its burst,
/// what is left, until full, until one more token.
fn numbers(bucket: &Bucket, debt: u64) -> (u32, u32, u64, u64) {
    let window = bucket.window();
    let remaining = (window - debt.min(window)) / bucket.interval;
    (
        bucket.burst,
        remaining as u32,
        debt,
        refill_after(bucket, debt),
    )
}

/// Until one more token, when `bucket` owes `debt`: the part of an interval owed, or the
/// excess over the window and one interval.
pub fn refill_after(bucket: &Bucket, debt: u64) -> u64 {
    let (interval, window) = (bucket.interval, bucket.window());
    if debt == 0 {
        0
    } else if debt <= window {
        match debt % interval {
            0 => interval,
            part => part,
        }
    } else {
        debt - window + interval
    }
}

/// The binding quota of a decision, before its numbers are worked out.
#[derive(Clone, Debug)]
struct Binding {
    allowed: bool,
    /// Allowed: the wait for the slot; refused: until the request would fit.
    wait: u64,
    /// What the binding bucket owes when the request goes ahead (refused: now).
    debt: u64,
    bucket: Bucket,
    quota: usize,
    part: usize,
}

impl Binding {
    fn answer(&self) -> Answer {
        let (limit, remaining, reset_after, refill) = numbers(&self.bucket, self.debt);
        Answer {
            allowed: self.allowed,
            wait: if self.allowed { self.wait } else { 0 },
            limit,
            remaining,
            reset_after,
            retry_after: match (self.allowed, remaining) {
                (false, _) => self.wait,
                (true, 0) => refill,
                (true, _) => 0,
            },
            quota: self.quota,
            part: self.part,
        }
    }

    /// Fewest requests left first, then the longest until full.
    fn rank(&self) -> (u32, std::cmp::Reverse<u64>) {
        let (_, remaining, reset_after, _) = numbers(&self.bucket, self.debt);
        (remaining, std::cmp::Reverse(reset_after))
    }
}

/// One key's set: refused by the quota that waits longest (the last of equals); allowed, the
/// quota with the fewest requests left binds (then the longest until full, then the first),
/// seen from when the request goes ahead.
fn binding_of_set(set: &Set, verdicts: &[Verdict], now: u64) -> Binding {
    let mut refusing: Option<usize> = None;
    for (i, v) in verdicts.iter().enumerate() {
        if !v.fits && refusing.is_none_or(|r| v.wait >= verdicts[r].wait) {
            refusing = Some(i);
        }
    }
    if let Some(i) = refusing {
        return Binding {
            allowed: false,
            wait: verdicts[i].wait,
            debt: verdicts[i].tat.saturating_sub(now),
            bucket: set.buckets[i].clone(),
            quota: i,
            part: 0,
        };
    }
    let wait = verdicts.iter().map(|v| v.wait).max().unwrap_or(0);
    let at = now + wait;
    let candidates: Vec<Binding> = verdicts
        .iter()
        .enumerate()
        .map(|(i, v)| Binding {
            allowed: true,
            wait,
            debt: v.tat.saturating_sub(at),
            bucket: set.buckets[i].clone(),
            quota: i,
            part: 0,
        })
        .collect();
    first_fewest_left(candidates)
}

/// Several keys: refused by the part that waits longest (the last of equals); allowed, the
/// part with the fewest requests left binds (then the longest until full, then the first),
/// and the request waits for the latest slot of all, by when its bucket owes that much less.
fn binding_of_parts(parts: Vec<Binding>) -> Binding {
    let mut refusing: Option<usize> = None;
    for (i, b) in parts.iter().enumerate() {
        if !b.allowed && refusing.is_none_or(|r| b.wait >= parts[r].wait) {
            refusing = Some(i);
        }
    }
    if let Some(i) = refusing {
        return Binding {
            part: i,
            ..parts[i].clone()
        };
    }
    let wait = parts.iter().map(|b| b.wait).max().unwrap_or(0);
    let numbered: Vec<Binding> = parts
        .into_iter()
        .enumerate()
        .map(|(i, b)| Binding { part: i, ..b })
        .collect();
    let binding = first_fewest_left(numbered);
    let later = wait - binding.wait;
    Binding {
        wait,
        debt: binding.debt.saturating_sub(later),
        ..binding
    }
}

fn first_fewest_left(candidates: Vec<Binding>) -> Binding {
    let mut best = 0;
    for i in 1..candidates.len() {
        if candidates[i].rank() < candidates[best].rank() {
            best = i;
        }
    }
    candidates[best].clone()
}
