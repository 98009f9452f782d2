//! Counters and histograms through the [`metrics`](https://docs.rs/metrics) facade, with the
//! `metrics` feature; without it, these are empty and cost nothing.
//!
#![cfg_attr(feature = "metrics", doc = "```")]
#![cfg_attr(not(feature = "metrics"), doc = "```ignore")]
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use metrics_exporter_prometheus::PrometheusBuilder;
//! use tollgate::retry::{ReplayBody, RetryLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // An upstream that fails once with 503, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| {
//!     let status = if calls.fetch_add(1, Ordering::SeqCst) == 0 { 503 } else { 200 };
//!     async move { Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap()) }
//! });
//! // The recorder first (a server installs its exporter once, at start-up:
//! // `PrometheusBuilder::new().install_recorder()`), then the layers, named: the names are
//! // the labels, and each layer registers its handles when it makes its service.
//! let recorder = PrometheusBuilder::new().build_recorder();
//! let prometheus = recorder.handle();
//! let client = metrics::with_local_recorder(&recorder, || {
//!     RetryLayer::new().name("payments").layer(upstream)
//! });
//!
//! let request = Request::get("http://example/").body(Full::default()).unwrap();
//! assert_eq!(client.oneshot(request).await.unwrap().status(), 200);
//! let rendered = prometheus.render();
//! assert!(rendered.contains(
//!     r#"tollgate_retry_retries_total{layer="payments",reason="transient"} 1"#
//! ));
//! # }
//! ```
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `tollgate_rate_limit_allowed_total` | counter | `layer` |
//! | `tollgate_rate_limit_limited_total` | counter | `layer` |
//! | `tollgate_rate_limit_waited_total` | counter | `layer` |
//! | `tollgate_rate_limit_wait_seconds` | histogram | `layer` |
//! | `tollgate_rate_limit_near_limit_total` | counter | `layer`: keys reported near their limit ([`near_limit`](crate::RateLimitLayer::near_limit)) |
//! | `tollgate_rate_limit_blocked_total` | counter | `layer`: blocks started ([`block`](crate::RateLimitLayer::block)) |
//! | `tollgate_rate_limit_decided_alone_total` | counter | `layer`: requests decided by this instance alone while its shared store was away ([`Decision::is_alone`](crate::Decision::is_alone)) |
//! | `tollgate_retry_retries_total` | counter | `layer`, `reason` (`transient`, `throttled`, `server_delay`) |
//! | `tollgate_retry_gave_up_total` | counter | `layer`, `reason` (`attempts`, `budget`, `deadline`, `body`, `pushback_too_long`, `not_idempotent`) |
//! | `tollgate_retry_budget_spent_total` | counter | `layer` |
//! | `tollgate_learn_waited_total` | counter | `layer` |
//! | `tollgate_learn_wait_seconds` | histogram | `layer` |
//! | `tollgate_learn_refused_total` | counter | `layer` |
//! | `tollgate_learn_limits_learned_total` | counter | `layer`: responses that stated limits or asked for a delay |
//! | `tollgate_concurrency_waited_total` | counter | `layer` |
//! | `tollgate_concurrency_refused_total` | counter | `layer` |
//! | `tollgate_concurrency_in_flight` | gauge | `layer` |
//! | `tollgate_store_errors_total` | counter | `store` |
//! | `tollgate_store_cap_reached_total` | counter | `store` (`memory`): evictions run at the cap |
//! | `tollgate_store_evicted_total` | counter | `store` (`memory`): live states they dropped |
//! | `tollgate_blocks_evicted_total` | counter | `layer`: blocks ended early at the block table's cap |
//! | `tollgate_client_ip_header_missing_total` | counter | `header`: requests from a trusted proxy without the forwarding header `ClientIp` reads |
//!
//! Labels are the names given to layers and stores, never keys: the label sets stay small
//! whatever the traffic. Handles are registered when a layer makes its service, so install the
//! recorder (a Prometheus exporter, say) before building the stack.
//!
//! A rate-limit layer in [shadow mode](crate::RateLimitLayer::shadow) adds `shadow="true"` to
//! each of its `tollgate_rate_limit_*` series, so that what it would have refused is never
//! summed with what enforced layers refused.
//!
//! The example server serves them at `/metrics` on its [admin listener](crate::admin)
//! (metrics-exporter-prometheus):
//!
//! ```text
//! ADMIN_ADDR=127.0.0.1:9000 cargo run --example server   # then, in another terminal:
//! curl -s localhost:9000/metrics | grep -v '^#' | grep total
//! ```

