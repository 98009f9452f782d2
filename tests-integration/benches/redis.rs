//! Decisions per second through RedisStore, beside `redis-benchmark` in the same run, and
//! decisions per second of Redis CPU time on one node and on a 3-master cluster.
//!
//! ```text
//! cargo bench --bench redis        # needs redis-server, redis-cli and redis-benchmark
//! ```
//!
//! Redis runs on core 0 and this process on core 1 (`taskset`, when there is one). The store
//! keeps 64 decisions in flight (64 tasks on one thread) over 100,000 random keys, one
//! decision per key and request, quota 10 per second, over-limit cache off (every decision
//! is Redis's). Figures:
//!
//! 1. *Per node*: the store with batching off (one `EVALSHA` per decision, as before
//!    batching) and on; beside them, `redis-benchmark -c 1 -P 64` calling the store's script
//!    for one decision, and a script doing only `GET` + `SET … PX` on 1 and on 16 keys per
//!    call (the reference for what batching can reach), in key-updates per second.
//! 2. *Per shard*: decisions per second of Redis CPU time (`used_cpu_user + used_cpu_sys`
//!    from `INFO cpu`, before and after, summed over the nodes), on one node (batching off
//!    and on) and on a 3-master cluster (batching node by node, at 64 in flight and at 64 a
//!    node; and without batching).
//!
//! Latency percentiles of the store's decisions are printed beside each throughput.
//!
//! Under `cargo test --benches` (CI's short run) it decides 20,000 times instead of 600,000,
//! to check that it still runs; without redis-benchmark it then fails, not skips.

mod common;

use common::redis::{cli, pinned, start_redis, Server};

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate::store::Ask;
use tollgate::store::RedisStore;
use tollgate::{Quota, Quotas, Store};

const KEYS: u64 = 100_000;
const IN_FLIGHT: usize = 64;
/// Decisions per measured run (20,000 in the short mode).
fn decisions() -> u64 {
    if common::quick() {
        20_000
    } else {
        600_000
    }
}

/// Requests per `redis-benchmark` run.
fn benchmark_requests() -> u64 {
    decisions() / 2
}
/// The reference: a script that only reads and writes its keys.
const GET_SET: &str =
    "for i = 1, #KEYS do redis.call('GET', KEYS[i]); redis.call('SET', KEYS[i], ARGV[1], 'PX', 1000) end return 1";

/// Redis CPU seconds so far, user + sys, summed over `ports`.
fn cpu_seconds(ports: &[u16]) -> f64 {
    ports
        .iter()
        .map(|&port| {
            let info = cli(port, &["INFO", "cpu"]);
            ["used_cpu_user:", "used_cpu_sys:"]
                .iter()
                .filter_map(|field| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(field))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
                .sum::<f64>()
        })
        .sum()
}

/// Script calls so far (`EVALSHA` in `INFO commandstats`), summed over `ports`.
fn script_calls(ports: &[u16]) -> f64 {
    ports
        .iter()
        .filter_map(|&port| {
            cli(port, &["INFO", "commandstats"])
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
                .and_then(|rest| rest.split(',').next()?.parse::<f64>().ok())
        })
        .sum()
}

/// This process's CPU seconds so far (user + system, from `/proc/self/stat`; 0 elsewhere).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / 100.0
}

fn redis_benchmark(port: u16, args: &[&str]) -> f64 {
    redis_benchmark_with(port, &["-c", "1"], args)
}

fn redis_benchmark_with(port: u16, options: &[&str], args: &[&str]) -> f64 {
    // redis-benchmark now and then prints its CSV header and no figure (seen once in three CI
    // runs, on a loaded machine): it runs again, up to three times, before failing with all it
    // said.
    let mut said = String::new();
    for _ in 0..3 {
        let out = pinned("1", "redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-P", "64"])
            .args(options)
            .args(["-n", &benchmark_requests().to_string()])
            .args(["-r", &KEYS.to_string(), "--csv"])
            .args(args)
            .output()
            .expect("run redis-benchmark");
        let text = String::from_utf8_lossy(&out.stdout);
        // "test","rps",...: the second field of the data line.
        let figure = text
            .lines()
            .filter(|line| !line.starts_with("\"test\""))
            .find_map(|line| line.split(',').nth(1)?.trim_matches('"').parse().ok());
        if let Some(figure) = figure {
            return figure;
        }
        said.push_str(&format!("{text}{}\n", String::from_utf8_lossy(&out.stderr)));
    }
    panic!("no figure in redis-benchmark's output, three times: {said}")
}

