//! The direct limiter (`RateLimiter`) over the memory store, on tokio's paused clock: waits
//! sleep for real on it (tokio moves the clock to the slot), and an abandoned wait is a future
//! dropped after its first poll.

use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::test_runner::TestRunner;
use tokio::runtime::Runtime;
use tollgate::clock::{Clock, TokioClock};
use tollgate::rate_limit::Refusal;
use tollgate::{Decision, MemoryStore, Quotas, RateLimiter};

use crate::program::{answer_of, impossible, program, run, Observed, Op, Outcome, Subject};
use crate::reference::Answer;

/// A runtime whose clock stands still unless told to move, or until every task waits.
pub fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

struct Limiter {
    runtime: Runtime,
    store: MemoryStore<TokioClock>,
}

impl Limiter {
    fn new() -> Self {
        let runtime = paused_runtime();
        let store = runtime.block_on(async {
            let store = MemoryStore::builder().clock(TokioClock::new()).build();
            // Time 0 stands for "no state": start a second in.
            tokio::time::advance(Duration::from_secs(1)).await;
            store
        });
        Self { runtime, store }
    }

    fn limiter(
        &self,
        quotas: &Quotas,
        max_wait: Duration,
    ) -> RateLimiter<String, MemoryStore<TokioClock>> {
        RateLimiter::keyed(quotas.clone())
            .store(self.store.clone())
            .max_wait(max_wait)
    }
}

fn outcome(decided: Result<Decision, Refusal>) -> Outcome {
    match decided {
        Ok(decision) => Ok(answer_of(&decision)),
        Err(Refusal::Limited(limited)) => Ok(answer_of(limited.decision())),
        Err(Refusal::TooCostly(error)) => Err(impossible(&error)),
        Err(other) => panic!("refused for another reason: {other}"),
    }
}

impl Subject for Limiter {
    fn now(&mut self) -> u64 {
        let _entered = self.runtime.enter();
        self.store.clock().now()
    }

    fn pass(&mut self, by: Duration) {
        self.runtime.block_on(tokio::time::advance(by));
    }

    fn decide(
        &mut self,
        parts: &[(String, Quotas)],
        cost: u32,
        max_wait: Duration,
        expected: &Outcome,
    ) -> (Observed, Observed) {
        let [(key, quotas)] = parts else {
            unreachable!("one key at a time")
        };
        let limiter = self.limiter(quotas, max_wait);
        let decided = self.runtime.block_on(async {
            if max_wait.is_zero() {
                limiter.key(key.clone()).try_acquire().cost(cost).await
            } else {
                limiter.key(key.clone()).acquire().cost(cost).await
            }
        });
        (
            Observed::Decision(outcome(decided)),
            Observed::Decision(*expected),
        )
    }

    fn abandon(
        &mut self,
        parts: &[(String, Quotas)],
        cost: u32,
        max_wait: Duration,
        expected: &Outcome,
    ) -> (Observed, Observed) {
        let [(key, quotas)] = parts else {
            unreachable!("one key at a time")
        };
        let limiter = self.limiter(quotas, max_wait);
        let _entered = self.runtime.enter();
        let mut acquire = pin!(limiter.key(key.clone()).acquire().cost(cost).into_future());
        let polled = acquire
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        let waits = matches!(expected, Ok(answer) if answer.allowed && answer.wait > 0);
        match polled {
            // Dropped while it waits for its slot: the slot is given back.
            Poll::Pending => (Observed::Nothing, Observed::Nothing),
            Poll::Ready(decided) if !waits => (
                Observed::Decision(outcome(decided)),
                Observed::Decision(*expected),
            ),
            Poll::Ready(decided) => (Observed::Decision(outcome(decided)), Observed::Nothing),
        }
    }

    fn refund(&mut self, _: &[(String, Quotas)], _: u32) {
        unreachable!("the direct limiter gives back only what a dropped wait held")
    }

    fn reset(&mut self, key: &str, quotas: &Quotas) {
        let limiter = self.limiter(quotas, Duration::ZERO);
        self.runtime
            .block_on(limiter.key(key.to_owned()).reset())
            .unwrap();
    }

    fn status(&mut self, key: &str, quotas: &Quotas) -> Answer {
        let limiter = self.limiter(quotas, Duration::ZERO);
        let status = self.runtime.block_on(limiter.key(key.to_owned()).status());
        answer_of(&status.unwrap())
    }

    fn takes(&self, op: &Op) -> bool {
        !matches!(op, Op::Across { .. } | Op::Refund { .. })
    }
}

#[test]
fn the_direct_limiter_agrees_with_the_model() {
    TestRunner::new(crate::config())
        .run(&program(40), |program| {
            crate::watched(&program, || run(&program, |_| Limiter::new()))
        })
        .unwrap();
}
