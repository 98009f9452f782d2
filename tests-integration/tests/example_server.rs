//! The example server as it is deployed: the release of `cargo run --example server`, behind a
//! real nginx on the same host (the README's set-up), attacked from outside.
//!
//! The admin routes live on their own listener (`ADMIN_ADDR`): no client of the public port,
//! direct or through nginx, can read or change a limit; the admin listener refuses a missing
//! or wrong token, a cross-site request and a foreign `Host`, and applies an authorised change.
//!
//! Clients connect from their own loopback addresses (127.0.0.2, ...), nginx from 127.0.0.1,
//! the one trusted proxy. Fails, not skips, without nginx when `TOLLGATE_REQUIRE_NGINX=1`.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};

use std::time::{Duration, Instant};

use common::example::Server;
use common::nginx::Nginx;

const TOKEN: &str = "an-admin-token-of-32-characters!";
/// nginx's textbook snippet.
const NGINX: &str = "proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;";

/// Sends `method path` from `from` to `to` with `headers` (`Host` among them, or
/// `tollgate.test`): the status and the body.
fn ask(
    from: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    try_ask(from, to, method, path, headers)
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer"))
}

/// [`ask`], or `None` when the connection is closed without an answer.
fn try_ask(
    from: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut stream = bind_and_connect(from.parse().unwrap(), to)?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str("Host: tollgate.test\r\n");
    }
    if method == "POST"
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        request.push_str("Content-Length: 0\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok())?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

fn bind_and_connect(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .ok()?;
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(from, 0)).ok()?;
        let stream = socket.connect(to).await.ok()?;
        let stream = stream.into_std().ok()?;
        stream.set_nonblocking(false).ok()?;
        Some(stream)
    })
}

