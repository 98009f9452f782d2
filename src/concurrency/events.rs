//! What hooks and `tracing` are told about waits and refusals.

use std::sync::Arc;
use std::time::Duration;

use crate::key::LoggedKey;

/// What the hook of [`ConcurrencyLayer::on_event`](super::ConcurrencyLayer::on_event) is told.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConcurrencyEvent<'a> {
    /// Waiting or refused.
    pub kind: ConcurrencyEventKind,
    /// The layer's name (see [`ConcurrencyLayer::name`](super::ConcurrencyLayer::name)).
    pub layer: &'a str,
    /// The request's key, as logs may show it (see [`LogKeys`](crate::key::LogKeys)).
    pub key: LoggedKey<'a>,
    /// The limit per key.
    pub limit: usize,
    /// Refused: how long it waited.
    pub waited: Duration,
}

/// Whether a request waits for a slot or was refused one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConcurrencyEventKind {
    /// Every slot of its key is taken: it waits.
    Waiting,
    /// No slot came free within the maximum wait.
    Refused,
}

impl crate::observe::Event for ConcurrencyEvent<'_> {
    fn layer(&self) -> &str {
        self.layer
    }

    fn kind(&self) -> &'static str {
        match self.kind {
            ConcurrencyEventKind::Waiting => "waiting",
            ConcurrencyEventKind::Refused => "refused",
        }
    }
}

pub(crate) type Hook = Arc<dyn Fn(&ConcurrencyEvent<'_>) + Send + Sync>;

/// Calls the hook and emits the `tracing` event.
pub(crate) fn emit(hook: Option<&Hook>, event: &ConcurrencyEvent<'_>) {
    match event.kind {
        ConcurrencyEventKind::Waiting => tracing::debug!(
            target: "tollgate::concurrency",
            layer = event.layer,
            key = %event.key,
            limit = event.limit,
            "request waits for a slot"
        ),
        ConcurrencyEventKind::Refused => tracing::debug!(
            target: "tollgate::concurrency",
            layer = event.layer,
            key = %event.key,
            limit = event.limit,
            waited_ms = event.waited.as_millis() as u64,
            "request refused: no slot came free"
        ),
    }
    if let Some(hook) = hook {
        hook(event);
    }
}
