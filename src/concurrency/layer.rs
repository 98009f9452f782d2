//! The layer: configuration, shared by every service it makes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::events::{ConcurrencyEvent, Hook};
use super::service::{Concurrency, Shared};
use super::slots::Slots;
use crate::key::LogKeys;
use crate::metrics::ConcurrencyMetrics;
use crate::respond::{EmptyBody, Errors, Grpc, Http};

/// Limits the requests in flight per key. See the [module docs](super).
///
/// # Clone
///
/// Clones, and the services they make, share the slots.
#[must_use]
pub struct ConcurrencyLayer<K, R = Http> {
    key: K,
    limit: usize,
    max_wait: Option<Duration>,
    slots: Arc<Slots>,
    name: Arc<str>,
    hook: Option<Hook>,
    log_keys: LogKeys,
    respond: R,
}

impl<K> ConcurrencyLayer<K> {
    /// At most `limit` requests in flight per key of `key` (at least 1), answering HTTP
    /// requests that get no slot with 503.
    pub fn new(limit: usize, key: K) -> Self {
        Self {
            key,
            limit: limit.max(1),
            max_wait: None,
            slots: Arc::new(Slots::new()),
            name: Arc::from("concurrency"),
            hook: None,
            log_keys: LogKeys::Hashed,
            respond: Http::new(),
        }
    }
}

impl<K, R> ConcurrencyLayer<K, R> {
    /// How long a request may wait for a slot before it is refused (503, or [`NoSlot`]
    /// with [`errors`](Self::errors)); default: as long as it takes.
    ///
    /// [`NoSlot`]: super::NoSlot
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Names the layer in events, logs and metrics (default `concurrency`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls `hook` when a request waits for a slot and when it is refused one.
    pub fn on_event(
        mut self,
        hook: impl Fn(&ConcurrencyEvent<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// How keys are shown in events and logs (default: a keyed hash, see [`LogKeys`]).
    pub fn log_keys(mut self, shown: LogKeys) -> Self {
        self.log_keys = shown;
        self
    }

    /// Fails with errors instead of answering: [`NoSlot`](super::NoSlot) when no slot came
    /// free, a [`KeyError`](crate::key::KeyError) without a key, the inner service's errors
    /// boxed. For clients (hyper, reqwest) and services that are not HTTP.
    pub fn errors(self) -> ConcurrencyLayer<K, Errors> {
        self.respond_with(Errors)
    }

    /// Answers gRPC calls: `UNAVAILABLE` when no slot came free, `INVALID_ARGUMENT` without a
    /// key.
    pub fn grpc(self) -> ConcurrencyLayer<K, Grpc> {
        self.respond_with(Grpc::new(Http::new().replace_body(EmptyBody)))
    }

    fn respond_with<R2>(self, respond: R2) -> ConcurrencyLayer<K, R2> {
        ConcurrencyLayer {
            key: self.key,
            limit: self.limit,
            max_wait: self.max_wait,
            slots: self.slots,
            name: self.name,
            hook: self.hook,
            log_keys: self.log_keys,
            respond,
        }
    }
}

impl<K: Clone, R: Clone> Clone for ConcurrencyLayer<K, R> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            limit: self.limit,
            max_wait: self.max_wait,
            slots: Arc::clone(&self.slots),
            name: Arc::clone(&self.name),
            hook: self.hook.clone(),
            log_keys: self.log_keys,
            respond: self.respond.clone(),
        }
    }
}

impl<K, R> fmt::Debug for ConcurrencyLayer<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLayer")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S, K: Clone, R: Clone> Layer<S> for ConcurrencyLayer<K, R> {
    type Service = Concurrency<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Concurrency::new(
            inner,
            Arc::new(Shared {
                key: self.key.clone(),
                limit: self.limit,
                max_wait: self.max_wait,
                slots: Arc::clone(&self.slots),
                name: Arc::clone(&self.name),
                hook: self.hook.clone(),
                log_keys: self.log_keys,
                respond: self.respond.clone(),
                metrics: ConcurrencyMetrics::new(&self.name),
            }),
        )
    }
}
