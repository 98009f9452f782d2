//! A small axum API behind tollgate's rate limits.
//!
//! ```text
//! cargo run --example server            # 127.0.0.1:3000
//! PORT=8080 cargo run --example server
//! TRUSTED_PROXIES=10.0.0.0/8,127.0.0.1 cargo run --example server
//! ```
//!
//! | route | limit |
//! | --- | --- |
//! | `GET /` | none |
//! | `GET /api/hello` | per client IP: 5 per second, burst 10 |
//! | `POST /api/login` | per client IP: 3 per minute (its own limit) |
//! | `GET /api/report` | per `x-api-key`: 100 per minute for `premium-demo`, 2 per minute for any other key or none |
//! | `GET /metrics` | none: the counters of the limits above, in Prometheus text format |
//!
//! The client IP is the TCP peer. `X-Forwarded-For`, `Forwarded` and `X-Real-IP` count only
//! when the peer is inside one of the CIDRs of `TRUSTED_PROXIES` (comma-separated).
//!
//! With `REDIS_URL` set (`redis://127.0.0.1:6379`), the limits live in Redis, so that several
//! copies of the server share them: `PORT=3000 REDIS_URL=... cargo run --example server` and
//! `PORT=3001 REDIS_URL=...` in another terminal let one burst through, across both.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::http::HeaderValue;
use axum::http::Response;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tollgate::key::{ClientIp, Header};
use tollgate::rate_limit::{RateLimitLayer, Refusal, Tiers};
use tollgate::store::{OnFailure, RedisStore};
use tollgate::{BoxError, MemoryStore, Quota, Quotas, Store};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tollgate=debug".into()),
        )
        .init();

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port:?} is not a port number"))?,
        Err(_) => 3000,
    };
    let trusted = std::env::var("TRUSTED_PROXIES").unwrap_or_default();
    let client_ip =
        ClientIp::trusting(trusted.split(',').map(str::trim).filter(|s| !s.is_empty()))?;

    // The recorder goes in first: layers register their counters when they are built.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let (app, store) = match std::env::var("REDIS_URL") {
        Ok(url) => {
            // Should Redis fail, each copy goes on limiting with its own memory.
            let redis = RedisStore::builder(url.as_str())
                .on_failure(OnFailure::Local(MemoryStore::new()))
                .build()?;
            (app(client_ip.clone(), redis)?, format!("redis at {url}"))
        }
        Err(_) => (
            app(client_ip.clone(), MemoryStore::new())?,
            "memory".to_owned(),
        ),
    };
    let app = app.route("/metrics", get(move || render(prometheus.clone())));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(
        address = %listener.local_addr()?,
        %store,
        trusted_proxies = ?client_ip.trusted().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "serving: GET / (no limit), GET /api/hello (5/s, burst 10 per IP), \
         POST /api/login (3/min per IP), GET /api/report (per x-api-key: 100/min premium-demo, 2/min others), \
         GET /metrics"
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// The routes and their limits, with their state in `store`.
fn app<S>(client_ip: ClientIp, store: S) -> Result<Router, BoxError>
where
    S: Store<IpAddr> + Store<HeaderValue>,
{
    let hello = Quota::per_second(5)?.with_burst(10)?.named("hello")?;
    let login = Quota::per_minute(3)?.named("login")?;
    let report_free = Quota::per_minute(2)?.named("report")?;
    let report_premium = Quota::per_minute(100)?.named("report-premium")?;

    let per_ip = |quota: Quota| {
        RateLimitLayer::new(quota)
            .key(client_ip.clone())
            .store(store.clone())
            .refuse_with(explain)
    };
    let per_api_key = RateLimitLayer::new(report_free.clone())
        .key(Header::new("x-api-key").or(""))
        .store(store.clone())
        .quotas(Tiers::new(report_free).tier("premium-demo", Quotas::from(report_premium)))
        .name("report")
        .refuse_with(explain);

    Ok(Router::new()
        .route(
            "/",
            get(|| async { "tollgate example server: try GET /api/hello\n" }),
        )
        .route(
            "/api/hello",
            get(|| async { "hello\n" }).layer(per_ip(hello).name("hello")),
        )
        .route(
            "/api/login",
            post(|| async { "logged in\n" }).layer(per_ip(login).name("login")),
        )
        .route(
            "/api/report",
            get(|| async { "report\n" }).layer(per_api_key),
        ))
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

/// Refusals with a body that says why, for people trying the server with curl.
fn explain(refusal: &Refusal) -> Response<Body> {
    let text = match refusal {
        Refusal::Limited(limited) => format!(
            "too many requests: quota \"{}\" ({} at once, one more every {:?}); retry in {} s\n",
            limited.quota().name(),
            limited.quota().burst(),
            limited.quota().interval(),
            tollgate::headers::retry_after::seconds(limited.retry_after()),
        ),
        other => format!("{other}\n"),
    };
    Response::builder()
        .status(refusal.status())
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(text))
        .unwrap_or_default()
}
