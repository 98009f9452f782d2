use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};

use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::headers::ietf::{self, PartitionKey, QuotaUnit};
use crate::headers::legacy::{self, Reset};
use crate::headers::retry_after;
use crate::limiter::Refusal;
use crate::{BoxError, Decision, Quotas};

/// What a request really cost, put in its response's extensions by the handler, for a layer
/// that settles costs from responses ([`RateLimitLayer::settle_cost`](super::RateLimitLayer::settle_cost)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActualCost(pub u32);

/// How the layer answers: what it adds to responses it lets through, and what it returns for
/// requests it refuses.
///
/// Three are built in: [`Http`] answers HTTP requests with a response (429 and rate-limit
/// headers; a gRPC call, told by its `content-type`, with a gRPC status), [`Grpc`] answers
/// gRPC calls, [`Errors`] answers any service with an error. This trait is public so
/// that the layer's types can be named; use those three rather than implementing it.
#[diagnostic::on_unimplemented(
    message = "the layer cannot answer `{T}` itself",
    note = "the layer's default answers HTTP: `http::Response<B>` with `B: Default`; for other services (a hyper or reqwest client, tonic's channel, anything not HTTP) call `.errors()` on the layer"
)]
pub trait Respond<T, E>: Clone + Send + Sync + 'static {
    /// The error type of the wrapped service.
    type Error: Send + 'static;
    /// What an allowed response is annotated with.
    type Note: Send + 'static;

    /// The partition key to write for a request's `key`, when this answer writes one
    /// (see [`HeaderOptions::partition_key`]); `None` otherwise, without hashing anything.
    fn partition<K: Hash + ?Sized>(&self, key: &K) -> Option<PartitionKey> {
        let _ = key;
        None
    }

    /// The note for a request allowed by `decision`, if any; `partition` is what
    /// [`partition`](Self::partition) gave for its key.
    fn note(
        &self,
        quotas: &Quotas,
        decision: &Decision,
        partition: Option<PartitionKey>,
    ) -> Option<Self::Note>;

    /// Applies a note to the response.
    fn annotate(note: Self::Note, response: &mut T);

    /// What the response says the request really cost (an [`ActualCost`] in an HTTP
    /// response's extensions), for [`RateLimitLayer::settle_cost`](super::RateLimitLayer::settle_cost).
    fn actual_cost(response: &T) -> Option<u32> {
        let _ = response;
        None
    }

    /// Converts the inner service's error.
    fn inner_error(error: E) -> Self::Error;
}

/// How the layer answers a refused request of type `Req`, which it may look at: the HTTP
/// answer answers a gRPC call (told by its `content-type`) in gRPC.
#[diagnostic::on_unimplemented(
    message = "the layer cannot answer `{T}` itself",
    note = "the layer's default answers HTTP: `http::Request<_>` with `http::Response<B>`, `B: Default`; for other services (a hyper or reqwest client, tonic's channel, anything not HTTP) call `.errors()` on the layer"
)]
pub trait Refuse<Req, T, E>: Respond<T, E> {
    /// The answer to a refused request; `partition` is what [`Respond::partition`] gave for
    /// its key, if it has one.
    fn refuse(
        &self,
        refusal: Refusal,
        request: &Req,
        partition: Option<PartitionKey>,
    ) -> Result<T, Self::Error>;
}

/// Which rate-limit headers the HTTP answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderOptions {
    ietf: bool,
    legacy: Option<Reset>,
    on_allowed: bool,
    unit: Option<QuotaUnit>,
    partition_key: bool,
}

impl Default for HeaderOptions {
    /// IETF fields on, legacy fields off, on allowed responses too; no `qu`, no `pk`.
    fn default() -> Self {
        Self {
            ietf: true,
            legacy: None,
            on_allowed: true,
            unit: None,
            partition_key: false,
        }
    }
}

impl HeaderOptions {
    /// Whether to send `RateLimit` and `RateLimit-Policy` (default: yes).
    #[must_use]
    pub fn ietf(mut self, on: bool) -> Self {
        self.ietf = on;
        self
    }

