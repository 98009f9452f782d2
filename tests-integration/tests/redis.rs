//! RedisStore against a real Redis: a private `redis-server` per test, on a unix socket in a
//! temporary directory, nothing on disk. Without `redis-server` on `PATH` the tests say they
//! were skipped, unless `TOLLGATE_REQUIRE_REDIS=1` (as in CI), which makes that a failure.

use common::DecideOne;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use tollgate::key::{Header, PeerIp};
use tollgate::store::{OnFailure, RedisStore};
use tollgate::{Decision, MemoryStore, Quota, Quotas, RateLimitLayer, Store, StoreError};

mod common;

use common::conformance::scenario;
use common::redis::Redis;

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn the_same_requests_get_the_same_answers_as_from_the_memory_store() {
    let redis = redis_or_skip!();
    let memory = scenario(&MemoryStore::new()).await;
    let remote = scenario(&redis.store()).await;
    assert_eq!(memory.len(), remote.len());
    for (i, (m, r)) in memory.iter().zip(&remote).enumerate() {
        assert_eq!(m, r, "request {i}");
    }
    // Spot checks that the scenario says something.
    assert!(memory[..5].iter().all(|s| s.allowed) && !memory[5].allowed);
    assert_eq!(memory[5].retry_after_s, 720);
    // Across keys, last: two allowed, the third refused by the global part (index 1), and
    // frank's own quota spent twice, not three times.
    let n = memory.len();
    assert!(memory[n - 7].allowed && memory[n - 5].allowed && !memory[n - 3].allowed);
    assert_eq!(memory[n - 2].remaining, 0);
    assert_eq!(memory[n - 1].remaining, 3);
    // The quota change before it: 60 of 100 left, three costs of 20 pass, none left after.
    let n = n - 7;
    assert_eq!(memory[n - 7].remaining, 60);
    assert!(memory[n - 6..n - 3].iter().all(|s| s.allowed) && !memory[n - 3].allowed);
    assert_eq!(
        memory[n - 2].remaining,
        0,
        "none back under the first quota"
    );
    assert!(!memory[n - 1].allowed);
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_quota_change_moves_each_keys_debt_to_the_new_key_in_redis() {
    let redis = redis_or_skip!();
    for store in [
        redis.store(),
        RedisStore::builder(redis.url())
            .batching(false)
            .connect()
            .await
            .unwrap(),
    ] {
        let key = "erin".to_owned();
        let old = Quota::per_minute(10).unwrap();
        let new = Quota::per_minute(20).unwrap();
        let before = Quotas::from(old.clone());
        let after = Quotas::from(new.clone()).carry_over_from(&before);
        for _ in 0..5 {
            store
                .decide_one(&key, &before, 1, Duration::ZERO)
                .await
                .unwrap();
        }
        // A peek moves nothing.
        let peek = store.status(&key, &after).await.unwrap();
        assert_eq!(peek.remaining(), 10, "half of 20 left");
        let old_key = store.key_of(&key, &old);
        assert_ne!(redis.cli(&["GET", &old_key]).unwrap().trim(), "");
        let first = store
            .decide_one(&key, &after, 1, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(first.remaining(), 9);
        assert_eq!(redis.cli(&["GET", &old_key]).unwrap().trim(), "", "moved");
        let new_value: u64 = redis
            .cli(&["GET", &store.key_of(&key, &new)])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(new_value > 1_600_000_000_000_000);
        store.reset(&key, &before).await.unwrap();
        drop(redis.cli(&["FLUSHALL"]));
    }
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn keys_hold_one_microsecond_tat_and_expire_when_full() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let quota = Quota::per_second(10).unwrap();
    let quotas = Quotas::from(quota.clone());
    let key = "203.0.113.7".parse::<std::net::IpAddr>().unwrap();
    store
        .decide_one(&key, &quotas, 1, Duration::ZERO)
        .await
        .unwrap();
    let name = store.key_of(&key, &quota);
    assert_eq!(name, "tollgate:{ip:203.0.113.7}:default:100000:10");
    let value: u64 = redis.cli(&["GET", &name]).unwrap().trim().parse().unwrap();
    assert!(
        value > 1_600_000_000_000_000,
        "microseconds since the epoch: {value}"
    );
    let ttl: i64 = redis.cli(&["PTTL", &name]).unwrap().trim().parse().unwrap();
    assert!((1..=100).contains(&ttl), "expires when full: {ttl} ms");
    // A denial writes nothing.
    let tight = Quotas::from(Quota::per_hour(1).unwrap());
    store
        .decide_one(&key, &tight, 1, Duration::ZERO)
        .await
        .unwrap();
    let tight_key = store.key_of(&key, &tight.as_slice()[0]);
    let before = redis.cli(&["GET", &tight_key]).unwrap();
    assert!(!store
        .decide_one(&key, &tight, 1, Duration::ZERO)
        .await
        .unwrap()
        .is_allowed());
    assert_eq!(redis.cli(&["GET", &tight_key]).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn two_instances_share_one_quota_under_concurrent_load() {
    let redis = redis_or_skip!();
    // Two stores with their own connections, as two processes would have.
    let (a, b) = (redis.store(), redis.store());
    let quotas = Quotas::from(Quota::per_second(100).unwrap().with_burst(10).unwrap());
    let admitted = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (quotas, admitted) = (quotas.clone(), Arc::clone(&admitted));
        tasks.push(tokio::spawn(async move {
            for _ in 0..150 {
                if store
                    .decide_one(&"shared".to_owned(), &quotas, 1, Duration::ZERO)
                    .await
                    .unwrap()
                    .is_allowed()
                {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let admitted = admitted.load(Ordering::Relaxed) as u64;
    let bound = 10 + (100.0 * elapsed.as_secs_f64()) as u64 + 1;
    assert!(
        admitted <= bound,
        "admitted {admitted} in {elapsed:?}, bound {bound}"
    );
    assert!(admitted >= 10, "the burst passes: {admitted}");
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn noscript_after_script_flush_is_recovered() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let quotas = Quotas::from(Quota::per_minute(10).unwrap());
    assert!(store
        .decide_one(&"k".to_owned(), &quotas, 1, Duration::ZERO)
        .await
        .unwrap()
        .is_allowed());
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).unwrap().trim(), "OK");
    let decision = store
        .decide_one(&"k".to_owned(), &quotas, 1, Duration::ZERO)
        .await
        .unwrap();
    assert!(decision.is_allowed());
    assert_eq!(decision.remaining(), 8);
    assert_eq!(store.errors(), 0);
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn denied_keys_are_answered_locally_until_their_retry_after() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let quotas = Quotas::from(Quota::per_hour(2).unwrap());
    let key = "hammer".to_owned();
    for _ in 0..3 {
        let _ = store
            .decide_one(&key, &quotas, 1, Duration::ZERO)
            .await
            .unwrap();
    }
    let round_trips = redis.calls("evalsha");
    for _ in 0..100 {
        let cached = DecideOne::<String>::at_once(&store, &key, &quotas, 1, Duration::ZERO)
            .expect("answered locally")
            .unwrap();
        assert!(!cached.is_allowed());
        assert!(cached.retry_after() > Duration::from_secs(1700));
    }
    assert_eq!(
        redis.calls("evalsha"),
        round_trips,
        "no round trip for a denied key"
    );
    // Other keys still go to Redis.
    assert!(
        DecideOne::<String>::at_once(&store, &"other".to_owned(), &quotas, 1, Duration::ZERO)
            .is_none()
    );
    // Turned off, every decision asks Redis.
    let uncached = RedisStore::builder(redis.url())
        .over_limit_cache(false)
        .build()
        .unwrap();
    let _ = uncached
        .decide_one(&key, &quotas, 1, Duration::ZERO)
        .await
        .unwrap();
    assert!(DecideOne::<String>::at_once(&uncached, &key, &quotas, 1, Duration::ZERO).is_none());
}

/// Decides `n` times for fresh keys; how long the slowest call took.
async fn slowest_of<S: Store<String>>(
    store: &S,
    n: usize,
    quotas: &Quotas,
) -> (Duration, Vec<Result<Decision, String>>) {
    let mut slowest = Duration::ZERO;
    let mut results = Vec::new();
    for i in 0..n {
        let start = Instant::now();
        let result = store
            .decide_one(&format!("k{i}"), quotas, 1, Duration::ZERO)
            .await;
        slowest = slowest.max(start.elapsed());
        results.push(result.map_err(|e| e.to_string()));
    }
    (slowest, results)
}

/// The first decision Redis itself makes for `key` within 5 s, retried every 50 ms.
async fn once_redis_answers(store: &RedisStore, key: &str, quotas: &Quotas) -> Option<Decision> {
    for _ in 0..100 {
        if let Ok(decision) = store
            .decide_one(&key.to_owned(), quotas, 1, Duration::ZERO)
            .await
        {
            return Some(decision);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn when_redis_dies_each_policy_holds_and_decisions_resume_after_restart() {
    let mut redis = redis_or_skip!();
    let quotas = Quotas::from(Quota::per_minute(1).unwrap());
    let timeout = Duration::from_millis(50);
    let errors = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&errors);
    let build = |policy: OnFailure| {
        RedisStore::builder(redis.url())
            .timeout(timeout)
            .on_failure(policy)
            .build()
            .unwrap()
    };
    let deny = RedisStore::builder(redis.url())
        .timeout(timeout)
        .on_failure(OnFailure::Deny)
        .on_error(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let allow = build(OnFailure::Allow);
    let local = build(OnFailure::Local(MemoryStore::new()));
    for (i, store) in [&deny, &allow, &local].into_iter().enumerate() {
        let warm = format!("warm-{i}");
        assert!(store
            .decide_one(&warm, &quotas, 1, Duration::ZERO)
            .await
            .unwrap()
            .is_allowed());
    }

    redis.kill();
    let margin = Duration::from_millis(250);
    let (slowest, results) = slowest_of(&deny, 5, &quotas).await;
    assert!(slowest <= timeout + margin, "waited {slowest:?}");
    assert!(
        results.iter().all(Result::is_err),
        "fail closed: {results:?}"
    );
    // Three calls fail (and are counted); from then on Redis counts as down and the policy
    // decides without a call, until a background probe reaches it.
    assert!(errors.load(Ordering::SeqCst) >= 3);
    assert!(deny.errors() >= 3);

    let (slowest, results) = slowest_of(&allow, 5, &quotas).await;
    assert!(slowest <= timeout + margin, "waited {slowest:?}");
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(Decision::is_allowed)),
        "fail open"
    );

    // The local fallback limits for real: one per minute per key.
    let key = "local".to_owned();
    let first = local
        .decide_one(&key, &quotas, 1, Duration::ZERO)
        .await
        .unwrap();
    let second = local
        .decide_one(&key, &quotas, 1, Duration::ZERO)
        .await
        .unwrap();
    assert!(first.is_allowed() && !second.is_allowed());
    // What shows the instance decides alone: both decisions counted, the key remembered for
    // the write-back; nothing on the stores that decided with Redis or by a fixed policy.
    assert!(local.local_decisions() >= 2, "{}", local.local_decisions());
    assert_eq!(local.local_keys(), 1);
    assert_eq!((deny.local_decisions(), allow.local_keys()), (0, 0));

    // A Redis that stalls instead of dying (every client paused): the timeout still holds.
    redis.spawn();
    let blocked = {
        let socket = redis.socket();
        std::thread::spawn(move || {
            let _ = Command::new("redis-cli")
                .arg("-s")
                .arg(socket)
                .args(["CLIENT", "PAUSE", "1500", "ALL"])
                .output();
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let during = deny
        .decide_one(&"slow".to_owned(), &quotas, 1, Duration::ZERO)
        .await;
    assert!(
        start.elapsed() <= timeout + margin,
        "waited {:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            during,
            Err(StoreError::Timeout(_)) | Err(StoreError::Backend(_))
        ),
        "{during:?}"
    );
    blocked.join().unwrap();

    // Back: decisions come from Redis again, without anyone restarting the store.
    let resumed = once_redis_answers(&deny, "again", &quotas).await;
    assert!(resumed.expect("Redis answers again").is_allowed());
    let denied = deny
        .decide_one(&"again".to_owned(), &quotas, 1, Duration::ZERO)
        .await
        .unwrap();
    assert!(!denied.is_allowed(), "the state is in Redis again");
    // The local store's debt was written back once Redis answered: nothing left owed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while local.local_keys() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} keys still owed",
            local.local_keys()
        );
        let _ = local
            .decide_one(&"poke".to_owned(), &quotas, 0, Duration::ZERO)
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn two_servers_on_one_redis_share_one_limit() {
    let redis = redis_or_skip!();
    let app = |store: RedisStore| {
        Router::new()
            .route("/api/hello", get(|| async { "hello" }))
            .layer(
                RateLimitLayer::new(Quota::per_minute(5).unwrap())
                    .key(PeerIp::new())
                    .store(store),
            )
    };
    // Two servers, each with its own store and connection, as two processes would have.
    let one = serve(app(redis.store())).await;
    let two = serve(app(redis.store())).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut ok = 0;
    for i in 0..12 {
        let addr = if i % 2 == 0 { one } else { two };
        let response = client
            .get(format!("http://{addr}/api/hello").parse().unwrap())
            .await
            .unwrap();
        if response.status() == 200 {
            ok += 1;
        } else {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(ok, 5, "one burst across both servers");
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn the_layer_behaves_the_same_on_redis() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let app = Router::new()
        .route("/report", get(|| async { "report" }))
        .layer(
            RateLimitLayer::new(Quota::per_minute(2).unwrap().named("report").unwrap())
                .key(Header::new("x-api-key").or(""))
                .store(store),
        );
    let addr = serve(app).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let get = |key: &'static str| {
        let request = http::Request::get(format!("http://{addr}/report"))
            .header("x-api-key", key)
            .body(http_body_util::Full::default())
            .unwrap();
        client.request(request)
    };
    let first = get("k{1}").await.unwrap();
    assert_eq!(first.headers()["ratelimit"], "\"report\";r=1;t=30");
    assert_eq!(first.headers()["ratelimit-policy"], "\"report\";q=2;w=60");
    get("k{1}").await.unwrap();
    let refused = get("k{1}").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_eq!(get("other").await.unwrap().status(), 200);
    let stored = redis.cli(&["KEYS", "tollgate:*"]).unwrap();
    assert!(
        stored.contains("tollgate:{h:k%7B1%7D}:report:30000000:2"),
        "{stored}"
    );
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn connect_fails_at_start_up_and_says_why() {
    use tollgate::store::RedisStore;
    let unusable = |result: Result<RedisStore, StoreError>| match result {
        Err(StoreError::Unusable(what)) => what,
        Err(other) => panic!("not Unusable: {other}"),
        Ok(_) => panic!("connected"),
    };
    // Not a URL; nothing listening.
    let what = unusable(RedisStore::builder("http://nope").connect().await);
    assert!(what.contains("not a Redis URL"), "{what}");
    let what = unusable(RedisStore::builder("redis://127.0.0.1:1/").connect().await);
    assert!(what.contains("cannot connect"), "{what}");

    // A server with a password: none given, a wrong one (never repeated in the message),
    // the right one.
    let redis = match Redis::start_with(&["--requirepass", "s3cret-pw"]) {
        Some(redis) => redis,
        None => return,
    };
    let what = unusable(RedisStore::builder(redis.url()).connect().await);
    assert!(what.contains("asks for a password"), "{what}");
    let wrong = format!("{}?pass=not-it-9f8e", redis.url());
    let what = unusable(RedisStore::builder(wrong).connect().await);
    assert!(what.contains("refused"), "{what}");
    assert!(!what.contains("not-it-9f8e"), "the password leaked: {what}");
    let right = format!("{}?pass=s3cret-pw", redis.url());
    let store = RedisStore::builder(right).connect().await.unwrap();
    let quotas = Quotas::from(Quota::per_minute(1).unwrap());
    assert!(store
        .decide_one(&"k".to_owned(), &quotas, 1, Duration::ZERO)
        .await
        .unwrap()
        .is_allowed());

    // An ACL user: the right user and password connect, a wrong user is refused.
    let Some(acl) = Redis::start_with(&["--user", "limiter", "on", ">acl-pw", "~*", "&*", "+@all"])
    else {
        return;
    };
    let as_user = |user: &str| format!("{}?user={user}&pass=acl-pw", acl.url());
    let store = RedisStore::builder(as_user("limiter"))
        .connect()
        .await
        .unwrap();
    assert!(store
        .decide_one(&"k".to_owned(), &quotas, 1, Duration::ZERO)
        .await
        .unwrap()
        .is_allowed());
    let what = unusable(RedisStore::builder(as_user("nobody")).connect().await);
    assert!(
        what.contains("refused") && !what.contains("acl-pw"),
        "{what}"
    );
    // Users that connect but cannot decide: keys outside the store's prefix, no EVALSHA.
    for rules in [["~other:*", "-select"], ["~*", "-evalsha"]] {
        let mut setuser = vec![
            "ACL", "SETUSER", "limiter", "reset", "on", ">acl-pw", "&*", "+@all",
        ];
        setuser.extend(rules);
        acl.cli(&setuser).unwrap();
        let what = unusable(RedisStore::builder(as_user("limiter")).connect().await);
        assert!(
            what.contains("a first decision failed"),
            "{rules:?}: {what}"
        );
    }
    // A replica: refused, where it would pass denials and fail every allowed request.
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", "1"]).unwrap();
    let what = unusable(RedisStore::builder(replica.url()).connect().await);
    assert!(what.contains("replica"), "{what}");

    // A cluster node: refused at start-up, not silently decided by MOVED fallbacks.
    let cluster = match Redis::start_with(&["--cluster-enabled", "yes"]) {
        Some(redis) => redis,
        None => return,
    };
    let what = unusable(RedisStore::builder(cluster.url()).connect().await);
    assert!(what.contains("RedisStore::cluster"), "{what}");
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_stalled_redis_costs_the_timeout_three_times_then_nothing_until_it_answers() {
    let redis = redis_or_skip!();
    let quotas = Quotas::from(Quota::per_minute(1).unwrap());
    let timeout = Duration::from_millis(50);
    let store = RedisStore::builder(redis.url())
        .timeout(timeout)
        .on_failure(OnFailure::Deny)
        .build()
        .unwrap();
    assert!(store
        .decide_one(&"warm".to_owned(), &quotas, 1, Duration::ZERO)
        .await
        .unwrap()
        .is_allowed());
    // Every client of Redis paused for 1.5 s: calls hang until their timeout.
    let socket = redis.socket();
    let paused = std::thread::spawn(move || {
        let _ = Command::new("redis-cli")
            .arg("-s")
            .arg(socket)
            .args(["CLIENT", "PAUSE", "1500", "ALL"])
            .output();
    });
    std::thread::sleep(Duration::from_millis(100));
    let (slowest, results) = slowest_of(&store, 3, &quotas).await;
    assert!(
        slowest >= timeout,
        "the first failures pay the timeout: {slowest:?}"
    );
    assert!(results.iter().all(Result::is_err));
    // Then the policy answers at once.
    let (slowest, results) = slowest_of(&store, 50, &quotas).await;
    eprintln!("slowest of 50 decisions while Redis is down: {slowest:?}");
    assert!(slowest < Duration::from_millis(5), "{slowest:?}");
    assert!(results.iter().all(Result::is_err), "fail closed");
    paused.join().unwrap();
    // The probe finds Redis again: decisions come from it.
    let resumed = once_redis_answers(&store, "after", &quotas).await;
    assert!(resumed.expect("Redis answers again").is_allowed());
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_redis_blocked_in_debug_sleep_costs_the_timeout_three_times_then_the_local_store_decides()
{
    let Some(redis) = Redis::start_with(&["--enable-debug-command", "yes"]) else {
        return;
    };
    let quotas = Quotas::from(Quota::per_minute(1).unwrap());
    let timeout = Duration::from_millis(50);
    let store = RedisStore::builder(redis.url())
        .timeout(timeout)
        .on_failure(OnFailure::Local(MemoryStore::new()))
        .build()
        .unwrap();
    assert!(once_redis_answers(&store, "warm", &quotas).await.is_some());
    // The server itself busy for 1.5 s (a slow script or command looks the same).
    let socket = redis.socket();
    let sleeping = std::thread::spawn(move || {
        let _ = Command::new("redis-cli")
            .arg("-s")
            .arg(socket)
            .args(["DEBUG", "SLEEP", "1.5"])
            .output();
    });
    std::thread::sleep(Duration::from_millis(100));
    let (slowest, _) = slowest_of(&store, 3, &quotas).await;
    assert!(
        slowest >= timeout,
        "the first failures pay the timeout: {slowest:?}"
    );
    assert!(slowest < timeout * 2, "and no more: {slowest:?}");
    let (slowest, results) = slowest_of(&store, 50, &quotas).await;
    eprintln!("slowest of 50 decisions while Redis sleeps: {slowest:?}");
    assert!(slowest < Duration::from_millis(5), "{slowest:?}");
    assert!(results.iter().all(Result::is_ok), "the local store decides");
    sleeping.join().unwrap();
    let resumed = once_redis_answers(&store, "after", &quotas).await;
    assert!(resumed.expect("Redis answers again").is_allowed());
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn while_redis_is_down_a_dropped_wait_is_given_back_to_the_local_store() {
    let mut redis = redis_or_skip!();
    let local = MemoryStore::new();
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_millis(50))
        .on_failure(OnFailure::Local(local.clone()))
        .build()
        .unwrap();
    let quotas = Quotas::from(Quota::per_minute(1).unwrap());
    redis.kill();
    // Three failures: Redis counts as down, and the local store decides.
    for i in 0..3 {
        let _ = store
            .decide_one(&format!("trip-{i}"), &quotas, 1, Duration::ZERO)
            .await;
    }
    let limiter = tollgate::RateLimiter::keyed(Quota::per_minute(1).unwrap()).store(store);
    let key = "k".to_owned();
    limiter.key(key.clone()).try_acquire().await.unwrap();
    // A wait for the next slot (60 s away), given up: the slot goes back to the local store.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        limiter.key(key.clone()).acquire(),
    )
    .await;
    assert!(gave_up.is_err());
    let after = local.status(&key, &quotas);
    assert!(
        after.reset_after() <= Duration::from_secs(60),
        "one minute of debt, not two: {:?}",
        after.reset_after()
    );
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn one_key_many_times_in_one_batch_is_charged_each_time() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let quotas = Quotas::from(Quota::per_hour(3).unwrap());
    // Twenty decisions for one key, all queued at once: they share script calls.
    let decisions =
        (0..20).map(|_| store.decide_one(&"same".to_owned(), &quotas, 1, Duration::ZERO));
    let mut allowed = 0;
    for decision in futures_util::future::join_all(decisions).await {
        allowed += usize::from(decision.unwrap().is_allowed());
    }
    assert_eq!(allowed, 3);
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn costs_settled_from_responses_reach_redis() {
    use axum::response::IntoResponse;
    let redis = redis_or_skip!();
    let store = redis.store();
    let tokens = Quota::per_hour(100).unwrap();
    async fn used(request: http::Request<axum::body::Body>) -> axum::response::Response {
        let used: u32 = request.headers()["x-used"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let mut response = "done".into_response();
        (response.extensions_mut()).insert(tollgate::rate_limit::ActualCost(used));
        response
    }
    let app = Router::new().route("/", get(used)).layer(
        RateLimitLayer::new(tokens.clone())
            .key(Header::new("x-api-key"))
            .store(store.clone())
            .cost(|_: &http::Request<axum::body::Body>| 10)
            .settle_cost(),
    );
    let addr = serve(app).await;
    let client = http_client();
    let quotas = Quotas::from(tokens);
    let key = http::HeaderValue::from_static("alice");
    // The difference is charged or given back in the background: one script call each.
    let left_becomes = |expected: u32| {
        let (store, key, quotas) = (store.clone(), key.clone(), quotas.clone());
        async move {
            for _ in 0..100 {
                if store.status(&key, &quotas).await.unwrap().remaining() == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{expected} left never came");
        }
    };
    let send = |used: &'static str| {
        let client = client.clone();
        async move {
            let request = http::Request::get(format!("http://{addr}/"))
                .header("x-api-key", "alice")
                .header("x-used", used)
                .body(http_body_util::Full::<bytes::Bytes>::default())
                .unwrap();
            client.request(request).await.unwrap().status().as_u16()
        }
    };
    assert_eq!(send("50").await, 200);
    left_becomes(50).await;
    assert_eq!(send("5").await, 200);
    left_becomes(45).await;
}

fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn shadow_mode_and_near_limit_reports_work_over_redis() {
    use tollgate::rate_limit::LimiterStats;
    let redis = redis_or_skip!();
    let store = redis.store();
    let quota = Quota::per_hour(5).unwrap();
    let stats = LimiterStats::new();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(quota.clone())
            .key(Header::new("x-api-key"))
            .store(store.clone())
            .shadow()
            .near_limit(20)
            .stats(stats.clone()),
    );
    let addr = serve(app).await;
    let client = http_client();
    for _ in 0..8 {
        let request = http::Request::get(format!("http://{addr}/"))
            .header("x-api-key", "trial")
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 200);
    }
    let now = stats.snapshot();
    assert_eq!((now.allowed, now.refused, now.near_limit), (5, 3, 1));
    // Redis holds what enforcement would have left: spent, not overdrawn.
    let key = http::HeaderValue::from_static("trial");
    let status = store.status(&key, &Quotas::from(quota)).await.unwrap();
    assert_eq!(status.remaining(), 0);
    assert!(status.retry_after() <= Duration::from_secs(12 * 60 + 1));
}

/// Per user and global in one script call on one Redis: a refusal by the global quota
/// spends nothing of the user's, through the store and through a layer on a real server.
#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn scoped_decisions_are_one_atomic_call_on_one_redis() {
    use tollgate::key::{Global, ScopeKey, Scopes};

    let redis = redis_or_skip!();
    let user = Quotas::from(Quota::per_hour(3).unwrap().named("user").unwrap());
    let global = Quotas::from(Quota::per_hour(4).unwrap().named("global").unwrap());
    for store in [
        redis.store(),
        RedisStore::builder(redis.url())
            .batching(false)
            .connect()
            .await
            .unwrap(),
    ] {
        let parts = |who: &'static str| -> Arc<[(ScopeKey, Quotas)]> {
            Arc::from(vec![
                (ScopeKey::new("user", who), user.clone()),
                (ScopeKey::new("global", Global), global.clone()),
            ])
        };
        let calls = redis.calls("evalsha");
        for _ in 0..3 {
            let (_, decision) = store
                .decide_across(parts("alice"), 1, Duration::ZERO)
                .await
                .unwrap();
            assert!(decision.is_allowed());
        }
        assert_eq!(redis.calls("evalsha") - calls, 3, "one call per decision");
        let (binding, refused) = store
            .decide_across(parts("alice"), 1, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            (binding, refused.is_allowed()),
            (0, false),
            "alice's own quota"
        );
        assert!(store
            .decide_across(parts("bob"), 1, Duration::ZERO)
            .await
            .unwrap()
            .1
            .is_allowed());
        for _ in 0..2 {
            let (binding, refused) = store
                .decide_across(parts("bob"), 1, Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(
                (binding, refused.is_allowed()),
                (1, false),
                "the global quota"
            );
        }
        let bob = store
            .status(&ScopeKey::new("user", "bob"), &user)
            .await
            .unwrap();
        assert_eq!(bob.remaining(), 2, "refusals spent none of bob's quota");
        drop(redis.cli(&["FLUSHALL"]));
    }

    // Through a layer on a real server.
    let scopes = Scopes::new()
        .scope(
            "user",
            Header::new("x-api-key"),
            Quota::per_hour(3).unwrap(),
        )
        .scope("global", Global, Quota::per_hour(4).unwrap());
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::scoped(scopes).store(redis.store()));
    let addr = serve(app).await;
    let client = common::client();
    let url = format!("http://{addr}/");
    let statuses = |who: &'static str, n: usize| {
        let (client, url) = (client.clone(), url.clone());
        async move { common::statuses(&client, &url, &[("x-api-key", who)], n).await }
    };
    assert_eq!(statuses("alice", 4).await, [200, 200, 200, 429]);
    assert_eq!(statuses("bob", 3).await, [200, 429, 429]);
    let bob = redis
        .store()
        .status(
            &ScopeKey::new("user", http::HeaderValue::from_static("bob")),
            &user,
        )
        .await
        .unwrap();
    assert_eq!(bob.remaining(), 2);
}

/// Over Redis, an exempt request and a blocked key's request cost no script call, and a
/// blocked key is refused with the block's `Retry-After` while Redis would admit it again.
#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn exemptions_and_blocks_spare_redis() {
    let redis = redis_or_skip!();
    let key = tollgate::key::Exempt::keys(Header::new("x-api-key"), |key: &http::HeaderValue| {
        key == "internal"
    });
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(Quota::per_second(2).unwrap())
            .key(key)
            .store(redis.store())
            .block(Quota::per_minute(3).unwrap(), Duration::from_secs(600)),
    );
    let addr = serve(app).await;
    let client = common::client();
    let url = format!("http://{addr}/");
    let calls = redis.calls("evalsha");
    assert_eq!(
        common::statuses(&client, &url, &[("x-api-key", "internal")], 20).await,
        [200; 20]
    );
    assert_eq!(redis.calls("evalsha"), calls, "exempt: no call");
    // 2 pass, then refusals; past 3 refusals in a minute the key is blocked.
    let statuses = common::statuses(&client, &url, &[("x-api-key", "noisy")], 6).await;
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
    let calls = redis.calls("evalsha");
    // A second later Redis (which keeps real time) would admit the key again; the block
    // refuses it without a call.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let blocked = common::fetch(&client, &url, &[("x-api-key", "noisy")]).await;
    assert_eq!(blocked.status(), 429);
    let retry_after: u64 = common::header(&blocked, "retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 590, "the block's end: {retry_after}");
    assert_eq!(redis.calls("evalsha"), calls, "blocked: no call");
}

/// A quota changed through a `LiveQuotas` handle on a layer over Redis: the clients' debt is
/// in Redis under the old quota's key, and carries over to the new one.
#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_live_quota_change_over_redis_keeps_each_clients_debt() {
    use tollgate::rate_limit::LiveQuotas;

    let redis = redis_or_skip!();
    let limits = LiveQuotas::new(Quota::per_hour(10).unwrap().named("api").unwrap());
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::live(limits.clone())
            .key(Header::new("x-api-key"))
            .store(redis.store()),
    );
    let addr = serve(app).await;
    let client = common::client();
    let url = format!("http://{addr}/");
    let spent = common::statuses(&client, &url, &[("x-api-key", "spender")], 8).await;
    assert_eq!(spent, [200; 8]);
    assert_eq!(
        common::statuses(&client, &url, &[("x-api-key", "idle")], 1).await,
        [200]
    );
    limits.set(Quota::per_hour(100).unwrap().named("api").unwrap());
    // 8 of 10 spent is 80 of 100: 20 left. One of 10 is 10 of 100: 90 left.
    let after = common::statuses(&client, &url, &[("x-api-key", "spender")], 21).await;
    assert_eq!(after.iter().filter(|s| **s == 200).count(), 20, "{after:?}");
    let idle = common::statuses(&client, &url, &[("x-api-key", "idle")], 91).await;
    assert_eq!(idle.iter().filter(|s| **s == 200).count(), 90);
}

/// A carried debt that rescales to less than a microsecond moves nothing, and fails nothing:
/// not the decision, nor the others batched with it.
#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_carried_debt_that_rounds_to_nothing_fails_no_decision() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let before = Quotas::from(Quota::per_day(1000).unwrap());
    // A window of 100 µs: a day's debt of 86.4 s rescales to 0.1 µs.
    let tiny = Quota::per(Duration::from_micros(100), 1).unwrap();
    let after = Quotas::from(tiny.clone()).carry_over_from(&before);
    let victim = "victim".to_owned();
    store
        .decide_one(&victim, &before, 1, Duration::ZERO)
        .await
        .unwrap();
    let (carried, plain) = tokio::join!(
        store.decide_one(&victim, &after, 1, Duration::ZERO),
        store.decide_one(
            &"innocent".to_owned(),
            &Quotas::from(tiny),
            1,
            Duration::ZERO
        ),
    );
    assert!(carried.unwrap().is_allowed());
    assert!(plain.unwrap().is_allowed());
    assert_eq!(store.errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn instances_count_themselves_in_redis_and_a_told_size_overrides_the_count() {
    let redis = redis_or_skip!();
    let local =
        || RedisStore::builder(redis.url()).on_failure(OnFailure::Local(MemoryStore::new()));
    // Waits (announcements come every second; an instance gone is counted out when its entry
    // lapses, 3 s, and the last four counts have seen it gone) until every store counts `n`.
    async fn until_all_count(stores: &[RedisStore], n: u32) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while stores.iter().any(|s| s.fleet() != n) {
            assert!(
                Instant::now() < deadline,
                "counted {:?}, not {n} each",
                stores.iter().map(RedisStore::fleet).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut stores: Vec<RedisStore> = (0..3).map(|_| local().build().unwrap()).collect();
    until_all_count(&stores, 3).await;
    // An instance that stops is no longer counted once its announcement lapses (3 s).
    stores.pop();
    until_all_count(&stores, 2).await;
    // A told size is the count, whatever Redis says; a store without a local policy counts 1.
    let told = local().fleet_size(7).build().unwrap();
    assert_eq!(told.fleet(), 7);
    assert_eq!(redis.store().fleet(), 1);
    // The told store does not announce itself: the others still count 2.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(stores.iter().all(|s| s.fleet() == 2));
}

/// A key decided locally after failures too few to trip the breaker owes Redis: the next time
/// Redis decides that key, it must already know the debt, or a client spends its burst twice
/// (once alone, once again in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn redis_hears_a_keys_local_debt_before_it_decides_that_key_again() {
    let redis = redis_or_skip!();
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_millis(50))
        .fleet_size(1)
        .on_failure(OnFailure::Local(MemoryStore::new()))
        .build()
        .unwrap();
    let quotas = Quotas::from(Quota::per_hour(3).unwrap());
    let key = "mallory".to_owned();
    // Warm: the connection is up, the key unknown to Redis.
    let probe = store.decide_one(&"warm".to_owned(), &quotas, 0, Duration::ZERO);
    assert!(probe.await.unwrap().is_allowed());

    // Redis refuses every write for two requests (two failures: the breaker trips at
    // three), which the local store admits. (A stalled Redis would run the stalled scripts
    // when it wakes, charging the key itself.)
    let refuse_writes = |replicas: &str| {
        let answer = redis.cli(&["CONFIG", "SET", "min-replicas-to-write", replicas]);
        assert_eq!(answer.as_deref().map(str::trim), Some("OK"));
    };
    refuse_writes("1");
    for _ in 0..2 {
        let decision = store.decide_one(&key, &quotas, 1, Duration::ZERO).await;
        assert!(decision.unwrap().is_allowed());
    }
    assert_eq!((store.local_keys(), store.errors()), (1, 2));
    refuse_writes("0");

    // A decision dropped while it writes the debt (its client gone, an outer timeout) leaves
    // the key owing it.
    redis.signal("STOP");
    let decision = store.decide_one(&key, &quotas, 1, Duration::ZERO);
    let dropped = tokio::time::timeout(Duration::from_millis(10), decision).await;
    assert!(dropped.is_err());
    assert_eq!(
        store.local_keys(),
        1,
        "the debt went with the dropped decision"
    );
    redis.signal("CONT");

    // Redis answers again: of the hour's 3, one is left.
    let mut allowed = 0;
    for _ in 0..4 {
        let decision = store.decide_one(&key, &quotas, 1, Duration::ZERO).await;
        allowed += usize::from(decision.unwrap().is_allowed());
    }
    assert_eq!(allowed, 1, "Redis decided without the debt decided alone");
    assert_eq!(store.local_keys(), 0);
}

/// A limiter counts the requests its instance decided alone while Redis was away (its
/// `Stats::decided_alone`, the `tollgate_rate_limit_decided_alone_total` metric): none while
/// Redis answers, every one while it is gone, whether the local share allowed or refused it.
#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_limiter_counts_what_it_decided_alone_while_redis_was_away() {
    let mut redis = redis_or_skip!();
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_millis(50))
        .fleet_size(2)
        .on_failure(OnFailure::Local(MemoryStore::new()))
        .build()
        .unwrap();
    let stats = tollgate::rate_limit::LimiterStats::new();
    let limiter = tollgate::RateLimiter::keyed(Quota::per_minute(4).unwrap())
        .stats(stats.clone())
        .store(store);
    for _ in 0..3 {
        assert!(limiter.key("alice".to_owned()).try_acquire().await.is_ok());
    }
    assert_eq!(stats.snapshot().decided_alone, 0);
    redis.kill();
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(limiter.key("bob".to_owned()).try_acquire().await.is_ok());
    }
    // Bob's share of 4 a minute on 2 instances: 2 allowed, then refused, all alone.
    assert_eq!(outcomes, [true, true, false, false, false]);
    let now = stats.snapshot();
    assert_eq!(now.decided_alone, 5, "{now:?}");
    assert_eq!((now.allowed, now.refused), (5, 3));
}
