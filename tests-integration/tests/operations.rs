//! What operators run limits with, on a real axum server on loopback: shadow mode and
//! near-limit events. Paused time: the memory store reads tokio's clock.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{client, fetch, header, TestServer};
use tollgate::clock::TokioClock;
use tollgate::key::{Header, PeerIp};
use tollgate::rate_limit::{LimitEventKind, RateLimitLayer};
use tollgate::{MemoryStore, Quota, Quotas};

fn paused_store() -> MemoryStore<TokioClock> {
    MemoryStore::builder().clock(TokioClock::new()).build()
}

/// Every event's kind and shadow flag, as a hook saw them.
type Seen = Arc<Mutex<Vec<(LimitEventKind, bool)>>>;

fn recorder() -> (
    Seen,
    impl Fn(&tollgate::rate_limit::LimitEvent<'_>) + Send + Sync,
) {
    let seen: Seen = Arc::default();
    let hook = {
        let seen = Arc::clone(&seen);
        move |event: &tollgate::rate_limit::LimitEvent<'_>| {
            seen.lock().unwrap().push((event.kind, event.shadow))
        }
    };
    (seen, hook)
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_lets_everything_through_and_records_what_it_would_have_refused() {
    let store = paused_store();
    let (seen, hook) = recorder();
    let quota = Quota::per_minute(3).unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(quota.clone())
            .key(PeerIp::new())
            .store(store.clone())
            .shadow()
            .on_event(hook),
    );
    let server = TestServer::start(app).await;
    let client = client();
    for _ in 0..8 {
        let response = fetch(&client, &server.url("/"), &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "ratelimit"),
            None,
            "no headers unless asked"
        );
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(LimitEventKind::Denied, true); 5],
        "5 would have been refused"
    );
    // The store holds what enforcement would have left: the key is spent, not overdrawn.
    let peer: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let status = store.status(&peer, &Quotas::from(quota));
    assert_eq!(status.remaining(), 0);
    assert!(
        status.retry_after() <= Duration::from_secs(20),
        "3 charged, not 8"
    );
}

#[tokio::test(start_paused = true)]
async fn shadow_headers_show_clients_the_limit_before_it_is_enforced() {
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(Quota::per_minute(2).unwrap())
            .key(PeerIp::new())
            .store(paused_store())
            .shadow_headers(),
    );
    let server = TestServer::start(app).await;
    let client = client();
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let response = fetch(&client, &server.url("/"), &[]).await;
        assert_eq!(response.status(), 200);
        remaining.push(header(&response, "ratelimit").unwrap().to_owned());
    }
    assert!(
        remaining[0].contains("r=1") && remaining[3].contains("r=0"),
        "{remaining:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn in_shadow_a_request_that_would_wait_goes_at_once() {
    // 1 per second, burst 1, waits up to 10 s: enforced, the third request waits 2 s.
    let layer = |shadow: bool| {
        let layer = RateLimitLayer::new(Quota::per_second(1).unwrap())
            .store(paused_store())
            .wait(Duration::from_secs(10));
        if shadow {
            layer.shadow()
        } else {
            layer
        }
    };
    for (shadow, expected) in [(false, Duration::from_secs(2)), (true, Duration::ZERO)] {
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer(shadow));
        let server = TestServer::start(app).await;
        let client = client();
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(fetch(&client, &server.url("/"), &[]).await.status(), 200);
        }
        let waited = start.elapsed();
        assert!(
            waited >= expected && waited < expected + Duration::from_millis(500),
            "shadow {shadow}: waited {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn near_limit_is_reported_once_per_key_and_window() {
    let (seen, hook) = recorder();
    // 10 a minute: 20% left is 2 requests left, after the 8th.
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(Quota::per_minute(10).unwrap())
            .key(Header::new("x-api-key"))
            .store(paused_store())
            .near_limit(20)
            .on_event(hook),
    );
    let server = TestServer::start(app).await;
    let client = client();
    let near = |seen: &Seen| {
        let seen = seen.lock().unwrap();
        seen.iter()
            .filter(|(kind, _)| *kind == LimitEventKind::NearLimit)
            .count()
    };
    for i in 1..=10 {
        fetch(&client, &server.url("/"), &[("x-api-key", "alice")]).await;
        assert_eq!(near(&seen), usize::from(i >= 8), "after request {i}");
    }
    // Another key has its own report.
    for _ in 0..8 {
        fetch(&client, &server.url("/"), &[("x-api-key", "bob")]).await;
    }
    assert_eq!(near(&seen), 2);
    // A window later, alice near her limit again is reported again.
    tokio::time::advance(Duration::from_secs(61)).await;
    for _ in 0..8 {
        fetch(&client, &server.url("/"), &[("x-api-key", "alice")]).await;
    }
    assert_eq!(near(&seen), 3);
}

