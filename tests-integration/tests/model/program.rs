//! Random programs of store operations, and the runner that plays one against a subject (a
//! store, the direct limiter, the layer) and against the reference model side by side.

use std::fmt;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use tollgate::{Quota, Quotas};

use crate::reference::{Answer, Bucket, Impossible, Model, Set};

/// A quota of a program: a refill interval in microseconds (so that a store on a microsecond
/// clock, Redis, runs the same programs) and a burst.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: &'static str,
    pub interval_us: u64,
    pub burst: u32,
}

/// What a program does, one step at a time.
#[derive(Clone, Debug)]
pub enum Op {
    /// Time passes, in microseconds.
    Pass(u64),
    /// `key` asks for `cost` under its quotas of `version`, waiting up to `max_wait_us`.
    Ask {
        key: u8,
        version: u8,
        cost: u32,
        max_wait_us: u64,
        /// Gives up at once if it must wait: its slot is given back.
        abandon: bool,
    },
    /// Several parts at once (a key and the version of its quotas; key [`EVERYONE`] is the
    /// key all share, under [`Program::everyone`]), all or nothing.
    Across {
        parts: Vec<(u8, u8)>,
        cost: u32,
        max_wait_us: u64,
    },
    /// Gives `cost` back of the allowed ask `back` places before the latest one.
    Refund { back: u8, cost: u32 },
    /// Forgets `key` under `version` (and what it carries over from).
    Reset { key: u8, version: u8 },
    /// Peeks at `key` under `version`.
    Status { key: u8, version: u8 },
}

/// The key every client shares in [`Op::Across`].
pub const EVERYONE: u8 = 9;

/// A program: the versions of the quotas keys are asked under (each replaces the one before
/// it, carrying debt over: a live change, or a move up a tier), the quota of the key everyone
/// shares, and the steps.
#[derive(Clone)]
pub struct Program {
    pub versions: Vec<Vec<Spec>>,
    pub everyone: Spec,
    pub ops: Vec<Op>,
}

impl fmt::Debug for Program {
    /// As Rust that rebuilds it, to paste into a regression test.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Program {{")?;
        writeln!(f, "    versions: vec![")?;
        for version in &self.versions {
            writeln!(f, "        vec!{version:?},")?;
        }
        writeln!(f, "    ],")?;
        writeln!(f, "    everyone: {:?},", self.everyone)?;
        writeln!(f, "    ops: vec![")?;
        for op in &self.ops {
            writeln!(f, "        Op::{op:?},")?;
        }
        write!(f, "    ],\n}}")
    }
}

const NAMES: [&str; 3] = ["a", "b", "c"];

fn spec(name: &'static str) -> impl Strategy<Value = Spec> {
    (
        prop_oneof![1u64..=50, 50u64..=20_000, 20_000u64..=3_000_000],
        1u32..=6,
    )
        .prop_map(move |(interval_us, burst)| Spec {
            name,
            interval_us,
            burst,
        })
}

/// 1 to 3 quotas of distinct names.
fn version() -> impl Strategy<Value = Vec<Spec>> {
    proptest::sample::subsequence(NAMES.to_vec(), 1..=3)
        .prop_flat_map(|names| names.into_iter().map(spec).collect::<Vec<_>>())
}

fn time_us() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        3 => 1u64..=1_000,
        3 => 1_000u64..=3_000_000,
        1 => 3_000_000u64..=60_000_000,
    ]
}

/// The wait of the layer's waiting service (the layer's wait is set once, not per request).
pub const LAYER_WAIT_US: u64 = 2_000_000;

fn max_wait_us() -> impl Strategy<Value = u64> {
    prop_oneof![8 => Just(0u64), 1 => Just(LAYER_WAIT_US), 1 => 1u64..=5_000_000]
}

