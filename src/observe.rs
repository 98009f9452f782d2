//! The frame every layer reports through: one event type per layer under one trait, a hook
//! set with `on_event`, `tracing` events, and metrics labelled `layer` with the layer's name.
//!
//! | layer | event | `tracing` target | metrics |
//! | --- | --- | --- | --- |
//! | [`RateLimitLayer`](crate::RateLimitLayer), [`RateLimiter`](crate::RateLimiter) | [`LimitEvent`](crate::rate_limit::LimitEvent): denied, waiting | `tollgate::rate_limit` | `tollgate_rate_limit_*` |
//! | [`RetryLayer`](crate::RetryLayer) | [`RetryEvent`](crate::retry::RetryEvent): retry, gave up | `tollgate::retry` | `tollgate_retry_*` |
//! | [`LearnLayer`](crate::learn::LearnLayer) | [`LearnEvent`](crate::learn::LearnEvent): waiting, refused, learned | `tollgate::learn` | `tollgate_learn_*` |
//! | [`ConcurrencyLayer`](crate::concurrency::ConcurrencyLayer) | [`ConcurrencyEvent`](crate::concurrency::ConcurrencyEvent): waiting, refused | `tollgate::concurrency` | `tollgate_concurrency_*` |
//!
//! A hook can be written once for every layer, through [`Event`]:
//!
//! ```
//! use std::time::Duration;
//! use tollgate::observe::Event;
//! use tollgate::retry::RetryLayer;
//! use tollgate::{Quota, RateLimitLayer};
//!
//! fn log(event: &dyn Event) {
//!     println!("{}: {}", event.layer(), event.kind());
//! }
//! let limit = RateLimitLayer::new(Quota::per_second(5)?).name("api").on_event(|e| log(e));
//! let retry = RetryLayer::new().name("payments").on_event(|e| log(e));
//! # drop((limit, retry));
//! # Ok::<(), tollgate::QuotaError>(())
//! ```
//!
//! Keys in events are [`LoggedKey`](crate::key::LoggedKey)s: a keyed hash unless a layer is
//! told otherwise. No metric takes a key as a label.

use std::fmt;

/// What the events of every layer have in common.
pub trait Event: fmt::Debug {
    /// The name of the layer that emitted it (set with `name`): the `layer` label of its
    /// metrics.
    fn layer(&self) -> &str;

    /// What happened, as a short word that does not change between versions: `denied`,
    /// `waiting`, `retry`, `gave_up`, `refused`, `learned`.
    fn kind(&self) -> &'static str;
}
