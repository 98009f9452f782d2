//! The service: admission against what was learned, then the call, then learning from the
//! response.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::events::LearnEventKind;
use super::layer::ServerLimit;
use super::state::{Admit, Place, Shared};
use crate::key::{Destination, KeyExtractor};
use crate::limiter::Refusal;
use crate::BoxError;

/// The service made by [`LearnLayer`](super::LearnLayer).
#[derive(Clone)]
pub struct Learn<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Learn<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S> fmt::Debug for Learn<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Learn").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Learn<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let Ok(host) = Destination.extract(&request) else {
            // No destination to learn about: pass it on.
            let future = self.inner.call(request);
            return Box::pin(async move { future.await.map_err(Into::into) });
        };
        let route = shared.route(request.method(), request.uri());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // One budget for every wait of this request: the host's, its adaptive slot, the
            // default quota's.
            let start = Instant::now();
            let max_wait = shared.settings.max_wait;
            let mut place = loop {
                let now = Instant::now();
                let budget = max_wait.saturating_sub(now - start);
                match shared.admit(&host, route, now, budget) {
                    Admit::Now(place) => break place,
                    Admit::After(wait, place) => {
                        // Dropped while waiting, the place and its slot are given back.
                        shared.waiting(&host, wait);
                        tokio::time::sleep(wait).await;
                        break place;
                    }
                    Admit::Refuse(wait) => {
                        let waited = now - start;
                        if !shared.settings.wait || waited + wait > max_wait {
                            return Err(shared.refused(&host, wait));
                        }
                        shared.waiting(&host, wait);
                        tokio::time::sleep(wait).await;
                    }
                }
            };
            // Hosts that said nothing, under the default quota.
            if let Some(limiter) = &shared.default_limiter {
                let told = shared.lock().get(&host).is_some_and(|h| h.told);
                if !told {
                    let budget = max_wait.saturating_sub(start.elapsed());
                    let admitted = match shared.settings.wait {
                        true => limiter.key(host.clone()).acquire().max_wait(budget).await,
                        false => limiter.key(host.clone()).try_acquire().await,
                    };
                    match admitted {
                        Ok(decision) if !decision.wait().is_zero() => {
                            // Reported once over: the limiter decides and waits in one call.
                            shared.waiting(&host, decision.wait());
                        }
                        Ok(_) => {}
                        Err(Refusal::Limited(limited)) => {
                            return Err(shared.refused(&host, limited.retry_after()));
                        }
                        Err(refusal) => return Err(Box::new(refusal) as BoxError),
                    }
                }
            }
            place.sent();
            send(&shared, &mut inner, request, place).await
        })
    }
}

async fn send<S, ReqB, ResB>(
    shared: &Shared,
    inner: &mut S,
    request: Request<ReqB>,
    place: Place,
) -> Result<Response<ResB>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = inner.call(request).await.map_err(Into::into)?;
    shared.learn(
        &place,
        response.status(),
        response.headers(),
        Instant::now(),
    );
    drop(place);
    Ok(response)
}

impl Shared {
    fn waiting(&self, host: &Authority, wait: Duration) {
        self.metrics.waited(wait);
        self.event(LearnEventKind::Waiting, host, wait, None);
    }

    /// The error of a request refused locally, reported.
    fn refused(&self, host: &Authority, retry_after: Duration) -> BoxError {
        self.metrics.refused();
        self.event(LearnEventKind::Refused, host, retry_after, None);
        Box::new(ServerLimit {
            host: host.to_string(),
            retry_after,
        })
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{said::Limits, server};
    use http::HeaderMap;

    fn read_limits(headers: &HeaderMap) -> Option<Limits> {
        server::read(headers).limits
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn reads_every_dialect() {
        let ietf = read_limits(&headers(&[
            ("ratelimit", "\"a\";r=5;t=10, \"b\";r=2;t=30"),
            ("ratelimit-policy", "\"a\";q=100;w=60, \"b\";q=10;w=60"),
        ]))
        .unwrap();
        assert_eq!(
            (ietf.remaining, ietf.reset, ietf.limit),
            (2, Some(Duration::from_secs(30)), Some(10))
        );
        let draft = read_limits(&headers(&[
            ("ratelimit-limit", "10"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "7"),
        ]))
        .unwrap();
        assert_eq!(
            (draft.remaining, draft.reset, draft.limit),
            (0, Some(Duration::from_secs(7)), Some(10))
        );
        let x = read_limits(&headers(&[
            ("x-ratelimit-remaining", "3"),
            ("x-ratelimit-reset", "12"),
        ]))
        .unwrap();
        assert_eq!((x.remaining, x.reset), (3, Some(Duration::from_secs(12))));
        assert!(read_limits(&headers(&[])).is_none());
    }

    #[test]
    fn hostile_values_are_ignored() {
        for pairs in [
            &[("x-ratelimit-remaining", "-1")][..],
            &[("x-ratelimit-remaining", "lots")],
            &[("ratelimit", "\"a\";r=-2;t=4")],
            &[("ratelimit-remaining", "99999999999999999999999")],
        ] {
            assert!(read_limits(&headers(pairs)).is_none(), "{pairs:?}");
        }
        let far = read_limits(&headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "99999999999"),
        ]))
        .unwrap();
        assert!(
            far.reset.unwrap() > Duration::from_secs(1_000_000),
            "read, then capped by the layer"
        );
    }
}
