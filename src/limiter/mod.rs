//! [`RateLimiter`] (a limit used directly) and the one admission path that
//! [`RateLimitLayer`](crate::RateLimitLayer) uses too.
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

pub(crate) use admission::{Admission, Admit, Admitted, Hold, Settle};
pub use direct::{Acquire, Keyed, RateLimiter};
pub(crate) use events::Hook;
pub use events::{LimitEvent, LimitEventKind};
pub use refusal::{NoSlot, RateLimited, Refusal};
pub use stats::{LimiterStats, Stats};
pub(crate) use watch::{Block, NearLimit, Watch};
