//! Client IPs behind a real nginx, tried as an attacker would.
//!
//! nginx listens on 127.0.0.1 and reaches the server from 127.0.0.1, the one trusted proxy.
//! Clients connect to nginx from other loopback addresses (127.0.0.2, ...), so each has an
//! address of its own, as clients on the internet do. The login limit is 3 per minute per
//! client: nothing refills while a test runs.
//!
//! The tests fail, not skip, without nginx when `TOLLGATE_REQUIRE_NGINX=1` (`.ci/run`).

mod common;

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use common::nginx::{request_from, Nginx};
use common::TestServer;
use http::Response;
use tollgate::key::{ClientIp, Forwarding};
use tollgate::rate_limit::{RateLimitLayer, Refusal};
use tollgate::Quota;

/// nginx's textbook snippet: both headers, `X-Forwarded-For` appended to.
const NGINX_BOTH: &str = "proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;";
/// nginx setting only `X-Real-IP`: the client's `X-Forwarded-For` passes through.
const NGINX_REAL_IP_ONLY: &str = "proxy_set_header X-Real-IP $remote_addr;";
/// nginx replacing `Forwarded` with the peer it saw.
const NGINX_FORWARDED: &str = "proxy_set_header Forwarded \"for=$remote_addr\";";

/// nginx appending to the client's `Forwarded` (an RFC 7239 chain, as `$proxy_add_x_forwarded_for`
/// does for `X-Forwarded-For`). With no `Forwarded` from the client it sends `, for=…`.
const NGINX_FORWARDED_APPEND: &str =
    "proxy_set_header Forwarded \"$http_forwarded, for=$remote_addr\";";

/// A login route limited to 3 per minute per client, behind nginx on 127.0.0.1; refusals
/// say why in their body.
struct Deployment {
    nginx: Nginx,
    _server: TestServer,
    _runtime: tokio::runtime::Runtime,
}

impl Deployment {
    fn start(nginx_directives: &str, header: Forwarding) -> Option<Self> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client_ip = ClientIp::trusting(["127.0.0.1/32"]).unwrap().header(header);
        let app = Router::new().route(
            "/login",
            post(|| async { "logged in" }).layer(
                RateLimitLayer::new(Quota::per_minute(3).unwrap().named("login").unwrap())
                    .key(client_ip)
                    .refuse_with(|refusal: &Refusal| {
                        Response::builder()
                            .status(refusal.status())
                            .body(Body::from(refusal.to_string()))
                            .unwrap()
                    }),
            ),
        );
        let server = runtime.block_on(TestServer::start(app));
        let nginx = Nginx::start(server.addr, nginx_directives)?;
        Some(Self {
            nginx,
            _server: server,
            _runtime: runtime,
        })
    }

    /// A login from `client` through nginx with `headers`: the status and body.
    fn login(&self, client: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let from: IpAddr = client.parse().unwrap();
        request_from(from, self.nginx.addr, "POST", "/login", headers)
    }

    /// How many of `n` logins from `client` passed, each forging every forwarding header
    /// with a new address.
    fn forged_logins(&self, client: &str, n: u8) -> usize {
        (0..n)
            .filter(|i| {
                let forged = format!("198.51.100.{i}");
                let headers = [
                    ("Forwarded", format!("for={forged}")),
                    ("X-Forwarded-For", forged.clone()),
                    ("X-Real-IP", forged.clone()),
                ];
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let (status, body) = self.login(client, &headers);
                assert!(status == 200 || status == 429, "{status}: {body}");
                status == 200
            })
            .count()
    }

    fn honest_logins(&self, client: &str, n: usize) -> usize {
        (0..n).filter(|_| self.login(client, &[]).0 == 200).count()
    }
}

