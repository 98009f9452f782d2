//! How each attempt's request is made: from a recorded HTTP request, or by cloning.
//!
//! The types here are type-state of the layer, the service and the response future, never
//! written out by users: `pub` (so that the public types may carry them) in a private module,
//! and not re-exported.

use http::uri::Authority;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use http_body::Body;

use super::body::{Replay, ReplayBody};
use super::events::{GiveUp, Retryable};

/// Requests are HTTP requests: recorded and replayed, retried when idempotent or when they
/// never reached the server (for [`RetryLayer::new`](super::RetryLayer::new)), or whatever
/// their method (gRPC calls, for [`RetryLayer::grpc`](super::RetryLayer::grpc)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Replaying {
    pub(crate) any_method: bool,
}

/// Requests of any type, cloned for each attempt (as `tower::retry` does), for
/// [`RetryLayer::cloning`](super::RetryLayer::cloning).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cloning;

/// The requests of one call's retries (the first attempt's request is made beside it).
pub trait RequestSource: Send + 'static {
    /// What the inner service receives.
    type Request;

    /// The next retry's request.
    fn next(&mut self) -> Result<Self::Request, GiveUp>;

    /// Whether another attempt can be made, after an outcome that `never_sent` says never
    /// reached the server or not.
    fn check(&self, never_sent: bool) -> Result<(), GiveUp>;

    /// Where the request goes, when it is known.
    fn destination(&self) -> Option<&Authority>;
}

/// The retries of an HTTP request: copies of the original with the recorded body.
pub struct ReplayedRequest<B> {
    template: Option<Template>,
    replay: Option<Replay<B>>,
    /// Retried after any retryable outcome (idempotent, or marked); otherwise only after one
    /// that never reached the server.
    any_outcome: bool,
}

impl<B> std::fmt::Debug for ReplayedRequest<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayedRequest")
            .field("any_outcome", &self.any_outcome)
            .finish_non_exhaustive()
    }
}

/// What each retry copies from the original request.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

