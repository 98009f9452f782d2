//! A store written outside the crate from its public API alone (`Ask::states`, `Ask::apply`,
//! `Ask::give_back`): one mutex over a map of TATs.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::test_runner::TestRunner;
use tollgate::clock::Clock;
use tollgate::store::{Ask, StoreError};
use tollgate::{Decision, Quotas, Store};

use crate::memory::{outcome, TestClock};
use crate::program::{answer_of, program, run, Observed, Outcome, Subject};
use crate::reference::Answer;

#[derive(Clone)]
struct MutexStore {
    tats: Arc<Mutex<HashMap<(String, u64), u64>>>,
    clock: TestClock,
}

impl MutexStore {
    fn with_states<R>(&self, ask: &Ask<'_, String>, f: impl FnOnce(&mut [u64]) -> R) -> R {
        let mut map = self.tats.lock().unwrap();
        let ids: Vec<(String, u64)> = ask
            .states()
            .map(|(key, quota)| (key.clone(), quota.id()))
            .collect();
        let mut tats: Vec<u64> = ids
            .iter()
            .map(|id| map.get(id).copied().unwrap_or(0))
            .collect();
        let answer = f(&mut tats);
        for (id, tat) in ids.into_iter().zip(tats) {
            map.insert(id, tat);
        }
        answer
    }
}

impl Store<String> for MutexStore {
    type Future = Ready<Result<Decision, StoreError>>;

    fn decide(&self, ask: &Ask<'_, String>) -> Self::Future {
        let now = self.clock.now();
        ready(
            self.with_states(ask, |tats| ask.apply(tats, now))
                .map_err(StoreError::from),
        )
    }

    fn refund(&self, ask: &Ask<'_, String>, cost: u32) {
        let now = self.clock.now();
        self.with_states(ask, |tats| ask.give_back(tats, cost, now));
    }
}

struct Outside {
    store: MutexStore,
}

fn ask<'a>(parts: &'a [(String, Quotas)]) -> Ask<'a, String> {
    match parts {
        [(key, quotas)] => Ask::new(key, quotas),
        parts => Ask::across(parts),
    }
}

impl Subject for Outside {
    fn now(&mut self) -> u64 {
        self.store.clock.now()
    }

    fn pass(&mut self, by: Duration) {
        self.store.clock.advance(by);
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
        let key = key.to_owned();
        let ask = Ask::new(&key, quotas);
        let mut map = self.store.tats.lock().unwrap();
        for (key, quota) in ask.states() {
            map.remove(&(key.clone(), quota.id()));
        }
    }

    fn status(&mut self, key: &str, quotas: &Quotas) -> Answer {
        let key = key.to_owned();
        let peek = Ask::new(&key, quotas).with_cost(0);
        answer_of(&self.store.decide(&peek).into_inner().unwrap())
    }
}

#[test]
fn a_store_written_outside_the_crate_agrees_with_the_model() {
    TestRunner::new(crate::config())
        .run(&program(40), |program| {
            crate::watched(&program, || {
                run(&program, |_| Outside {
                    store: MutexStore {
                        tats: Arc::default(),
                        clock: TestClock::new(),
                    },
                })
            })
        })
        .unwrap();
}
