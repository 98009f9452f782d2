//! A small axum API behind tollgate's rate limits, served as a production server should be.
//!
//! ```text
//! cargo run --example server            # 127.0.0.1:3000
//! PORT=8080 cargo run --example server
//! TRUSTED_PROXIES=127.0.0.1 CLIENT_IP_HEADER=x-real-ip cargo run --example server
//! ```
//!
//! | route | limit |
//! | --- | --- |
//! | `GET /` | none |
//! | `GET /api/hello` | per client IP: 5 per second, burst 10; a near-limit event (INFO log, `tollgate_rate_limit_near_limit_total`) when a client has 20% left |
//! | `GET /api/search` | none enforced: a candidate limit of 2 per second per client IP runs in shadow mode, counted in `tollgate_rate_limit_limited_total{layer="search",shadow="true"}` |
//! | `POST /api/login` | per client IP: 3 per minute (its own limit); past 10 refusals a minute, blocked for 15 minutes |
//! | `GET /api/report` | per client IP: 20 per minute; then per `x-api-key`: 100 per minute for `premium-demo`, 2 per minute for any other key or none |
//! | `GET /api/feed` | one limit for everyone, and for the whole fleet when the limits live in Redis: `FEED_PER_SECOND` a second (default 1000), burst a second of it |
//!
//! Each limit is attached to the handler it protects (`MethodRouter::route_layer`), so that a
//! 404 or a 405 (a `GET` to the login route, say) spends nothing.
//!
//! The operator's routes are on a listener of their own, at `ADMIN_ADDR` (for example
//! `127.0.0.1:9000`; none without it), never on the public port, behind a
//! [`tollgate::admin::AdminGuard`]: they answer only to their own address as `Host`, refuse
//! cross-site requests, and take changes only with `Authorization: Bearer $ADMIN_TOKEN`
//! (refused, saying so, when `ADMIN_TOKEN` is unset). Keep `ADMIN_ADDR` on loopback or a
//! private network your proxy does not forward to.
//!
//! | admin route | what |
//! | --- | --- |
//! | `GET /admin/limits` | each limit's counts and most refused clients (keys shown as in the logs), and the memory store's size or the Redis store's fleet, errors and decisions made alone while Redis was away, as JSON |
//! | `POST /admin/limits/hello/{per_second}` | changes `/api/hello`'s rate (burst twice the rate) while the server runs, each client keeping the share of its burst it has spent; needs the token |
//! | `GET /metrics` | the counters of the limits, in Prometheus text format |
//!
//! The client IP is the TCP peer. When the peer is inside one of the CIDRs of
//! `TRUSTED_PROXIES` (comma-separated), the client is read from the one forwarding header
//! named by `CLIENT_IP_HEADER`: `x-forwarded-for` (the default), `forwarded` or `x-real-ip`.
//! Every other forwarding header is ignored: name the one your proxy writes. A trusted proxy
//! whose requests lack that header is warned about once a minute (it would be keyed as
//! itself, and all its clients would share its limits).
//!
//! Built with `--features redis` (`redis-tls` for TLS), with `REDIS_URL` set
//! (`redis://127.0.0.1:6379`, or `rediss://` for TLS, with `REDIS_CA_FILE` naming a PEM file
//! of a private CA), the limits live in Redis, so that several copies of the server share
//! them: `PORT=3000 REDIS_URL=... cargo run --example server --features redis` and
//! `PORT=3001 REDIS_URL=...` in another terminal let one burst through, across both. (The
//! quick start's `cargo run --example server` builds without Redis, and says so if a Redis is
//! configured.) With `REDIS_CLUSTER` set instead (comma-separated seed nodes,
//! `redis://10.0.0.1:6379,redis://10.0.0.2:6379`), they live in a Redis Cluster; with
//! `REDIS_SENTINELS` (comma-separated Sentinel URLs) in the primary the Sentinels name for
//! `REDIS_SENTINEL_MASTER` (default `mymaster`), followed through failovers. Each is
//! checked at start-up: a wrong URL, password, certificate or a cluster named as a single
//! Redis stops the server with a message that says which. Should Redis fail later, each copy
//! limits with its own memory and its share of each limit, 1/(the copies that announced
//! themselves in Redis in the last 3 s; `FLEET_SIZE` overrides the count). API keys are written into Redis key names as a keyed hash
//! under `TOLLGATE_KEY_SECRET` (give every copy the same one, 16 bytes or more); without it
//! they are written in clear, as the server says at start-up.
//!
//! Against slow and idle clients: a request's headers must arrive within 10 s (an idle
//! keep-alive connection is closed after as long), a request must be answered within 10 s
//! (408 otherwise), a client that stops reading its responses is dropped when a write has
//! waited 10 s, at most 10,000 connections are served at once (further ones wait in the
//! kernel's accept queue; keep the process's file-descriptor limit above that) and at most
//! `MAX_CONNECTIONS_PER_IP` (default 100) from one client address (an IPv6 /64) and ten times
//! that from one network (an IPv4 /24, an IPv6 /48), so that neither one address nor the
//! addresses of one network can hold every slot (trusted proxies are exempt: cap clients
//! there), at most 8 from one address on the admin listener, an accept
//! error pauses accepting for a second, and Ctrl-C closes the listener, then lets requests in
//! flight finish for up to 10 s (a second Ctrl-C stops at once).
//!
//! `RUST_LOG` sets the log level (default `info`; `tollgate=debug` shows every denial, with
//! API keys as a keyed hash and client IPs in clear).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request};
use axum::http::{HeaderValue, Response, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tollgate::admin::AdminGuard;
use tollgate::key::{ClientIp, Forwarding, Header, LogKeys};
use tollgate::rate_limit::{LimiterStats, LiveQuotas, RateLimitLayer, Refusal, Tiers};
#[cfg(feature = "redis")]
use tollgate::store::{OnFailure, RedisStore};
use tollgate::{MemoryStore, Quota, Quotas, Store};
use tower::BoxError;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::timeout::TimeoutLayer;
use tracing_subscriber::EnvFilter;

/// How long a client may take to send a request's headers, or stay idle between requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take, from its headers to the response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write may wait for a client that does not read its responses.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to pause accepting after an error (out of file descriptors, say), so that the
/// loop neither spins nor floods the log while connections drain.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// The most connections served at once.
const MAX_CONNECTIONS: usize = 10_000;
/// The most connections served at once from one client address, by default.
const MAX_CONNECTIONS_PER_IP: usize = 100;
/// The most connections the admin listener serves at once, and from one address.
const MAX_ADMIN_CONNECTIONS: usize = 64;
const MAX_ADMIN_CONNECTIONS_PER_IP: usize = 8;
/// How long Ctrl-C waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port:?} is not a port number"))?,
        Err(_) => 3000,
    };
    let trusted = std::env::var("TRUSTED_PROXIES").unwrap_or_default();
    let header: Forwarding = match std::env::var("CLIENT_IP_HEADER") {
        Ok(name) => name.parse()?,
        Err(_) => Forwarding::XForwardedFor,
    };
    let client_ip =
        ClientIp::trusting(trusted.split(',').map(str::trim).filter(|s| !s.is_empty()))?
            .header(header);
    let per_ip_cap: usize = match std::env::var("MAX_CONNECTIONS_PER_IP") {
        Ok(n) => match n.parse() {
            Ok(0) | Err(_) => {
                return Err(
                    format!("MAX_CONNECTIONS_PER_IP={n:?}: give a number, 1 or more").into(),
                )
            }
            Ok(n) => n,
        },
        Err(_) => MAX_CONNECTIONS_PER_IP,
    };
    let admin_addr: Option<SocketAddr> = match std::env::var("ADMIN_ADDR") {
        Ok(addr) => Some(addr.parse().map_err(|_| {
            format!("ADMIN_ADDR={addr:?} is not an address and port (127.0.0.1:9000)")
        })?),
        Err(_) => None,
    };

    // The recorder goes in first: layers register their counters when they are built.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let limits = Limits::default();
    let (app, store) = match redis_store().await? {
        Some((redis, what)) => {
            #[cfg(feature = "redis")]
            {
                *limits.redis.lock().unwrap() = Some(redis.clone());
            }
            (app(client_ip.clone(), redis, &limits)?, what)
        }
        None => {
            let memory = MemoryStore::new();
            let app = app(client_ip.clone(), memory.clone(), &limits)?;
            *limits.memory.lock().unwrap() = Some(memory);
            (app, "memory".to_owned())
        }
    };
    let app = app.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    ));
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(
        address = %listener.local_addr()?,
        %store,
        trusted_proxies = ?client_ip.trusted().iter().map(ToString::to_string).collect::<Vec<_>>(),
        client_ip_header = %client_ip.forwarding(),
        max_connections_per_ip = per_ip_cap,
        "serving: GET / (no limit), GET /api/hello (5/s, burst 10 per IP), \
         GET /api/search (2/s per IP in shadow: nothing refused), POST /api/login (3/min per IP), GET /api/report (20/min per IP, then per x-api-key: \
         100/min premium-demo, 2/min others)"
    );
    let per_ip = PerIp::new(per_ip_cap, client_ip.clone());
    let public = serve(listener, app, MAX_CONNECTIONS, Some(per_ip));
    match admin_addr {
        None => {
            tracing::info!(
                "no admin listener (ADMIN_ADDR unset): /admin/limits and /metrics are not served"
            );
            public.await;
        }
        Some(addr) => {
            let guard = AdminGuard::new(addr).token_from_env("ADMIN_TOKEN");
            let admin_listener = TcpListener::bind(addr).await?;
            tracing::info!(
                address = %admin_listener.local_addr()?,
                changes = if guard.allows_changes() { "with the ADMIN_TOKEN bearer token" } else { "refused: ADMIN_TOKEN is unset" },
                "admin listener: GET /admin/limits, POST /admin/limits/hello/{{per_second}}, GET /metrics; \
                 keep it off the internet"
            );
            let admin = admin(&limits, prometheus).layer(guard);
            // A local process holding every admin connection would lock operators out.
            let per_ip = PerIp::new(MAX_ADMIN_CONNECTIONS_PER_IP, ClientIp::new(Vec::new()));
            let admin = serve(admin_listener, admin, MAX_ADMIN_CONNECTIONS, Some(per_ip));
            tokio::join!(public, admin);
        }
    }
    // Hot keys' leased tokens not spent go back to Redis, for the rest of the fleet.
    #[cfg(feature = "redis")]
    let redis = limits.redis.lock().unwrap().clone();
    #[cfg(feature = "redis")]
    if let Some(redis) = redis {
        let given = redis.release_leases().await;
        tracing::info!(leases = given, "gave unspent leased tokens back to Redis");
    }
    Ok(())
}