/// The header that marks a request as safe to retry whatever its method.
static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT` and `DELETE` (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<B: Body + Send + 'static> ReplayedRequest<B> {
    /// The first attempt's request, and what the retries need: a copy of the request's head
    /// and its body. A request that may be retried after any retryable outcome (idempotent by
    /// method, marked with an `Idempotency-Key` header or a [`Retryable`] extension, or any
    /// request when `any_method`, for gRPC calls) has its body recorded up to `body_cap`.
    /// Any other is retried only when it never reached the server, which its body then never
    /// began to be sent: the body is kept unread and recorded not at all (a cap of 0), so
    /// that it can be sent whole by the next attempt, and a body that began to be sent is
    /// never sent again.
    #[inline]
    pub(crate) fn prepare(
        request: Request<B>,
        body_cap: usize,
        any_method: bool,
    ) -> (Request<ReplayBody<B>>, Self) {
        let (parts, body) = request.into_parts();
        let any_outcome = any_method
            || is_idempotent(&parts.method)
            || parts.headers.contains_key(&IDEMPOTENCY_KEY)
            || parts.extensions.get::<Retryable>().is_some();
        let cap = if any_outcome { body_cap } else { 0 };
        let (body, replay) = ReplayBody::recorded(body, cap);
        let template = Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
        };
        (
            Request::from_parts(parts, body),
            Self {
                template: Some(template),
                replay: Some(replay),
                any_outcome,
            },
        )
    }
}

impl<B: Body + Send + 'static> RequestSource for ReplayedRequest<B> {
    type Request = Request<ReplayBody<B>>;

    fn next(&mut self) -> Result<Self::Request, GiveUp> {
        let (Some(template), Some(replay)) = (&self.template, &self.replay) else {
            return Err(GiveUp::NotIdempotent);
        };
        let body = replay.replay().map_err(|_| GiveUp::Body)?;
        let mut request = Request::new(body);
        *request.method_mut() = template.method.clone();
        *request.uri_mut() = template.uri.clone();
        *request.version_mut() = template.version;
        *request.headers_mut() = template.headers.clone();
        *request.extensions_mut() = template.extensions.clone();
        Ok(request)
    }

    fn check(&self, never_sent: bool) -> Result<(), GiveUp> {
        match &self.replay {
            None => Err(GiveUp::NotIdempotent),
            Some(_) if !(self.any_outcome || never_sent) => Err(GiveUp::NotIdempotent),
            Some(replay) => replay.check().map_err(|_| GiveUp::Body),
        }
    }

    fn destination(&self) -> Option<&Authority> {
        self.template.as_ref()?.uri.authority()
    }
}

/// The attempts of a request that is cloned for each one, as `tower::retry` does.
#[derive(Debug)]
pub struct ClonedRequest<Req> {
    request: Req,
}

impl<Req: Clone> ClonedRequest<Req> {
    /// The first attempt's request (a clone), and the original kept for the retries.
    #[inline]
    pub(crate) fn prepare(request: Req) -> (Req, Self) {
        (request.clone(), Self { request })
    }
}

impl<Req: Clone + Send + 'static> RequestSource for ClonedRequest<Req> {
    type Request = Req;

    fn next(&mut self) -> Result<Req, GiveUp> {
        Ok(self.request.clone())
    }

    fn check(&self, _: bool) -> Result<(), GiveUp> {
        Ok(())
    }

    fn destination(&self) -> Option<&Authority> {
        None
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri("http://api.example/items?x=1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap()
    }

    #[tokio::test]
    async fn retries_carry_the_same_method_uri_headers_extensions_and_body() {
        let mut original = request(Method::PUT, &[("x-trace", "abc")]);
        original.extensions_mut().insert(42u32);
        let (first, mut attempts) = ReplayedRequest::prepare(original, 1024, false);
        let first_body = first.into_body().collect().await.unwrap().to_bytes();
        let second = attempts.next().unwrap();
        assert_eq!(second.method(), Method::PUT);
        assert_eq!(second.uri(), "http://api.example/items?x=1");
        assert_eq!(second.headers()["x-trace"], "abc");
        assert_eq!(second.extensions().get::<u32>(), Some(&42));
        assert_eq!(
            second.into_body().collect().await.unwrap().to_bytes(),
            first_body
        );
        assert_eq!(attempts.destination().unwrap(), "api.example");
    }

    #[test]
    fn only_idempotent_or_marked_requests_are_retried() {
        let (_, post) = ReplayedRequest::prepare(request(Method::POST, &[]), 1024, false);
        assert_eq!(post.check(false), Err(GiveUp::NotIdempotent));
        assert_eq!(post.check(true), Ok(()), "it never reached the server");
        let (_, keyed) = ReplayedRequest::prepare(
            request(Method::POST, &[("idempotency-key", "k1")]),
            1024,
            false,
        );
        assert_eq!(keyed.check(false), Ok(()));
        let mut marked = request(Method::PATCH, &[]);
        marked.extensions_mut().insert(Retryable);
        assert_eq!(
            ReplayedRequest::prepare(marked, 1024, false).1.check(false),
            Ok(())
        );
        let (_, grpc_call) = ReplayedRequest::prepare(request(Method::POST, &[]), 1024, true);
        assert_eq!(grpc_call.check(false), Ok(()));
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert_eq!(
                ReplayedRequest::prepare(request(method.clone(), &[]), 1024, false)
                    .1
                    .check(false),
                Ok(()),
                "{method}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_that_is_not_idempotent_goes_again_only_unsent_and_whole() {
        // Never sent: its body was never read, and the retry sends all of it.
        let (first, mut unsent) = ReplayedRequest::prepare(request(Method::POST, &[]), 1024, false);
        drop(first);
        assert_eq!(unsent.check(true), Ok(()));
        let again = unsent.next().unwrap();
        assert_eq!(again.method(), Method::POST);
        assert_eq!(
            again.into_body().collect().await.unwrap().to_bytes(),
            "payload"
        );
        // Its body began to be sent: whatever the error says, it is not sent again, and
        // nothing of it was kept.
        let (first, sent) = ReplayedRequest::prepare(request(Method::POST, &[]), 1024, false);
        first.into_body().collect().await.unwrap();
        assert_eq!(sent.check(true), Err(GiveUp::Body));
    }
}
