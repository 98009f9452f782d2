//! Limits learned from the responses: an outbound client that keeps to what each server says,
//! so that it slows down before the server has to answer 429.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use http::{Request, Response};
//! use tollgate::learn::{LearnLayer, ServerLimit};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A host that answers, and says that nothing is left for 30 s.
//! let host = service_fn(|_: Request<()>| async {
//!     let response = Response::builder()
//!         .header("x-ratelimit-remaining", "0")
//!         .header("x-ratelimit-reset", "30")
//!         .body(())
//!         .unwrap();
//!     Ok::<_, Infallible>(response)
//! });
//! // Refuse locally rather than wait (by default, `.wait(max)`: wait up to 60 s).
//! let client = LearnLayer::new().reject().layer(host);
//! let request = || Request::get("http://api.example/items").body(()).unwrap();
//!
//! client.clone().oneshot(request()).await.unwrap();
//! let refused = client.oneshot(request()).await.unwrap_err();
//! let limit = refused.downcast_ref::<ServerLimit>().unwrap();
//! assert_eq!(limit.retry_after(), Duration::from_secs(30));
//! # }
//! ```
//!
//! # What it reads
//!
//! Per destination (the URI's authority), and within it per limit the server names (see
//! [limits by name](#limits-by-name)), from every response, through the one reader the retry
//! layer uses too (so a stack of both waits once, not the sum of what each read):
//!
//! | field | who sends it | read as |
//! | --- | --- | --- |
//! | `Retry-After` | RFC 9110 | seconds, or an HTTP-date measured against the response's own `Date` (clock skew does not count); a date in the past is no delay; on a 429 or a 503, or a 403 (GitHub's rate limits), the host is cooled down until then |
//! | `RateLimit` (+ `RateLimit-Policy`) | draft-ietf-httpapi-ratelimit-headers-10 | every item, named by its policy; the policy's `q` is its limit; an item whose policy counts in other units (`qu` not `"requests"`) counts only when exhausted; `pk` is not read |
//! | `RateLimit-Limit` / `-Remaining` / `-Reset` | the draft's earlier versions | the reset as a delay |
//! | `X-RateLimit-Limit` / `-Remaining` / `-Reset` | many APIs; GitHub | the reset as Unix seconds, Unix milliseconds or a delay, told apart by size |
//! | `X-RateLimit-Reset-After` | Discord, others | the reset as seconds from now, decimals allowed (`1.234`); preferred to `X-RateLimit-Reset`, since no clock is involved |
//! | `X-RateLimit-Used`, `X-RateLimit-Resource` | GitHub | remaining = `-Limit` − used when `-Remaining` is absent (the fewer of the two when both are sent); the resource (`core`, `search`…) names the limit |
//! | `x-ratelimit-limit-requests` / `-remaining-requests` / `-reset-requests`, the same with `-tokens` | OpenAI and the APIs that copy it | two quotas, named `requests` and `tokens`, resets as Go durations (`6m0s`, `20ms`, `1h2m3.5s`); tokens count only when exhausted |
//! | `grpc-retry-pushback-ms` | gRPC (gRFC A6) | on gRPC responses only (`content-type: application/grpc…`): a delay, or "do not retry" when negative; ignored on plain HTTP |
//!
//! Limits count requests, because that is what a client spends: of every limit stated under
//! one name (or none), in every dialect, the binding one is the one with the fewest left
//! (and, among those, the latest reset). A quota in other units (OpenAI's tokens, an IETF policy of
//! `content-bytes`) says nothing of how many requests are left until it is spent, so it binds
//! only once it is exhausted, and then its reset is waited for. Where several fields ask for a
//! delay, the later wins. A 403 is a rate limit when it comes with a delay (GitHub answers its
//! limits with 403, "0 left" and a reset, or with `Retry-After`); any other 403 is what it
//! says. [`Classification::pushback`](crate::retry::Classification::pushback) gives the same
//! reading to classifiers of your own.
//!
//! After "0 left, reset in 30 s", the next request under that limit waits until the reset (in
//! wait mode, the default) or is refused locally with a [`ServerLimit`] error (in reject mode)
//! instead of being sent and refused by the server. Requests still in flight count against
//! what the server said is left, so the client never sends more than the server allows.
//!
//! Malformed values are ignored, never guessed at (a negative, fractional, `NaN`, `1e400` or
//! overflowing count, an unknown duration unit, a resource name that is not a short token),
//! and no value can make a request wait longer than [`wait`](LearnLayer::wait)'s maximum:
//! past it, the request is refused locally.
//!
//! # Limits by name
//!
//! Servers often keep several limits on one host and say which one an answer is about:
//! GitHub's `X-RateLimit-Resource` (`core`, `search`, `graphql`…), the policy names of the
//! IETF `RateLimit` fields, OpenAI's `requests` and `tokens`. The layer keeps what it learns
//! per limit the server names, within each host, and per host for what is stated without a
//! name, so that a limit spent on one resource never slows another.
//!
//! A request is admitted before its answer says which limit it counts under, so the layer
//! remembers, for each *route* (by default the method and the path, without the query), which
//! limits the last answer on that route stated, and admits the next request on the route
//! against those. A route never answered yet is admitted against what the host stated without
//! a name only: a limit it may not belong to never holds it back, and its first answer teaches
//! its limits. The price: with `core` spent, a GitHub path never requested before is sent, and
//! refused. [`route`](LearnLayer::route) groups paths as you know the server counts them
//! (GitHub counts every `/repos/…` path under `core`: group paths by their first segment, and
//! a path never requested before waits for `core` too).
//!
//! An answer may name several limits, and all of them bind its route: an IETF answer that
//! reports a per-second and a daily policy, or OpenAI's `requests` and `tokens`, stated on
//! every answer, so that a route waits for whichever is spent. OpenAI names its two limits
//! alike on every route: its routes therefore share them, and tokens spent on one route hold
//! back every route answered so far.
//!
//! A throttled answer (429, 503, a 403 with a delay) cools what explains it: the named limits
//! it says are spent, alone, until the later of their reset and its `Retry-After`. One that no
//! spent named limit explains (a bare `Retry-After`; GitHub's secondary limits, which come
//! with `core`'s fields and plenty left) cools the whole host, every route included.
//!
//! What is remembered is bounded: at most 256 routes per host (past it, the least recently
//! used is forgotten, and is new again) and 32 names; a name past those takes the place of a
//! named limit that has lapsed (the routes that led to it are forgotten), or, if none has,
//! counts as the host's limit without a name, as does a name longer than 64 bytes or not
//! visible ASCII. Routes are kept as 64-bit hashes, keyed at random per layer, so a long path
//! costs nothing more: at most about 16 KiB per host, for at most 4096 hosts.
//!
//! # Hosts that say nothing
//!
//! They get the [default quota](LearnLayer::default_quota), if one is set, or, in
//! [adaptive](LearnLayer::adaptive) mode, a rate that halves after every 429 or 503 and grows
//! by a step after every success, between a floor and a ceiling (additive increase,
//! multiplicative decrease, as AWS's adaptive retry mode treats throttling).
//!
//! # In a stack
//!
//! Place it inside [`RetryLayer`](crate::RetryLayer), so that it sees every attempt, and
//! outside the per-attempt timeout, so that a long reset is waited for rather than timed out
//! and retried (its [`wait`](LearnLayer::wait) maximum bounds the wait):
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tollgate::learn::LearnLayer;
//! use tollgate::Quota;
//! use tower::ServiceBuilder;
//!
//! let client = ServiceBuilder::new()
//!     .layer(LearnLayer::new().wait(Duration::from_secs(30)).default_quota(Quota::per_second(10)?))
//!     .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
//! # drop(client);
//! # Ok::<(), tollgate::QuotaError>(())
//! ```
//!
//! Try it: the flaky server's `/limited` allows 5 requests per 10 s window and says so in
//! `X-RateLimit-*` headers.
//!
//! ```text
//! cargo run --example flaky_server &
//! cargo run --example client -- --requests 12 --rps 50 http://127.0.0.1:3001/limited
//! # request 5: 200 OK after 1 attempt(s) in 20ms
//! # request 6: 200 OK after 1 attempt(s) in 9s     <- waited for the window the server announced
//! # ...
//! # 12 requests in 19.2s: 12 succeeded, 0 failed   (no 429)
//! cargo run --example client -- --requests 12 --rps 50 --no-learn http://127.0.0.1:3001/limited
//! # request 4: attempt 1: 429 Too Many Requests (RetryAfter(10s)) → retry in 10s
//! ```
//!
//! # What it reports
//!
//! Like every layer ([`observe`](crate::observe)): `on_event` with a [`LearnEvent`] when a
//! request waits for its host, is refused locally, or a response states limits (the binding
//! one's `remaining`, `reset`, `limit` and `limit_name`); `tracing` events (target
//! `tollgate::learn`); metrics labelled with its [`name`](LearnLayer::name).
//! Hosts are shown in clear: a destination is not a secret.

mod events;
mod layer;
mod service;
mod state;

pub use events::{LearnEvent, LearnEventKind};
pub use layer::{Aimd, LearnLayer, ServerLimit};
pub use service::Learn;
