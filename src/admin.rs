//! An operator's endpoints (limit counts, metrics, live quota changes) behind an
//! [`AdminGuard`], on a listener of their own: Envoy's admin port is the model.
//!
//! Routes that read which clients are refused most, or change a limit while the server runs,
//! are a door around every limit. Served on the public port, they answer whoever reaches it:
//! behind a proxy on the same host every request comes from `127.0.0.1`, so "loopback only"
//! lets the whole internet in. So:
//!
//! 1. Serve them on a listener of their own, bound to a loopback or private address that the
//!    proxy does not forward to (the example server's `ADMIN_ADDR`, say `127.0.0.1:9000`).
//! 2. Put an [`AdminGuard`] in front of them. It refuses
//!    - a `Host` (or HTTP/2 `:authority`) that is not the listener's own address (DNS
//!      rebinding: a web page whose name resolves to `127.0.0.1` reaches the listener with
//!      its own name as `Host`) — 421;
//!    - cross-site requests from a browser on the operator's machine (`Origin` not the
//!      listener's own, `Sec-Fetch-Site` other than `same-origin` or `none`) — 403;
//!    - changes (any method but `GET` and `HEAD`) without `Authorization: Bearer <token>`,
//!      compared in constant time — 401; and every change when no token is configured — 403,
//!      saying how to configure one.
//!
//! Refusals are logged at WARN (within the process-wide log budget), with the reason.
//!
//! The example server does this: with `ADMIN_ADDR` set (say `127.0.0.1:9000`), a second
//! listener serves `GET /admin/limits` (each limit's counts and most refused clients, as
//! JSON), `POST /admin/limits/hello/{per_second}` (changes `/api/hello`'s rate while it runs;
//! needs `Authorization: Bearer $ADMIN_TOKEN`) and `GET /metrics` (Prometheus text), behind an
//! `AdminGuard`. `tests-integration/tests/example_server.rs` runs the example server behind a real nginx
//! and checks that no client reads or changes a limit.
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{body::Body, routing::{get, post}, Router};
//! use http::{Request, StatusCode};
//! use tollgate::admin::AdminGuard;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
//! let admin = Router::new()
//!     .route("/admin/limits", get(|| async { "{}" }))
//!     .route("/admin/limits/hello/{n}", post(|| async { "changed" }))
//!     .layer(AdminGuard::new(addr).token("a-long-random-secret"));
//! let ask = |method: &str, host: &str, token: Option<&str>| {
//!     let mut request = Request::builder().method(method).header("host", host);
//!     if let Some(token) = token {
//!         request = request.header("authorization", format!("Bearer {token}"));
//!     }
//!     let uri = if method == "GET" { "/admin/limits" } else { "/admin/limits/hello/20" };
//!     request.uri(uri).body(Body::empty()).unwrap()
//! };
//! let status = |request: Request<Body>| {
//!     let admin = admin.clone();
//!     async move { admin.oneshot(request).await.unwrap().status() }
//! };
//! assert_eq!(status(ask("GET", "127.0.0.1:9000", None)).await, StatusCode::OK);
//! assert_eq!(status(ask("GET", "evil.example", None)).await, StatusCode::MISDIRECTED_REQUEST);
//! assert_eq!(status(ask("POST", "127.0.0.1:9000", None)).await, StatusCode::UNAUTHORIZED);
//! assert_eq!(status(ask("POST", "127.0.0.1:9000", Some("guess"))).await, StatusCode::UNAUTHORIZED);
//! assert_eq!(
//!     status(ask("POST", "localhost:9000", Some("a-long-random-secret"))).await,
//!     StatusCode::OK
//! );
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, HOST, ORIGIN, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;
use tower_layer::Layer;
use tower_service::Service;

/// Guards an operator's endpoints: their own `Host` only, no cross-site requests, and a bearer
/// token for changes. See the [module docs](self).
///
/// # Clone
///
/// Cheap: clones share the configuration.
#[derive(Clone)]
#[must_use]
pub struct AdminGuard {
    rules: Arc<Rules>,
}

