use http::header::{HeaderName, HeaderValue};
use http::Request;

use super::{KeyError, KeyExtractor};

/// A request header's value: an API key, a token, a tenant id.
///
/// A request without the header has a missing key (400 from
/// the layer), unless [`or`](Self::or) names a value that such requests share: then all of
/// them are counted together, as one anonymous client.
///
/// The value is hashed, not stored, by the memory store, so long values cost no memory.
/// When a header appears several times, the first occurrence is the key.
///
/// ```
/// use http::Request;
/// use tollgate::key::{Header, KeyExtractor};
///
/// let api_key = Header::new("x-api-key").or("anonymous");
/// let with = Request::get("/").header("x-api-key", "k-123").body(()).unwrap();
/// let without = Request::get("/").body(()).unwrap();
/// assert_eq!(api_key.extract(&with).unwrap(), "k-123");
/// assert_eq!(api_key.extract(&without).unwrap(), "anonymous");
/// ```
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
    default: Option<HeaderValue>,
}

impl Header {
    /// The value of the header `name`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name: this is a programming error caught at
    /// start-up, like `HeaderName::from_static`. Use [`Header::from_name`] for names
    /// built at run time.
    pub fn new(name: &'static str) -> Self {
        Self::from_name(HeaderName::from_static(name))
    }

    /// The value of the header `name`.
    pub fn from_name(name: HeaderName) -> Self {
        Self {
            name,
            default: None,
        }
    }

    /// Requests without the header are counted under `value`, all together.
    ///
    /// # Panics
    ///
    /// If `value` is not a valid header value (a static string with control characters).
    #[must_use]
    pub fn or(mut self, value: &'static str) -> Self {
        self.default = Some(HeaderValue::from_static(value));
        self
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

impl<B> KeyExtractor<Request<B>> for Header {
    type Key = HeaderValue;

    fn extract(&self, request: &Request<B>) -> Result<HeaderValue, KeyError> {
        match request.headers().get(&self.name) {
            Some(value) => Ok(value.clone()),
            None => self.default.clone().ok_or_else(|| {
                KeyError::missing(format!("the request has no {} header", self.name))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyErrorKind;

    #[test]
    fn missing_header_is_the_clients_mistake() {
        let err = Header::new("x-api-key")
            .extract(&Request::new(()))
            .unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Missing);
        assert!(err.detail().contains("x-api-key"));
    }

    #[test]
    fn binary_values_are_keys_too() {
        let mut request = Request::new(());
        let value = HeaderValue::from_bytes(b"\xffk\x80").unwrap();
        request.headers_mut().insert("x-api-key", value.clone());
        assert_eq!(Header::new("x-api-key").extract(&request).unwrap(), value);
    }
}