#[tokio::test(start_paused = true)]
async fn services_made_by_one_layer_share_its_reports() {
    use tower::Layer;
    // axum serving a handler's route as a plain service calls `layer` on every request: the
    // services must still share one near-limit memory (and one set of metrics).
    let (seen, hook) = recorder();
    let layer = RateLimitLayer::new(Quota::per_minute(10).unwrap())
        .store(paused_store())
        .near_limit(20)
        .on_event(hook);
    for _ in 0..10 {
        let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
        }));
        let response = service.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn exempt_requests_and_keys_pass_without_a_store_call() {
    use tollgate::key::Exempt;
    let store = paused_store();
    let key = Exempt::keys(Header::new("x-api-key"), |key: &http::HeaderValue| {
        key == "internal"
    });
    let key = Exempt::requests(key, |request: &http::Request<axum::body::Body>| {
        request.uri().path() == "/healthz"
    });
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "ok" }))
        .layer(
            RateLimitLayer::new(Quota::per_minute(1).unwrap())
                .key(key)
                .store(store.clone()),
        );
    let server = TestServer::start(app).await;
    let client = client();
    let status = |path: &'static str, key: Option<&'static str>| {
        let (client, url) = (client.clone(), server.url(path));
        async move {
            let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
            fetch(&client, &url, &headers).await.status().as_u16()
        }
    };
    for _ in 0..5 {
        // A health check needs no key, and is never limited.
        assert_eq!(status("/healthz", None).await, 200);
        assert_eq!(status("/", Some("internal")).await, 200);
    }
    assert!(store.is_empty(), "no state for exempt requests");
    assert_eq!(status("/", Some("alice")).await, 200);
    assert_eq!(status("/", Some("alice")).await, 429);
    assert_eq!(
        status("/", None).await,
        400,
        "a missing key is still refused"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_refused_too_often_is_blocked_without_asking_the_store() {
    let (seen, hook) = recorder();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(Quota::per_minute(2).unwrap())
            .key(Header::new("x-api-key"))
            .store(paused_store())
            // Three refusals at once are tolerated; the fourth blocks for ten minutes.
            .block(Quota::per_minute(3).unwrap(), Duration::from_secs(600))
            .on_event(hook),
    );
    let server = TestServer::start(app).await;
    let client = client();
    let get = |key: &'static str| {
        let (client, url) = (client.clone(), server.url("/"));
        async move { fetch(&client, &url, &[("x-api-key", key)]).await }
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get("mallory").await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
    let blocked = |seen: &Seen| {
        let seen = seen.lock().unwrap();
        seen.iter()
            .filter(|(kind, _)| *kind == LimitEventKind::Blocked)
            .count()
    };
    assert_eq!(blocked(&seen), 1);
    // A minute later the rate would allow her again; the block does not.
    tokio::time::advance(Duration::from_secs(61)).await;
    let refused = get("mallory").await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!(
        (530..=540).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    // Others are not blocked.
    assert_eq!(get("alice").await.status(), 200);
    // After the block, the limit applies as before.
    tokio::time::advance(Duration::from_secs(540)).await;
    assert_eq!(get("mallory").await.status(), 200);
    assert_eq!(blocked(&seen), 1);
}

#[tokio::test(start_paused = true)]
async fn stats_count_what_the_layer_decided_and_name_the_most_refused_keys() {
    use tollgate::rate_limit::LimiterStats;
    let stats = LimiterStats::new();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::new(Quota::per_minute(2).unwrap())
            .key(Header::new("x-api-key"))
            .store(paused_store())
            .stats(stats.clone()),
    );
    let server = TestServer::start(app).await;
    let client = client();
    for (key, times) in [("noisy", 12), ("busy", 6), ("quiet", 1)] {
        for _ in 0..times {
            fetch(&client, &server.url("/"), &[("x-api-key", key)]).await;
        }
    }
    let now = stats.snapshot();
    assert_eq!((now.allowed, now.refused), (5, 14));
    let counts: Vec<u64> = now.top_refused.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [10, 4], "noisy, then busy; quiet was never refused");
    // Keys are shown as logs show them: hashed, never in clear.
    assert!(now
        .top_refused
        .iter()
        .all(|(key, _)| !key.contains("noisy")));
}