struct Rules {
    /// The `host[:port]` values the listener answers to, lowercase.
    hosts: Vec<String>,
    token: Token,
}

enum Token {
    /// Changes are refused; the message says how to allow them.
    None {
        how: String,
    },
    Bearer(Box<[u8]>),
}

impl AdminGuard {
    /// Guards endpoints served at `addr`, the admin listener's address: requests must name it
    /// in `Host` (`127.0.0.1:9000`; `localhost:9000` too for a loopback address). Changes are
    /// refused until a [`token`](Self::token) is set.
    pub fn new(addr: SocketAddr) -> Self {
        let port = addr.port();
        let mut hosts = vec![match addr {
            SocketAddr::V4(v4) => format!("{}:{port}", v4.ip()),
            SocketAddr::V6(v6) => format!("[{}]:{port}", v6.ip()),
        }];
        if addr.ip().is_loopback() {
            hosts.push(format!("localhost:{port}"));
        }
        if port == 80 {
            let bare: Vec<String> = hosts
                .iter()
                .filter_map(|host| host.strip_suffix(":80").map(str::to_owned))
                .collect();
            hosts.extend(bare);
        }
        Self {
            rules: Arc::new(Rules {
                hosts,
                token: Token::None {
                    how: "changes are disabled: no admin token is configured \
                          (AdminGuard::token); send it as `Authorization: Bearer <token>`"
                        .to_owned(),
                },
            }),
        }
    }

    /// Another `host[:port]` the listener is reached by (`admin.internal:9000`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        let host = host.into().to_ascii_lowercase();
        self.rules_mut().hosts.push(host);
        self
    }

    /// Changes need `Authorization: Bearer <token>`. Use a long random secret (32 characters
    /// or more); an empty one leaves changes refused.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        if !token.is_empty() {
            self.rules_mut().token = Token::Bearer(token.into_bytes().into_boxed_slice());
        }
        self
    }

    /// The token in the environment variable `name` (see [`token`](Self::token)); when it is
    /// unset or empty, changes are refused with a message that names the variable.
    pub fn token_from_env(mut self, name: &str) -> Self {
        match std::env::var(name) {
            Ok(token) if !token.is_empty() => self.token(token),
            _ => {
                self.rules_mut().token = Token::None {
                    how: format!(
                        "changes are disabled: start the server with {name} set to a secret, \
                         and send it as `Authorization: Bearer <secret>`"
                    ),
                };
                self
            }
        }
    }

    /// Whether changes can be made (a token is set).
    pub fn allows_changes(&self) -> bool {
        matches!(self.rules.token, Token::Bearer(_))
    }

    fn rules_mut(&mut self) -> &mut Rules {
        Arc::make_mut(&mut self.rules)
    }
}

impl Clone for Rules {
    fn clone(&self) -> Self {
        Self {
            hosts: self.hosts.clone(),
            token: match &self.token {
                Token::None { how } => Token::None { how: how.clone() },
                Token::Bearer(token) => Token::Bearer(token.clone()),
            },
        }
    }
}

impl fmt::Debug for AdminGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminGuard")
            .field("hosts", &self.rules.hosts)
            .field("allows_changes", &self.allows_changes())
            .finish()
    }
}

impl<S> Layer<S> for AdminGuard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            rules: Arc::clone(&self.rules),
        }
    }
}

pub(crate) use guarded::Guarded;

/// The service an [`AdminGuard`] makes: public in a private module, since no user names it.
mod guarded {
    use std::fmt;
    use std::sync::Arc;

    use super::Rules;

    /// The service an [`AdminGuard`](super::AdminGuard) makes.
    #[derive(Clone)]
    pub struct Guarded<S> {
        pub(super) inner: S,
        pub(super) rules: Arc<Rules>,
    }

    impl<S> fmt::Debug for Guarded<S> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Guarded").finish_non_exhaustive()
        }
    }
}

