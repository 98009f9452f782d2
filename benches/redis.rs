//! Decisions per second through RedisStore, beside what the same Redis does for
//! `redis-benchmark` calling the store's own script (and a trivial one) in the same run.
//!
//! ```text
//! cargo bench --bench redis        # needs redis-server and redis-benchmark on PATH
//! ```
//!
//! Both sides keep 64 requests in flight on one connection over 100,000 random keys: the
//! store through one `ConnectionManager` (64 tasks on a single-threaded runtime), and
//! `redis-benchmark -c 1 -P 64 -r 100000`. The over-limit cache is off, so that every
//! decision is a round trip.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::store::RedisStore;
use tollgate::{Quota, Quotas, Store};

const KEYS: u64 = 100_000;
const IN_FLIGHT: usize = 64;
const DECISIONS: u64 = 1_000_000;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_benchmark(port: u16, args: &[&str]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            "1",
            "-P",
            "64",
            "-n",
            &DECISIONS.to_string(),
        ])
        .args(["-r", &KEYS.to_string(), "--csv"])
        .args(args)
        .output()
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps",...: the second field of the data line.
    text.lines()
        .filter(|line| !line.starts_with("\"test\""))
        .find_map(|line| line.split(',').nth(1)?.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no figure in redis-benchmark's output: {text}"))
}

fn main() {
    if Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: redis-server and redis-benchmark are needed");
        return;
    }
    let port = free_port();
    let _server = Server(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("redis://127.0.0.1:{port}");
    let quota = Quota::per_second(10).unwrap();
    let quotas = Quotas::from(quota.clone());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store_rate, sha, key_example) = runtime.block_on(async {
        let store = RedisStore::builder(url.as_str())
            .timeout(Duration::from_secs(5))
            .over_limit_cache(false)
            .build()
            .unwrap();
        // Warm up (and load the script).
        for n in 0..1000u64 {
            store
                .decide(&format!("{n:012}"), &quotas, 1, Duration::ZERO)
                .await
                .unwrap();
        }
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..IN_FLIGHT {
            let (store, quotas, next) = (store.clone(), quotas.clone(), Arc::clone(&next));
            tasks.push(tokio::spawn(async move {
                let mut seed = next
                    .fetch_add(1, Ordering::Relaxed)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    | 1;
                while next.fetch_add(1, Ordering::Relaxed) < DECISIONS {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let key = format!("{:012}", seed % KEYS);
                    store
                        .decide(&key, &quotas, 1, Duration::ZERO)
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let rate = DECISIONS as f64 / start.elapsed().as_secs_f64();
        (
            rate,
            store.decision_script_sha().to_owned(),
            store.key_of("__rand_int__", &quota),
        )
    });

    // The same script, with the same arguments, straight from redis-benchmark.
    let interval = quota.interval().as_micros().to_string();
    let window = quota.window().as_micros().to_string();
    let script_rate = redis_benchmark(
        port,
        &[
            "EVALSHA",
            &sha,
            "1",
            &key_example,
            "1",
            "0",
            &interval,
            &window,
        ],
    );
    let trivial = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "SCRIPT", "LOAD", "return 1"])
        .output()
        .expect("redis-cli");
    let trivial_sha = String::from_utf8_lossy(&trivial.stdout).trim().to_owned();
    let trivial_rate = redis_benchmark(port, &["EVALSHA", &trivial_sha, "0"]);

    println!("decisions per second, 64 in flight on one connection, {KEYS} random keys");
    println!("  tollgate RedisStore::decide            {store_rate:10.0}");
    println!("  redis-benchmark EVALSHA (same script)  {script_rate:10.0}");
    println!("  redis-benchmark EVALSHA 'return 1'     {trivial_rate:10.0}");
    println!(
        "  ratio store / same script              {:10.2}",
        store_rate / script_rate
    );
    println!(
        "  ratio same script / trivial script     {:10.2}",
        script_rate / trivial_rate
    );
}