    /// Whether to send `X-RateLimit-Limit`, `-Remaining` and `-Reset`, and how to write the
    /// reset (default: not sent).
    #[must_use]
    pub fn legacy(mut self, reset: Option<Reset>) -> Self {
        self.legacy = reset;
        self
    }

    /// Whether allowed responses carry the fields too, not only refusals (default: yes).
    #[must_use]
    pub fn on_allowed(mut self, on: bool) -> Self {
        self.on_allowed = on;
        self
    }

    /// Writes the quota unit as `qu` on every `RateLimit-Policy` item (default: not
    /// written, which clients read as requests). Costs nothing per request: the policy value
    /// is computed once.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use tollgate::rate_limit::{HeaderOptions, QuotaUnit};
    /// use tollgate::{Quota, RateLimitLayer};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A limit on uploaded bytes: a request costs the size of its body.
    /// let layer = RateLimitLayer::new(Quota::per_minute(10_000_000)?)
    ///     .cost(|request: &Request<String>| request.body().len() as u32)
    ///     .headers(HeaderOptions::default().quota_unit(QuotaUnit::ContentBytes));
    /// let upload = layer.layer(service_fn(|_| async {
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// }));
    /// let response = upload.oneshot(Request::new("hello".to_owned())).await?;
    /// assert_eq!(
    ///     response.headers()["ratelimit-policy"],
    ///     "\"default\";q=10000000;qu=\"content-bytes\";w=60"
    /// );
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn quota_unit(mut self, unit: QuotaUnit) -> Self {
        self.unit = Some(unit);
        self
    }

    /// Whether to write the partition key, `pk`, on the `RateLimit` and `RateLimit-Policy`
    /// items (default: no): 48 bits of a hash of the request's rate-limit key, keyed with a
    /// per-process secret of its own (not the logs'), never the key. A client then sees which
    /// of its requests share a quota; the value is stable for the life of the process, not
    /// across instances or restarts.
    ///
    /// Its cost, only when on: a hash of the key per request, and both values written per
    /// response instead of reused.
    #[must_use]
    pub fn partition_key(mut self, on: bool) -> Self {
        self.partition_key = on;
        self
    }

    fn any(&self) -> bool {
        self.ietf || self.legacy.is_some()
    }
}

/// Answers HTTP requests: refusals with a response (429 over the limit, see
/// [`Refusal::status`]), with `Retry-After` and the rate-limit fields; allowed responses with
/// the fields (see [`HeaderOptions`]).
///
/// The body of a refusal is empty (`ResBody::default()`), as in tower-http's middleware,
/// unless a closure builds the whole response
/// ([`RateLimitLayer::refuse_with`](super::RateLimitLayer::refuse_with)); the layer adds the
/// headers to it either way.
#[derive(Clone)]
pub struct Http<F = EmptyBody> {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderOptions,
    pub(crate) body: F,
    policy_cache: Arc<OnceLock<(Quotas, HeaderValue)>>,
}

impl Http {
    pub(crate) fn new() -> Self {
        Self::with_body(EmptyBody)
    }
}

impl<F> Http<F> {
    pub(crate) fn with_body(body: F) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: HeaderOptions::default(),
            body,
            policy_cache: Arc::default(),
        }
    }

    pub(crate) fn replace_body<G>(self, body: G) -> Http<G> {
        Http {
            status: self.status,
            headers: self.headers,
            body,
            policy_cache: self.policy_cache,
        }
    }

    /// New header options: the cached policy, written under the old ones, is dropped.
    pub(crate) fn set_headers(&mut self, options: HeaderOptions) {
        self.headers = options;
        self.policy_cache = Arc::default();
    }

    /// `RateLimit-Policy` is the same for every response of a fixed set of quotas: computed
    /// once, interned (a static value: no reference count per response), then cloned.
    #[inline]
    fn policy(&self, quotas: &Quotas) -> Option<HeaderValue> {
        let unit = self.headers.unit;
        let cached = self.policy_cache.get_or_init(|| {
            let value = ietf::policy_value(quotas, unit, None)
                .map_or(HeaderValue::from_static(""), crate::headers::interned);
            (quotas.clone(), value)
        });
        if cached.0.same_set(quotas) {
            Some(cached.1.clone())
        } else {
            ietf::policy_value(quotas, unit, None)
        }
    }

    #[inline]
    fn fields(
        &self,
        quotas: &Quotas,
        decision: &Decision,
        partition: Option<PartitionKey>,
    ) -> HeaderNote {
        let mut note = HeaderNote::default();
        if self.headers.ietf {
            match partition {
                None => {
                    note.ratelimit = ietf::ratelimit_value(quotas, decision);
                    note.policy = self.policy(quotas);
                }
                // One client's values: written for this response.
                Some(partition) => {
                    note.ratelimit =
                        ietf::ratelimit_value_with_partition(quotas, decision, partition);
                    note.policy = ietf::policy_value(quotas, self.headers.unit, Some(partition));
                }
            }
        }
        if let Some(reset) = self.headers.legacy {
            note.legacy = Some(Box::new(legacy::values(decision, reset)));
        }
        note
    }
}