/// The `reason` labels of `tollgate_retry_retries_total`, in the order of their counters.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const RETRY_REASONS: [&str; 3] = ["transient", "throttled", "server_delay"];
/// The `reason` labels of `tollgate_retry_gave_up_total`, in the order of their counters.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const GIVE_UP_REASONS: [&str; 6] = [
    "attempts",
    "budget",
    "deadline",
    "body",
    "pushback_too_long",
    "not_idempotent",
];

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use metrics::{counter, histogram, Counter, Histogram};

    use super::{GIVE_UP_REASONS, RETRY_REASONS};

    /// Every metric's help text and unit, for the exporter's `# HELP` lines. Given each time a
    /// layer makes its service (the exporter keeps one per name), never on a request's path.
    fn describe() {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        let count = Unit::Count;
        describe_counter!(
            "tollgate_rate_limit_allowed_total",
            count,
            "Requests a rate-limit layer let through."
        );
        describe_counter!(
            "tollgate_rate_limit_limited_total",
            count,
            "Requests a rate-limit layer refused (or, in shadow mode, would have refused)."
        );
        describe_counter!(
            "tollgate_rate_limit_waited_total",
            count,
            "Requests a rate-limit layer held until their slot came."
        );
        describe_histogram!(
            "tollgate_rate_limit_wait_seconds",
            Unit::Seconds,
            "How long held requests waited for their slot."
        );
        describe_counter!(
            "tollgate_rate_limit_near_limit_total",
            count,
            "Keys reported near their limit."
        );
        describe_counter!(
            "tollgate_rate_limit_blocked_total",
            count,
            "Blocks started on keys refused too often."
        );
        describe_counter!(
            "tollgate_rate_limit_decided_alone_total",
            count,
            "Requests decided by this instance alone while its shared store was away."
        );
        describe_counter!(
            "tollgate_retry_retries_total",
            count,
            "Attempts a retry layer made again, by reason."
        );
        describe_counter!(
            "tollgate_retry_gave_up_total",
            count,
            "Requests a retry layer stopped retrying, by reason."
        );
        describe_counter!(
            "tollgate_retry_budget_spent_total",
            count,
            "Retries refused because the retry budget was spent."
        );
        describe_counter!(
            "tollgate_learn_waited_total",
            count,
            "Requests held to keep within a limit a server announced."
        );
        describe_histogram!(
            "tollgate_learn_wait_seconds",
            Unit::Seconds,
            "How long requests were held for a server's announced limit."
        );
        describe_counter!(
            "tollgate_learn_refused_total",
            count,
            "Requests refused locally: the server's announced wait was too long."
        );
        describe_counter!(
            "tollgate_learn_limits_learned_total",
            count,
            "Responses that stated limits or asked for a delay."
        );
        describe_counter!(
            "tollgate_concurrency_waited_total",
            count,
            "Requests that waited for a concurrency slot."
        );
        describe_counter!(
            "tollgate_concurrency_refused_total",
            count,
            "Requests refused: no concurrency slot came free in time."
        );
        describe_gauge!(
            "tollgate_concurrency_in_flight",
            count,
            "Requests holding a concurrency slot now."
        );
        describe_counter!(
            "tollgate_store_errors_total",
            count,
            "Calls to a rate-limit store that failed."
        );
        describe_counter!(
            "tollgate_store_local_decisions_total",
            Unit::Count,
            "Decisions a network store's instance made alone while the store was away (OnFailure::Local)."
        );
        describe_gauge!(
            "tollgate_store_local_keys",
            Unit::Count,
            "Keys decided locally while a network store was away, whose debt is still to be written back to it."
        );
        describe_counter!(
            "tollgate_store_cap_reached_total",
            count,
            "Evictions run at the memory store's cap."
        );
        describe_counter!(
            "tollgate_store_evicted_total",
            count,
            "Live states the memory store dropped at its cap."
        );
        describe_counter!(
            "tollgate_blocks_evicted_total",
            count,
            "Blocks ended early at the block table's cap."
        );
        describe_counter!(
            "tollgate_client_ip_header_missing_total",
            count,
            "Requests from a trusted proxy without the forwarding header ClientIp reads."
        );
    }

    /// The metrics of one rate limiter. A feature the limiter does not use has no series: the
    /// near-limit and block counters exist only when configured, and the wait counters from
    /// the first request that waited (a limiter that refuses at once never shows them).
    #[derive(Clone)]
    pub(crate) struct LimiterMetrics {
        allowed: Counter,
        limited: Counter,
        near_limit: Counter,
        blocked: Counter,
        labels: Arc<[metrics::Label]>,
        waits: Arc<OnceLock<(Counter, Histogram)>>,
        /// Registered at the first decision made alone: no series for a layer whose store
        /// never is away.
        alone: Arc<OnceLock<Counter>>,
    }

    impl LimiterMetrics {
        /// A layer's metrics; in shadow mode each carries `shadow="true"`, so that what a
        /// shadow layer would have refused is never summed with what others refused.
        pub(crate) fn new(layer: &str, shadow: bool, near_limit: bool, blocks: bool) -> Self {
            describe();
            let mut labels = vec![metrics::Label::new("layer", layer.to_owned())];
            if shadow {
                labels.push(metrics::Label::new("shadow", "true"));
            }
            let used = |used: bool, name: &'static str| {
                if used {
                    counter!(name, labels.clone())
                } else {
                    Counter::noop()
                }
            };
            Self {
                allowed: counter!("tollgate_rate_limit_allowed_total", labels.clone()),
                limited: counter!("tollgate_rate_limit_limited_total", labels.clone()),
                near_limit: used(near_limit, "tollgate_rate_limit_near_limit_total"),
                blocked: used(blocks, "tollgate_rate_limit_blocked_total"),
                labels: labels.into(),
                waits: Arc::default(),
                alone: Arc::default(),
            }
        }

        pub(crate) fn near_limit(&self) {
            self.near_limit.increment(1);
        }

        pub(crate) fn blocked(&self) {
            self.blocked.increment(1);
        }

        pub(crate) fn decided_alone(&self) {
            self.alone
                .get_or_init(|| {
                    counter!(
                        "tollgate_rate_limit_decided_alone_total",
                        self.labels.to_vec()
                    )
                })
                .increment(1);
        }

        #[inline]
        pub(crate) fn allowed(&self) {
            self.allowed.increment(1);
        }

        pub(crate) fn limited(&self) {
            self.limited.increment(1);
        }

        pub(crate) fn waited(&self, wait: Duration) {
            let (waited, seconds) = self.waits.get_or_init(|| {
                let labels = self.labels.to_vec();
                (
                    counter!("tollgate_rate_limit_waited_total", labels.clone()),
                    histogram!("tollgate_rate_limit_wait_seconds", labels),
                )
            });
            waited.increment(1);
            seconds.record(wait.as_secs_f64());
        }
    }

    /// The metrics of one concurrency layer.
    #[derive(Clone)]
    pub(crate) struct ConcurrencyMetrics {
        waited: Counter,
        refused: Counter,
        in_flight: metrics::Gauge,
    }

    impl ConcurrencyMetrics {
        /// A layer's metrics: `waits` when a request may wait for a slot, `refuses` when one
        /// may be refused (a bounded wait); no series for what the layer never does.
        pub(crate) fn new(layer: &str, waits: bool, refuses: bool) -> Self {
            describe();
            let label = layer.to_owned();
            let used = |used: bool, name: &'static str| {
                if used {
                    counter!(name, "layer" => label.clone())
                } else {
                    Counter::noop()
                }
            };
            Self {
                waited: used(waits, "tollgate_concurrency_waited_total"),
                refused: used(refuses, "tollgate_concurrency_refused_total"),
                in_flight: metrics::gauge!("tollgate_concurrency_in_flight", "layer" => label),
            }
        }

        pub(crate) fn waited(&self) {
            self.waited.increment(1);
        }

        pub(crate) fn refused(&self) {
            self.refused.increment(1);
        }

        #[inline]
        pub(crate) fn entered(&self) {
            self.in_flight.increment(1.0);
        }

        #[inline]
        pub(crate) fn left(&self) {
            self.in_flight.decrement(1.0);
        }
    }

    /// The metrics of one learn layer.
    #[derive(Clone)]
    pub(crate) struct LearnMetrics {
        waited: Counter,
        wait_seconds: Histogram,
        refused: Counter,
        learned: Counter,
    }

    impl LearnMetrics {
        pub(crate) fn new(layer: &str) -> Self {
            describe();
            let label = layer.to_owned();
            Self {
                waited: counter!("tollgate_learn_waited_total", "layer" => label.clone()),
                wait_seconds: histogram!("tollgate_learn_wait_seconds", "layer" => label.clone()),
                refused: counter!("tollgate_learn_refused_total", "layer" => label.clone()),
                learned: counter!("tollgate_learn_limits_learned_total", "layer" => label),
            }
        }

        pub(crate) fn waited(&self, wait: Duration) {
            self.waited.increment(1);
            self.wait_seconds.record(wait.as_secs_f64());
        }

        pub(crate) fn refused(&self) {
            self.refused.increment(1);
        }

        pub(crate) fn learned(&self) {
            self.learned.increment(1);
        }
    }

    /// The metrics of one retry layer.
    #[derive(Clone)]
    pub(crate) struct RetryMetrics {
        retries: [Counter; 3],
        gave_up: [Counter; 6],
        budget_spent: Counter,
    }

    impl RetryMetrics {
        pub(crate) fn new(layer: &str) -> Self {
            describe();
            let label = layer.to_owned();
            Self {
                retries: RETRY_REASONS.map(|reason| {
                    counter!("tollgate_retry_retries_total", "layer" => label.clone(), "reason" => reason)
                }),
                gave_up: GIVE_UP_REASONS.map(|reason| {
                    counter!("tollgate_retry_gave_up_total", "layer" => label.clone(), "reason" => reason)
                }),
                budget_spent: counter!("tollgate_retry_budget_spent_total", "layer" => label),
            }
        }

        /// A retry, for the reason at `index` of [`RETRY_REASONS`].
        pub(crate) fn retried(&self, index: usize) {
            self.retries[index].increment(1);
        }

        /// A give-up, for the reason at `index` of [`GIVE_UP_REASONS`].
        pub(crate) fn gave_up(&self, index: usize) {
            self.gave_up[index].increment(1);
            if GIVE_UP_REASONS[index] == "budget" {
                self.budget_spent.increment(1);
            }
        }
    }

    /// Counts a store's failed calls.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn store_error(store: &'static str) {
        counter!("tollgate_store_errors_total", "store" => store).increment(1);
    }

    /// Counts a decision made locally while a network store was away, and sets how many keys
    /// so decided wait to be written back.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn decided_locally(store: &'static str, keys: usize) {
        counter!("tollgate_store_local_decisions_total", "store" => store).increment(1);
        metrics::gauge!("tollgate_store_local_keys", "store" => store).set(keys as f64);
    }

    /// Sets how many keys decided locally wait to be written back.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn local_keys(store: &'static str, keys: usize) {
        metrics::gauge!("tollgate_store_local_keys", "store" => store).set(keys as f64);
    }

    /// Counts an eviction at the memory store's cap, and the states it dropped.
    pub(crate) fn store_evicted(states: u64) {
        counter!("tollgate_store_cap_reached_total", "store" => "memory").increment(1);
        counter!("tollgate_store_evicted_total", "store" => "memory").increment(states);
    }

    /// Counts a request from a trusted proxy without the forwarding header `ClientIp` reads.
    pub(crate) fn unforwarded(header: &'static str) {
        counter!("tollgate_client_ip_header_missing_total", "header" => header).increment(1);
    }

    /// Counts blocks ended early to make room at the block table's cap.
    pub(crate) fn blocks_evicted(layer: &str, blocks: u64) {
        counter!("tollgate_blocks_evicted_total", "layer" => layer.to_owned()).increment(blocks);
    }
}

