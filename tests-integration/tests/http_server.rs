//! The layer on a real axum server on a loopback port, driven by a real HTTP client.
//!
//! Quotas here are per minute or slower, so that nothing refills while a test runs: the tests
//! count admissions, they do not time them.

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::Router;
use common::{client, fetch, header, statuses, TestServer};
use http::StatusCode;
use tollgate::key::{ClientIp, Header, LogKeys, PeerIp};
use tollgate::rate_limit::{LimitEventKind, RateLimitLayer, Tiers};
use tollgate::{MemoryStore, Quota, Quotas};

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(n).unwrap()
}

#[tokio::test]
async fn router_layer_limits_across_per_request_clones() {
    // axum clones the service for every request: the limit must hold anyway (the failure of
    // tower::limit::RateLimit, axum issue 2634).
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(per_minute(5)).key(PeerIp::new()));
    let server = TestServer::start(app).await;
    let client = client();
    let got = statuses(&client, &server.url("/"), &[], 8).await;
    assert_eq!(got, [200, 200, 200, 200, 200, 429, 429, 429]);
}

#[tokio::test]
async fn concurrent_clients_share_the_limit() {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(per_minute(20)));
    let server = TestServer::start(app).await;
    let client = client();
    let url = server.url("/");
    let requests = (0..100).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { fetch(&client, &url, &[]).await.status() })
    });
    let mut ok = 0;
    for request in requests {
        if request.await.unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 20);
}

#[tokio::test]
async fn responses_carry_honest_headers() {
    let quota = Quota::per_minute(3).unwrap().named("login").unwrap();
    let app = Router::new()
        .route("/login", post(|| async { "in" }))
        .layer(RateLimitLayer::new(quota).key(PeerIp::new()));
    let server = TestServer::start(app).await;
    let client = client();
    let post = || {
        http::Request::post(server.url("/login"))
            .body(http_body_util::Full::default())
            .unwrap()
    };
    let first = common::send(&client, post()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        Some("\"login\";q=3;w=60")
    );
    assert_eq!(header(&first, "ratelimit"), Some("\"login\";r=2;t=20"));
    assert_eq!(header(&first, "retry-after"), None);
    common::send(&client, post()).await;
    common::send(&client, post()).await;
    let refused = common::send(&client, post()).await;
    assert_eq!(refused.status(), 429);
    // 20 s minus the few milliseconds the test took: rounded up, never down.
    assert_eq!(header(&refused, "retry-after"), Some("20"));
    assert_eq!(header(&refused, "ratelimit"), Some("\"login\";r=0;t=20"));
}

#[tokio::test]
async fn route_layers_are_independent() {
    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "hi" }).layer(RateLimitLayer::new(per_minute(2)).key(PeerIp::new())),
        )
        .route(
            "/login",
            post(|| async { "in" }).layer(RateLimitLayer::new(per_minute(1)).key(PeerIp::new())),
        )
        .route("/", get(|| async { "free" }))
        .route_layer(
            RateLimitLayer::new(per_minute(100))
                .key(PeerIp::new())
                .name("outer"),
        );
    let server = TestServer::start(app).await;
    let client = client();
    assert_eq!(
        statuses(&client, &server.url("/hello"), &[], 3).await,
        [200, 200, 429]
    );
    let login = || {
        http::Request::post(server.url("/login"))
            .body(http_body_util::Full::default())
            .unwrap()
    };
    assert_eq!(common::send(&client, login()).await.status(), 200);
    assert_eq!(common::send(&client, login()).await.status(), 429);
    assert_eq!(
        statuses(&client, &server.url("/"), &[], 3).await,
        [200, 200, 200]
    );
    // route_layer does not apply to unmatched routes: 404, not limited.
    assert_eq!(
        fetch(&client, &server.url("/nope"), &[]).await.status(),
        404
    );
}

#[tokio::test]
async fn tiers_by_api_key() {
    let free = Quotas::from(per_minute(2));
    let paid = Quotas::from(per_minute(100).named("paid").unwrap());
    let app = Router::new()
        .route("/report", get(|| async { "report" }))
        .layer(
            RateLimitLayer::new(free.clone())
                .key(Header::new("x-api-key").or(""))
                .quotas(Tiers::new(free).tier("premium-demo", paid)),
        );
    let server = TestServer::start(app).await;
    let client = client();
    let url = server.url("/report");
    assert_eq!(
        statuses(&client, &url, &[("x-api-key", "a")], 3).await,
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&client, &url, &[("x-api-key", "b")], 3).await,
        [200, 200, 429]
    );
    assert_eq!(statuses(&client, &url, &[], 3).await, [200, 200, 429]);
    let premium = statuses(&client, &url, &[("x-api-key", "premium-demo")], 20).await;
    assert!(premium.iter().all(|s| *s == 200));
    let last = fetch(&client, &url, &[("x-api-key", "premium-demo")]).await;
    assert_eq!(header(&last, "ratelimit"), Some("\"paid\";r=79;t=1"));
}