struct Run {
    rate: f64,
    per_cpu_second: f64,
    client_cpu_us: f64,
    per_call: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

/// `in_flight` tasks deciding random keys through `store`; Redis CPU measured on `ports`.
async fn run(store: RedisStore, ports: &[u16], in_flight: usize) -> Run {
    let quotas = Quotas::from(Quota::per_second(10).unwrap());
    for n in 0..2000u64 {
        store
            .decide(&Ask::new(&format!("warm{n}"), &quotas))
            .await
            .unwrap();
    }
    let next = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(decisions() as usize)));
    let cpu_before = cpu_seconds(ports);
    let own_before = own_cpu_seconds();
    let calls_before = script_calls(ports);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (store, quotas, next, latencies) = (
            store.clone(),
            quotas.clone(),
            Arc::clone(&next),
            Arc::clone(&latencies),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity((decisions() as usize) / in_flight + 1);
            let mut seed = next
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                | 1;
            while next.fetch_add(1, Ordering::Relaxed) < decisions() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let key = format!("{:012}", seed % KEYS);
                let asked = Instant::now();
                store.decide(&Ask::new(&key, &quotas)).await.unwrap();
                seen.push(asked.elapsed());
            }
            latencies.lock().unwrap().extend(seen);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(ports) - cpu_before;
    let own = own_cpu_seconds() - own_before;
    let calls = script_calls(ports) - calls_before;
    assert_eq!(store.errors(), 0, "every decision was Redis's");
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    let decided = latencies.len() as f64;
    Run {
        rate: decided / elapsed,
        per_cpu_second: decided / cpu,
        client_cpu_us: own / decided * 1e6,
        per_call: decided / calls,
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
    }
}

fn print(what: &str, run: &Run) {
    println!(
        "  {what:<44} {:>9.0}/s  {:>9.0}/CPU-s  client {:>4.1} µs CPU  {:>5.1}/call  p50 {:>7.1?}  p99 {:>7.1?}  p99.9 {:>7.1?}",
        run.rate, run.per_cpu_second, run.client_cpu_us, run.per_call, run.p50, run.p99, run.p999
    );
}

