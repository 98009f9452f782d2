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

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
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