#[tokio::test]
async fn forged_forwarding_headers_from_untrusted_peers_do_not_escape() {
    // The test client is 127.0.0.1, which is not trusted here.
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(per_minute(3)).key(ClientIp::trusting(["10.0.0.0/8"]).unwrap()));
    let server = TestServer::start(app).await;
    let client = client();
    let mut ok = 0;
    for i in 0..30 {
        let forged = format!("198.51.100.{i}");
        let headers = [
            ("x-forwarded-for", forged.as_str()),
            ("x-real-ip", forged.as_str()),
            ("forwarded", &format!("for={forged}")),
        ];
        if fetch(&client, &server.url("/"), &headers).await.status() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 3);
}

#[tokio::test]
async fn trusted_proxies_forward_the_client() {
    // Now the loopback peer is the trusted proxy: the right-most untrusted hop counts.
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(per_minute(2)).key(ClientIp::trusting(["127.0.0.1/32"]).unwrap()),
    );
    let server = TestServer::start(app).await;
    let client = client();
    let url = server.url("/");
    let via = |chain: &'static str| [("x-forwarded-for", chain)];
    // Clients forging the left-most entry still land on their real address.
    assert_eq!(
        statuses(&client, &url, &via("6.6.6.1, 203.0.113.1"), 1).await,
        [200]
    );
    assert_eq!(
        statuses(&client, &url, &via("6.6.6.2, 203.0.113.1"), 1).await,
        [200]
    );
    assert_eq!(
        statuses(&client, &url, &via("6.6.6.3, 203.0.113.1"), 1).await,
        [429]
    );
    assert_eq!(
        statuses(&client, &url, &via("203.0.113.2"), 3).await,
        [200, 200, 429]
    );
    // A chain that cannot be read is refused, not guessed at.
    let bad = fetch(&client, &url, &via("203.0.113.3, nonsense")).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn missing_peer_address_is_a_clear_server_error() {
    // Served without `into_make_service_with_connect_info`: no peer address.
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(per_minute(2)).key(PeerIp::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let response = fetch(&client(), &format!("http://{addr}/"), &[]).await;
    assert_eq!(response.status(), 500);
    task.abort();
}

#[tokio::test]
async fn missing_api_key_is_a_clear_client_error() {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(per_minute(2)).key(Header::new("x-api-key")));
    let server = TestServer::start(app).await;
    assert_eq!(fetch(&client(), &server.url("/"), &[]).await.status(), 400);
}

#[tokio::test]
async fn hooks_see_every_denial() {
    let seen: Arc<Mutex<Vec<(LimitEventKind, String)>>> = Arc::default();
    let log = Arc::clone(&seen);
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(per_minute(1))
            .key(PeerIp::new())
            .log_keys(LogKeys::Clear) // IPs, in clear: asked for
            .on_event(move |event| {
                log.lock()
                    .unwrap()
                    .push((event.kind, format!("{:?}", event.key)))
            }),
    );
    let server = TestServer::start(app).await;
    statuses(&client(), &server.url("/"), &[], 3).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|(kind, key)| *kind == LimitEventKind::Denied && key == "127.0.0.1"));
}

#[tokio::test]
async fn the_store_answers_status_queries_and_resets() {
    let store = MemoryStore::new();
    let quotas = Quotas::from(per_minute(2));
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(quotas.clone())
            .key(PeerIp::new())
            .store(store.clone()),
    );
    let server = TestServer::start(app).await;
    let client = client();
    statuses(&client, &server.url("/"), &[], 2).await;
    let me: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(store.status(&me, &quotas).remaining(), 0);
    store.reset(&me, &quotas);
    assert_eq!(store.status(&me, &quotas).remaining(), 2);
    assert_eq!(
        statuses(&client, &server.url("/"), &[], 3).await,
        [200, 200, 429]
    );
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_layer_answers_on_a_router_without_handle_error_layer() {
    use std::time::Duration;
    use tollgate::concurrency::ConcurrencyLayer;
    // One request in flight per API key; a second waits 100 ms at most, then gets 503.
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "done"
            }),
        )
        .layer(
            ConcurrencyLayer::new(1)
                .key(Header::new("x-api-key"))
                .wait(Duration::from_millis(100)),
        );
    let server = TestServer::start(app).await;
    let url = server.url("/slow");
    let hung = {
        let url = url.clone();
        tokio::spawn(async move { fetch(&client(), &url, &[("x-api-key", "k")]).await })
    };
    // Let the first request reach the handler and take the slot.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let busy = fetch(&client(), &url, &[("x-api-key", "k")]).await;
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    let no_key = fetch(&client(), &url, &[]).await;
    assert_eq!(no_key.status(), StatusCode::BAD_REQUEST);
    hung.abort();
}

