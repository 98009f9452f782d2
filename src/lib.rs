#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

/// `oneshot` and `ready` as inherent methods of a middleware's service (inside its `impl`
/// block): tower's `ServiceExt` ones, bounded so that a stack that cannot serve the request
/// fails to compile naming the unmet bound (E0277) instead of "trait bounds were not
/// satisfied" (E0599). `RateLimit` and `Retry` use it.
macro_rules! service_ext_methods {
    () => {
        /// [`ServiceExt::oneshot`](tower::ServiceExt::oneshot), as a method of this type: a
        /// stack that cannot serve `Request` then fails to compile saying why (a client's layer
        /// missing `.errors()`, a client built for another body than the one sent) rather than
        /// that "trait bounds were not satisfied".
        pub fn oneshot<Request>(self, request: Request) -> tower::util::Oneshot<Self, Request>
        where
            Self: tower::Service<Request> + Sized,
        {
            tower::ServiceExt::oneshot(self, request)
        }

        /// [`ServiceExt::ready`](tower::ServiceExt::ready), as a method of this type, for the
        /// same reason as [`oneshot`](Self::oneshot).
        pub fn ready<Request>(&mut self) -> tower::util::Ready<'_, Self, Request>
        where
            Self: tower::Service<Request> + Sized,
        {
            tower::ServiceExt::ready(self)
        }
    };
}

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
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
