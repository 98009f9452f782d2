//! The layer: configuration, shared by every service it makes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::events::{ConcurrencyEvent, Hook};
use super::service::{Concurrency, Shared};
use super::slots::Slots;
use crate::key::{Global, LogKeys};
use crate::metrics::ConcurrencyMetrics;
use crate::respond::{EmptyBody, Errors, Grpc, Http};

/// Limits the requests in flight per key. See the [module docs](super).
///
/// `ConcurrencyLayer::new(limit)` is one limit for all requests; [`key`](Self::key) makes it
/// one per key; [`wait`](Self::wait) bounds the wait for a slot; [`errors`](Self::errors) and
/// [`grpc`](Self::grpc) choose the answer when none comes free.
///
/// # Clone
///
/// Clones, and the services they make, share the slots. Every setter makes a new layer with
/// slots of its own: configure the layer before you use it.
#[must_use]
pub struct ConcurrencyLayer<K = Global, R = Http> {
    key: K,
    respond: R,
    settings: Settings,
    slots: Arc<Slots>,
}

/// What the setters set, beside the key and the answer (whose types they may change).
#[derive(Clone)]
struct Settings {
    limit: usize,
    max_wait: Option<Duration>,
    name: Arc<str>,
    hook: Option<Hook>,
    log_keys: LogKeys,
}

impl ConcurrencyLayer {
    /// At most `limit` requests in flight (at least 1), for all requests together until
    /// [`key`](Self::key) says per what; a request waits for a slot as long as it takes,
    /// unless [`wait`](Self::wait) bounds it; HTTP requests that get no slot are answered
    /// with 503.
    pub fn new(limit: usize) -> Self {
        Self {
            key: Global,
            respond: Http::new(),
            settings: Settings {
                limit: limit.max(1),
                max_wait: None,
                name: Arc::from("concurrency"),
                hook: None,
                log_keys: LogKeys::Hashed,
            },
            slots: Arc::new(Slots::new()),
        }
    }
}

impl<K, R> ConcurrencyLayer<K, R> {
    /// Every setter goes through here: the settings, key and answer changed, and slots of the
    /// new layer's own, so that no setter can forget them (slots counted under one key or
    /// limit must not be shared with a layer of another).
    fn change<K2, R2>(
        self,
        change: impl FnOnce(K, R, &mut Settings) -> (K2, R2),
    ) -> ConcurrencyLayer<K2, R2> {
        let mut settings = self.settings;
        let (key, respond) = change(self.key, self.respond, &mut settings);
        ConcurrencyLayer {
            key,
            respond,
            settings,
            slots: Arc::new(Slots::new()),
        }
    }

    /// The limit applies per key of `key` (a [`KeyExtractor`](crate::key::KeyExtractor):
    /// [`Header`](crate::key::Header), [`PeerIp`](crate::key::PeerIp), a closure
    /// `Fn(&Request) -> Option<Key>`…) instead of to all requests together. A request without
    /// a key is answered with 400 (500 when the server cannot see it), as the rate-limit layer
    /// does.
    pub fn key<K2>(self, key: K2) -> ConcurrencyLayer<K2, R> {
        self.change(|_, respond, _| (key, respond))
    }

    /// The longest a request may wait for a slot before it is refused (503, or [`NoSlot`]
    /// with [`errors`](Self::errors)), the same word as
    /// [`RateLimitLayer::wait`](crate::RateLimitLayer::wait); `Duration::ZERO` refuses at once
    /// when no slot is free. Default: as long as it takes.
    ///
    /// [`NoSlot`]: super::NoSlot
    pub fn wait(self, max: Duration) -> Self {
        self.change(|key, respond, s| {
            s.max_wait = Some(max);
            (key, respond)
        })
    }

    /// Names the layer in events, logs and metrics (default `concurrency`).
    pub fn name(self, name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        self.change(|key, respond, s| {
            s.name = name;
            (key, respond)
        })
    }

    /// Calls `hook` when a request waits for a slot and when it is refused one.
    pub fn on_event(self, hook: impl Fn(&ConcurrencyEvent<'_>) + Send + Sync + 'static) -> Self {
        let hook: Hook = Arc::new(hook);
        self.change(|key, respond, s| {
            s.hook = Some(hook);
            (key, respond)
        })
    }

    /// How keys are shown in events and logs (default: a keyed hash, see [`LogKeys`]).
    pub fn log_keys(self, shown: LogKeys) -> Self {
        self.change(|key, respond, s| {
            s.log_keys = shown;
            (key, respond)
        })
    }

    /// Fails with errors instead of answering: [`NoSlot`](super::NoSlot) when no slot came
    /// free, a [`KeyError`](crate::key::KeyError) without a key, the inner service's errors
    /// boxed. For clients (hyper, reqwest) and services that are not HTTP.
    pub fn errors(self) -> ConcurrencyLayer<K, Errors> {
        self.change(|key, _, _| (key, Errors))
    }

    /// Answers gRPC calls: `UNAVAILABLE` when no slot came free, `INVALID_ARGUMENT` without a
    /// key.
    pub fn grpc(self) -> ConcurrencyLayer<K, Grpc> {
        self.change(|key, _, _| (key, Grpc::new(Http::new().replace_body(EmptyBody))))
    }
}

impl<K: Clone, R: Clone> Clone for ConcurrencyLayer<K, R> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            respond: self.respond.clone(),
            settings: self.settings.clone(),
            slots: Arc::clone(&self.slots),
        }
    }
}

impl<K, R> fmt::Debug for ConcurrencyLayer<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLayer")
            .field("name", &self.settings.name)
            .field("limit", &self.settings.limit)
            .field("wait", &self.settings.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S, K: Clone, R: Clone> Layer<S> for ConcurrencyLayer<K, R> {
    type Service = Concurrency<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        let settings = &self.settings;
        Concurrency::new(
            inner,
            Arc::new(Shared {
                key: self.key.clone(),
                limit: settings.limit,
                max_wait: settings.max_wait,
                slots: Arc::clone(&self.slots),
                name: Arc::clone(&settings.name),
                hook: settings.hook.clone(),
                log_keys: settings.log_keys,
                respond: self.respond.clone(),
                metrics: ConcurrencyMetrics::new(
                    &settings.name,
                    settings.max_wait != Some(Duration::ZERO),
                    settings.max_wait.is_some(),
                ),
            }),
        )
    }
}