fn op(keys: u8, versions: u8) -> impl Strategy<Value = Op> {
    let key = 0..keys;
    let version = 0..versions;
    let cost = prop_oneof![8 => 1u32..=3, 1 => Just(0u32), 1 => 3u32..=8];
    // Any keys, in any order, a key listed twice included (its states are charged once); a
    // key names one version of its quotas in an ask.
    let pool: Vec<u8> = (0..keys).chain([EVERYONE]).collect();
    let parts = vec((proptest::sample::select(pool), 0..versions), 1..=3).prop_map(|parts| {
        let version = |key: u8| parts.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        parts
            .iter()
            .map(|&(key, _)| (key, version(key).unwrap_or(0)))
            .collect::<Vec<_>>()
    });
    prop_oneof![
        6 => time_us().prop_map(Op::Pass),
        8 => (key.clone(), version.clone(), cost.clone(), max_wait_us(), proptest::bool::weighted(0.2))
            .prop_map(|(key, version, cost, max_wait_us, abandon)| Op::Ask {
                key,
                version,
                cost,
                max_wait_us,
                abandon,
            }),
        2 => (parts, cost.clone(), max_wait_us()).prop_map(|(parts, cost, max_wait_us)| {
            Op::Across { parts, cost, max_wait_us }
        }),
        1 => (0u8..4, 1u32..=3).prop_map(|(back, cost)| Op::Refund { back, cost }),
        1 => (key.clone(), version.clone()).prop_map(|(key, version)| Op::Reset { key, version }),
        1 => (key, version).prop_map(|(key, version)| Op::Status { key, version }),
    ]
}

/// Programs over up to 3 keys and 3 versions of their quotas, `steps` long at most.
pub fn program(steps: usize) -> impl Strategy<Value = Program> {
    (vec(version(), 1..=3), spec("everyone"), 1u8..=3).prop_flat_map(
        move |(versions, everyone, keys)| {
            let n = versions.len() as u8;
            vec(op(keys, n), 1..=steps).prop_map(move |ops| Program {
                versions: versions.clone(),
                everyone: everyone.clone(),
                ops,
            })
        },
    )
}

/// What the program's quotas are, for the crate and for the model.
pub struct Versions {
    pub crate_sets: Vec<Quotas>,
    pub model_sets: Vec<Set>,
    pub everyone: (Quotas, Set),
}

fn quota(spec: &Spec) -> (Quota, Bucket) {
    let quota = Quota::every(Duration::from_micros(spec.interval_us))
        .and_then(|q| q.with_burst(spec.burst))
        .and_then(|q| q.named(spec.name))
        .expect("a valid quota");
    let bucket = Bucket {
        name: spec.name,
        interval: spec.interval_us * 1_000,
        burst: spec.burst,
    };
    (quota, bucket)
}

impl Versions {
    pub fn of(program: &Program) -> Self {
        let mut crate_sets: Vec<Quotas> = Vec::new();
        let mut model_sets: Vec<Set> = Vec::new();
        for version in &program.versions {
            let (quotas, buckets): (Vec<Quota>, Vec<Bucket>) = version.iter().map(quota).unzip();
            let mut set = Quotas::new(quotas).expect("a valid set");
            let mut model = Set::new(buckets);
            if let (Some(previous), Some(model_previous)) = (crate_sets.last(), model_sets.last()) {
                set = set.carry_over_from(previous);
                model = model.replacing(model_previous);
            }
            crate_sets.push(set);
            model_sets.push(model);
        }
        let (quota, bucket) = quota(&program.everyone);
        Self {
            crate_sets,
            model_sets,
            everyone: (Quotas::from(quota), Set::new(vec![bucket])),
        }
    }

    fn parts(&self, parts: &[(u8, u8)]) -> (Parts, ModelParts) {
        parts
            .iter()
            .map(|&(key, version)| {
                if key == EVERYONE {
                    (
                        ("everyone".to_owned(), self.everyone.0.clone()),
                        ("everyone".to_owned(), self.everyone.1.clone()),
                    )
                } else {
                    let name = key_name(key);
                    let v = usize::from(version);
                    (
                        (name.clone(), self.crate_sets[v].clone()),
                        (name, self.model_sets[v].clone()),
                    )
                }
            })
            .unzip()
    }
}

/// The parts of an ask: each key with its quotas.
pub type Parts = Vec<(String, Quotas)>;
/// The same, for the model.
pub type ModelParts = Vec<(String, Set)>;

pub fn key_name(key: u8) -> String {
    format!("k{key}")
}

/// A decision as the model gives it: its numbers, or why the ask can never pass.
pub type Outcome = Result<Answer, Impossible>;

/// What a subject shows of a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Every number (a store, the direct limiter).
    Decision(Outcome),
    /// What an HTTP client sees (the layer): the status, `Retry-After` and `RateLimit`.
    Http {
        status: u16,
        retry_after: Option<String>,
        ratelimit: Option<String>,
    },
    /// Nothing: the request waits for its slot and was dropped before it came.
    Nothing,
}

