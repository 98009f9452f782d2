use std::error::Error;
use std::time::Duration;

use http::{HeaderMap, Response};

use crate::headers::server::{self, grpc_pushback_of_grpc, GrpcPushback};

/// What an attempt's outcome calls for. Typed, not a bool: the kind of failure decides the
/// backoff, and the server's own delay wins over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Classification {
    /// Done: hand the response back.
    Success,
    /// A failure that may pass (a reset connection, a timeout, 502/503/504): retry after the
    /// transient backoff.
    Transient,
    /// The server is shedding load (429, `RESOURCE_EXHAUSTED`): retry after the longer,
    /// throttled backoff.
    Throttled,
    /// The server said when to come back (`Retry-After`, a `RateLimit` reset,
    /// `grpc-retry-pushback-ms`): retry after that, if it is not too long.
    RetryAfter(Duration),
    /// A failure a retry will not fix (other 4xx and 5xx, unknown errors, a server that said
    /// not to retry): hand it back.
    Final,
}

impl Classification {
    /// Its place in the metrics' `reason` labels of retries.
    pub(crate) fn metric_index(&self) -> usize {
        match self {
            Self::Throttled => 1,
            Self::RetryAfter(_) => 2,
            _ => 0,
        }
    }

    /// Whether this outcome asks for a retry.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Transient | Self::Throttled | Self::RetryAfter(_)
        )
    }

    /// What a server's response headers ask for, if they ask: [`RetryAfter`](Self::RetryAfter)
    /// with the delay, or [`Final`](Self::Final) when a gRPC server said not to retry; `None`
    /// when they say nothing (the classifiers then fall back on the backoff).
    ///
    /// The delay is the later of `Retry-After` (a date in the past is no delay), the reset of
    /// an exhausted limit in any dialect (`RateLimit`, `RateLimit-*`, `X-RateLimit-*` with
    /// GitHub's and Discord's kin, OpenAI's requests and tokens), and, on gRPC responses,
    /// `grpc-retry-pushback-ms` (negative: do not retry), read by the one reader that
    /// [`HttpClassifier`], [`GrpcClassifier`] and [`LearnLayer`](crate::learn::LearnLayer)
    /// share (the [`learn`](crate::learn#what-it-reads) docs list every field). Malformed values
    /// are ignored.
    ///
    /// For classifiers of your own that honour the server's delay:
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::Response;
    /// use tollgate::retry::{Classification, Outcome};
    ///
    /// // Retry every 5xx, after the server's delay when it gave one.
    /// let classify = |outcome: Outcome<'_, Response<()>>| match outcome {
    ///     Outcome::Response(r) if r.status().is_server_error() => {
    ///         Classification::pushback(r.headers()).unwrap_or(Classification::Transient)
    ///     }
    ///     Outcome::Response(_) => Classification::Success,
    ///     Outcome::Error(error) => Classification::of_error(error),
    /// };
    /// let busy = Response::builder().status(500).header("retry-after", "3").body(()).unwrap();
    /// assert_eq!(
    ///     classify(Outcome::Response(&busy)),
    ///     Classification::RetryAfter(Duration::from_secs(3))
    /// );
    /// ```
    pub fn pushback(headers: &HeaderMap) -> Option<Classification> {
        let said = server::read(headers);
        if said.stop {
            return Some(Classification::Final);
        }
        said.delay.map(Classification::RetryAfter)
    }

    /// What an error calls for: [`Transient`](Self::Transient) when some error of its chain of
    /// sources is a connection failure or a timeout (`std::io` connection errors,
    /// `tower::timeout` and `tokio::time` elapsed errors, and with the `hyper` feature hyper's
    /// closed or incomplete connections and HTTP/2 refused streams and graceful GOAWAYs),
    /// [`Final`](Self::Final) otherwise. What [`HttpClassifier`] and [`GrpcClassifier`] do with
    /// errors, for classifiers of your own.
    ///
    /// ```
    /// use std::io::{Error, ErrorKind};
    /// use tollgate::retry::Classification;
    ///
    /// let reset = Error::new(ErrorKind::ConnectionReset, "reset by peer");
    /// assert_eq!(Classification::of_error(&reset), Classification::Transient);
    /// let denied = Error::new(ErrorKind::PermissionDenied, "no");
    /// assert_eq!(Classification::of_error(&denied), Classification::Final);
    /// ```
    pub fn of_error(error: &(dyn Error + 'static)) -> Classification {
        let mut next = Some(error);
        let mut depth = 0;
        while let Some(error) = next {
            if is_transient(error) {
                return Classification::Transient;
            }
            depth += 1;
            next = if depth < 32 { error.source() } else { None };
        }
        Classification::Final
    }
}