/// Standard base64, for byte strings whose length is a multiple of 3.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b));
        for i in 0..4 {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// The byte sequence of the `pk` parameter of every item of a field, which must all agree.
fn partition_key_of(value: &str) -> Vec<u8> {
    let list = sfv::Parser::new(value.as_bytes())
        .parse::<sfv::List>()
        .unwrap();
    let keys: Vec<Vec<u8>> = list
        .iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => item
                .params
                .get("pk")
                .and_then(|v| v.as_byte_sequence())
                .unwrap_or_else(|| panic!("no pk in {value}"))
                .to_vec(),
            sfv::ListEntry::InnerList(_) => panic!("{value}"),
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{value}");
    keys[0].clone()
}

#[tokio::test]
async fn quota_units_and_partition_keys_when_configured() {
    use tollgate::learn::{LearnEventKind, LearnLayer};
    use tollgate::rate_limit::{HeaderOptions, QuotaUnit};
    use tollgate::retry::Classification;
    use tower::{Layer, ServiceExt};

    const KEY: &str = "sk-live-5ecret-api-key";
    let quotas = Quotas::new([
        per_minute(2).named("calls").unwrap(),
        Quota::per_hour(100).unwrap().named("hourly").unwrap(),
    ])
    .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(quotas)
            .key(Header::new("x-api-key"))
            .headers(
                HeaderOptions::default()
                    .quota_unit(QuotaUnit::Requests)
                    .partition_key(true),
            ),
    );
    let server = TestServer::start(app).await;
    let client = client();
    let url = server.url("/");
    let first = fetch(&client, &url, &[("x-api-key", KEY)]).await;
    let policy = header(&first, "ratelimit-policy").unwrap();
    let ratelimit = header(&first, "ratelimit").unwrap();
    let pk = partition_key_of(policy);
    assert_eq!(pk.len(), 6, "48 bits");
    assert_eq!(partition_key_of(ratelimit), pk, "one key, one partition");
    // The draft's form, `pk=:<base64>:`, on every item, after the other parameters.
    let b64 = base64(&pk);
    assert_eq!(
        policy,
        format!(
            "\"calls\";q=2;qu=\"requests\";w=60;pk=:{b64}:, \
             \"hourly\";q=100;qu=\"requests\";w=3600;pk=:{b64}:"
        )
    );
    assert_eq!(ratelimit, format!("\"calls\";r=1;t=30;pk=:{b64}:"));

    // The key itself appears nowhere, on an allowed answer or a refusal; nor are the
    // partition key's bytes any part of it.
    assert!(!KEY.as_bytes().windows(pk.len()).any(|w| w == pk));
    fetch(&client, &url, &[("x-api-key", KEY)]).await;
    let refused = fetch(&client, &url, &[("x-api-key", KEY)]).await;
    assert_eq!(refused.status(), 429);
    let other = fetch(&client, &url, &[("x-api-key", "sk-live-another-key")]).await;
    for response in [&first, &refused, &other] {
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains("sk-live") && !value.contains("5ecret"),
                "{name}: {value}"
            );
        }
    }
    // The refusal carries the same partition key; another key, another one.
    assert_eq!(partition_key_of(header(&refused, "ratelimit").unwrap()), pk);
    assert_eq!(
        partition_key_of(header(&refused, "ratelimit-policy").unwrap()),
        pk
    );
    assert_ne!(partition_key_of(header(&other, "ratelimit").unwrap()), pk);

    // A client reads the answer as ever: `qu="requests"` is a count of requests, `pk` is
    // not in the way. The retry layer's reading:
    assert_eq!(
        Classification::pushback(refused.headers()),
        Some(Classification::RetryAfter(std::time::Duration::from_secs(
            30
        )))
    );
    // The learn layer's, through the same reader, from a host that answers those headers.
    let learned = Arc::new(Mutex::new(None));
    let record = Arc::clone(&learned);
    let refused_headers = refused.headers().clone();
    let host = tower::service_fn(move |_: http::Request<()>| {
        let mut response = http::Response::new(());
        *response.headers_mut() = refused_headers.clone();
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let learner = LearnLayer::new()
        .on_event(move |event| {
            if event.kind == LearnEventKind::Learned {
                let name = event.limit_name.map(str::to_owned);
                *record.lock().unwrap() = Some((name, event.remaining, event.limit));
            }
        })
        .layer(host);
    let request = http::Request::get("http://api.example/").body(()).unwrap();
    learner.oneshot(request).await.unwrap();
    assert_eq!(
        learned.lock().unwrap().take(),
        Some((Some("calls".to_owned()), Some(0), Some(2)))
    );
}

#[tokio::test]
async fn a_global_limit_waiting_in_poll_ready_writes_its_partition_key_too() {
    use tollgate::rate_limit::HeaderOptions;
    // The global key in wait mode reserves in `poll_ready`: the other path to the headers.
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(per_minute(5))
            .wait(std::time::Duration::from_millis(10))
            .headers(HeaderOptions::default().partition_key(true)),
    );
    let server = TestServer::start(app).await;
    let client = client();
    let first = fetch(&client, &server.url("/"), &[]).await;
    let second = fetch(&client, &server.url("/"), &[]).await;
    let pk = partition_key_of(header(&first, "ratelimit").unwrap());
    assert_eq!(partition_key_of(header(&second, "ratelimit").unwrap()), pk);
    assert_eq!(
        partition_key_of(header(&first, "ratelimit-policy").unwrap()),
        pk
    );
    assert!(!header(&first, "ratelimit-policy").unwrap().contains("qu="));
}