/// The operator's routes, for the admin listener only.
fn admin(limits: &Limits, prometheus: PrometheusHandle) -> Router {
    let (report, change) = (limits.clone(), limits.clone());
    Router::new()
        .route("/metrics", get(move || render(prometheus.clone())))
        .route(
            "/admin/limits/hello/{per_second}",
            post(move |Path(per_second): Path<u32>| {
                let change = change.clone();
                async move { change.set_hello(per_second) }
            }),
        )
        .route(
            "/admin/limits",
            get(move || {
                let report = report.clone();
                async move { report.report() }
            }),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// The routes and their limits, with their state in `store`.
///
/// One store holds every limit's state: it counts states per quota, so that a flood on one
/// route cannot evict another route's clients (see `MemoryStore`'s "At the cap").
/// Built without Redis (`--features redis`): `None`, or an error naming the flag when a Redis
/// is configured.
#[cfg(not(feature = "redis"))]
async fn redis_store() -> Result<Option<(MemoryStore, String)>, BoxError> {
    for name in ["REDIS_URL", "REDIS_CLUSTER", "REDIS_SENTINELS"] {
        if std::env::var_os(name).is_some() {
            return Err(format!(
                "{name} is set, but this server was built without Redis: run it with \
                 `cargo run --example server --features redis` (`redis-tls` for rediss://)"
            )
            .into());
        }
    }
    Ok(None)
}

/// The Redis store `REDIS_URL` or `REDIS_CLUSTER` names, checked now; `None` for neither.
#[cfg(feature = "redis")]
async fn redis_store() -> Result<Option<(RedisStore, String)>, BoxError> {
    // The copies count themselves in Redis unless FLEET_SIZE says how many there are.
    let fleet_size: Option<u32> = match std::env::var("FLEET_SIZE") {
        Ok(n) => match n.parse() {
            Ok(0) | Err(_) => {
                return Err(
                    format!("FLEET_SIZE={n:?}: give the number of copies, 1 or more").into(),
                )
            }
            Ok(n) => Some(n),
        },
        Err(_) => None,
    };
    let var = |name: &str| std::env::var(name).ok();
    let list = |urls: String| -> Vec<String> {
        let urls = urls.split(',').map(str::trim).filter(|s| !s.is_empty());
        urls.map(str::to_owned).collect()
    };
    let (builder, what) = match (
        var("REDIS_URL"),
        var("REDIS_CLUSTER"),
        var("REDIS_SENTINELS"),
    ) {
        (None, None, None) => return Ok(None),
        (Some(url), None, None) => (RedisStore::builder(url), "redis"),
        (None, Some(seeds), None) => (RedisStore::cluster(list(seeds)), "redis cluster"),
        (None, None, Some(sentinels)) => {
            let master = var("REDIS_SENTINEL_MASTER").unwrap_or_else(|| "mymaster".to_owned());
            (
                RedisStore::sentinel(list(sentinels), master),
                "redis via sentinel",
            )
        }
        _ => return Err("set one of REDIS_URL, REDIS_CLUSTER and REDIS_SENTINELS".into()),
    };
    #[cfg(feature = "redis-tls")]
    let builder = match std::env::var("REDIS_CA_FILE") {
        Ok(path) => builder.tls_root_certificates(
            std::fs::read(&path).map_err(|e| format!("REDIS_CA_FILE={path}: {e}"))?,
        ),
        Err(_) => builder,
    };
    #[cfg(not(feature = "redis-tls"))]
    if std::env::var_os("REDIS_CA_FILE").is_some() {
        return Err(
            "REDIS_CA_FILE is set, but this server was built without TLS to Redis: \
                    run it with `--features redis-tls`"
                .into(),
        );
    }
    // API keys go into key names as a keyed hash under the fleet's secret.
    let builder = match std::env::var("TOLLGATE_KEY_SECRET") {
        Ok(secret) => builder.key_secret(secret),
        Err(_) => builder,
    };
    // Should Redis fail, each copy goes on limiting with its own memory, and its share.
    let builder = builder.on_failure(OnFailure::Local(MemoryStore::new()));
    let builder = match fleet_size {
        Some(n) => builder.fleet_size(n),
        None => builder,
    };
    let store = builder.connect().await.map_err(|error| error.to_string())?;
    let fleet = match fleet_size {
        Some(n) => format!("fleet of {n} (FLEET_SIZE)"),
        None => "fleet counted in Redis".to_owned(),
    };
    Ok(Some((store, format!("{what}, {fleet}"))))
}

/// Every layer's counts, and the memory store's, for `/admin/limits`.
#[derive(Clone, Default)]
struct Limits {
    layers: Arc<Mutex<Vec<(&'static str, LimiterStats)>>>,
    memory: Arc<Mutex<Option<MemoryStore>>>,
    /// The Redis store, when the limits live there: its fleet and what it decided alone.
    #[cfg(feature = "redis")]
    redis: Arc<Mutex<Option<RedisStore>>>,
    /// `/api/hello`'s quota, changed at run time by `/admin/limits/hello/{per_second}`.
    hello: Arc<std::sync::OnceLock<LiveQuotas>>,
}

impl Limits {
    /// Sets `/api/hello` to `per_second` a second, burst twice that.
    fn set_hello(&self, per_second: u32) -> (StatusCode, String) {
        let quota = Quota::per_second(per_second)
            .and_then(|q| q.with_burst(per_second.saturating_mul(2)))
            .and_then(|q| q.named("hello"));
        match (quota, self.hello.get()) {
            (Ok(quota), Some(live)) => {
                let said = format!("/api/hello: {quota}\n");
                live.set(quota);
                (StatusCode::OK, said)
            }
            (Err(error), _) => (StatusCode::BAD_REQUEST, format!("{error}\n")),
            (_, None) => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
        }
    }

    /// Counts for the layer named `name`.
    fn stats(&self, name: &'static str) -> LimiterStats {
        let stats = LimiterStats::new();
        self.layers.lock().unwrap().push((name, stats.clone()));
        stats
    }

    /// The JSON of `/admin/limits`: keys as the layers log them (client IPs in clear, API
    /// keys hashed).
    fn report(&self) -> Response<Body> {
        let layers: serde_json::Map<String, serde_json::Value> = (self.layers.lock().unwrap())
            .iter()
            .map(|(name, stats)| {
                let now = stats.snapshot();
                let value = serde_json::json!({
                    "allowed": now.allowed,
                    "refused": now.refused,
                    "waited": now.waited,
                    "near_limit": now.near_limit,
                    "blocked": now.blocked,
                    "decided_alone": now.decided_alone,
                    "top_refused": now.top_refused,
                });
                ((*name).to_owned(), value)
            })
            .collect();
        let store = self.memory.lock().unwrap().as_ref().map(|memory| {
            serde_json::json!({ "tracked_states": memory.len(), "evicted": memory.evicted() })
        });
        #[cfg(feature = "redis")]
        let redis = self.redis.lock().unwrap().as_ref().map(|redis| {
            serde_json::json!({
                "fleet": redis.fleet(),
                "errors": redis.errors(),
                "local_decisions": redis.local_decisions(),
                "local_keys": redis.local_keys(),
                "leased_keys": redis.leased_keys(),
            })
        });
        #[cfg(not(feature = "redis"))]
        let redis: Option<serde_json::Value> = None;
        let body =
            serde_json::json!({ "layers": layers, "memory_store": store, "redis_store": redis });
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(format!("{body:#}\n")))
            .unwrap()
    }
}

fn app<S>(client_ip: ClientIp, store: S, limits: &Limits) -> Result<Router, BoxError>
where
    S: Store<IpAddr> + Store<HeaderValue> + Store<tollgate::key::Global>,
{
    let feed_per_second: u32 = match std::env::var("FEED_PER_SECOND") {
        Ok(n) => n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            format!(
                "FEED_PER_SECOND={n:?}: give the requests a second the fleet may serve, 1 or more"
            )
        })?,
        Err(_) => 1000,
    };
    let feed = Quota::per_second(feed_per_second)?.named("feed")?;
    let hello = Quota::per_second(5)?.with_burst(10)?.named("hello")?;
    let login = Quota::per_minute(3)?.named("login")?;
    let search = Quota::per_second(2)?.named("search")?;
    let report_per_ip = Quota::per_minute(20)?.named("report-ip")?;
    let report_free = Quota::per_minute(2)?.named("report")?;
    let report_premium = Quota::per_minute(100)?.named("report-premium")?;

    let per_ip = |quota: Quota, name: &'static str| {
        RateLimitLayer::new(quota)
            .key(client_ip.clone())
            .store(store.clone())
            // Client IPs are no secret here: log them in clear (API keys stay hashed).
            .log_keys(LogKeys::Clear)
            .name(name)
            .stats(limits.stats(name))
            .refuse_with(explain)
    };
    // Any string is an API key here, so each invented key would get a bucket of its own: the
    // per-IP limit in front makes every key a client invents cost it a request from its own
    // IP's budget. (With a real key check, unknown keys would be refused before any bucket.)
    let per_api_key = RateLimitLayer::new(report_free.clone())
        .key(Header::new("x-api-key").or(""))
        .store(store.clone())
        .quotas(Tiers::new(report_free).tier("premium-demo", Quotas::from(report_premium)))
        .name("report")
        .stats(limits.stats("report"))
        .refuse_with(explain);

    Ok(Router::new()
        .route(
            "/",
            get(|| async { "tollgate example server: try GET /api/hello\n" }),
        )
        .route(
            "/api/hello",
            get(|| async { "hello\n" }).route_layer(
                per_ip(hello.clone(), "hello")
                    // Changed while the server runs, from /admin/limits/hello/{per_second}.
                    .quotas(limits.hello.get_or_init(|| LiveQuotas::new(hello)).clone())
                    .near_limit(20),
            ),
        )
        .route(
            "/api/search",
            // Trying a limit on real traffic before enforcing it: nothing is refused, the
            // metrics and logs say what would have been.
            get(|| async { "results\n" }).route_layer(per_ip(search, "search").shadow()),
        )
        .route(
            "/api/login",
            post(|| async { "logged in\n" }).route_layer(
                // Past 10 refusals a minute, a client is shut out for 15 minutes.
                per_ip(login, "login").block(Quota::per_minute(10)?, Duration::from_secs(900)),
            ),
        )
        .route(
            "/api/feed",
            // One limit for everyone (the global key): through Redis, for the whole fleet.
            get(|| async { "feed\n" }).route_layer(
                RateLimitLayer::new(feed)
                    .store(store.clone())
                    .name("feed")
                    .stats(limits.stats("feed"))
                    .refuse_with(explain),
            ),
        )
        .route(
            "/api/report",
            // The per-IP limit first (outermost), then the per-key one.
            get(|| async { "report\n" }).route_layer(
                ServiceBuilder::new()
                    .layer(per_ip(report_per_ip, "report-ip"))
                    .layer(per_api_key),
            ),
        ))
}

