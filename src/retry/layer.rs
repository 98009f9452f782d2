use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::attempts::{Cloning, Replaying};
use super::backoff::Backoff;
use super::budget::{PerDestination, RetryBudget};
use super::classify::{GrpcClassifier, HttpClassifier};
use super::config::{Budgets, Config};
use super::events::RetryEvent;
use super::service::Retry;
use crate::metrics::RetryMetrics;

/// Retries what is safe to retry, within a budget, a deadline and the server's wishes. See the
/// [module docs](super) for a tour.
///
/// Made by [`new`](RetryLayer::new) for HTTP clients, [`grpc`](RetryLayer::grpc) for gRPC
/// clients, and [`cloning`](RetryLayer::cloning) for services of any request type; the second
/// type parameter, which says how each attempt's request is made, follows from the choice and
/// is never written out.
///
/// # Clone
///
/// Clones, and every service they make, share the retry budget and the hooks.
#[must_use]
pub struct RetryLayer<C = HttpClassifier, M = Replaying> {
    config: Config<C>,
    mode: M,
}

impl RetryLayer {
    /// Retries for HTTP clients, with the defaults: [`HttpClassifier`],
    /// [`Backoff::standard`] (3 attempts), a shared [`RetryBudget::default`] (20% plus 10 per
    /// second), no deadline, server delays up to 30 s ([`max_pushback`](Self::max_pushback)),
    /// bodies kept up to 64 KiB ([`body_cap`](Self::body_cap)).
    pub fn new() -> Self {
        Self::with(HttpClassifier, Replaying::default())
    }

    /// The same for gRPC clients: [`GrpcClassifier`], and every call may be retried.
    ///
    /// gRPC calls are all `POST`s, so the HTTP rule (idempotent methods, or requests that
    /// never reached the server) would retry
    /// none. As with gRPC's own retry policy (gRFC A6), installing the layer is the opt-in,
    /// and the classifier retries only what says the call was not run: `UNAVAILABLE`, and
    /// `RESOURCE_EXHAUSTED` with pushback, both in a trailers-only response. Calls that must
    /// never run twice belong on a channel without this layer.
    pub fn grpc() -> RetryLayer<GrpcClassifier> {
        RetryLayer::with(GrpcClassifier, Replaying { any_method: true })
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> RetryLayer<C, Cloning> {
    /// Retries for services of any request type: each attempt sends a clone of the request,
    /// and `classifier` (a closure `Fn(Outcome<'_, Response>) -> Classification` will do)
    /// decides.
    pub fn cloning(classifier: C) -> Self {
        Self::with(classifier, Cloning)
    }
}

impl<C, M> RetryLayer<C, M> {
    fn with(classifier: C, mode: M) -> Self {
        Self {
            config: Config::new(classifier),
            mode,
        }
    }

    /// Decides what is retried: a [`Classify`](super::Classify) implementation or a closure.
    pub fn classify<C2>(self, classifier: C2) -> RetryLayer<C2, M> {
        RetryLayer {
            config: self.config.with_classifier(classifier),
            mode: self.mode,
        }
    }

    /// How many attempts and how long between them.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Where the backoff's randomness comes from: a closure that draws a number in `[0, 1)`
    /// (values outside are clamped) for each computed wait. By default a fast pseudo-random
    /// sequence seeded at random per layer; fix it in tests (`.jitter(|| 0.5)`: half of each
    /// ceiling).
    pub fn jitter(mut self, draw: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.config.jitter = Arc::new(draw);
        self
    }

    /// Spends retries from `budget`, shared by every clone (pass a clone of one budget to
    /// several layers to share it further).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.config.budget = Budgets::Shared(budget);
        self
    }

    /// One budget per destination authority, each like [`RetryBudget::new`]`(window, ratio,
    /// floor)`, so that a failing host does not spend the retries of the others; at most
    /// `max_destinations` get their own, the rest share one.
    pub fn budget_per_destination(
        mut self,
        window: Duration,
        ratio: f64,
        floor: u32,
        max_destinations: usize,
    ) -> Self {
        self.config.budget =
            Budgets::PerDestination(PerDestination::new(window, ratio, floor, max_destinations));
        self
    }

    /// No budget: retries are limited only by the attempts (not recommended in front of
    /// anything that can fail as a whole).
    pub fn without_budget(mut self) -> Self {
        self.config.budget = Budgets::Off;
        self
    }

    /// A deadline over all attempts and waits: the layer never sleeps past it, and an attempt
    /// still running at the deadline fails with a [`RetryError`](super::RetryError) that
    /// [gave up](super::RetryError::gave_up) for [the deadline](super::GiveUp::Deadline).
    /// Put a `tower::timeout::TimeoutLayer` inside for a per-attempt limit.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// The longest wait a server may ask for; past it, the response is returned at once, not
    /// waited for nor retried. Default 30 s.
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.config.max_pushback = max;
        self
    }

    /// How much of a request body is kept to replay it (default 64 KiB). A larger body is sent
    /// once and its request is not retried.
    pub fn body_cap(mut self, bytes: usize) -> Self {
        self.config.body_cap = bytes;
        self
    }

    /// Calls `hook` after each retryable failure: with the retry to come, or why there is
    /// none. `tracing` events (target `tollgate::retry`) say the same.
    pub fn on_event(mut self, hook: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        self.config.hook = Some(Arc::new(hook));
        self
    }

    /// Names the layer in events and logs (default `retry`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.config.name = name.into();
        self
    }
}

impl<S, C: Clone, M: Clone> Layer<S> for RetryLayer<C, M> {
    type Service = Retry<S, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut config = self.config.clone();
        config.metrics = Some(RetryMetrics::new(&config.name));
        Retry::new(inner, Arc::new(config), self.mode.clone())
    }
}

impl<C: Clone, M: Clone> Clone for RetryLayer<C, M> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<C, M: fmt::Debug> fmt::Debug for RetryLayer<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.config.name)
            .field("mode", &self.mode)
            .field("backoff", &self.config.backoff)
            .field("deadline", &self.config.deadline)
            .finish_non_exhaustive()
    }
}