/// Why a request was refused, and how.
struct Refused {
    status: StatusCode,
    reason: String,
}

impl Rules {
    fn check<B>(&self, request: &Request<B>) -> Result<(), Refused> {
        let headers = request.headers();
        // Two `Host` lines are a malformed request (RFC 9112), whichever comes first.
        let hosts = headers.get_all(HOST).iter().count();
        let host = request
            .uri()
            .authority()
            .map(|authority| authority.as_str())
            .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()))
            .filter(|_| hosts <= 1);
        if !host.is_some_and(|host| self.is_own(host)) {
            return Err(Refused {
                status: StatusCode::MISDIRECTED_REQUEST,
                reason: "admin: this listener answers only to its own address as Host".into(),
            });
        }
        if is_cross_site(headers, |origin| self.is_own_origin(origin)) {
            return Err(Refused {
                status: StatusCode::FORBIDDEN,
                reason: "admin: cross-site requests are refused".into(),
            });
        }
        if matches!(*request.method(), Method::GET | Method::HEAD) {
            return Ok(());
        }
        match &self.token {
            Token::None { how } => Err(Refused {
                status: StatusCode::FORBIDDEN,
                reason: format!("admin: {how}"),
            }),
            Token::Bearer(token) => {
                let given = headers
                    .get(AUTHORIZATION)
                    .and_then(|value| bearer(value.as_bytes()))
                    .unwrap_or_default();
                if bool::from(given.ct_eq(token)) {
                    Ok(())
                } else {
                    Err(Refused {
                        status: StatusCode::UNAUTHORIZED,
                        reason: "admin: changes need `Authorization: Bearer <token>`".into(),
                    })
                }
            }
        }
    }

    fn is_own(&self, host: &str) -> bool {
        self.hosts.iter().any(|own| own.eq_ignore_ascii_case(host))
    }

    fn is_own_origin(&self, origin: &str) -> bool {
        ["http://", "https://"].iter().any(|scheme| {
            origin
                .get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
                && self.is_own(&origin[scheme.len()..])
        })
    }
}

/// Whether a browser says the request comes from another site: `Sec-Fetch-Site` other than
/// `same-origin` or `none` (typed by the user), or an `Origin` that is not the listener's.
fn is_cross_site(headers: &HeaderMap, own_origin: impl Fn(&str) -> bool) -> bool {
    let fetched_from = headers.get_all("sec-fetch-site").iter();
    if fetched_from
        .map(HeaderValue::as_bytes)
        .any(|site| site != b"same-origin" && site != b"none")
    {
        return true;
    }
    headers
        .get_all(ORIGIN)
        .iter()
        .any(|origin| !origin.to_str().is_ok_and(&own_origin))
}