#[cfg(not(feature = "metrics"))]
mod disabled {
    use std::time::Duration;

    #[derive(Clone)]
    pub(crate) struct LimiterMetrics;

    impl LimiterMetrics {
        pub(crate) fn new(_: &str, _: bool, _: bool, _: bool) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn near_limit(&self) {}

        #[inline]
        pub(crate) fn blocked(&self) {}

        #[inline]
        pub(crate) fn decided_alone(&self) {}

        #[inline]
        pub(crate) fn allowed(&self) {}

        #[inline]
        pub(crate) fn limited(&self) {}

        #[inline]
        pub(crate) fn waited(&self, _: Duration) {}
    }

    #[derive(Clone)]
    pub(crate) struct ConcurrencyMetrics;

    impl ConcurrencyMetrics {
        pub(crate) fn new(_: &str, _: bool, _: bool) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn waited(&self) {}

        #[inline]
        pub(crate) fn refused(&self) {}

        #[inline]
        pub(crate) fn entered(&self) {}

        #[inline]
        pub(crate) fn left(&self) {}
    }

    #[derive(Clone)]
    pub(crate) struct LearnMetrics;

    impl LearnMetrics {
        pub(crate) fn new(_: &str) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn waited(&self, _: Duration) {}

        #[inline]
        pub(crate) fn refused(&self) {}

        #[inline]
        pub(crate) fn learned(&self) {}
    }

    #[derive(Clone)]
    pub(crate) struct RetryMetrics;

    impl RetryMetrics {
        pub(crate) fn new(_: &str) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn retried(&self, _: usize) {}

        #[inline]
        pub(crate) fn gave_up(&self, _: usize) {}
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[inline]
    pub(crate) fn store_error(_: &'static str) {}

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[inline]
    pub(crate) fn decided_locally(_: &'static str, _: usize) {}

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[inline]
    pub(crate) fn local_keys(_: &'static str, _: usize) {}

    #[inline]
    pub(crate) fn store_evicted(_: u64) {}

    #[inline]
    pub(crate) fn unforwarded(_: &'static str) {}

    #[inline]
    pub(crate) fn blocks_evicted(_: &str, _: u64) {}
}

#[cfg(feature = "metrics")]
pub(crate) use enabled::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::*;
