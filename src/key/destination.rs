use http::Request;

use super::{KeyError, KeyExtractor};

/// The request's destination, its URI's authority `host:port`: one limit per destination, for
/// outbound clients. (Named so as not to shadow `http::uri::Authority`, which is its key.)
///
/// Case-insensitive, as hosts are. A request with a relative URI falls back to its `Host`
/// header (as a server sees requests); with neither, the key is
/// missing (a [`KeyError`](super::KeyError)).
///
/// ```
/// use http::Request;
/// use tollgate::key::{Destination, KeyExtractor};
///
/// let request = Request::get("https://API.example.com:8443/v1/items").body(()).unwrap();
/// assert_eq!(Destination.extract(&request).unwrap(), "api.example.com:8443");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Destination;

impl<B> KeyExtractor<Request<B>> for Destination {
    type Key = http::uri::Authority;

    fn extract(&self, request: &Request<B>) -> Result<http::uri::Authority, KeyError> {
        if let Some(authority) = request.uri().authority() {
            return Ok(authority.clone());
        }
        let host = request.headers().get(http::header::HOST).ok_or_else(|| {
            KeyError::missing("the request has neither an absolute URI nor a Host header")
        })?;
        http::uri::Authority::try_from(host.as_bytes())
            .map_err(|_| KeyError::invalid("the Host header is not a valid authority"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyErrorKind;

    #[test]
    fn absolute_uri_then_host_header() {
        let key = |r: Request<()>| Destination.extract(&r).map_err(|e| e.kind());
        let relative = Request::get("/x")
            .header("host", "Example.org")
            .body(())
            .unwrap();
        assert_eq!(key(relative).unwrap(), "example.org");
        assert_eq!(
            key(Request::get("/x").body(()).unwrap()),
            Err(KeyErrorKind::Missing)
        );
        let bad = Request::get("/x").header("host", "a b").body(()).unwrap();
        assert_eq!(key(bad), Err(KeyErrorKind::Invalid));
        let upper = Destination
            .extract(&Request::get("http://A.example/").body(()).unwrap())
            .unwrap();
        let lower = Destination
            .extract(&Request::get("http://a.example/").body(()).unwrap())
            .unwrap();
        use std::hash::BuildHasher;
        let s = std::hash::RandomState::new();
        assert_eq!(s.hash_one(&upper), s.hash_one(&lower));
    }
}
