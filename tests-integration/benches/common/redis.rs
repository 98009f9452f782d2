//! A Redis server for the benches that need one, on a free loopback port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server`, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    (20_000..45_000)
        .step_by(17)
        .map(|p| p + (std::process::id() % 17) as u16)
        .find(|&p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        })
        .expect("a free port")
}

pub fn pinned(core: &str, program: &str) -> Command {
    if Command::new("taskset").arg("--version").output().is_ok() {
        let mut command = Command::new("taskset");
        command.args(["-c", core, program]);
        command
    } else {
        Command::new(program)
    }
}

pub fn start_redis(dir: &std::path::Path, extra: &[&str]) -> Server {
    let port = free_port();
    let child = pinned("0", "redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir)
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let server = Server { child, port };
    for _ in 0..200 {
        if cli(port, &["PING"]).trim() == "PONG" {
            return server;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("redis-server did not come up");
}

pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