/// Blocks, as a layer's `block(refusals, duration)` sets them: a key refused faster than the
/// `refusals` bucket allows is refused for `duration` without asking the store.
#[derive(Clone, Debug)]
pub struct Blocks {
    pub refusals: Bucket,
    pub duration: u64,
}

/// What the programs run against: a store, the direct limiter, the layer.
pub trait Subject {
    /// The subject's time now, in nanoseconds on the model's clock.
    fn now(&mut self) -> u64;
    /// Lets `by` pass.
    fn pass(&mut self, by: Duration);
    /// Decides an ask of `parts`; `expected` is the model's answer, for a subject that shows
    /// less than every number (see [`Observed`]).
    fn decide(
        &mut self,
        parts: &[(String, Quotas)],
        cost: u32,
        max_wait: Duration,
        expected: &Outcome,
    ) -> (Observed, Observed);
    /// Asks as [`decide`](Self::decide) does, and gives up at once if the request must wait
    /// (its slot is given back).
    fn abandon(
        &mut self,
        parts: &[(String, Quotas)],
        cost: u32,
        max_wait: Duration,
        expected: &Outcome,
    ) -> (Observed, Observed) {
        let seen = self.decide(parts, cost, max_wait, expected);
        if let Observed::Decision(Ok(answer)) = &seen.0 {
            if answer.allowed && answer.wait > 0 && cost > 0 {
                self.refund(parts, cost);
            }
        }
        seen
    }
    /// Gives back `cost` of an allowed ask of `parts`.
    fn refund(&mut self, parts: &[(String, Quotas)], cost: u32);
    /// Forgets `key` under `quotas`.
    fn reset(&mut self, key: &str, quotas: &Quotas);
    /// Peeks at `key` under `quotas`.
    fn status(&mut self, key: &str, quotas: &Quotas) -> Answer;
    /// Whether the subject can take this step (the limiter decides one key at a time).
    fn takes(&self, _op: &Op) -> bool {
        true
    }
    /// Whether `key`'s requests pass without being counted.
    fn exempt(&self, _key: &str) -> bool {
        false
    }
    /// The subject's unit of time in nanoseconds (see [`Model::counting_in`]).
    fn resolution(&self) -> u64 {
        1
    }
    /// The blocks of asks that do not wait, if the subject has any.
    fn blocks(&self) -> Option<Blocks> {
        None
    }
}

