//! What hooks and `tracing` are told: waits, local refusals, limits learned.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;

use crate::headers::said::Limits;

/// What the hook of [`LearnLayer::on_event`](super::LearnLayer::on_event) is told.
///
/// When a response stated limits ([`Learned`](LearnEventKind::Learned)), the last four fields
/// describe the binding one: of every limit stated, in every dialect, the one with the fewest
/// requests left (a quota in other units, such as OpenAI's tokens, only once it is spent).
#[derive(Debug)]
#[non_exhaustive]
pub struct LearnEvent<'a> {
    /// What happened.
    pub kind: LearnEventKind,
    /// The layer's name (see [`LearnLayer::name`](super::LearnLayer::name)).
    pub layer: &'a str,
    /// The destination.
    pub host: &'a Authority,
    /// Waiting: how long. Refused: how long until the host would accept it. Learned: the
    /// delay the response asked for, if any (zero otherwise).
    pub delay: Duration,
    /// Learned: the requests the binding limit has left (0 as well when a quota in other
    /// units is spent); `None` when the response stated no limit.
    pub remaining: Option<u64>,
    /// Learned: when the binding limit's allowance comes back, if the response said.
    pub reset: Option<Duration>,
    /// Learned: what the binding limit comes back to, in requests, if the response said.
    pub limit: Option<u64>,
    /// Learned: the server's name for the binding limit, if it gave one: the IETF policy's
    /// name, GitHub's `X-RateLimit-Resource`, or `requests` / `tokens` for OpenAI's quotas.
    pub limit_name: Option<&'a str>,
}

impl<'a> LearnEvent<'a> {
    pub(crate) fn new(
        kind: LearnEventKind,
        layer: &'a str,
        host: &'a Authority,
        delay: Duration,
        limits: Option<&'a Limits>,
    ) -> Self {
        Self {
            kind,
            layer,
            host,
            delay,
            remaining: limits.map(|l| l.remaining),
            reset: limits.and_then(|l| l.reset),
            limit: limits.and_then(|l| l.limit),
            limit_name: limits.and_then(|l| l.name.as_deref()),
        }
    }
}

/// What a [`LearnEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LearnEventKind {
    /// A request waits for its host (a reset, a `Retry-After`, an adaptive slot).
    Waiting,
    /// A request is refused locally with [`ServerLimit`](super::ServerLimit).
    Refused,
    /// A response stated limits or asked for a delay.
    Learned,
}

impl crate::observe::Event for LearnEvent<'_> {
    fn layer(&self) -> &str {
        self.layer
    }

    fn kind(&self) -> &'static str {
        match self.kind {
            LearnEventKind::Waiting => "waiting",
            LearnEventKind::Refused => "refused",
            LearnEventKind::Learned => "learned",
        }
    }
}

pub(crate) type Hook = Arc<dyn Fn(&LearnEvent<'_>) + Send + Sync>;

/// Calls the hook and emits the `tracing` event.
pub(crate) fn emit(hook: Option<&Hook>, event: &LearnEvent<'_>) {
    let delay_ms = event.delay.as_millis() as u64;
    match event.kind {
        LearnEventKind::Waiting => tracing::debug!(
            target: "tollgate::learn",
            layer = event.layer,
            host = %event.host,
            delay_ms,
            "request waits for its host"
        ),
        LearnEventKind::Refused => tracing::debug!(
            target: "tollgate::learn",
            layer = event.layer,
            host = %event.host,
            retry_after_ms = delay_ms,
            "request refused locally: the host asked to wait"
        ),
        LearnEventKind::Learned => tracing::debug!(
            target: "tollgate::learn",
            layer = event.layer,
            host = %event.host,
            remaining = ?event.remaining,
            limit = ?event.limit,
            limit_name = ?event.limit_name,
            reset_ms = ?event.reset.map(|r| r.as_millis() as u64),
            delay_ms,
            "host stated its limits"
        ),
    }
    if let Some(hook) = hook {
        hook(event);
    }
}