/// What an attempt produced, for a classifier to look at: a response, or the error (with its
/// chain of sources).
#[derive(Debug)]
pub enum Outcome<'a, T> {
    /// The inner service answered.
    Response(&'a T),
    /// The inner service failed.
    Error(&'a (dyn Error + 'static)),
}

/// Decides whether an attempt's outcome is retried. Implemented by [`HttpClassifier`],
/// [`GrpcClassifier`], and closures `Fn(Outcome<'_, T>) -> Classification`.
///
/// ```
/// use tollgate::retry::{Classification, Classify, Outcome};
///
/// // Retry errors, never responses.
/// let errors_only = |outcome: Outcome<'_, u32>| match outcome {
///     Outcome::Response(_) => Classification::Success,
///     Outcome::Error(_) => Classification::Transient,
/// };
/// assert_eq!(errors_only.classify(Outcome::Response(&7)), Classification::Success);
/// ```
pub trait Classify<T>: Send + Sync + 'static {
    /// The classification of one attempt's outcome.
    fn classify(&self, outcome: Outcome<'_, T>) -> Classification;
}

impl<T, F> Classify<T> for F
where
    F: Fn(Outcome<'_, T>) -> Classification + Send + Sync + 'static,
{
    fn classify(&self, outcome: Outcome<'_, T>) -> Classification {
        self(outcome)
    }
}

/// The default for HTTP clients.
///
/// - Errors: retried when some error of the chain is a connection failure or a timeout
///   (`std::io` connection errors, `tower::timeout` and `tokio::time` elapsed errors, and with
///   the `hyper` feature hyper's closed or incomplete connections and HTTP/2 refused streams
///   and graceful GOAWAYs); other errors are final.
/// - Responses: 408, 502, 503 and 504 are transient, 429 is throttling, and a server's delay
///   ([`Classification::pushback`]) turns either into [`Classification::RetryAfter`]; a 403
///   with a server's delay is a rate limit (GitHub's: "0 left" and a reset, or `Retry-After`),
///   retried after it, and final without one; 1xx to 3xx succeed; everything else is final.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

impl<B> Classify<Response<B>> for HttpClassifier {
    fn classify(&self, outcome: Outcome<'_, Response<B>>) -> Classification {
        match outcome {
            Outcome::Error(error) => Classification::of_error(error),
            Outcome::Response(response) => {
                classify_status(response.status().as_u16(), response.headers())
            }
        }
    }
}

fn classify_status(status: u16, headers: &HeaderMap) -> Classification {
    match status {
        408 | 502 | 503 | 504 => {
            Classification::pushback(headers).unwrap_or(Classification::Transient)
        }
        429 => Classification::pushback(headers).unwrap_or(Classification::Throttled),
        403 => {
            let said = server::read(headers);
            match said.delay {
                Some(delay) if server::forbidden_by_rate_limit(&said) => {
                    Classification::RetryAfter(delay)
                }
                _ => Classification::Final,
            }
        }
        100..=399 => Classification::Success,
        _ => Classification::Final,
    }
}

/// For gRPC clients (tonic's among them): retries `UNAVAILABLE`, and `RESOURCE_EXHAUSTED`
/// only when the server sent `grpc-retry-pushback-ms`; failures of the HTTP layer below
/// (a 503 from a proxy, a reset connection) as [`HttpClassifier`] does.
///
/// It reads `grpc-status` from the response headers, where servers put it when they fail a
/// call at once (a trailers-only response); a status sent in the trailers, after a body has
/// begun, is not retried. Following gRPC's retry design (A6), a negative pushback means: do not
/// retry; a malformed one is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

/// gRPC's `UNAVAILABLE`.
const UNAVAILABLE: &str = "14";
/// gRPC's `RESOURCE_EXHAUSTED`.
const RESOURCE_EXHAUSTED: &str = "8";

impl<B> Classify<Response<B>> for GrpcClassifier {
    fn classify(&self, outcome: Outcome<'_, Response<B>>) -> Classification {
        let response = match outcome {
            Outcome::Error(error) => return Classification::of_error(error),
            Outcome::Response(response) => response,
        };
        let headers = response.headers();
        let Some(status) = headers.get("grpc-status").and_then(|s| s.to_str().ok()) else {
            return match response.status().as_u16() {
                // gRPC over HTTP/2 answers 200; its status comes later, in the trailers.
                200 => Classification::Success,
                other => classify_status(other, headers),
            };
        };
        let pushback = grpc_pushback_of_grpc(headers);
        match (status.trim(), pushback) {
            (_, Some(GrpcPushback::Stop)) => Classification::Final,
            ("0", _) => Classification::Success,
            (UNAVAILABLE, Some(GrpcPushback::After(delay))) => Classification::RetryAfter(delay),
            (UNAVAILABLE, None) => Classification::Transient,
            (RESOURCE_EXHAUSTED, Some(GrpcPushback::After(delay))) => {
                Classification::RetryAfter(delay)
            }
            _ => Classification::Final,
        }
    }
}

/// Whether `error` shows that its request never reached the server, so that sending it again
/// cannot run it twice, whatever its method: some error of its chain is a refused connection
/// (`std::io`'s `ConnectionRefused`), and with the `hyper` feature a connect error of
/// hyper-util's legacy client (`is_connect()`: connecting, resolving, the TLS handshake; what
/// reqwest's `is_connect()` reports too), a request hyper gave back unsent because its
/// connection closed first (`is_canceled()`), or an HTTP/2 stream the server refused before
/// processing it (`REFUSED_STREAM`, RFC 9113 §8.7).
pub(crate) fn never_sent(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    let mut depth = 0;
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        #[cfg(feature = "hyper")]
        {
            if let Some(client) = error.downcast_ref::<hyper_util::client::legacy::Error>() {
                if client.is_connect() {
                    return true;
                }
            }
            if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
                if hyper.is_canceled() {
                    return true;
                }
            }
            if let Some(h2) = error.downcast_ref::<h2::Error>() {
                if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    return true;
                }
            }
        }
        depth += 1;
        next = if depth < 32 { error.source() } else { None };
    }
    false
}