/// At most 64 characters of `text`, for a log line whatever a client sent.
fn shortened(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value[7..].trim_ascii())
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Guarded<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.rules.check(&request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(refused) => {
                let peer = crate::key::peer_addr(&request);
                crate::logs::capped!(
                    WARN, "tollgate::admin", "admin request refused";
                    peer = %peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
                    method = %request.method(),
                    path = %shortened(request.uri().path()),
                    reason = %refused.reason
                );
                let mut response = Response::new(ResBody::from(format!("{}\n", refused.reason)));
                *response.status_mut() = refused.status;
                if refused.status == StatusCode::UNAUTHORIZED {
                    response
                        .headers_mut()
                        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut request = Request::builder().method(method).uri("/admin/limits");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    fn check(guard: &AdminGuard, method: &str, headers: &[(&str, &str)]) -> Result<(), u16> {
        guard
            .rules
            .check(&request(method, headers))
            .map_err(|refused| refused.status.as_u16())
    }

    #[test]
    fn only_the_listeners_own_address_is_answered() {
        let guard = AdminGuard::new("127.0.0.1:9000".parse().unwrap());
        assert_eq!(check(&guard, "GET", &[("host", "127.0.0.1:9000")]), Ok(()));
        assert_eq!(check(&guard, "GET", &[("host", "LOCALHOST:9000")]), Ok(()));
        for host in [
            "127.0.0.1",
            "localhost",
            "127.0.0.1:9001",
            "rebound.example:9000",
        ] {
            assert_eq!(check(&guard, "GET", &[("host", host)]), Err(421), "{host}");
        }
        assert_eq!(check(&guard, "GET", &[]), Err(421), "no Host at all");
        let twice = [("host", "127.0.0.1:9000"), ("host", "evil.example")];
        assert_eq!(check(&guard, "GET", &twice), Err(421), "two Host lines");
        let v6 = AdminGuard::new("[::1]:80".parse().unwrap()).host("admin.internal:80");
        for host in ["[::1]:80", "[::1]", "localhost", "admin.internal:80"] {
            assert_eq!(check(&v6, "GET", &[("host", host)]), Ok(()), "{host}");
        }
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let guard = AdminGuard::new("127.0.0.1:9000".parse().unwrap()).token("t");
        let own = ("host", "127.0.0.1:9000");
        for headers in [
            [own, ("origin", "http://evil.example")],
            [own, ("origin", "null")],
            [own, ("origin", "http://127.0.0.1:9001")],
            [own, ("sec-fetch-site", "cross-site")],
            [own, ("sec-fetch-site", "same-site")],
        ] {
            assert_eq!(check(&guard, "GET", &headers), Err(403), "{headers:?}");
            let mut with_token = headers.to_vec();
            with_token.push(("authorization", "Bearer t"));
            assert_eq!(check(&guard, "POST", &with_token), Err(403), "{headers:?}");
        }
        let two_sites = [
            own,
            ("sec-fetch-site", "none"),
            ("sec-fetch-site", "cross-site"),
        ];
        assert_eq!(check(&guard, "GET", &two_sites), Err(403));
        for headers in [
            [own, ("origin", "http://127.0.0.1:9000")],
            [own, ("sec-fetch-site", "same-origin")],
            [own, ("sec-fetch-site", "none")],
        ] {
            assert_eq!(check(&guard, "GET", &headers), Ok(()), "{headers:?}");
        }
    }

    #[test]
    fn changes_need_the_token() {
        let own = ("host", "127.0.0.1:9000");
        let closed = AdminGuard::new("127.0.0.1:9000".parse().unwrap());
        assert!(!closed.allows_changes());
        assert_eq!(check(&closed, "POST", &[own]), Err(403));
        assert_eq!(check(&closed, "GET", &[own]), Ok(()));
        let open = closed.token("s3cret-s3cret");
        assert!(open.allows_changes());
        for (method, authorization, expected) in [
            ("POST", None, Err(401)),
            ("POST", Some("Bearer s3cret"), Err(401)),
            ("POST", Some("Bearer s3cret-s3cret-"), Err(401)),
            ("POST", Some("Basic s3cret-s3cret"), Err(401)),
            ("DELETE", Some("bearer  s3cret-s3cret "), Ok(())),
            ("POST", Some("Bearer s3cret-s3cret"), Ok(())),
            ("PUT", Some("Bearer s3cret-s3cret"), Ok(())),
        ] {
            let mut headers = vec![own];
            headers.extend(authorization.map(|a| ("authorization", a)));
            assert_eq!(
                check(&open, method, &headers),
                expected,
                "{authorization:?}"
            );
        }
        assert!(!AdminGuard::new("127.0.0.1:1".parse().unwrap())
            .token("")
            .allows_changes());
    }

    #[test]
    fn an_unset_variable_names_itself_in_the_refusal() {
        let guard = AdminGuard::new("127.0.0.1:9000".parse().unwrap())
            .token_from_env("TOLLGATE_TEST_UNSET_ADMIN_TOKEN");
        let refused = guard
            .rules
            .check(&request("POST", &[("host", "127.0.0.1:9000")]))
            .unwrap_err();
        assert!(refused.reason.contains("TOLLGATE_TEST_UNSET_ADMIN_TOKEN"));
    }
}
