//! Floods against what surrounds the limits: the block table, and the logs.
//!
//! The log budget is process-wide, so the tests that read logs hold `LOGS` while they run, and
//! the block flood (which logs blocks) does too.

mod common;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tollgate::clock::TokioClock;
use tollgate::key::{ClientIp, Forwarding};
use tollgate::rate_limit::RateLimitLayer;
use tollgate::{MemoryStore, Quota};
use tower::{service_fn, Layer, Service, ServiceExt};

static LOGS: Mutex<()> = Mutex::new(());

fn from(peer: SocketAddr, forwarded_for: Option<&str>) -> Request<()> {
    let mut request = Request::get("/login");
    if let Some(client) = forwarded_for {
        request = request.header("x-forwarded-for", client);
    }
    let mut request = request.body(()).unwrap();
    request.extensions_mut().insert(peer);
    request
}

fn address(n: u32) -> String {
    std::net::Ipv4Addr::from(0x0b00_0000 + n).to_string()
}

/// A login limit of 1 a minute per client behind a trusted proxy, blocking for 15 minutes a
/// client refused twice within a minute.
fn login() -> impl Service<
    Request<()>,
    Response = Response<String>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone {
    let layer = RateLimitLayer::new(Quota::per_minute(1).unwrap())
        .key(ClientIp::trusting(["10.0.0.0/8"]).unwrap())
        .store(MemoryStore::builder().clock(TokioClock::new()).build())
        .block(Quota::per_minute(1).unwrap(), Duration::from_secs(900))
        .name("login");
    layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(String::from("in")))
    }))
}

// Each test runs on a runtime of its own: the lock only keeps them from running together.
#[allow(clippy::await_holding_lock)]
#[tokio::test(start_paused = true)]
async fn a_flood_of_blocked_addresses_ends_no_block_early() {
    let _logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let proxy: SocketAddr = "10.0.0.1:443".parse().unwrap();
    let mut login = login();
    // 250,000 addresses, each blocked: allowed once, refused twice (the second refusal
    // starts its block).
    let flood = 250_000;
    for client in 0..flood {
        assert_eq!(status(&mut login, client).await, StatusCode::OK);
        assert_eq!(
            status(&mut login, client).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status(&mut login, client).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // A minute on, the login limit has refilled for everyone: only blocks refuse now. The
    // first addresses blocked are still blocked a second before their block ends...
    tokio::time::advance(Duration::from_secs(898)).await;
    for client in (0..1_000).chain((0..flood).step_by(4_999)) {
        let request = from(proxy, Some(&address(client)));
        let refused = login.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "{client}");
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after <= 2, "{client}: {retry_after}");
    }
    // ...and let in once it has.
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(status(&mut login, 0).await, StatusCode::OK);
}

async fn status<S>(login: &mut S, client: u32) -> StatusCode
where
    S: Service<Request<()>, Response = Response<String>, Error = std::convert::Infallible>,
{
    let proxy: SocketAddr = "10.0.0.1:443".parse().unwrap();
    let request = from(proxy, Some(&address(client)));
    login
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap()
        .status()
}

#[test]
fn a_flood_writes_a_few_kilobytes_of_logs_a_second() {
    let _logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let (logs, _guard) = common::logs::capture(tracing::Level::INFO);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        // Each address is blocked, which is logged at WARN: 20,000 blocks.
        let proxy: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let mut login = login();
        for client in 0..20_000u32 {
            for _ in 0..3 {
                let request = from(proxy, Some(&address(client)));
                login.ready().await.unwrap().call(request).await.unwrap();
            }
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let text = logs.text();
    let lines = text.lines().count() as f64;
    let suppressed = text.matches("similar events suppressed").count() as f64;
    // The lines that say "suppressed" name the event too: count them apart.
    let blocks = text.matches("key blocked").count() as f64 - suppressed;
    // The budget: bursts of 20, then 10 a second; each event that passes may follow one line
    // saying how many were left out.
    assert!(
        blocks <= 20.0 + 10.0 * (seconds + 1.0),
        "{blocks} block lines in {seconds:.1} s"
    );
    assert!(lines <= 2.0 * blocks + 1.0, "{lines} lines");
    assert!(
        text.contains("similar events suppressed"),
        "the cap says what it left out: {text}"
    );
    let per_second = text.len() as f64 / seconds.max(1.0);
    assert!(
        per_second < 10_000.0,
        "{per_second:.0} bytes a second of logs"
    );
}

#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn a_proxy_without_the_forwarding_header_is_warned_about_once() {
    let _logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let (logs, _guard) = common::logs::capture(tracing::Level::INFO);
    // nginx writing X-Real-IP to a server that reads X-Forwarded-For: every request arrives
    // without the header read, and would be keyed as the proxy.
    let mut limit = RateLimitLayer::new(Quota::per_second(1_000).unwrap())
        .key(
            ClientIp::trusting(["10.0.0.0/8"])
                .unwrap()
                .header(Forwarding::XForwardedFor),
        )
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        }));
    for proxy in ["10.0.0.7:1", "10.0.0.8:1"] {
        for _ in 0..100 {
            let request = from(proxy.parse().unwrap(), None);
            limit.ready().await.unwrap().call(request).await.unwrap();
        }
    }
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("without the forwarding header read"))
        .collect();
    assert_eq!(warnings.len(), 2, "one per proxy: {text}");
    assert!(warnings[0].contains("10.0.0.7") && warnings[1].contains("10.0.0.8"));
    assert!(warnings.iter().all(|line| line.contains("CLIENT_IP_HEADER")
        && line.contains("x-forwarded-for")
        && line.contains("WARN")));
}
