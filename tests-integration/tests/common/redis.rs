//! A private `redis-server` per test, on a unix socket in a temporary directory, nothing on
//! disk. Without `redis-server` on `PATH` the tests say they were skipped, unless
//! `TOLLGATE_REQUIRE_REDIS=1` (as in CI), which makes that a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate::store::RedisStore;

/// A private Redis on a unix socket, killed and its directory removed when dropped.
pub struct Redis {
    dir: PathBuf,
    child: Option<Child>,
    /// Arguments for `redis-server` beyond the defaults (`--requirepass …`, say).
    extra: Vec<String>,
}

static SERVERS: AtomicU64 = AtomicU64::new(0);

impl Redis {
    pub fn start() -> Option<Redis> {
        Self::start_with(&[])
    }

    /// A private Redis started with `extra` arguments too.
    pub fn start_with(extra: &[&str]) -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !found {
            if std::env::var("TOLLGATE_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                panic!("redis-server is not on PATH, and TOLLGATE_REQUIRE_REDIS=1");
            }
            eprintln!("SKIPPED: redis-server is not on PATH (set TOLLGATE_REQUIRE_REDIS=1 to fail instead)");
            return None;
        }
        let n = SERVERS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tollgate-redis-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        redis.spawn();
        Some(redis)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// The TCP port, when the server was started with `--port`.
    pub fn port(&self) -> Option<u16> {
        let at = self.extra.iter().position(|a| a == "--port")?;
        self.extra.get(at + 1)?.parse().ok()
    }

    /// `redis://127.0.0.1:PORT`, when the server listens on TCP too.
    pub fn tcp_url(&self) -> Option<String> {
        self.port().map(|port| format!("redis://127.0.0.1:{port}"))
    }

    /// A private Redis that also listens on a free TCP port of loopback (below 55536, so
    /// that a cluster's bus port, 10000 above, is a port too).
    pub fn start_tcp(extra: &[&str]) -> Option<Redis> {
        let port = free_port().to_string();
        let mut args = vec!["--port", port.as_str(), "--bind", "127.0.0.1"];
        args.extend_from_slice(extra);
        Self::start_with(&args)
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`) to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
    }

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let port_given = self.extra.iter().any(|a| a == "--port");
        let child = Command::new("redis-server")
            .args(if port_given {
                &[][..]
            } else {
                &["--port", "0"][..]
            })
            .arg("--unixsocket")
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..200 {
            if self.cli(&["PING"]).is_some_and(|out| out.trim() == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not come up");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The password the server was started with, if any.
    pub fn password(&self) -> Option<&str> {
        let at = self.extra.iter().position(|a| a == "--requirepass")?;
        self.extra.get(at + 1).map(String::as_str)
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut command = Command::new("redis-cli");
        if let Some(password) = self.password() {
            command.args(["--no-auth-warning", "-a", password]);
        }
        let out = command
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How many times a command ran, from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]).unwrap_or_default();
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn store(&self) -> RedisStore {
        RedisStore::builder(self.url())
            .timeout(Duration::from_millis(250))
            .build()
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback TCP port nothing listens on now, below 55536 (a cluster node's bus port is its
/// port + 10000), spread by process so that parallel test binaries rarely pick the same.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = 20_000 + (std::process::id() as u64 * 997) % 30_000;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::SeqCst) * 7) % 35_000 + 20_000;
        let port = port as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// A Redis Cluster on loopback: `masters` primaries with `replicas` replicas each, made with
/// `redis-cli --cluster create`, serving every slot when returned.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start(masters: usize, replicas: usize) -> Option<Cluster> {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            nodes.push(Redis::start_tcp(&[
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                // A replica takes over however long its primary has been gone.
                "--cluster-replica-validity-factor",
                "0",
            ])?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port().unwrap()))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Cluster { nodes };
        cluster.wait_until_ok();
        Some(cluster)
    }

    /// The seed URLs of every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().filter_map(Redis::tcp_url).collect()
    }

    /// Waits until every running node says `cluster_state:ok`, and every replica is in sync
    /// with its primary.
    pub fn wait_until_ok(&self) {
        for _ in 0..1000 {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let state = n.cli(&["CLUSTER", "INFO"]);
                let replication = n.cli(&["INFO", "replication"]).unwrap_or_default();
                state.is_some_and(|info| info.contains("cluster_state:ok"))
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the cluster did not reach cluster_state:ok");
    }

    /// The nodes that are primaries now.
    pub fn primaries(&self) -> Vec<&Redis> {
        self.nodes
            .iter()
            .filter(|n| {
                n.cli(&["ROLE"])
                    .is_some_and(|role| role.lines().next() == Some("master"))
            })
            .collect()
    }

    /// Sums a counter of `INFO` over the running nodes (`used_cpu_sys`, say).
    pub fn sum_info(&self, section: &str, field: &str) -> f64 {
        self.nodes
            .iter()
            .filter_map(|n| n.cli(&["INFO", section]))
            .filter_map(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix(&format!("{field}:")))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .sum()
    }
}

/// A private Redis, or `return` from the test (which prints SKIPPED) when there is none.
#[macro_export]
macro_rules! redis_or_skip {
    () => {
        match $crate::common::redis::Redis::start() {
            Some(redis) => redis,
            None => return,
        }
    };
}