impl<F> fmt::Debug for Http<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// The headers an allowed response gets: small, as it travels in every response future.
#[derive(Debug, Default)]
pub struct HeaderNote {
    ratelimit: Option<HeaderValue>,
    policy: Option<HeaderValue>,
    legacy: Option<Box<[(HeaderName, HeaderValue); 3]>>,
}

impl HeaderNote {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) {
        let headers = response.headers_mut();
        // Appended: a stack of limiters makes a list, as the fields allow.
        if let Some(ratelimit) = self.ratelimit {
            headers.append(ietf::RATELIMIT, ratelimit);
        }
        if let Some(policy) = self.policy {
            headers.append(ietf::RATELIMIT_POLICY, policy);
        }
        if let Some(legacy) = self.legacy {
            for (name, value) in *legacy {
                headers.insert(name, value);
            }
        }
    }
}

/// Builds the response to a refusal. Implemented by [`EmptyBody`] and by closures
/// `Fn(&Refusal) -> Response<B>`.
#[diagnostic::on_unimplemented(
    message = "the layer cannot build a refusal response with a body of type `{B}`",
    label = "refusals would be `Response<{B}>`, and `{B}` has no `Default`",
    note = "on a client (hyper, reqwest), or any service whose responses the layer cannot build, call `.errors()` on the layer: refusals then fail the call with an error",
    note = "on a server, give `.refuse_with(|refusal| ...)` a closure that builds the response"
)]
pub trait RefusalResponse<B>: Clone + Send + Sync + 'static {
    /// The response; `status` is the one the layer would use.
    fn response(&self, refusal: &Refusal, status: StatusCode) -> Response<B>;

    /// The empty body of a gRPC trailers-only answer, when this builder answers gRPC calls
    /// in gRPC (the empty-body default does; a closure of yours answers them itself).
    fn grpc_body(&self) -> Option<B> {
        None
    }
}

/// Refusals with an empty body.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyBody;

#[diagnostic::do_not_recommend]
impl<B: Default> RefusalResponse<B> for EmptyBody {
    fn response(&self, _: &Refusal, status: StatusCode) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = status;
        response
    }

    fn grpc_body(&self) -> Option<B> {
        Some(B::default())
    }
}

impl<B, F> RefusalResponse<B> for F
where
    F: Fn(&Refusal) -> Response<B> + Clone + Send + Sync + 'static,
{
    fn response(&self, refusal: &Refusal, _: StatusCode) -> Response<B> {
        self(refusal)
    }
}

// Not recommended: a service the HTTP answer cannot serve is reported as `Http: Respond<…>`
// unsatisfied, with the trait's note (call `.errors()`), not as some `B: Default` deep inside.
#[diagnostic::do_not_recommend]
impl<B, E, F> Respond<Response<B>, E> for Http<F>
where
    B: 'static,
    E: Send + 'static,
    F: RefusalResponse<B>,
{
    type Error = E;
    type Note = HeaderNote;

    #[inline]
    fn partition<K: Hash + ?Sized>(&self, key: &K) -> Option<PartitionKey> {
        (self.headers.partition_key && self.headers.ietf).then(|| PartitionKey::of(key))
    }

    #[inline(always)]
    fn note(
        &self,
        quotas: &Quotas,
        decision: &Decision,
        partition: Option<PartitionKey>,
    ) -> Option<HeaderNote> {
        (self.headers.on_allowed && self.headers.any())
            .then(|| self.fields(quotas, decision, partition))
    }

    #[inline]
    fn actual_cost(response: &Response<B>) -> Option<u32> {
        response.extensions().get::<ActualCost>().map(|cost| cost.0)
    }

    fn annotate(note: HeaderNote, response: &mut Response<B>) {
        note.apply(response);
    }

    fn inner_error(error: E) -> E {
        error
    }
}