/// A handler that reports what the request cost, from its `x-used` header.
async fn reports_its_cost(request: http::Request<axum::body::Body>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let used = request
        .headers()
        .get("x-used")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut response = "done".into_response();
    if let Some(used) = used {
        response
            .extensions_mut()
            .insert(tollgate::rate_limit::ActualCost(used));
    }
    response
}

#[tokio::test(start_paused = true)]
async fn a_cost_estimated_up_front_is_settled_from_the_response() {
    let store = paused_store();
    let tokens = Quota::per_minute(100).unwrap();
    let app = Router::new().route("/", get(reports_its_cost)).layer(
        RateLimitLayer::new(tokens.clone())
            .key(Header::new("x-api-key"))
            .store(store.clone())
            .cost(|_: &http::Request<axum::body::Body>| 10)
            .settle_cost(),
    );
    let server = TestServer::start(app).await;
    let client = client();
    let key = http::HeaderValue::from_static("alice");
    let left = || {
        store
            .status(&key, &Quotas::from(tokens.clone()))
            .remaining()
    };
    let send = |used: &'static str| {
        let (client, url) = (client.clone(), server.url("/"));
        async move {
            let mut headers = vec![("x-api-key", "alice")];
            if !used.is_empty() {
                headers.push(("x-used", used));
            }
            fetch(&client, &url, &headers).await.status().as_u16()
        }
    };
    assert_eq!(send("50").await, 200);
    assert_eq!(left(), 50, "10 up front, 40 more once the response said 50");
    assert_eq!(send("5").await, 200);
    assert_eq!(left(), 45, "10 up front, 5 given back");
    assert_eq!(send("").await, 200);
    assert_eq!(left(), 35, "no report: the estimate stands");
    // Past the limit: charged anyway, and the next request is refused.
    assert_eq!(send("90").await, 200);
    assert_eq!(left(), 0);
    assert_eq!(send("1").await, 429);
}