fn statuses(from: &str, to: SocketAddr, method: &str, path: &str, n: usize) -> Vec<u16> {
    (0..n).map(|_| ask(from, to, method, path, &[]).0).collect()
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn behind_nginx_no_client_reads_or_changes_a_limit_and_the_admin_listener_holds() {
    let server = Server::start(true, &[("ADMIN_TOKEN", TOKEN)]);
    let Some(nginx) = Nginx::start(server.public, NGINX) else {
        return;
    };
    let admin = server.admin.unwrap();
    let admin_host = admin.to_string();
    let outsider = "127.0.0.2";

    // Through nginx (every request reaches the server from 127.0.0.1), with or without the
    // token and whatever Host: the public port serves no admin route.
    for (method, path) in [
        ("GET", "/admin/limits"),
        ("POST", "/admin/limits/hello/1000000000"),
        ("POST", "/admin/limits/hello/1"),
        ("GET", "/metrics"),
    ] {
        for headers in [
            vec![],
            vec![("Authorization", format!("Bearer {TOKEN}"))],
            vec![("Host", admin_host.clone())],
        ] {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let (status, body) = ask(outsider, nginx.addr, method, path, &headers);
            assert!(
                status == 404 || status == 405,
                "{method} {path}: {status} {body}"
            );
            // Straight to the public port, from this machine, too.
            let (status, _) = ask("127.0.0.1", server.public, method, path, &headers);
            assert!(
                status == 404 || status == 405,
                "{method} {path} direct: {status}"
            );
        }
    }
    // /api/hello kept its limit: 10 at once, then refused.
    let hello = statuses(outsider, nginx.addr, "GET", "/api/hello", 12);
    assert_eq!(&hello[..10], &[200; 10]);
    assert_eq!(hello[11], 429, "{hello:?}");

    // The admin listener, reached directly.
    let own = ("Host", admin_host.as_str());
    let bearer = format!("Bearer {TOKEN}");
    let token = ("Authorization", bearer.as_str());
    let (status, body) = ask("127.0.0.1", admin, "GET", "/admin/limits", &[own]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"hello\"") && body.contains("127.0.0.2"),
        "{body}"
    );
    let (status, body) = ask("127.0.0.1", admin, "GET", "/metrics", &[own]);
    assert_eq!(status, 200);
    assert!(
        body.contains("tollgate_rate_limit_limited_total{layer=\"hello\"}"),
        "{body}"
    );
    let change = "/admin/limits/hello/1";
    let wrong = ("Authorization", "Bearer an-admin-token-of-32-characters?");
    for (headers, expected) in [
        (vec![own], 401),
        (vec![own, wrong], 401),
        (vec![own, ("Authorization", "Basic YWRtaW46YWRtaW4=")], 401),
        // A form on another site, posted by the operator's browser.
        (
            vec![
                own,
                token,
                ("Origin", "http://evil.example"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            403,
        ),
        (vec![own, token, ("Sec-Fetch-Site", "cross-site")], 403),
        // DNS rebinding: a page of evil.example resolved to 127.0.0.1.
        (vec![("Host", "evil.example"), token], 421),
        (vec![("Host", "evil.example:80"), token], 421),
    ] {
        let (status, body) = ask("127.0.0.1", admin, "POST", change, &headers);
        assert_eq!(status, expected, "{headers:?}: {body}");
    }
    for host in ["evil.example", "127.0.0.1"] {
        let (status, _) = ask(
            "127.0.0.1",
            admin,
            "GET",
            "/admin/limits",
            &[("Host", host)],
        );
        assert_eq!(status, 421, "{host}");
    }
    // Nothing changed: a new client still gets 10.
    assert_eq!(
        statuses("127.0.0.3", nginx.addr, "GET", "/api/hello", 11),
        [[200; 10].as_slice(), &[429]].concat()
    );
    // The authorised change applies: 1 a second, burst 2.
    let (status, body) = ask("127.0.0.1", admin, "POST", change, &[own, token]);
    assert_eq!(
        (status, body.trim()),
        (200, "/api/hello: \"hello\": burst 2, one every 1 s")
    );
    assert_eq!(
        statuses("127.0.0.4", nginx.addr, "GET", "/api/hello", 3),
        [200, 200, 429]
    );
}

#[test]
fn changes_are_refused_saying_how_when_no_token_is_set() {
    let server = Server::start(true, &[]);
    let admin = server.admin.unwrap();
    let host = admin.to_string();
    let (status, body) = ask(
        "127.0.0.1",
        admin,
        "POST",
        "/admin/limits/hello/1",
        &[("Host", &host), ("Authorization", "Bearer anything-at-all")],
    );
    assert_eq!(status, 403);
    assert!(body.contains("ADMIN_TOKEN"), "{body}");
    // Reads still work.
    assert_eq!(
        ask(
            "127.0.0.1",
            admin,
            "GET",
            "/admin/limits",
            &[("Host", &host)]
        )
        .0,
        200
    );
}

#[test]
fn without_admin_addr_there_is_no_admin_route_anywhere() {
    let server = Server::start(false, &[("ADMIN_TOKEN", TOKEN)]);
    for path in ["/admin/limits", "/metrics"] {
        assert_eq!(ask("127.0.0.1", server.public, "GET", path, &[]).0, 404);
    }
}

#[test]
fn the_feed_is_one_limit_for_every_client() {
    // Three a second for everyone: three clients, one request each and one more, and the
    // fourth request is refused whoever sends it.
    let server = Server::start(false, &[("FEED_PER_SECOND", "3")]);
    let mut seen = Vec::new();
    for from in ["127.0.0.7", "127.0.0.8", "127.0.0.9", "127.0.0.10"] {
        seen.push(ask(from, server.public, "GET", "/api/feed", &[]).0);
    }
    assert_eq!(seen, [200, 200, 200, 429]);
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn a_405_or_a_404_spends_nothing() {
    let server = Server::start(false, &[]);
    let Some(nginx) = Nginx::start(server.public, NGINX) else {
        return;
    };
    // Wrong method on the login route, and routes that do not exist.
    assert_eq!(
        statuses("127.0.0.5", nginx.addr, "GET", "/api/login", 5),
        [405; 5]
    );
    assert_eq!(
        statuses("127.0.0.5", nginx.addr, "DELETE", "/api/hello", 5),
        [405; 5]
    );
    assert_eq!(
        statuses("127.0.0.5", nginx.addr, "GET", "/api/nothing", 5),
        [404; 5]
    );
    // The login limit is whole: 3 a minute.
    assert_eq!(
        statuses("127.0.0.5", nginx.addr, "POST", "/api/login", 4),
        [200, 200, 200, 429]
    );
    assert_eq!(
        statuses("127.0.0.5", nginx.addr, "GET", "/api/hello", 11),
        [[200; 10].as_slice(), &[429]].concat()
    );
}

#[test]
fn one_address_cannot_hold_every_connection() {
    let server = Server::start(false, &[("MAX_CONNECTIONS_PER_IP", "20")]);
    // 20 idle connections from 127.0.0.6: its cap.
    let held: Vec<TcpStream> = (0..20)
        .map(|_| bind_and_connect("127.0.0.6".parse().unwrap(), server.public).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The 21st is closed before it is served.
    let answer = try_ask("127.0.0.6", server.public, "GET", "/api/hello", &[]);
    assert_eq!(
        answer, None,
        "a connection past the cap is closed unanswered"
    );
    // Another address is served at once.
    let started = Instant::now();
    assert_eq!(
        ask("127.0.0.7", server.public, "GET", "/api/hello", &[]).0,
        200
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(held);
    // And the first again once its connections are gone.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        ask("127.0.0.6", server.public, "GET", "/api/hello", &[]).0,
        200
    );
}

#[test]
fn the_addresses_of_one_network_cannot_hold_every_connection() {
    // 20 a network at a cap of 2 an address: 10 addresses of 127.0.9.0/24 fill it.
    let server = Server::start(false, &[("MAX_CONNECTIONS_PER_IP", "2")]);
    let held: Vec<TcpStream> = (1..=10)
        .flat_map(|host| {
            let from: IpAddr = format!("127.0.9.{host}").parse().unwrap();
            [(); 2].map(|_| bind_and_connect(from, server.public).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        try_ask("127.0.9.11", server.public, "GET", "/api/hello", &[]),
        None,
        "a new address of a full network is closed unanswered"
    );
    assert_eq!(
        ask("127.0.10.1", server.public, "GET", "/api/hello", &[]).0,
        200
    );
    drop(held);
}
