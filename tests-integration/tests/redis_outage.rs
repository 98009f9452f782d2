//! A fleet through a Redis outage: N instances (each its own `RedisStore`, connection and
//! local store, as N processes would have) hammer one hot key while Redis is killed and
//! restarted empty, or stopped and continued. With `OnFailure::Local` and `fleet_size(N)`,
//! they must stay within 1.1 × the bound (burst + rate × time) over the whole run, and no
//! decision may wait much longer than the timeout.
//!
//! Redis keeps time with `TIME`, so these tests run in real time: 2 s before the outage, 5 s
//! of outage, 2 s after.

use common::DecideOne;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::store::{OnFailure, RedisStore};
use tollgate::{MemoryStore, Quota, Quotas};

mod common;

use common::redis::Redis;

const TIMEOUT: Duration = Duration::from_millis(50);
const BEFORE: Duration = Duration::from_secs(2);
const OUTAGE: Duration = Duration::from_secs(5);
const AFTER: Duration = Duration::from_secs(2);
const RATE: u32 = 20;
const BURST: u32 = 20;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL, then a new, empty Redis on the same socket.
    KillAndRestart,
    /// SIGSTOP, then SIGCONT: calls hang until the timeout.
    StopAndContinue,
}

struct Outcome {
    admitted: usize,
    bound: f64,
    slowest: Duration,
    /// The slowest decision made while Redis was away, once the breaker had tripped (from
    /// 0.5 s into the outage).
    slowest_while_down: Duration,
}

async fn hot_key_through_an_outage(instances: u32, fault: Fault) -> Option<Outcome> {
    hot_key_through_an_outage_told(instances, fault, true).await
}

