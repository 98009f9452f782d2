//! What hooks and `tracing` are told: waits, local refusals, limits learned.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;

use crate::headers::server::Limits;

/// What the hook of [`LearnLayer::on_event`](super::LearnLayer::on_event) is told.
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
    /// Learned: the limit the response stated, if it stated one.
    pub limits: Option<Limits>,
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
            limits = ?event.limits,
            delay_ms,
            "host stated its limits"
        ),
    }
    if let Some(hook) = hook {
        hook(event);
    }
}
