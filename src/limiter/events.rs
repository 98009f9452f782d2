//! What hooks and `tracing` are told about denials and waits.

use std::time::Duration;

use crate::key::LoggedKey;
use crate::{Decision, Quota};

/// What the hook of [`RateLimitLayer::on_event`](crate::RateLimitLayer::on_event) (or
/// [`RateLimiter::on_event`](crate::RateLimiter::on_event)) is told: a request was denied, or
/// is waiting for its slot.
#[derive(Debug)]
#[non_exhaustive]
pub struct LimitEvent<'a> {
    /// Denied or waiting.
    pub kind: LimitEventKind,
    /// The layer's name (see [`RateLimitLayer::name`](crate::RateLimitLayer::name)).
    pub layer: &'a str,
    /// The request's key, as logs may show it: a keyed hash unless the layer was told
    /// [`LogKeys::Clear`](crate::key::LogKeys::Clear); [`LoggedKey::reveal`] gives the key.
    pub key: LoggedKey<'a>,
    /// Denied: the retry-after. Waiting: how long the request waits. Blocked: how long the
    /// block lasts.
    pub delay: Duration,
    /// The quota that decided.
    pub quota: &'a Quota,
    /// The store's decision.
    pub decision: &'a Decision,
    /// The layer runs in shadow mode ([`RateLimitLayer::shadow`](crate::RateLimitLayer::shadow)):
    /// a denied request was let through, a waiting one went at once.
    pub shadow: bool,
}

/// Whether a request was denied or made to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitEventKind {
    /// Refused: over the limit (in wait mode: its slot was further than the maximum wait).
    Denied,
    /// Waiting for its reserved slot (wait mode).
    Waiting,
    /// Allowed, with little left: the key's remaining share is at or below the threshold of
    /// [`RateLimitLayer::near_limit`](crate::RateLimitLayer::near_limit). Reported at most
    /// once per key and quota per window.
    NearLimit,
    /// Refused too often: the key is blocked for the time in `delay`, refused without asking
    /// the store ([`RateLimitLayer::block`](crate::RateLimitLayer::block)).
    Blocked,
}

impl crate::observe::Event for LimitEvent<'_> {
    fn layer(&self) -> &str {
        self.layer
    }

    fn kind(&self) -> &'static str {
        match self.kind {
            LimitEventKind::Denied => "denied",
            LimitEventKind::Waiting => "waiting",
            LimitEventKind::NearLimit => "near_limit",
            LimitEventKind::Blocked => "blocked",
        }
    }
}

pub(crate) type Hook = std::sync::Arc<dyn Fn(&LimitEvent<'_>) + Send + Sync>;

/// Calls the hook and emits the `tracing` event.
pub(crate) fn emit(hook: Option<&Hook>, event: &LimitEvent<'_>) {
    match event.kind {
        LimitEventKind::Denied => tracing::debug!(
            target: "tollgate::rate_limit",
            layer = event.layer,
            key = %event.key,
            quota = event.quota.name(),
            retry_after_ms = event.delay.as_millis() as u64,
            shadow = event.shadow,
            "request denied"
        ),
        LimitEventKind::Waiting => tracing::debug!(
            target: "tollgate::rate_limit",
            layer = event.layer,
            key = %event.key,
            quota = event.quota.name(),
            wait_ms = event.delay.as_millis() as u64,
            shadow = event.shadow,
            "request waits for its slot"
        ),
        LimitEventKind::Blocked => crate::logs::capped!(
            WARN, "tollgate::rate_limit", "key blocked: refused too often";
            layer = event.layer,
            key = %event.key,
            blocked_ms = event.delay.as_millis() as u64,
            shadow = event.shadow
        ),
        LimitEventKind::NearLimit => crate::logs::capped!(
            INFO, "tollgate::rate_limit", "key near its limit";
            layer = event.layer,
            key = %event.key,
            quota = event.quota.name(),
            remaining = event.decision.remaining(),
            limit = event.decision.limit(),
            shadow = event.shadow
        ),
    }
    if let Some(hook) = hook {
        hook(event);
    }
}