/// With `told`, each store is given the fleet's size; without, the stores count themselves in
/// Redis (announced every second: the 2 s before the outage are enough).
async fn hot_key_through_an_outage_told(
    instances: u32,
    fault: Fault,
    told: bool,
) -> Option<Outcome> {
    let mut redis = Redis::start()?;
    let quotas = Quotas::from(Quota::per_second(RATE).unwrap().with_burst(BURST).unwrap());
    let admitted = Arc::new(AtomicUsize::new(0));
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let slowest_while_down = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let stores: Vec<RedisStore> = (0..instances)
        .map(|_| {
            let builder = RedisStore::builder(redis.url())
                .timeout(TIMEOUT)
                .on_failure(OnFailure::Local(MemoryStore::new()));
            let builder = if told {
                builder.fleet_size(instances)
            } else {
                builder
            };
            builder.build().unwrap()
        })
        .collect();
    // Instances that count themselves have counted each other before the run (they announce
    // themselves at once, then every second): a fleet that has not met yet is not what this
    // measures.
    let counting = Instant::now();
    while stores.iter().any(|store| store.fleet() != instances) {
        assert!(
            counting.elapsed() < Duration::from_secs(10),
            "the instances did not count each other in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    let down = (
        start + BEFORE + Duration::from_millis(500),
        start + BEFORE + OUTAGE,
    );
    let end = start + BEFORE + OUTAGE + AFTER;
    let mut tasks = Vec::new();
    for store in stores {
        let (quotas, admitted, slowest, slowest_while_down) = (
            quotas.clone(),
            Arc::clone(&admitted),
            Arc::clone(&slowest),
            Arc::clone(&slowest_while_down),
        );
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let hot = "hot".to_owned();
            while Instant::now() < end {
                tick.tick().await;
                let asked = Instant::now();
                let decision = store
                    .decide_one(&hot, &quotas, 1, Duration::ZERO)
                    .await
                    .unwrap();
                let took = asked.elapsed();
                let mut slowest = slowest.lock().unwrap();
                *slowest = (*slowest).max(took);
                if asked > down.0 && asked < down.1 {
                    let mut slowest = slowest_while_down.lock().unwrap();
                    *slowest = (*slowest).max(took);
                }
                if decision.is_allowed() {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(BEFORE).await;
    match fault {
        Fault::KillAndRestart => redis.kill(),
        Fault::StopAndContinue => redis.signal("STOP"),
    }
    tokio::time::sleep(OUTAGE).await;
    match fault {
        Fault::KillAndRestart => redis.spawn(),
        Fault::StopAndContinue => redis.signal("CONT"),
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed);
    let bound = f64::from(BURST) + f64::from(RATE) * elapsed;
    let slowest = *slowest.lock().unwrap();
    let slowest_while_down = *slowest_while_down.lock().unwrap();
    eprintln!(
        "{instances} instances, {fault:?}: admitted {admitted}, bound {bound:.0} ({:.3}×), \
         slowest decision {slowest:?}, slowest while Redis was down {slowest_while_down:?}",
        admitted as f64 / bound
    );
    Some(Outcome {
        admitted,
        bound,
        slowest,
        slowest_while_down,
    })
}

fn check(outcome: Option<Outcome>) {
    let Some(Outcome {
        admitted,
        bound,
        slowest,
        slowest_while_down,
    }) = outcome
    else {
        return;
    };
    let ratio = admitted as f64 / bound;
    assert!(
        ratio <= 1.1,
        "admitted {admitted} against a bound of {bound:.0}: {ratio:.3}×"
    );
    assert!(ratio >= 0.8, "the limit starved: {admitted} of {bound:.0}");
    assert!(
        slowest <= TIMEOUT + Duration::from_millis(50),
        "a decision took {slowest:?}, the timeout is {TIMEOUT:?}"
    );
    // Once Redis counts as down, nobody waits for it: the local decision takes microseconds
    // (the figure is printed; the bound here leaves room for a loaded CI machine).
    assert!(
        slowest_while_down < TIMEOUT / 2,
        "a decision took {slowest_while_down:?} while Redis was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn two_instances_stay_within_the_bound_when_redis_is_killed_and_restarted_empty() {
    check(hot_key_through_an_outage(2, Fault::KillAndRestart).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn four_instances_stay_within_the_bound_when_redis_is_killed_and_restarted_empty() {
    check(hot_key_through_an_outage(4, Fault::KillAndRestart).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn four_instances_that_count_themselves_in_redis_stay_within_the_bound() {
    // No fleet_size: each learns there are 4 from the others' announcements.
    check(hot_key_through_an_outage_told(4, Fault::KillAndRestart, false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn two_instances_stay_within_the_bound_when_redis_is_stopped_and_continued() {
    check(hot_key_through_an_outage(2, Fault::StopAndContinue).await);
}

/// A TCP proxy to Redis that holds every reply from `redis` for a time drawn from
/// `held` (milliseconds, `0..0` for none), replies kept in order: a Redis slow but alive.
async fn slow_replies(
    redis: std::net::SocketAddr,
    held: Arc<std::sync::Mutex<std::ops::Range<u64>>>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(redis).await else {
                continue;
            };
            let (mut in_read, mut in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut in_read, &mut out_write).await });
            let (send, mut receive) =
                tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
            seed = seed.wrapping_add(1);
            let held = Arc::clone(&held);
            let mut rng = seed;
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n) = out_read.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    let range = held.lock().unwrap().clone();
                    // xorshift: a hold within the range.
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let hold = if range.is_empty() {
                        0
                    } else {
                        range.start + rng % (range.end - range.start)
                    };
                    let due = tokio::time::Instant::now() + Duration::from_millis(hold);
                    if send.send((due, buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((due, bytes)) = receive.recv().await {
                    tokio::time::sleep_until(due).await;
                    if in_write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

/// A brown-out: Redis answers every call, but 30–70 ms late against a 50 ms timeout, for
/// 5 s. The breaker trips once and holds (an answer that made it in time does not close it;
/// the probe needs three quick answers in a row), so the decisions made once it was detected
/// are as quick as before it; after it, decisions go to Redis again. A Redis that answers
/// every probe steadily but slowly (30 ms) counts as back after 5 s.
#[tokio::test(flavor = "current_thread")]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_brown_out_trips_the_breaker_once_and_decisions_stay_quick() {
    let Some(redis) = Redis::start_tcp(&[]) else {
        return;
    };
    let (logs, _guard) = common::logs::capture(tracing::Level::INFO);
    let redis_address = format!("127.0.0.1:{}", redis.port().unwrap())
        .parse()
        .unwrap();
    let held = Arc::new(std::sync::Mutex::new(0..0));
    let proxy = slow_replies(redis_address, Arc::clone(&held)).await;
    let store = RedisStore::builder(format!("redis://{proxy}"))
        .timeout(TIMEOUT)
        .fleet_size(2)
        .on_failure(OnFailure::Local(MemoryStore::new()))
        .build()
        .unwrap();
    let quotas = Quotas::from(Quota::per_second(1000).unwrap());
    // Open load: a decision every millisecond, whether the earlier ones were answered or not
    // (as requests come to a server), over 50 keys, for `span`; the time each decision took,
    // of those asked from `from` on.
    async fn load(
        store: &RedisStore,
        quotas: &Quotas,
        span: Duration,
        from: Duration,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut asked = tokio::task::JoinSet::new();
        let mut k = 0u64;
        while start.elapsed() < span {
            tick.tick().await;
            k += 1;
            let (store, quotas) = (store.clone(), quotas.clone());
            let counted = start.elapsed() >= from;
            asked.spawn(async move {
                let at = Instant::now();
                let decision =
                    store.decide_one(&format!("client-{}", k % 50), &quotas, 1, Duration::ZERO);
                assert!(decision.await.is_ok());
                counted.then(|| at.elapsed())
            });
        }
        asked.join_all().await.into_iter().flatten().collect()
    }
    let p99 = |mut took: Vec<Duration>| {
        took.sort();
        took[took.len() * 99 / 100]
    };
    let before = load(&store, &quotas, Duration::from_secs(1), Duration::ZERO).await;
    let calls_before = redis.calls("evalsha");
    assert!(calls_before > 100, "{calls_before} calls went to Redis");

    *held.lock().unwrap() = 30..70;
    let during = load(
        &store,
        &quotas,
        Duration::from_secs(5),
        Duration::from_millis(500),
    )
    .await;
    let trips = logs.text().matches("Redis is down").count();
    *held.lock().unwrap() = 0..0;
    let (before, during) = (p99(before), p99(during));
    eprintln!("brown-out: {trips} trips; p99 before {before:?}, once detected {during:?}");
    assert_eq!(
        trips, 1,
        "the breaker tripped {trips} times in a 5 s brown-out"
    );
    assert!(
        during <= (2 * before).max(Duration::from_millis(1)),
        "p99 {during:?} once the brown-out was detected, {before:?} before"
    );

    // After the brown-out, decisions go to Redis again (the probe backs off to 0.2 s at most).
    let calls_after_brown_out = redis.calls("evalsha");
    load(&store, &quotas, Duration::from_secs(2), Duration::ZERO).await;
    let back = redis.calls("evalsha") - calls_after_brown_out;
    assert!(back > 100, "{back} calls went to Redis after the brown-out");
    assert_eq!(store.local_keys(), 0, "every local debt written back");

    // A Redis tripped by a brown-out that then answers steadily at 30 ms (in time, but never
    // within half the timeout) counts as back after 5 s of answers: its decisions go to Redis.
    *held.lock().unwrap() = 60..70;
    load(&store, &quotas, Duration::from_millis(500), Duration::ZERO).await;
    *held.lock().unwrap() = 30..31;
    let calls_when_slow = redis.calls("evalsha");
    // One client, one decision at a time (at a thousand a second, the batcher's queue would
    // add a round trip and pass the timeout).
    let slow_start = Instant::now();
    while slow_start.elapsed() < Duration::from_secs(7) {
        let decision = store.decide_one(&"steady".to_owned(), &quotas, 1, Duration::ZERO);
        assert!(decision.await.is_ok());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let slow = redis.calls("evalsha") - calls_when_slow;
    let trips = logs.text().matches("Redis is down").count();
    eprintln!("steady 30 ms: {slow} calls to Redis in 7 s; {trips} trips in all");
    assert!(
        slow > 20,
        "{slow} calls went to a Redis steadily answering in 30 ms"
    );
    assert_eq!(trips, 2, "once in the brown-out, once at 60–70 ms");
}