/// Plays `program` against the subject `make` builds and the model, step by step; the first
/// disagreement, with its step.
pub fn run<S: Subject>(
    program: &Program,
    make: impl FnOnce(&Versions) -> S,
) -> Result<(), TestCaseError> {
    let versions = Versions::of(program);
    let mut subject = make(&versions);
    let blocks = subject.blocks();
    let mut model = Model::counting_in(subject.resolution());
    // Per key: the refusals' TAT and the end of its block (with `blocks`).
    let mut blocked: std::collections::HashMap<String, (u64, u64)> = Default::default();
    // The allowed asks, for refunds: their parts and cost.
    let mut allowed: Vec<(Parts, ModelParts, u32)> = Vec::new();
    for (step, op) in program.ops.iter().enumerate() {
        if !subject.takes(op) {
            continue;
        }
        let now = subject.now();
        let at = |what: &str| format!("step {step} ({op:?}) at {now} ns: {what}");
        match op {
            Op::Pass(us) => subject.pass(Duration::from_micros(*us)),
            Op::Ask {
                key,
                version,
                cost,
                max_wait_us,
                abandon,
            } => {
                let (ours, theirs) = versions.parts(&[(*key, *version)]);
                let max_wait = Duration::from_micros(*max_wait_us);
                let name = &theirs[0].0;
                if subject.exempt(name) {
                    let (got, expected) = subject.decide(&ours, *cost, max_wait, &Ok(EXEMPT));
                    prop_assert_eq!(got, expected, "{}", at("exempt"));
                    continue;
                }
                let block = blocks.as_ref().filter(|_| *max_wait_us == 0);
                let until = blocked.get(name).map_or(0, |b| b.1);
                let expected = match block {
                    Some(_) if until > now => {
                        // Refused without the store, until the block ends.
                        Ok(block_answer(&theirs[0].1.buckets[0], until - now))
                    }
                    _ => model.decide(&theirs, *cost, max_wait.as_nanos() as u64, now),
                };
                if let (Some(block), Ok(answer)) = (block, &expected) {
                    if !answer.allowed && until <= now {
                        // One more refusal: too many, and the key is blocked.
                        let counted = blocked.entry(name.clone()).or_default();
                        let tat = counted.0.max(now) + block.refusals.interval;
                        if tat - now <= block.refusals.window() {
                            counted.0 = tat;
                        } else {
                            *counted = (0, now + block.duration);
                        }
                    }
                }
                let (got, want) = match abandon {
                    false => subject.decide(&ours, *cost, max_wait, &expected),
                    true => subject.abandon(&ours, *cost, max_wait, &expected),
                };
                prop_assert_eq!(got, want, "{}", at("ask"));
                if let Ok(answer) = expected {
                    if answer.allowed && *cost > 0 {
                        if *abandon && answer.wait > 0 {
                            model.refund(&theirs, *cost);
                        } else {
                            allowed.push((ours, theirs, *cost));
                        }
                    }
                }
            }
            Op::Across {
                parts,
                cost,
                max_wait_us,
            } => {
                let (ours, theirs) = versions.parts(parts);
                let max_wait = Duration::from_micros(*max_wait_us);
                let expected = model.decide(&theirs, *cost, max_wait.as_nanos() as u64, now);
                let (got, want) = subject.decide(&ours, *cost, max_wait, &expected);
                prop_assert_eq!(got, want, "{}", at("across"));
                if matches!(expected, Ok(a) if a.allowed && *cost > 0) {
                    allowed.push((ours, theirs, *cost));
                }
            }
            Op::Refund { back, cost } => {
                let Some(i) = allowed.len().checked_sub(1 + usize::from(*back)) else {
                    continue;
                };
                let (ours, theirs, charged) = &allowed[i];
                let cost = (*cost).min(*charged);
                model.refund(theirs, cost);
                subject.refund(ours, cost);
            }
            Op::Reset { key, version } => {
                let (ours, theirs) = versions.parts(&[(*key, *version)]);
                model.reset(&theirs[0].0, &theirs[0].1);
                subject.reset(&ours[0].0, &ours[0].1);
            }
            Op::Status { key, version } => {
                let (ours, theirs) = versions.parts(&[(*key, *version)]);
                let expected = model.status(&theirs[0].0, &theirs[0].1, now);
                let got = subject.status(&ours[0].0, &ours[0].1);
                prop_assert_eq!(got, expected, "{}", at("status"));
            }
        }
    }
    Ok(())
}

/// The answer an exempt request stands for (never compared: exempt requests show nothing).
pub const EXEMPT: Answer = Answer {
    allowed: true,
    wait: 0,
    limit: 0,
    remaining: 0,
    reset_after: 0,
    retry_after: 0,
    quota: 0,
    part: 0,
};

/// A blocked key's refusal: until the block ends, with the first quota's numbers as a bucket
/// that owes its whole window beyond that.
fn block_answer(first: &Bucket, left: u64) -> Answer {
    Answer {
        allowed: false,
        wait: 0,
        limit: first.burst,
        remaining: 0,
        reset_after: left + first.window(),
        retry_after: left,
        quota: 0,
        part: 0,
    }
}

/// The answer a caller reads off a decision.
pub fn answer_of(decision: &tollgate::Decision) -> Answer {
    Answer {
        allowed: decision.is_allowed(),
        wait: decision.wait().as_nanos() as u64,
        limit: decision.limit(),
        remaining: decision.remaining(),
        reset_after: decision.reset_after().as_nanos() as u64,
        retry_after: decision.retry_after().as_nanos() as u64,
        quota: decision.quota_index(),
        part: decision.part(),
    }
}

/// The model's name for a quota error.
pub fn impossible(error: &tollgate::QuotaError) -> Impossible {
    match error {
        tollgate::QuotaError::Empty => Impossible::Empty,
        tollgate::QuotaError::TooMany(_) => Impossible::TooMany,
        tollgate::QuotaError::CostExceedsBurst { .. } => Impossible::TooCostly,
        other => panic!("not an error of an ask: {other}"),
    }
}