#[tokio::test(start_paused = true)]
async fn only_failures_count_with_an_estimate_of_zero() {
    use axum::response::IntoResponse;
    async fn login(request: http::Request<axum::body::Body>) -> axum::response::Response {
        if request
            .headers()
            .get("x-password")
            .is_some_and(|p| p == "right")
        {
            return "welcome".into_response();
        }
        let mut response = (http::StatusCode::UNAUTHORIZED, "no").into_response();
        response
            .extensions_mut()
            .insert(tollgate::rate_limit::ActualCost(1));
        response
    }
    let app = Router::new().route("/login", get(login)).layer(
        RateLimitLayer::new(Quota::per_minute(3).unwrap())
            .key(PeerIp::new())
            .store(paused_store())
            .cost(|_: &http::Request<axum::body::Body>| 0)
            .settle_cost(),
    );
    let server = TestServer::start(app).await;
    let client = client();
    let attempt = |password: &'static str| {
        let (client, url) = (client.clone(), server.url("/login"));
        async move {
            fetch(&client, &url, &[("x-password", password)])
                .await
                .status()
                .as_u16()
        }
    };
    for _ in 0..10 {
        assert_eq!(attempt("right").await, 200, "successes are free");
    }
    for _ in 0..3 {
        assert_eq!(attempt("wrong").await, 401);
    }
    assert_eq!(
        attempt("right").await,
        429,
        "three failures spend the minute's allowance"
    );
}

/// Quotas changed through a [`LiveQuotas`] handle while 16 clients send requests: every
/// client's admissions are what its state, rescaled at the change, allows, not one more or
/// fewer. Each response names the quota that decided it (`RateLimit-Policy`), so the test
/// knows which side of the change each request fell on.
#[tokio::test(start_paused = true)]
async fn a_live_quota_change_under_load_carries_each_clients_debt_over() {
    use tollgate::rate_limit::LiveQuotas;

    let limits = LiveQuotas::new(Quota::per_hour(10).unwrap().named("api").unwrap());
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::live(limits.clone())
            .key(Header::new("x-api-key"))
            .store(paused_store()),
    );
    let server = TestServer::start(app).await;
    let url = server.url("/");
    let answered = Arc::new(tokio::sync::Semaphore::new(0));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let (url, answered) = (url.clone(), Arc::clone(&answered));
            tokio::spawn(async move {
                let client = client();
                let key = format!("client-{i}");
                // (quota size the request was decided under, allowed?)
                let mut seen: Vec<(u32, bool)> = Vec::new();
                // Until refused under the new quota: every client spends what it has left.
                while seen.last() != Some(&(100, false)) && seen.len() < 300 {
                    let response = fetch(&client, &url, &[("x-api-key", &key)]).await;
                    let policy = header(&response, "ratelimit-policy").unwrap().to_owned();
                    let q: u32 = policy
                        .split(';')
                        .find_map(|p| p.strip_prefix("q="))
                        .unwrap()
                        .parse()
                        .unwrap();
                    seen.push((q, response.status() == 200));
                    if seen.len() <= 4 + i {
                        answered.add_permits(1);
                    }
                }
                seen
            })
        })
        .collect();
    // The change lands while the clients are still sending: after 100 of their first
    // 4 + i requests (184 in all) were answered.
    let _ = answered.acquire_many(100).await.unwrap();
    limits.set(Quota::per_hour(100).unwrap().named("api").unwrap());
    let mut changed_mid_flight = 0;
    for client in clients {
        let seen = client.await.unwrap();
        let before = seen.iter().filter(|(q, ok)| *q == 10 && *ok).count() as u32;
        let after = seen.iter().filter(|(q, ok)| *q == 100 && *ok).count() as u32;
        let first_after = seen.iter().position(|(q, _)| *q == 100).unwrap();
        assert!(
            seen[first_after..].iter().all(|(q, _)| *q == 100),
            "one change"
        );
        assert!(before <= 10);
        // Spent `before` of 10 under the old quota: the same fraction of 100 stays spent.
        assert_eq!(after, 100 - 10 * before, "{seen:?}");
        if before > 0 && before < 10 {
            changed_mid_flight += 1;
        }
    }
    assert!(
        changed_mid_flight >= 2,
        "the change should land mid-way for some clients"
    );
}