#[diagnostic::do_not_recommend]
impl<ReqB, B, E, F> Refuse<http::Request<ReqB>, Response<B>, E> for Http<F>
where
    B: 'static,
    E: Send + 'static,
    F: RefusalResponse<B>,
{
    fn refuse(
        &self,
        refusal: Refusal,
        request: &http::Request<ReqB>,
        partition: Option<PartitionKey>,
    ) -> Result<Response<B>, E> {
        // A gRPC client would report an HTTP 429 as a transport failure: answer it in gRPC,
        // as `.grpc()` would, even when the layer was not told.
        if is_grpc(request.headers()) {
            if let Some(body) = self.body.grpc_body() {
                return Ok(grpc_refusal(self, &refusal, body, partition));
            }
        }
        let status = match refusal {
            Refusal::Limited(_) => self.status,
            ref other => other.status(),
        };
        let mut response = self.body.response(&refusal, status);
        if let Refusal::Limited(limited) = &refusal {
            let headers = response.headers_mut();
            if !headers.contains_key(RETRY_AFTER) {
                headers.insert(RETRY_AFTER, retry_after::value(limited.retry_after()));
            }
            self.fields(limited.quotas(), limited.decision(), partition)
                .apply(&mut response);
        }
        Ok(response)
    }
}

/// Answers gRPC calls (tonic servers among them): a refusal is a trailers-only response,
/// HTTP 200 with a gRPC status, never an HTTP 429 that gRPC clients would report as a
/// transport failure.
///
/// | refusal | `grpc-status` |
/// | --- | --- |
/// | over the limit | 8, `RESOURCE_EXHAUSTED`, with `grpc-retry-pushback-ms` (and `retry-after`) |
/// | no key, the client's mistake | 3, `INVALID_ARGUMENT` |
/// | no key, the server's mistake | 13, `INTERNAL` |
/// | a cost above the burst | 3, `INVALID_ARGUMENT` |
/// | the store failed, or no concurrency slot came free | 14, `UNAVAILABLE` |
///
/// The rate-limit fields go along as metadata, as [`Http`] sends them.
#[derive(Clone, Debug)]
pub struct Grpc {
    http: Http,
}

impl Grpc {
    pub(crate) fn new(http: Http) -> Self {
        Self { http }
    }
}

/// The gRPC status of a refusal, and its message.
fn grpc_status(refusal: &Refusal) -> (u8, String) {
    let code = match refusal {
        Refusal::Limited(_) => 8,
        Refusal::NoKey(e) if e.is_client_error() => 3,
        Refusal::NoKey(_) => 13,
        Refusal::TooCostly(_) => 3,
        Refusal::StoreFailed(_) | Refusal::Busy(_) => 14,
    };
    // Percent-encoded as gRPC asks: only printable ASCII other than '%' goes as it is.
    let mut message = String::new();
    for b in refusal.to_string().bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            message.push(char::from(b));
        } else {
            message.push_str(&format!("%{b:02X}"));
        }
    }
    (code, message)
}

/// Whether a request is a gRPC call: its `content-type` is `application/grpc`, alone or with a
/// `+format` suffix or parameters. Not gRPC-web (`application/grpc-web…`), whose trailers
/// travel in the body.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

