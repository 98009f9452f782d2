//! A real nginx on loopback, started with a generated configuration in a temporary directory
//! (nothing outside it is read or written), stopped when dropped.
//!
//! Without nginx on the machine, [`Nginx::start`] returns `None` and the test prints SKIPPED,
//! unless `TOLLGATE_REQUIRE_NGINX=1` (as `.ci/run` sets it): then it fails.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// nginx proxying every request to `upstream`, with `directives` (the `proxy_set_header`
    /// lines under test) in its `location /`.
    pub fn start(upstream: SocketAddr, directives: &str) -> Option<Self> {
        let Some(binary) = binary() else {
            assert!(
                std::env::var("TOLLGATE_REQUIRE_NGINX").as_deref() != Ok("1"),
                "nginx is not installed, and TOLLGATE_REQUIRE_NGINX=1"
            );
            eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "tollgate-nginx-{}-{}",
            std::process::id(),
            upstream.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let d = dir.display();
        let config = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            {directives}
        }}
    }}
}}
"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        let nginx = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(nginx.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(nginx)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir: PathBuf| dir.join("nginx"))
        .find(|candidate| Path::new(candidate).is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `method path` from the source address `from` (any of 127.0.0.0/8) to `to`, on a
/// connection of its own, with `headers`; returns the status and the body.
pub fn request_from(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let socket = socket2_free_connect(from, to);
    let mut stream = socket;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: tollgate.test\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A blocking connection from a chosen loopback source address, through tokio's socket
/// builder (which can bind before connecting) on a throwaway runtime.
fn socket2_free_connect(from: IpAddr, to: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let stream = socket.connect(to).await.unwrap();
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}
