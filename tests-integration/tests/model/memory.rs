//! The memory store, on a clock the test moves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::test_runner::TestRunner;
use tollgate::clock::Clock;
use tollgate::store::{Ask, StoreError};
use tollgate::{MemoryStore, Quotas, Store};

use crate::program::{answer_of, impossible, program, run, Observed, Op, Outcome, Subject};
use crate::reference::Answer;

/// A clock that moves when told to; it starts at one second (0 means "no state").
#[derive(Clone)]
pub struct TestClock(Arc<AtomicU64>);

impl TestClock {
    pub fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_000_000_000)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct Memory {
    pub store: MemoryStore<TestClock>,
}

impl Memory {
    pub fn new() -> Self {
        Self {
            store: MemoryStore::builder().clock(TestClock::new()).build(),
        }
    }
}

/// The answer of a store's decision, as the model names it.
pub fn outcome(decided: Result<tollgate::Decision, StoreError>) -> Outcome {
    match decided {
        Ok(decision) => Ok(answer_of(&decision)),
        Err(StoreError::Quota(error)) => Err(impossible(&error)),
        Err(other) => panic!("the store failed: {other}"),
    }
}

fn ask<'a>(parts: &'a [(String, Quotas)]) -> Ask<'a, String> {
    match parts {
        [(key, quotas)] => Ask::new(key, quotas),
        parts => Ask::across(parts),
    }
}

impl Subject for Memory {
    fn now(&mut self) -> u64 {
        self.store.clock().now()
    }

    fn pass(&mut self, by: Duration) {
        self.store.clock().advance(by);
    }

    fn decide(
        &mut self,
        parts: &[(String, Quotas)],
        cost: u32,
        max_wait: Duration,
        expected: &Outcome,
    ) -> (Observed, Observed) {
        let ask = ask(parts).with_cost(cost).with_max_wait(max_wait);
        let got = outcome(self.store.decide(&ask).into_inner());
        (Observed::Decision(got), Observed::Decision(*expected))
    }

    fn refund(&mut self, parts: &[(String, Quotas)], cost: u32) {
        self.store.refund(&ask(parts), cost);
    }

    fn reset(&mut self, key: &str, quotas: &Quotas) {
        self.store.reset(&key.to_owned(), quotas);
    }

    fn status(&mut self, key: &str, quotas: &Quotas) -> Answer {
        answer_of(&self.store.status(&key.to_owned(), quotas))
    }
}

#[test]
fn the_memory_store_agrees_with_the_model() {
    TestRunner::new(crate::config())
        .run(&program(40), |program| {
            crate::watched(&program, || run(&program, |_| Memory::new()))
        })
        .unwrap();
}

/// The memory store's global key (a key of size zero), whose states live in lock-free slots
/// and, past four quotas, in the keyed table: the programs' key 0, alone.
struct Global {
    store: MemoryStore<TestClock>,
}

impl Subject for Global {
    fn now(&mut self) -> u64 {
        self.store.clock().now()
    }

    fn pass(&mut self, by: Duration) {
        self.store.clock().advance(by);
    }

    fn decide(
        &mut self,
        parts: &[(String, Quotas)],
        cost: u32,
        max_wait: Duration,
        expected: &Outcome,
    ) -> (Observed, Observed) {
        let ask = Ask::new(&tollgate::key::Global, &parts[0].1)
            .with_cost(cost)
            .with_max_wait(max_wait);
        let got = outcome(self.store.decide(&ask).into_inner());
        (Observed::Decision(got), Observed::Decision(*expected))
    }

    fn refund(&mut self, parts: &[(String, Quotas)], cost: u32) {
        self.store
            .refund(&Ask::new(&tollgate::key::Global, &parts[0].1), cost);
    }

    fn reset(&mut self, _: &str, quotas: &Quotas) {
        self.store.reset(&tollgate::key::Global, quotas);
    }

    fn status(&mut self, _: &str, quotas: &Quotas) -> Answer {
        answer_of(&self.store.status(&tollgate::key::Global, quotas))
    }

    fn takes(&self, op: &Op) -> bool {
        match op {
            Op::Ask { key, .. } | Op::Status { key, .. } | Op::Reset { key, .. } => *key == 0,
            Op::Across { parts, .. } => parts.len() == 1 && parts[0].0 == 0,
            Op::Pass(_) | Op::Refund { .. } => true,
        }
    }
}

#[test]
fn the_global_key_agrees_with_the_model() {
    TestRunner::new(crate::config())
        .run(&program(40), |program| {
            crate::watched(&program, || {
                run(&program, |_| Global {
                    store: MemoryStore::builder().clock(TestClock::new()).build(),
                })
            })
        })
        .unwrap();
}