/// Serves `app` on `listener` until Ctrl-C, with the timeouts above, at most `max_connections`
/// at once, and with `per_ip`, at most its cap from one client address.
async fn serve(listener: TcpListener, app: Router, max_connections: usize, per_ip: Option<PerIp>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connections = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit.expect("never closed"),
            _ = ctrl_c.as_mut() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: pause (a spinning loop would take the core
                    // and flood the log) while connections close.
                    tracing::warn!(%error, "accept failed; pausing {ACCEPT_ERROR_PAUSE:?}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = ctrl_c.as_mut() => break,
        };
        // One address holding its cap: closed at once, before a byte is read.
        let per_ip_permit = match per_ip.as_ref().map(|cap| cap.admit(peer.ip())) {
            Some(None) => {
                tracing::debug!(%peer, "connection refused: this address holds its cap");
                continue;
            }
            Some(permit) => permit,
            None => None,
        };
        // A client that never reads its responses would hold the connection (and the kernel's
        // buffers) forever: a write that cannot go on for WRITE_TIMEOUT ends it.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let stream = Box::pin(stream);
        // What `into_make_service_with_connect_info` would do: the peer for `ClientIp`.
        let service = app.clone().map_request(move |mut request: Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop((permit, per_ip_permit));
        });
    }
    // New connections are refused from now on, not left waiting.
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    tokio::select! {
        drained = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()) => {
            if drained.is_err() {
                tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}: stopping anyway");
            }
        }
        _ = tokio::signal::ctrl_c() => tracing::warn!("second Ctrl-C: stopping at once"),
    }
}

