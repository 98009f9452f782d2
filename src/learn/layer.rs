//! The layer and its settings.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use http::{Method, Uri};
use tower_layer::Layer;

use super::events::{Hook, LearnEvent};
use super::service::Learn;
use super::state::Shared;
use crate::clock::TokioClock;
use crate::metrics::LearnMetrics;
use crate::{MemoryStore, Quotas, RateLimiter};

/// Keeps an outbound client to the limits its servers state. See the [module docs](super).
///
/// # Clone
///
/// Clones, and the services they make, share what was learned. Every setter makes a new
/// layer with nothing learned yet: configure the layer before you use it.
#[derive(Clone)]
#[must_use]
pub struct LearnLayer {
    shared: Arc<Shared>,
}

/// Additive increase, multiplicative decrease of a host's rate, in requests per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    /// The rate to start at.
    pub start: f64,
    /// Never slower than this.
    pub floor: f64,
    /// Never faster than this.
    pub ceiling: f64,
    /// Added after each success.
    pub step: f64,
    /// Multiplied in after each 429 or 503 (0.5: halved).
    pub decrease: f64,
}

impl Default for Aimd {
    /// From 10 per second, between 1 and 100, +1 per success, halved on throttling.
    fn default() -> Self {
        Self {
            start: 10.0,
            floor: 1.0,
            ceiling: 100.0,
            step: 1.0,
            decrease: 0.5,
        }
    }
}

/// What the builder methods set.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) wait: bool,
    pub(crate) max_wait: Duration,
    pub(crate) default_quota: Option<Quotas>,
    pub(crate) aimd: Option<Aimd>,
    pub(crate) name: Arc<str>,
    pub(crate) hook: Option<Hook>,
    /// The key of a request's route, hashed; `None`: by method and path.
    pub(crate) route: Option<RouteFn>,
}

/// What [`LearnLayer::route`] keeps: the user's function, its key hashed.
pub(crate) type RouteFn = Arc<dyn Fn(&Method, &Uri, &RandomState) -> Option<u64> + Send + Sync>;

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("wait", &self.wait)
            .field("max_wait", &self.max_wait)
            .field("default_quota", &self.default_quota)
            .field("aimd", &self.aimd)
            .field(
                "route",
                &self.route.as_ref().map_or("method and path", |_| "custom"),
            )
            .finish_non_exhaustive()
    }
}
/// A request refused locally because its host said to wait, and the wait is not allowed
/// (reject mode, or longer than the maximum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimit {
    /// The host.
    pub host: String,
    /// How long until the host would accept it.
    pub retry_after: Duration,
}

impl fmt::Display for ServerLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} asked to wait {} before the next request",
            self.host,
            crate::human::Human(self.retry_after)
        )
    }
}

impl std::error::Error for ServerLimit {}

impl ServerLimit {
    /// How long until the host would accept the request.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl LearnLayer {
    /// Learns from responses, waits up to 60 s when told to ([`wait`](Self::wait)), and leaves
    /// hosts that say nothing unlimited.
    pub fn new() -> Self {
        Self::with_settings(Settings {
            wait: true,
            max_wait: Duration::from_secs(60),
            default_quota: None,
            aimd: None,
            name: Arc::from("learn"),
            hook: None,
            route: None,
        })
    }

    fn with_settings(settings: Settings) -> Self {
        let default_limiter = settings.default_quota.clone().map(|quotas| {
            let max_wait = if settings.wait {
                settings.max_wait
            } else {
                Duration::ZERO
            };
            RateLimiter::keyed(quotas)
                .store(MemoryStore::builder().clock(TokioClock::new()).build())
                .max_wait(max_wait)
                .name(format!("{}/default_quota", settings.name))
        });
        let metrics = LearnMetrics::new(&settings.name);
        Self {
            shared: Arc::new(Shared {
                hosts: Mutex::new(HashMap::new()),
                settings,
                default_limiter,
                metrics,
                hasher: RandomState::new(),
            }),
        }
    }

    /// A layer with changed settings (and nothing learned yet).
    fn change(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings.clone();
        change(&mut settings);
        Self::with_settings(settings)
    }

    /// Wait mode (the default) with `max` as the longest a request may wait for its host
    /// (default 60 s), the same word as [`RateLimitLayer::wait`](crate::RateLimitLayer::wait):
    /// past it, the request is refused with [`ServerLimit`]. It also caps what a hostile header
    /// can ask for, in either mode.
    pub fn wait(self, max: Duration) -> Self {
        self.change(|s| {
            s.wait = true;
            s.max_wait = max;
        })
    }

    /// Reject mode: refuses at once, with [`ServerLimit`], instead of waiting (as
    /// [`RateLimitLayer::reject`](crate::RateLimitLayer::reject) does).
    pub fn reject(self) -> Self {
        self.change(|s| s.wait = false)
    }

    /// Limits hosts that send no rate-limit headers to `quota`, until they do.
    pub fn default_quota(self, quota: impl Into<Quotas>) -> Self {
        let quotas = quota.into();
        self.change(|s| s.default_quota = Some(quotas))
    }

    /// Paces hosts that send no rate-limit headers with an adaptive rate (see [`Aimd`]).
    pub fn adaptive(self, aimd: Aimd) -> Self {
        self.change(|s| s.aimd = Some(aimd))
    }

    /// Names the layer in events, logs and metrics (default `learn`).
    pub fn name(self, name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        self.change(|s| s.name = name)
    }

    /// Calls `hook` when a request waits for its host, is refused locally, or a response
    /// states limits.
    pub fn on_event(self, hook: impl Fn(&LearnEvent<'_>) + Send + Sync + 'static) -> Self {
        let hook: Hook = Arc::new(hook);
        self.change(|s| s.hook = Some(hook))
    }

    /// Says which requests share a route: `route` maps a request's method and URI to a key,
    /// and requests with the same key are admitted against the limits the last answer to one
    /// of them named (see [limits by name](super#limits-by-name)). By default the key is the
    /// method and the path, so that a route is known once it has been answered; a key of
    /// your own can group the paths a server counts under one limit, so that a request to a
    /// path never answered yet waits for that limit too. `None`: the request is admitted
    /// against the host's unnamed limits only, and its answer is remembered for no route.
    ///
    /// ```
    /// use tollgate::learn::LearnLayer;
    ///
    /// // GitHub: `/search/...` counts under `search` (or `code_search`), the rest under
    /// // `core`, whatever the repository or issue in the path.
    /// let layer = LearnLayer::new().route(|_, uri| uri.path().split('/').nth(1).map(str::to_owned));
    /// # drop(layer);
    /// ```
    pub fn route<K: Hash>(
        self,
        route: impl Fn(&Method, &Uri) -> Option<K> + Send + Sync + 'static,
    ) -> Self {
        let route: RouteFn =
            Arc::new(move |method, uri, hasher| route(method, uri).map(|k| hasher.hash_one(k)));
        self.change(|s| s.route = Some(route))
    }

    /// What the layer's services share (for the unit tests of the state).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The rate adaptive mode has settled on for `host`, if it paces it.
    pub fn adaptive_rate(&self, host: &Authority) -> Option<f64> {
        let hosts = self
            .shared
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        hosts
            .get(host)
            .filter(|h| !h.told && self.shared.settings.aimd.is_some())
            .map(|h| h.rate)
    }
}

impl Default for LearnLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LearnLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LearnLayer")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for LearnLayer {
    type Service = Learn<S>;

    fn layer(&self, inner: S) -> Learn<S> {
        Learn::new(inner, Arc::clone(&self.shared))
    }
}