/// Per user and global at once: a request the global limit refuses spends none of the user's
/// tokens, and the headers name the scope that bound the answer.
#[tokio::test(start_paused = true)]
async fn scoped_limits_decide_all_or_nothing_and_name_the_binding_scope() {
    use tollgate::key::{Global, ScopeKey, Scopes};

    let store = paused_store();
    let scopes = Scopes::new()
        .scope(
            "user",
            Header::new("x-api-key"),
            Quota::per_hour(3).unwrap(),
        )
        .scope("global", Global, Quota::per_hour(4).unwrap());
    let user = scopes.quotas().next().unwrap().clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::scoped(scopes).store(store.clone()));
    let server = TestServer::start(app).await;
    let client = client();
    let url = server.url("/");
    let as_user = |name: &'static str| [("x-api-key", name)];
    for _ in 0..3 {
        assert_eq!(fetch(&client, &url, &as_user("alice")).await.status(), 200);
    }
    let alice_out = fetch(&client, &url, &as_user("alice")).await;
    assert_eq!(alice_out.status(), 429);
    assert!(header(&alice_out, "ratelimit")
        .unwrap()
        .starts_with("\"user\""));
    let bob = fetch(&client, &url, &as_user("bob")).await;
    assert_eq!(bob.status(), 200);
    assert!(header(&bob, "ratelimit")
        .unwrap()
        .starts_with("\"global\";r=0;"));
    for _ in 0..2 {
        let refused = fetch(&client, &url, &as_user("bob")).await;
        assert_eq!(refused.status(), 429);
        assert!(header(&refused, "ratelimit")
            .unwrap()
            .starts_with("\"global\""));
    }
    // The refusals spent nothing of bob's own quota: 2 of 3 left.
    let bob_key = ScopeKey::new("user", http::HeaderValue::from_static("bob"));
    assert_eq!(store.status(&bob_key, &user).remaining(), 2);
    // One global token back (15 minutes): bob passes, where a charged bob would be refused.
    tokio::time::advance(Duration::from_secs(900)).await;
    assert_eq!(fetch(&client, &url, &as_user("bob")).await.status(), 200);
    // Requests without the user's key are missing a key, and refused as such.
    assert_eq!(fetch(&client, &url, &[]).await.status(), 400);
}

/// Blocks on a scoped layer count and check the first scope's key (the client's), whichever
/// scope refused: a client refused by the global scope is blocked, the global key is not.
#[tokio::test(start_paused = true)]
async fn blocks_on_a_scoped_layer_fall_on_the_first_scopes_key() {
    use tollgate::key::{Global, LogKeys, Scopes};

    let blocked: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook = {
        let blocked = Arc::clone(&blocked);
        move |event: &tollgate::rate_limit::LimitEvent<'_>| {
            if event.kind == LimitEventKind::Blocked {
                blocked.lock().unwrap().push(format!("{}", event.key));
            }
        }
    };
    let scopes = Scopes::new()
        .scope(
            "user",
            Header::new("x-api-key"),
            Quota::per_hour(100).unwrap(),
        )
        .scope("global", Global, Quota::per_hour(3).unwrap());
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::scoped(scopes)
            .store(paused_store())
            .log_keys(LogKeys::Clear)
            .on_event(hook)
            .block(Quota::per_minute(3).unwrap(), Duration::from_secs(600)),
    );
    let server = TestServer::start(app).await;
    let (client, url) = (client(), server.url("/"));
    let mallory = common::statuses(&client, &url, &[("x-api-key", "mallory")], 8).await;
    assert_eq!(mallory, [200, 200, 200, 429, 429, 429, 429, 429]);
    assert_eq!(
        blocked.lock().unwrap().len(),
        1,
        "{:?}",
        blocked.lock().unwrap()
    );
    assert!(blocked.lock().unwrap()[0].contains("mallory"));
    // The global quota refills in 20 minutes; by then mallory's block (10 minutes) is over,
    // and bob, never blocked, passes as soon as there is room.
    tokio::time::advance(Duration::from_secs(1200)).await;
    assert_eq!(
        common::statuses(&client, &url, &[("x-api-key", "bob")], 1).await,
        [200]
    );
}