/// The attack of the report: 15 logins with rotating forged headers from one client.
fn forged_headers_gain_nothing(nginx: &str, header: Forwarding) {
    let Some(deployment) = Deployment::start(nginx, header) else {
        return;
    };
    assert_eq!(
        deployment.forged_logins("127.0.0.2", 15),
        3,
        "the attacker got more than its limit ({})",
        deployment.nginx.error_log()
    );
    // Honest clients behind the same proxy keep buckets of their own.
    assert_eq!(deployment.honest_logins("127.0.0.3", 5), 3);
    assert_eq!(deployment.honest_logins("127.0.0.4", 5), 3);
    // And the attacker's forgeries were not charged to anyone else.
    assert_eq!(deployment.honest_logins("198.51.100.1", 0), 0);
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn nginx_appending_x_forwarded_for_read_as_x_forwarded_for() {
    forged_headers_gain_nothing(NGINX_BOTH, Forwarding::XForwardedFor);
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn nginx_appending_x_forwarded_for_read_as_x_real_ip() {
    forged_headers_gain_nothing(NGINX_BOTH, Forwarding::XRealIp);
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn nginx_setting_only_x_real_ip() {
    forged_headers_gain_nothing(NGINX_REAL_IP_ONLY, Forwarding::XRealIp);
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn nginx_replacing_forwarded() {
    forged_headers_gain_nothing(NGINX_FORWARDED, Forwarding::Forwarded);
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn nginx_appending_to_forwarded() {
    forged_headers_gain_nothing(NGINX_FORWARDED_APPEND, Forwarding::Forwarded);
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn an_unclosed_quote_cannot_hide_the_proxys_element() {
    let Some(deployment) = Deployment::start(NGINX_FORWARDED_APPEND, Forwarding::Forwarded) else {
        return;
    };
    // Each form once opened a quoted-string that swallowed nginx's `, for=<client>`, so that
    // the client picked its address (here the victim's, 127.0.0.3): 12 of 12 logins passed.
    let forms = [
        "for=127.0.0.3;by=\"",
        "for=\"127.0.0.3",
        "for=127.0.0.3;proto=\"http\\\"",
        "for=127.0.0.3, for=\"[::1",
    ];
    for (i, form) in forms.iter().enumerate() {
        let attacker = format!("127.0.0.{}", 10 + i);
        let answers: Vec<(u16, String)> = (0..12)
            .map(|_| deployment.login(&attacker, &[("Forwarded", form)]))
            .collect();
        let passed = answers.iter().filter(|(status, _)| *status == 200).count();
        assert!(passed <= 3, "{form}: {passed} of 12 passed");
        for (status, body) in &answers {
            assert_eq!(*status, 400, "{form}: {body}");
            assert!(body.contains("never closed"), "{form}: {body}");
        }
    }
    // The victim whose address the forms named was charged nothing.
    assert_eq!(deployment.honest_logins("127.0.0.3", 5), 3);
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn the_default_header_is_x_forwarded_for() {
    // The safe default for nginx's textbook snippet: nothing to name.
    let client_ip = ClientIp::trusting(["127.0.0.1/32"]).unwrap();
    assert_eq!(client_ip.forwarding(), Forwarding::XForwardedFor);
    forged_headers_gain_nothing(NGINX_BOTH, client_ip.forwarding());
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn a_chain_too_long_is_refused_with_the_reason() {
    let Some(deployment) = Deployment::start(NGINX_BOTH, Forwarding::XForwardedFor) else {
        return;
    };
    // 32 hops from the client, one more from nginx: over the bound.
    let chain = vec!["203.0.113.9"; 32].join(", ");
    let (status, body) = deployment.login("127.0.0.2", &[("X-Forwarded-For", &chain)]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than 32 hops"), "{body}");
    // One fewer fits, and the right-most hop (the client's own address) counts.
    let chain = vec!["203.0.113.9"; 31].join(", ");
    assert_eq!(
        deployment
            .login("127.0.0.2", &[("X-Forwarded-For", &chain)])
            .0,
        200
    );
    // Garbage where the client's address would be cannot happen behind nginx (it appends
    // the real one), so garbage to its left is harmless.
    assert_eq!(
        deployment
            .login("127.0.0.2", &[("X-Forwarded-For", "unknown, ::zz")])
            .0,
        200
    );
}

#[test]
#[cfg_attr(no_nginx, ignore = "needs nginx")]
fn a_direct_client_cannot_claim_to_be_the_proxy() {
    // Reaching the server directly, not through nginx, from an untrusted address: every
    // forwarding header is the client's, and ignored.
    let Some(deployment) = Deployment::start(NGINX_BOTH, Forwarding::XForwardedFor) else {
        return;
    };
    let direct: SocketAddr = deployment._server.addr;
    let passed = (0..10u8)
        .filter(|i| {
            let forged = format!("198.51.100.{i}");
            request_from(
                "127.0.0.5".parse().unwrap(),
                direct,
                "POST",
                "/login",
                &[("X-Forwarded-For", &forged), ("X-Real-IP", &forged)],
            )
            .0 == 200
        })
        .count();
    assert_eq!(passed, 3);
}