fn main() {
    if Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("TOLLGATE_REQUIRE_REDIS").as_deref() != Ok("1"),
            "redis-benchmark is not installed, and TOLLGATE_REQUIRE_REDIS=1"
        );
        println!("skipped: redis-server, redis-cli and redis-benchmark are needed");
        return;
    }
    // This process on core 1, Redis on core 0.
    let _ = Command::new("taskset")
        .args(["-cp", "1", &std::process::id().to_string()])
        .output();
    let dir = std::env::temp_dir().join(format!("tollgate-redis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // 1. One node.
    let node = start_redis(&dir, &[]);
    let url = format!("redis://127.0.0.1:{}", node.port);
    let build = |batching: bool| {
        RedisStore::builder(url.as_str())
            .timeout(Duration::from_secs(5))
            .over_limit_cache(false)
            .batching(batching)
            .build()
            .unwrap()
    };
    let (unbatched, batched, half, sha) = runtime.block_on(async {
        let unbatched = run(build(false), &[node.port], IN_FLIGHT).await;
        let store = build(true);
        let sha = store.decision_script_sha().to_owned();
        let batched = run(store.clone(), &[node.port], IN_FLIGHT).await;
        // Batches the size a cluster node gets at 64 in flight a node (about 31 a call).
        let half = run(store, &[node.port], IN_FLIGHT / 2).await;
        (unbatched, batched, half, sha)
    });
    let quota = Quota::per_second(10).unwrap();
    let (interval, window) = (
        quota.interval().as_micros().to_string(),
        quota.window().as_micros().to_string(),
    );
    let one_decision = redis_benchmark(
        node.port,
        &[
            "EVALSHA",
            &sha,
            "1",
            "tollgate:{__rand_int__}:default:100000:1",
            // One decision: one quota, cost 1, no wait, nothing carried over; its interval
            // and window; then 0, Redis's own time.
            "1",
            "1",
            "1",
            "0",
            "0",
            &interval,
            &window,
            "0",
        ],
    );
    let get_set = cli(node.port, &["SCRIPT", "LOAD", GET_SET])
        .trim()
        .to_owned();
    let cpu_before = cpu_seconds(&[node.port]);
    let get_set_1 = redis_benchmark(
        node.port,
        &[
            "EVALSHA",
            &get_set,
            "1",
            "k:__rand_int__",
            "1700000000000000",
        ],
    );
    let get_set_1_per_cpu = benchmark_requests() as f64 / (cpu_seconds(&[node.port]) - cpu_before);
    let mut sixteen = vec!["EVALSHA".to_owned(), get_set.clone(), "16".to_owned()];
    sixteen.extend((0..16).map(|i| format!("k{i}:__rand_int__")));
    sixteen.push("1700000000000000".to_owned());
    let sixteen: Vec<&str> = sixteen.iter().map(String::as_str).collect();
    let get_set_16 = 16.0 * redis_benchmark(node.port, &sixteen);
    drop(node);

    // 2. A 3-master cluster, every node on core 0 as the single node was.
    let nodes: Vec<Server> = (0..3)
        .map(|_| start_redis(&dir, &["--cluster-enabled", "yes"]))
        .collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(created.status.success(), "cluster create failed");
    while !ports
        .iter()
        .all(|&p| cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (cluster, cluster_per_node, cluster_unbatched) = runtime.block_on(async {
        let store = |batching: bool| {
            RedisStore::cluster(addresses.iter().map(|a| format!("redis://{a}")))
                .timeout(Duration::from_secs(5))
                .over_limit_cache(false)
                .batching(batching)
                .connect()
        };
        let batched = store(true).await.unwrap();
        (
            run(batched.clone(), &ports, IN_FLIGHT).await,
            run(batched, &ports, 3 * IN_FLIGHT).await,
            run(store(false).await.unwrap(), &ports, 3 * IN_FLIGHT).await,
        )
    });
    // The same GET + SET PX script from redis-benchmark, on the cluster: what cluster mode
    // itself costs Redis per key, whatever the client.
    for &port in &ports {
        cli(port, &["SCRIPT", "LOAD", GET_SET]);
    }
    let cpu_before = cpu_seconds(&ports);
    let get_set_cluster = redis_benchmark_with(
        ports[0],
        &["--cluster", "-c", "3"],
        &[
            "EVALSHA",
            &get_set,
            "1",
            "k:{tag}:__rand_int__",
            "1700000000000000",
        ],
    );
    let get_set_cluster_per_cpu = benchmark_requests() as f64 / (cpu_seconds(&ports) - cpu_before);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);

    println!("1. One node: decisions per second, {IN_FLIGHT} in flight, {KEYS} random keys, one decision per key");
    print("tollgate, batching off (one EVALSHA each)", &unbatched);
    print("tollgate, batching on", &batched);
    println!(
        "  {:<44} {one_decision:>9.0}/s",
        "redis-benchmark -P 64, the script, 1 decision"
    );
    println!(
        "  {:<44} {get_set_1:>9.0}/s",
        "redis-benchmark GET+SET PX, 1 key per call"
    );
    println!(
        "  {:<44} {get_set_16:>9.0}/s",
        "redis-benchmark GET+SET PX, 16 keys per call"
    );
    println!(
        "  batching on ÷ off {:.2}; ÷ GET+SET 1 key {:.2}; ÷ GET+SET 16 keys {:.2}",
        batched.rate / unbatched.rate,
        batched.rate / get_set_1,
        batched.rate / get_set_16
    );
    println!("2. Per shard: decisions per second of Redis CPU time");
    print("one node, batching off", &unbatched);
    print("one node, batching on", &batched);
    print("one node, batching on, 32 in flight", &half);
    print("3-master cluster, batching, 64 in flight", &cluster);
    print(
        "3-master cluster, batching, 192 in flight",
        &cluster_per_node,
    );
    print(
        "3-master cluster, no batching, 192 in flight",
        &cluster_unbatched,
    );
    println!(
        "  per-node efficiency, cluster ÷ one node: batching {:.2} (64 in flight), {:.2} (192, 64 a node); no batching {:.2}",
        cluster.per_cpu_second / batched.per_cpu_second,
        cluster_per_node.per_cpu_second / batched.per_cpu_second,
        cluster_unbatched.per_cpu_second / unbatched.per_cpu_second,
    );
    println!(
        "  redis-benchmark GET+SET PX, 1 key per call: one node {get_set_1_per_cpu:.0}/CPU-s, cluster {get_set_cluster_per_cpu:.0}/CPU-s ({get_set_cluster:.0}/s): cluster mode itself {:.2}×",
        get_set_cluster_per_cpu / get_set_1_per_cpu
    );
    let cluster = cluster_per_node;
    for shards in [3.0, 10.0, 100.0] {
        println!(
            "  {shards:>3} shards, a core each: {:>10.0} decisions/s (= {shards} × {:.0}/CPU-s), {:.1}× one batched node",
            shards * cluster.per_cpu_second,
            cluster.per_cpu_second,
            shards * cluster.per_cpu_second / batched.per_cpu_second
        );
    }
}
