//! A key flood against the release example server, with honest clients beside it.
//!
//! ```text
//! scripts/flood-bench.sh        # builds, then runs this with the server on core 0
//! ```
//!
//! The server trusts 127.0.0.1 as its proxy and reads `X-Forwarded-For`, so that one machine
//! can play millions of clients. wrk (core 1) sends every request from a new address in
//! 10.0.0.0/8, alternating `GET /api/hello` (per IP) and `GET /api/report` with a new
//! `x-api-key` (per IP, then per key): millions of distinct keys, several times the memory
//! store's cap. Beside it, on core 1 too:
//!
//! - *known* clients (192.168.0.0/24), each at 2 requests/s on `/api/hello` (5/s, burst 10):
//!   their state expires between requests, so each request needs a fresh state;
//! - *new* clients (172.16.0.0/12), a new one every 50 ms, each sending its burst of 10 to
//!   `/api/hello`, or 2 requests with a new API key to `/api/report`: all within their limits.
//!
//! It prints how many distinct keys the flood sent, the share of honest requests served, and
//! the server's peak resident memory (`VmHWM`).
//!
//! Environment: `FLOOD_SECONDS` (default 45), `PORT` (default 3200), `SERVER` (default
//! `target/release/examples/server`).

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

const LUA: &str = r#"
local n = 0
request = function()
  n = n + 1
  local ip = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  if n % 2 == 0 then
    return wrk.format("GET", "/api/hello", {["X-Forwarded-For"] = ip})
  end
  return wrk.format("GET", "/api/report", {["X-Forwarded-For"] = ip, ["x-api-key"] = "flood-" .. n})
end
"#;

/// Requests sent and served (200) by one kind of honest client; errors and timeouts count as
/// not served.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    served: AtomicU64,
}

impl Tally {
    fn record(&self, served: bool) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if served {
            self.served.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn line(&self, what: &str) -> String {
        let (sent, served) = (
            self.sent.load(Ordering::Relaxed),
            self.served.load(Ordering::Relaxed),
        );
        format!(
            "{what:44} {served:6} of {sent:6} served ({:.2}%)",
            100.0 * served as f64 / sent.max(1) as f64
        )
    }
}

async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> bool {
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::new()).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
        Ok(Ok(response)) => response.status() == 200,
        _ => false,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` asks benches to list themselves
    }
    // Under `cargo test --benches` (CI's short run): 5 s against the debug build of the
    // example, which `cargo test` has just built.
    let quick = common::quick();
    let seconds: u64 = std::env::var("FLOOD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 5 } else { 45 });
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3200);
    let default_server = if quick {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/debug/examples/server"
        )
    } else {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/release/examples/server"
        )
    };
    let server_path = std::env::var("SERVER").unwrap_or_else(|_| default_server.into());
    let base = format!("http://127.0.0.1:{port}");

    let mut server = Command::new("taskset")
        .args(["-c", "0", &server_path])
        .env("PORT", port.to_string())
        .env("TRUSTED_PROXIES", "127.0.0.1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the release example server (cargo build --release --example server)");
    let lua = std::env::temp_dir().join(format!("tollgate-flood-{}.lua", std::process::id()));
    std::fs::write(&lua, LUA).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        for _ in 0..100 {
            if get(&client, &format!("{base}/"), &[]).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = server.id();
        let wrk = tokio::process::Command::new("taskset")
            .args(["-c", "1", "wrk", "-t1", "-c64"])
            .arg(format!("-d{seconds}s"))
            .arg("-s")
            .arg(&lua)
            .arg(&base)
            .output();
        let known = Arc::new(Tally::default());
        let new_hello = Arc::new(Tally::default());
        let new_key = Arc::new(Tally::default());
        let honest = {
            let (client, base) = (client.clone(), base.clone());
            let (known, new_hello, new_key) = (known.clone(), new_hello.clone(), new_key.clone());
            async move {
                // Let the flood fill the store first.
                tokio::time::sleep(Duration::from_secs(seconds / 5)).await;
                let until = tokio::time::Instant::now() + Duration::from_secs(seconds * 3 / 4);
                let mut tasks = tokio::task::JoinSet::new();
                for i in 1..=20u32 {
                    let (client, tally, url) =
                        (client.clone(), known.clone(), format!("{base}/api/hello"));
                    tasks.spawn(async move {
                        let ip = format!("192.168.0.{i}");
                        let mut tick = tokio::time::interval(Duration::from_millis(500));
                        while tokio::time::Instant::now() < until {
                            tick.tick().await;
                            tally.record(get(&client, &url, &[("x-forwarded-for", &ip)]).await);
                        }
                    });
                }
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                let mut n = 0u32;
                while tokio::time::Instant::now() < until {
                    tick.tick().await;
                    n += 1;
                    let ip = format!("172.{}.{}.{}", 16 + (n >> 16), (n >> 8) & 255, n & 255);
                    let client = client.clone();
                    if n % 2 == 0 {
                        let (tally, url) = (new_hello.clone(), format!("{base}/api/hello"));
                        tasks.spawn(async move {
                            for _ in 0..10 {
                                tally.record(get(&client, &url, &[("x-forwarded-for", &ip)]).await);
                            }
                        });
                    } else {
                        let (tally, url) = (new_key.clone(), format!("{base}/api/report"));
                        tasks.spawn(async move {
                            let key = format!("honest-{n}");
                            for _ in 0..2 {
                                let headers = [("x-forwarded-for", ip.as_str()), ("x-api-key", &key)];
                                tally.record(get(&client, &url, &headers).await);
                            }
                        });
                    }
                }
                while tasks.join_next().await.is_some() {}
            }
        };
        let (wrk, ()) = tokio::join!(wrk, honest);
        let wrk = wrk.expect("wrk runs (apt-get install wrk)");
        let wrk_out = String::from_utf8_lossy(&wrk.stdout).into_owned();
        let peak_rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let metrics = match client
            .request(
                http::Request::get(format!("{base}/metrics"))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
        {
            Ok(response) => {
                use http_body_util::BodyExt;
                let body = response.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8_lossy(&body)
                    .lines()
                    .filter(|l| l.starts_with("tollgate_store_"))
                    .map(|l| format!("  {l}\n"))
                    .collect::<String>()
            }
            Err(_) => String::new(),
        };
        let requests = wrk_out
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        format!(
            "flood: {requests} requests from {requests} distinct addresses ({} distinct API keys) in {seconds} s\n\
             {}\n{}\n{}\n{}\nserver peak RSS (VmHWM): {peak_rss}\nstore metrics:\n{metrics}\nwrk:\n{wrk_out}",
            requests / 2,
            known.line("known clients, 2/s against 5/s (hello)"),
            new_hello.line("new clients, burst of 10 (hello)"),
            new_key.line("new API keys, 2 against 2/min (report)"),
            "(every honest request above is within its client's limit)",
        )
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&lua);
    println!("{report}");
}
