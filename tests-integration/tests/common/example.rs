//! The example server as deployed: its binary, started with the environment a test gives.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::free_port;

/// The example server, killed when dropped.
pub struct Server {
    child: Child,
    pub public: SocketAddr,
    pub admin: Option<SocketAddr>,
}

impl Server {
    /// Starts `target/debug/examples/server`, built now with Redis (`--features redis`), with
    /// `env`, and an admin listener unless `admin` is false.
    pub fn start(admin: bool, env: &[(&str, &str)]) -> Self {
        // Without the variables cargo sets for a test: build scripts that watch them (ring's
        // watches CARGO_MANIFEST_DIR) would otherwise rebuild on every alternate call.
        let test_only = |name: &str| {
            [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
                || name == "CARGO_TARGET_TMPDIR"
                || name == "CARGO_RUSTC_CURRENT_DIR"
        };
        let mut cargo = Command::new(env!("CARGO"));
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(test_only) {
                cargo.env_remove(name);
            }
        }
        let built = cargo
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args(["build", "--quiet", "-p", "tollgate", "--example", "server"])
            .args(["--features", "redis"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "the example server builds");
        let binary = std::env::current_exe()
            .unwrap()
            .parent() // deps
            .and_then(|deps| deps.parent())
            .unwrap()
            .join("examples/server");
        let public = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = admin.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PORT", public.port().to_string())
            .env("TRUSTED_PROXIES", "127.0.0.1")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(admin) = admin {
            command.env("ADMIN_ADDR", admin.to_string());
        }
        let server = Self {
            child: command.spawn().expect("the example server starts"),
            public,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in std::iter::once(public).chain(admin) {
            while TcpStream::connect(addr).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the server did not listen on {addr}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
