//! Limits learned from the responses: an outbound client that keeps to what each server says,
//! so that it slows down before the server has to answer 429.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::learn::LearnLayer;
//! use tollgate::Quota;
//!
//! // Wait (up to 30 s) when a host says to; 10 per second to hosts that say nothing.
//! let layer = LearnLayer::new()
//!     .max_wait(Duration::from_secs(30))
//!     .default_quota(Quota::per_second(10).unwrap());
//! # drop(layer);
//! ```
//!
//! # What it reads
//!
//! Per destination (the URI's authority), from every response, through the one reader the
//! retry layer uses too ([`server::read`](crate::headers::server), whose table lists every
//! dialect):
//!
//! - `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10): the item with the fewest requests
//!   left, its `r` and `t`; `RateLimit-Policy`'s `q` as the limit it comes back to;
//! - the older draft's `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`;
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (Unix seconds, Unix
//!   milliseconds or a delay, told apart by size), with `X-RateLimit-Reset-After` (seconds
//!   from now) and GitHub's `X-RateLimit-Used` and `X-RateLimit-Resource`;
//! - OpenAI's `x-ratelimit-*-requests` and `x-ratelimit-*-tokens` (resets as `6m0s`): the
//!   request count, or the tokens when they are spent;
//! - `Retry-After` on a 429 or a 503, or on a 403 (GitHub's rate limits): the host is cooled
//!   down until then.
//!
//! After "0 left, reset in 30 s", the next request to that host waits until the reset (in
//! wait mode, the default) or is refused locally with a [`ServerLimit`] error (in reject mode)
//! instead of being sent and refused by the server. Requests still in flight count against
//! what the server said is left, so the client never sends more than the server allows.
//!
//! Malformed values are ignored, and no value can make a request wait longer than
//! [`max_wait`](LearnLayer::max_wait): past it, the request is refused locally.
//!
//! # Hosts that say nothing
//!
//! They get the [default quota](LearnLayer::default_quota), if one is set, or, in
//! [adaptive](LearnLayer::adaptive) mode, a rate that halves after every 429 or 503 and grows
//! by a step after every success, between a floor and a ceiling (additive increase,
//! multiplicative decrease, as AWS's adaptive retry mode treats throttling).
//!
//! # What it reports
//!
//! Like every layer ([`observe`](crate::observe)): `on_event` with a [`LearnEvent`] when a
//! request waits for its host, is refused locally, or a response states limits; `tracing`
//! events (target `tollgate::learn`); metrics labelled with its [`name`](LearnLayer::name).
//! Hosts are shown in clear: a destination is not a secret.

mod events;
mod layer;
mod service;
mod state;

pub use events::{LearnEvent, LearnEventKind};
pub use layer::{Aimd, LearnLayer, ServerLimit};
pub use service::Learn;