/// A gRPC trailers-only refusal, with `body` (empty).
fn grpc_refusal<F, B>(
    http: &Http<F>,
    refusal: &Refusal,
    body: B,
    partition: Option<PartitionKey>,
) -> Response<B> {
    let (code, message) = grpc_status(refusal);
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(message) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", message);
    }
    if let Refusal::Limited(limited) = refusal {
        let wait = limited.retry_after();
        let millis = wait.as_millis() + u128::from(wait.as_nanos() % 1_000_000 > 0);
        headers.insert(
            "grpc-retry-pushback-ms",
            HeaderValue::from(u64::try_from(millis).unwrap_or(u64::MAX)),
        );
        headers.insert(RETRY_AFTER, retry_after::value(wait));
        http.fields(limited.quotas(), limited.decision(), partition)
            .apply(&mut response);
    }
    response
}

impl<B, E> Respond<Response<B>, E> for Grpc
where
    B: Default + 'static,
    E: Send + 'static,
{
    type Error = E;
    type Note = HeaderNote;

    #[inline]
    fn partition<K: Hash + ?Sized>(&self, key: &K) -> Option<PartitionKey> {
        <Http as Respond<Response<B>, E>>::partition(&self.http, key)
    }

    #[inline]
    fn note(
        &self,
        quotas: &Quotas,
        decision: &Decision,
        partition: Option<PartitionKey>,
    ) -> Option<HeaderNote> {
        <Http as Respond<Response<B>, E>>::note(&self.http, quotas, decision, partition)
    }

    #[inline]
    fn actual_cost(response: &Response<B>) -> Option<u32> {
        response.extensions().get::<ActualCost>().map(|cost| cost.0)
    }

    fn annotate(note: HeaderNote, response: &mut Response<B>) {
        note.apply(response);
    }

    fn inner_error(error: E) -> E {
        error
    }
}

impl<ReqB, B, E> Refuse<http::Request<ReqB>, Response<B>, E> for Grpc
where
    B: Default + 'static,
    E: Send + 'static,
{
    fn refuse(
        &self,
        refusal: Refusal,
        _: &http::Request<ReqB>,
        partition: Option<PartitionKey>,
    ) -> Result<Response<B>, E> {
        Ok(grpc_refusal(&self.http, &refusal, B::default(), partition))
    }
}

/// Answers any service with errors: a refused request fails with a boxed
/// [`RateLimited`](crate::rate_limit::RateLimited) (or [`KeyError`](crate::key::KeyError),
/// [`QuotaError`](crate::QuotaError), [`StoreError`](crate::StoreError)); the inner service's
/// errors are boxed too.
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors;

impl<T, E> Respond<T, E> for Errors
where
    E: Into<BoxError>,
{
    type Error = BoxError;
    type Note = ();

    #[inline]
    fn note(&self, _: &Quotas, _: &Decision, _: Option<PartitionKey>) -> Option<()> {
        None
    }

    fn annotate((): (), _: &mut T) {}

    fn inner_error(error: E) -> BoxError {
        error.into()
    }
}

impl<Req, T, E> Refuse<Req, T, E> for Errors
where
    E: Into<BoxError>,
{
    fn refuse(&self, refusal: Refusal, _: &Req, _: Option<PartitionKey>) -> Result<T, BoxError> {
        Err(refusal.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, Quota};

    fn policy_written(http: &Http, quotas: &Quotas) -> HeaderValue {
        let decision = MemoryStore::new().check(&1, quotas, 1).unwrap();
        let note = <Http as Respond<Response<()>, ()>>::note(http, quotas, &decision, None);
        let mut response = Response::new(());
        note.unwrap().apply(&mut response);
        response.headers()[ietf::RATELIMIT_POLICY].clone()
    }

    #[test]
    fn new_header_options_do_not_reuse_a_policy_cached_under_the_old() {
        let quotas = Quotas::from(Quota::per_minute(2).unwrap());
        let http = Http::new();
        assert_eq!(policy_written(&http, &quotas), "\"default\";q=2;w=60");
        // A clone shares the cache; told to write `qu`, it must not serve the cached value.
        let mut with_unit = http.clone();
        with_unit.set_headers(HeaderOptions::default().quota_unit(QuotaUnit::ContentBytes));
        assert_eq!(
            policy_written(&with_unit, &quotas),
            "\"default\";q=2;qu=\"content-bytes\";w=60"
        );
        assert_eq!(policy_written(&http, &quotas), "\"default\";q=2;w=60");
    }
}