fn is_transient(error: &(dyn Error + 'static)) -> bool {
    use std::io::ErrorKind;
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        return matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::NotConnected
                | ErrorKind::BrokenPipe
                | ErrorKind::TimedOut
                | ErrorKind::UnexpectedEof
        );
    }
    if error.is::<tower::timeout::error::Elapsed>() || error.is::<tokio::time::error::Elapsed>() {
        return true;
    }
    #[cfg(feature = "hyper")]
    {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            return hyper.is_incomplete_message()
                || hyper.is_canceled()
                || hyper.is_closed()
                || hyper.is_timeout();
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn http(status: u16, headers: &[(&str, &str)]) -> Classification {
        HttpClassifier.classify(Outcome::Response(&response(status, headers)))
    }

    #[test]
    fn statuses() {
        use Classification::*;
        for (status, expected) in [
            (200, Success),
            (304, Success),
            (408, Transient),
            (429, Throttled),
            (500, Final),
            (502, Transient),
            (503, Transient),
            (504, Transient),
            (400, Final),
            (404, Final),
        ] {
            assert_eq!(http(status, &[]), expected, "{status}");
        }
    }

    #[test]
    fn server_pushback_wins() {
        let d = |s: u64| Classification::RetryAfter(Duration::from_secs(s));
        assert_eq!(http(429, &[("retry-after", "2")]), d(2));
        assert_eq!(http(503, &[("retry-after", "7")]), d(7));
        // An HTTP-date, against the response's own Date: no clock skew.
        let dated = [
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT"),
        ];
        assert_eq!(http(503, &dated), d(30));
        assert_eq!(
            http(
                429,
                &[("ratelimit", "\"burst\";r=0;t=4, \"day\";r=10;t=80000")]
            ),
            d(4)
        );
        assert_eq!(
            http(
                429,
                &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "9")]
            ),
            d(9)
        );
        // The reset alone does not count while requests remain.
        assert_eq!(
            http(
                429,
                &[("x-ratelimit-remaining", "3"), ("x-ratelimit-reset", "9")]
            ),
            Classification::Throttled
        );
        // Several: the longest.
        assert_eq!(
            http(429, &[("retry-after", "2"), ("ratelimit", "\"a\";r=0;t=6")]),
            d(6)
        );
        // Pushback does not make a final status retryable.
        assert_eq!(http(400, &[("retry-after", "2")]), Classification::Final);
    }

    #[test]
    fn a_403_with_a_delay_is_a_rate_limit() {
        let d = |s: u64| Classification::RetryAfter(Duration::from_secs(s));
        // GitHub's primary limit: 403, nothing left, the reset as Unix seconds.
        let date = ("date", "Wed, 21 Oct 2015 07:28:00 GMT");
        let primary = [
            date,
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-used", "60"),
            ("x-ratelimit-reset", "1445412487"),
            ("x-ratelimit-resource", "core"),
        ];
        assert_eq!(http(403, &primary), d(7));
        // Without `-Remaining`: the limit minus what was used.
        assert_eq!(
            http(403, &[primary[0], primary[1], primary[3], primary[4]]),
            d(7)
        );
        // Its secondary limits: 403 and Retry-After.
        assert_eq!(http(403, &[("retry-after", "60")]), d(60));
        // Anything else is forbidden: no delay, or requests left.
        assert_eq!(http(403, &[]), Classification::Final);
        assert_eq!(
            http(
                403,
                &[("x-ratelimit-remaining", "12"), ("x-ratelimit-reset", "9")]
            ),
            Classification::Final
        );
        assert_eq!(http(403, &[("retry-after", "soon")]), Classification::Final);
    }

    #[test]
    fn hostile_pushback_is_ignored() {
        for (name, value) in [
            ("retry-after", "-3"),
            ("retry-after", "99999999999999999999999999"),
            ("retry-after", "Fri, 99 Nothing 2099"),
            ("ratelimit", "\"x\";r=0;t=-4"),
            ("ratelimit", "(("),
            ("x-ratelimit-reset", "NaN"),
            ("grpc-retry-pushback-ms", "soon"),
        ] {
            let headers = [(name, value), ("x-ratelimit-remaining", "0")];
            assert_eq!(
                http(429, &headers),
                Classification::Throttled,
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn errors() {
        use std::io::{Error as IoError, ErrorKind};
        let reset = IoError::new(ErrorKind::ConnectionReset, "reset");
        assert_eq!(Classification::of_error(&reset), Classification::Transient);
        let denied = IoError::new(ErrorKind::PermissionDenied, "no");
        assert_eq!(Classification::of_error(&denied), Classification::Final);
        // Found anywhere in the chain.
        #[derive(Debug)]
        struct Wrapper(IoError);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl Error for Wrapper {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(
            Classification::of_error(&Wrapper(IoError::new(ErrorKind::TimedOut, "t"))),
            Classification::Transient
        );
        let elapsed: crate::BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(
            Classification::of_error(&*elapsed),
            Classification::Transient
        );
        let other: crate::BoxError = "something else".into();
        assert_eq!(Classification::of_error(&*other), Classification::Final);
    }

    #[test]
    fn never_sent_is_a_refused_connection_or_a_request_given_back() {
        use std::io::{Error as IoError, ErrorKind};
        let refused: crate::BoxError = Box::new(IoError::new(ErrorKind::ConnectionRefused, "no"));
        assert!(never_sent(&*refused));
        // A reset, a timeout, a closed connection: the request may have been read.
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::TimedOut,
            ErrorKind::UnexpectedEof,
            ErrorKind::BrokenPipe,
        ] {
            assert!(!never_sent(&IoError::new(kind, "maybe")), "{kind:?}");
        }
        let elapsed = tower::timeout::error::Elapsed::new();
        assert!(!never_sent(&elapsed));
        #[cfg(feature = "hyper")]
        {
            let refused_stream: h2::Error = h2::Reason::REFUSED_STREAM.into();
            assert!(never_sent(&refused_stream));
            let cancelled: h2::Error = h2::Reason::CANCEL.into();
            assert!(!never_sent(&cancelled));
        }
    }

    #[test]
    fn grpc() {
        let grpc = |headers: &[(&str, &str)]| {
            GrpcClassifier.classify(Outcome::Response(&response(200, headers)))
        };
        assert_eq!(grpc(&[]), Classification::Success);
        assert_eq!(grpc(&[("grpc-status", "0")]), Classification::Success);
        assert_eq!(grpc(&[("grpc-status", "14")]), Classification::Transient);
        assert_eq!(
            grpc(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "250")]),
            Classification::RetryAfter(Duration::from_millis(250))
        );
        assert_eq!(grpc(&[("grpc-status", "8")]), Classification::Final);
        assert_eq!(
            grpc(&[("grpc-status", "8"), ("grpc-retry-pushback-ms", "1000")]),
            Classification::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            grpc(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")]),
            Classification::Final
        );
        assert_eq!(
            grpc(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "x")]),
            Classification::Transient
        );
        assert_eq!(grpc(&[("grpc-status", "3")]), Classification::Final);
        let proxy = GrpcClassifier.classify(Outcome::Response(&response(503, &[])));
        assert_eq!(proxy, Classification::Transient);
    }
}
