//! The Redis store, on a real `redis-server` and on a real 3-primary Redis Cluster, deciding
//! on a clock the test moves (`RedisStoreBuilder::clock`, the `test-util` feature: the scripts
//! take the time as their last argument instead of reading `TIME`), with batching and the
//! over-limit cache on, as deployed. Each program has keys of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::test_runner::TestRunner;
use tokio::runtime::Runtime;
use tollgate::clock::Clock;
use tollgate::store::{Ask, RedisStore};
use tollgate::{Quotas, Store};

use crate::common::redis::{Cluster, Redis};
use crate::memory::{outcome, TestClock};
use crate::program::{answer_of, program, run, Observed, Op, Outcome, Subject};
use crate::reference::Answer;

/// A store shared by every program, and what tells a program's keys from the others'.
struct Shared {
    runtime: Runtime,
    store: RedisStore,
    clock: TestClock,
    /// Connections to every node, to count script calls (a refund runs in the background).
    nodes: Vec<redis::aio::MultiplexedConnection>,
    programs: AtomicU64,
    /// A cluster decides parts one after another.
    cluster: bool,
}

impl Shared {
    fn new(urls: Vec<String>, cluster: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock = TestClock::new();
        let (store, nodes) = runtime.block_on(async {
            let builder = match cluster {
                true => RedisStore::cluster(urls.clone()),
                false => RedisStore::builder(urls[0].clone()),
            };
            let store = builder
                .timeout(Duration::from_secs(5))
                .clock(clock.clone())
                .connect()
                .await
                .unwrap();
            let mut nodes = Vec::new();
            for url in &urls {
                let client = redis::Client::open(url.as_str()).unwrap();
                nodes.push(client.get_multiplexed_async_connection().await.unwrap());
            }
            (store, nodes)
        });
        Self {
            runtime,
            store,
            clock,
            nodes,
            programs: AtomicU64::new(0),
            cluster,
        }
    }

    /// Script calls every node has run so far.
    fn script_calls(&self) -> u64 {
        self.runtime.block_on(async {
            let mut calls = 0;
            for node in &self.nodes {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut node.clone())
                    .await
                    .unwrap();
                calls += info
                    .lines()
                    .filter_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
                    .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            calls
        })
    }
}

/// One program's view of the shared store: its keys are its own.
struct OnRedis<'s> {
    shared: &'s Shared,
    program: u64,
}

impl OnRedis<'_> {
    fn new(shared: &Shared) -> OnRedis<'_> {
        OnRedis {
            shared,
            program: shared.programs.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn own(&self, parts: &[(String, Quotas)]) -> Vec<(String, Quotas)> {
        parts
            .iter()
            .map(|(key, quotas)| (self.key(key), quotas.clone()))
            .collect()
    }

    fn key(&self, key: &str) -> String {
        format!("p{}-{key}", self.program)
    }

    /// Runs `f`, then waits until Redis has run `scripts` more script calls (what `f` left to
    /// the background).
    fn then_wait_for(&self, scripts: u64, f: impl FnOnce()) {
        let before = self.shared.script_calls();
        f();
        for _ in 0..5_000 {
            if self.shared.script_calls() >= before + scripts {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("a refund did not reach Redis in 5 s");
    }
}

fn ask(parts: &[(String, Quotas)]) -> Ask<'_, String> {
    match parts {
        [(key, quotas)] => Ask::new(key, quotas),
        parts => Ask::across(parts),
    }
}

impl Subject for OnRedis<'_> {
    fn now(&mut self) -> u64 {
        self.shared.clock.now()
    }

    fn pass(&mut self, by: Duration) {
        self.shared.clock.advance(by);
    }

    fn decide(
        &mut self,
        parts: &[(String, Quotas)],
        cost: u32,
        max_wait: Duration,
        expected: &Outcome,
    ) -> (Observed, Observed) {
        let parts = self.own(parts);
        let ask = ask(&parts).with_cost(cost).with_max_wait(max_wait);
        let got = self.shared.runtime.block_on(self.shared.store.decide(&ask));
        (
            Observed::Decision(outcome(got)),
            Observed::Decision(*expected),
        )
    }

    fn refund(&mut self, parts: &[(String, Quotas)], cost: u32) {
        let parts = self.own(parts);
        // One call per part; one Redis gives a key listed twice back once.
        let mut distinct: Vec<&(String, Quotas)> = Vec::new();
        for part in &parts {
            if self.shared.cluster || !distinct.contains(&part) {
                distinct.push(part);
            }
        }
        let calls = distinct.len() as u64;
        self.then_wait_for(calls, || {
            let _entered = self.shared.runtime.enter();
            self.shared.store.refund(&ask(&parts), cost);
        });
    }

    fn reset(&mut self, key: &str, quotas: &Quotas) {
        let key = self.key(key);
        self.shared
            .runtime
            .block_on(self.shared.store.reset(&key, quotas))
            .unwrap();
    }

    fn status(&mut self, key: &str, quotas: &Quotas) -> Answer {
        let key = self.key(key);
        let status = self
            .shared
            .runtime
            .block_on(self.shared.store.status(&key, quotas));
        answer_of(&status.unwrap())
    }

    fn resolution(&self) -> u64 {
        1_000
    }

    fn takes(&self, op: &Op) -> bool {
        match op {
            // A cluster decides the parts of an ask across keys one after another: the first
            // part that refuses binds (the model's binds by the longest wait), and a key
            // listed twice is charged once per listing (see `Ask::across`). Its programs ask
            // one key at a time; tests/redis_cluster.rs covers its decisions across keys.
            Op::Across { parts, .. } if self.shared.cluster => parts.len() == 1,
            _ => true,
        }
    }
}

/// Programs per Redis run: `MODEL_CASES`, as for the other subjects.
fn on(shared: &Shared) {
    TestRunner::new(crate::config())
        .run(&program(40), |program| {
            crate::watched(&program, || run(&program, |_| OnRedis::new(shared)))
        })
        .unwrap();
}

#[test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
fn a_single_redis_agrees_with_the_model() {
    let Some(redis) = Redis::start() else {
        return;
    };
    on(&Shared::new(vec![redis.url()], false));
}

#[test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
fn a_redis_cluster_agrees_with_the_model() {
    let Some(cluster) = Cluster::start(3, 0) else {
        return;
    };
    on(&Shared::new(cluster.seeds(), true));
}
