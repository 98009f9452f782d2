use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::attempts::{ClonedRequest, Cloning, ReplayedRequest, Replaying, RequestSource};
use super::body::ReplayBody;
use super::classify::{Classify, HttpClassifier};
use super::config::Config;
use super::events::Attempts as AttemptCount;
use super::future::ResponseFuture;
use crate::BoxError;

/// The service made by [`RetryLayer`](super::RetryLayer): `Retry<S>` around an HTTP client
/// `S`, `Retry<S, GrpcClassifier>` around a gRPC channel (the third type parameter, how each
/// attempt's request is made, follows from the layer and is never written out).
///
/// # Clone
///
/// Clones share the configuration, the budget and the hooks.
///
/// [`GrpcClassifier`]: super::GrpcClassifier
pub struct Retry<S, C = HttpClassifier, M = Replaying> {
    inner: S,
    config: Arc<Config<C>>,
    mode: M,
}

impl<S, C, M> Retry<S, C, M> {
    pub(crate) fn new(inner: S, config: Arc<Config<C>>, mode: M) -> Self {
        Self {
            inner,
            config,
            mode,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    service_ext_methods!();

    #[inline]
    fn start<P: RequestSource>(
        &mut self,
        first: P::Request,
        attempts: P,
        annotate: fn(&mut S::Response, u32),
        status: fn(&S::Response) -> Option<http::StatusCode>,
    ) -> ResponseFuture<S, P, C>
    where
        S: Service<P::Request> + Clone,
    {
        let budget = self.config.budget.deposit(attempts.destination());
        // The service polled ready goes with the first attempt; a clone takes its place.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::start(
            service,
            first,
            attempts,
            Arc::clone(&self.config),
            budget,
            annotate,
            status,
        )
    }
}

impl<S: Clone, C, M: Clone> Clone for Retry<S, C, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
            mode: self.mode.clone(),
        }
    }
}

impl<S, C, M> fmt::Debug for Retry<S, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl<S, C, B, ResB> Service<Request<B>> for Retry<S, C, Replaying>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    C: Classify<Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReplayedRequest<B>, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (first, attempts) =
            ReplayedRequest::prepare(request, self.config.body_cap, self.mode.any_method);
        self.start(
            first,
            attempts,
            |response: &mut Response<ResB>, made| {
                if made > 1 {
                    response.extensions_mut().insert(AttemptCount(made));
                }
            },
            |response| Some(response.status()),
        )
    }
}

impl<S, C, Req> Service<Req> for Retry<S, C, Cloning>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone + Send + 'static,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, ClonedRequest<Req>, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let (first, attempts) = ClonedRequest::prepare(request);
        self.start(first, attempts, |_, _| {}, |_| None)
    }
}