/// Connections per client address (an IPv6 /64), at most `per_address` each, and per network
/// (an IPv4 /24, an IPv6 /48), at most `per_network`, so that one address cannot hold every
/// slot, nor a hundred addresses of one network; trusted proxies carry many clients and are
/// not counted.
#[derive(Clone)]
struct PerIp {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_address: usize,
    per_network: usize,
    proxies: ClientIp,
}

/// One connection counted against its address and network (none for a trusted proxy);
/// uncounted when dropped.
struct PerIpPermit {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    counted: Option<[IpAddr; 2]>,
}

impl PerIp {
    fn new(per_address: usize, proxies: ClientIp) -> Self {
        Self {
            open: Arc::default(),
            per_address,
            per_network: per_address.saturating_mul(10),
            proxies,
        }
    }

    /// A permit for one more connection from `peer`, unless its address or its network
    /// holds its cap; a trusted proxy's connections are not counted.
    fn admit(&self, peer: IpAddr) -> Option<PerIpPermit> {
        let peer = peer.to_canonical();
        let open = Arc::clone(&self.open);
        if self.proxies.trusted().iter().any(|net| net.contains(&peer)) {
            return Some(PerIpPermit {
                open,
                counted: None,
            });
        }
        let group = |v4: u8, v6: u8| {
            let bits = if peer.is_ipv4() { v4 } else { v6 };
            ipnet::IpNet::new(peer, bits).map_or(peer, |net| net.trunc().addr())
        };
        // An address (an IPv6 /64, as the limits see clients), and its network.
        let (address, network) = (group(32, 64), group(24, 48));
        let mut counts = self.open.lock().unwrap();
        let full = |counts: &HashMap<IpAddr, usize>, at: IpAddr, cap: usize| {
            counts.get(&at).is_some_and(|&n| n >= cap)
        };
        if full(&counts, address, self.per_address) || full(&counts, network, self.per_network) {
            return None;
        }
        for at in [address, network] {
            *counts.entry(at).or_insert(0) += 1;
        }
        Some(PerIpPermit {
            open,
            counted: Some([address, network]),
        })
    }
}

impl Drop for PerIpPermit {
    fn drop(&mut self) {
        let Some(counted) = self.counted else { return };
        let mut open = self.open.lock().unwrap();
        for at in counted {
            if let Some(count) = open.get_mut(&at) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&at);
                }
            }
        }
    }
}

/// The `/metrics` page: every counter and histogram, in Prometheus text format.
async fn render(prometheus: PrometheusHandle) -> Response<Body> {
    let mut response = Response::new(Body::from(prometheus.render()));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Whole seconds, rounded up, as `Retry-After` says them: "retry in 0 s" would be a lie.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Refusals with a body that says why, for people trying the server with curl.
fn explain(refusal: &Refusal) -> Response<Body> {
    let text = match refusal {
        Refusal::Limited(limited) => format!(
            "too many requests: quota \"{}\" ({} at once, one more every {:?}); retry in {} s\n",
            limited.quota().name(),
            limited.quota().burst(),
            limited.quota().interval(),
            whole_seconds(limited.retry_after()),
        ),
        other => format!("{other}\n"),
    };
    Response::builder()
        .status(refusal.status())
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(text))
        .unwrap_or_default()
}
