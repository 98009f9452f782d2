use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::classify::Classification;
use crate::BoxError;

/// Why a request was not retried (again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUp {
    /// The attempts allowed were all made.
    MaxAttempts,
    /// The retry budget was spent: the upstream fails too often for retries to help.
    Budget,
    /// The overall deadline leaves no time for the wait and another attempt.
    Deadline,
    /// The request body could not be kept (over the cap) or read again.
    Body,
    /// The server asked for a longer wait than the maximum.
    PushbackTooLong,
    /// The request is not idempotent (a `POST` without `Idempotency-Key`, say), and may
    /// have reached the server.
    NotIdempotent,
}

impl GiveUp {
    /// Its place in the metrics' `reason` labels.
    pub(crate) fn metric_index(self) -> usize {
        match self {
            Self::MaxAttempts => 0,
            Self::Budget => 1,
            Self::Deadline => 2,
            Self::Body => 3,
            Self::PushbackTooLong => 4,
            Self::NotIdempotent => 5,
        }
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MaxAttempts => "all attempts made",
            Self::Budget => "retry budget spent",
            Self::Deadline => "deadline too close",
            Self::Body => "request body cannot be sent again",
            Self::PushbackTooLong => "server asked for a wait longer than the maximum",
            Self::NotIdempotent => "request is not idempotent",
        })
    }
}

/// What the hook of [`RetryLayer::on_event`](super::RetryLayer::on_event) is told after each
/// attempt that failed in a retryable way: a retry is coming, or the layer gave up.
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryEvent<'a> {
    /// The layer's name (see [`RetryLayer::name`](super::RetryLayer::name)).
    pub layer: &'a str,
    /// The attempt that just failed (1 for the first).
    pub attempt: u32,
    /// Why it counts as a failure.
    pub classification: Classification,
    /// What happens next.
    pub action: RetryAction,
    /// The request's destination, when it has one.
    pub destination: Option<&'a http::uri::Authority>,
    /// The failed attempt's status, for HTTP responses.
    pub status: Option<http::StatusCode>,
    /// The failed attempt's error, when it failed with one.
    pub error: Option<&'a (dyn std::error::Error + 'static)>,
}

/// The layer's answer to a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAction {
    /// Another attempt after `delay`.
    Retry {
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// No more attempts; the last outcome goes back to the caller.
    GiveUp(GiveUp),
}

impl crate::observe::Event for RetryEvent<'_> {
    fn layer(&self) -> &str {
        self.layer
    }

    fn kind(&self) -> &'static str {
        match self.action {
            RetryAction::Retry { .. } => "retry",
            RetryAction::GiveUp(_) => "gave_up",
        }
    }
}

pub(crate) type Hook = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;

pub(crate) fn emit(hook: Option<&Hook>, event: &RetryEvent<'_>) {
    match event.action {
        RetryAction::Retry { delay } => tracing::debug!(
            target: "tollgate::retry",
            layer = event.layer,
            attempt = event.attempt,
            classification = ?event.classification,
            delay_ms = delay.as_millis() as u64,
            destination = ?event.destination,
            "retrying"
        ),
        RetryAction::GiveUp(GiveUp::Budget) => crate::logs::capped!(
            WARN, "tollgate::retry", "not retrying: retry budget spent";
            layer = event.layer,
            attempt = event.attempt,
            classification = ?event.classification,
            destination = ?event.destination
        ),
        RetryAction::GiveUp(reason) => tracing::debug!(
            target: "tollgate::retry",
            layer = event.layer,
            attempt = event.attempt,
            classification = ?event.classification,
            destination = ?event.destination,
            %reason,
            "not retrying"
        ),
    }
    if let Some(hook) = hook {
        hook(event);
    }
}

/// How many attempts a response took, in its extensions. [`RetryLayer`](super::RetryLayer)
/// inserts it when a response took more than one attempt (inserting it on every response
/// would cost an allocation each); read it with [`Attempts::of`], which says 1 when it is
/// absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempts(pub u32);

impl Attempts {
    /// The attempts `response` took: 1 unless the layer recorded more.
    pub fn of<B>(response: &http::Response<B>) -> u32 {
        response.extensions().get::<Attempts>().map_or(1, |a| a.0)
    }
}

/// Marks a request as safe to retry whatever its method: insert it in the request's
/// extensions (an `Idempotency-Key` header does the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Retryable;

/// The error of a request that failed for good: the last attempt's error, how many attempts
/// were made, and why no more were.
#[derive(Debug)]
pub struct RetryError {
    attempts: u32,
    gave_up: Option<GiveUp>,
    source: BoxError,
}

impl RetryError {
    pub(crate) fn new(attempts: u32, gave_up: Option<GiveUp>, source: BoxError) -> Self {
        Self {
            attempts,
            gave_up,
            source,
        }
    }

    /// Attempts made, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why the layer stopped retrying; `None` when the error was not retryable at all.
    pub fn gave_up(&self) -> Option<GiveUp> {
        self.gave_up
    }

    /// The last attempt's error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The last attempt's error, owned.
    pub fn into_inner(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request failed after {} attempt", self.attempts)?;
        if self.attempts != 1 {
            f.write_str("s")?;
        }
        if let Some(reason) = self.gave_up {
            write!(f, " ({reason})")?;
        }
        write!(f, ": {}", self.source)
    }
}

impl std::error::Error for RetryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The overall deadline passed during an attempt: the source of a [`RetryError`] that gave up
/// for [`GiveUp::Deadline`], which is how callers tell it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the retry deadline passed")
    }
}

impl std::error::Error for DeadlineExceeded {}
