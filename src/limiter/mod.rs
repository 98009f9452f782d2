//! [`RateLimiter`]: a limit used directly, without tower, and the one admission path that
//! [`RateLimitLayer`](crate::RateLimitLayer) uses too.
//!
//! A background job that calls a third-party API at 10 per second, bursts of 20, waiting when
//! over:
//!
//! ```
//! use tollgate::{Quota, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RateLimiter::new(Quota::per_second(10)?.with_burst(20)?);
//! for _ in 0..22 {
//!     limiter.acquire().await?; // the first 20 at once, then one every 100 ms, in order
//!     // call_the_api().await;
//! }
//! assert!(limiter.try_acquire().await.is_err()); // over the limit: refused at once...
//! let refused = limiter.try_acquire().await.unwrap_err();
//! assert!(refused.retry_after().unwrap().as_millis() <= 100); // ...saying when to come back
//! # Ok(()) }
//! ```
//!
//! Per key, and over any [`Store`](crate::Store) (a `RedisStore`, with the `redis` feature, shares the
//! limit with every instance):
//!
//! ```
//! use tollgate::{MemoryStore, Quota, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let per_user = RateLimiter::keyed(Quota::per_minute(2)?).store(MemoryStore::new());
//! assert!(per_user.key("alice").try_acquire().await.is_ok());
//! assert!(per_user.key("alice").try_acquire().cost(2).await.is_err()); // 1 left, not 2
//! assert_eq!(per_user.key("bob").available().await?, 2);
//! per_user.key("alice").reset().await?;
//! assert_eq!(per_user.key("alice").available().await?, 2);
//! # Ok(()) }
//! ```
//!
//! Every method is `async` because a network store answers over the network; over the memory
//! store the futures are ready at once.
//!
//! # One admission path
//!
//! Every decision, whether made by the direct API, by the layer's `call`, or by the layer's
//! `poll_ready` reservation, goes through one function (`Admission::admit`): check the cost against the
//! bursts, ask the store, then allow, make wait (the slot is reserved and held by a guard that
//! gives it back if the wait is abandoned), or refuse; events, `tracing` and metrics are
//! emitted there and nowhere else.

mod admission;
mod direct;
mod events;
mod refusal;
mod stats;
mod watch;

pub(crate) use admission::{Admission, Admit, Admitted, Settle};
pub use direct::{Acquire, Keyed, RateLimiter};
pub(crate) use events::Hook;
pub use events::{LimitEvent, LimitEventKind};
pub use refusal::{RateLimited, Refusal};
pub use stats::{LimiterStats, Stats, TOP_KEYS};
pub(crate) use watch::{Block, NearLimit, Watch};
