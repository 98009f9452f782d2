#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

pub mod admin;
mod calendar;
pub mod clock;
pub mod concurrency;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz;
mod gcra;
mod headers;
mod human;
pub mod key;
pub mod learn;
mod limiter;
mod logs;
pub mod metrics;
pub mod observe;
pub mod quota;
pub mod rate_limit;
mod respond;
pub mod retry;
pub mod store;

pub use quota::{Quota, QuotaError, Quotas};
pub use rate_limit::RateLimiter;
pub use rate_limit::{RateLimitLayer, RateLimited};
pub use retry::RetryLayer;
pub use store::{Decision, MemoryStore, Store, StoreError};

/// The error type of services that answer with boxed errors, as tower's middleware does.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
