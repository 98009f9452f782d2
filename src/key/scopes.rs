//! Several keys per request, decided together: [`Scopes`].

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::{KeyError, KeyExtractor};
use crate::{Quota, QuotaError, Quotas};

/// The key a scope of a [`Scopes`] extractor found for a request: the scope's name, and the
/// key of the scope's own extractor. Hashed (by the memory store) as both; for Redis key names,
/// see its `RedisKey` implementation.
#[derive(Clone)]
pub struct ScopeKey {
    scope: Arc<str>,
    key: Arc<dyn Part>,
}

/// A scope's key, whatever its type.
trait Part: Send + Sync {
    fn hash_into(&self, state: &mut dyn Hasher);
    fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<T: Hash + fmt::Debug + Send + Sync> Part for T {
    fn hash_into(&self, mut state: &mut dyn Hasher) {
        self.hash(&mut state);
    }

    fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl ScopeKey {
    /// The key `key` in the scope `scope`: what a [`Scopes`] extractor finds for a request,
    /// for looking its state up in a store.
    pub fn new<K: Hash + fmt::Debug + Send + Sync + 'static>(scope: &str, key: K) -> Self {
        Self {
            scope: Arc::from(scope),
            key: Arc::new(key),
        }
    }

    /// The name of the scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

impl Hash for ScopeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.scope.hash(state);
        self.key.hash_into(state);
    }
}

impl fmt::Debug for ScopeKey {
    /// `user:"alice"`: the scope, then its key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scope)?;
        self.key.show(f)
    }
}

/// Written as `scope:<name>:` and the hex of the bytes the key feeds its `Hash`: distinct
/// keys stay distinct (`Debug` forms are not: a sensitive header value prints as `Sensitive`),
/// and the hash tag cannot move. Those bytes are the same on every instance of one platform
/// (a fleet of 64-bit little-endian machines, say); long ones become their SHA-1.
#[cfg(feature = "redis")]
impl super::RedisKey for ScopeKey {
    fn write_key(&self, out: &mut super::KeyWriter<'_>) {
        let mut fed = Fed(Vec::with_capacity(32));
        self.key.hash_into(&mut fed);
        let mut hex = Vec::with_capacity(fed.0.len() * 2);
        for byte in fed.0 {
            hex.extend_from_slice(format!("{byte:02x}").as_bytes());
        }
        out.tag("scope")
            .public(self.scope.as_bytes())
            .public(b":")
            .bytes(&hex);
    }
}

/// A `Hasher` that keeps what it is fed.
#[cfg(feature = "redis")]
struct Fed(Vec<u8>);

#[cfg(feature = "redis")]
impl Hasher for Fed {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

type Extract<Req> = dyn Fn(&Req) -> Result<ScopeKey, KeyError> + Send + Sync;

/// One decision across several keys: per user *and* per route *and* global, all or nothing,
/// so that a request the global limit refuses does not spend the user's tokens.
///
/// ```
/// use axum::{body::Body, routing::get, Router};
/// use http::Request;
/// use tollgate::key::{Global, Header, Scopes};
/// use tollgate::{Quota, RateLimitLayer};
///
/// # fn main() -> Result<(), tollgate::QuotaError> {
/// let scopes = Scopes::new()
///     .scope("user", Header::new("x-api-key"), Quota::per_second(10)?)
///     .scope(
///         "route",
///         |request: &Request<Body>| Some(request.uri().path().to_owned()),
///         Quota::per_second(100)?,
///     )
///     .scope("global", Global, Quota::per_second(1000)?);
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(RateLimitLayer::scoped(scopes));
/// # Ok(())
/// # }
/// ```
///
/// Each scope's quotas are named after the scope (`"user"`, `"route"`, `"global"`), so the
/// `RateLimit` headers of an answer say which scope bound it. The memory store and a single
/// Redis decide every scope in one atomic step; a Redis Cluster, where the scopes' keys may
/// live on different nodes, charges them in order and gives back the earlier charges when a
/// later scope refuses (see [`Ask::across`](crate::store::Ask::across)).
///
/// Put the client's own scope first (its API key, its IP): [blocks](crate::RateLimitLayer::block)
/// count the refusals of a request against the first scope's key, whichever scope refused,
/// and block that key. A shared scope first (a global one) would block everyone for one
/// client's refusals.
///
/// A request is refused if any scope refuses, and then charged on none. A scope whose
/// extractor finds no key makes the request's key missing (see
/// [`MissingKey`](crate::rate_limit::MissingKey)); one whose key is exempt exempts the
/// request.
///
/// # Clone
///
/// Clones share the extractors.
pub struct Scopes<Req> {
    scopes: Vec<Scope<Req>>,
}

struct Scope<Req> {
    extract: Arc<Extract<Req>>,
    quotas: Quotas,
}

impl<Req> Clone for Scopes<Req> {
    fn clone(&self) -> Self {
        Self {
            scopes: self
                .scopes
                .iter()
                .map(|scope| Scope {
                    extract: Arc::clone(&scope.extract),
                    quotas: scope.quotas.clone(),
                })
                .collect(),
        }
    }
}

impl<Req> Scopes<Req> {
    /// No scopes yet.
    pub fn new() -> Self {
        Self { scopes: Vec::new() }
    }

    /// Adds a scope: its name (1 to 64 printable ASCII characters, as a quota name), the
    /// extractor of its key, and its quota, renamed after the scope so that the headers
    /// say which scope bound an answer.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid quota name, or past
    /// eight scopes: both are mistakes in code,
    /// found the first time it runs. [`try_scope`](Self::try_scope) answers with an error.
    #[must_use]
    pub fn scope<E>(self, name: &str, extractor: E, quota: Quota) -> Self
    where
        E: KeyExtractor<Req>,
    {
        match self.try_scope(name, extractor, quota) {
            Ok(scopes) => scopes,
            Err(error) => panic!("scope {name:?}: {error}"),
        }
    }

    /// [`scope`](Self::scope), with an error for an invalid name or one scope too many.
    ///
    /// # Errors
    ///
    /// [`QuotaError::InvalidName`], [`QuotaError::DuplicateName`] or [`QuotaError::TooMany`].
    pub fn try_scope<E>(
        mut self,
        name: &str,
        extractor: E,
        quota: Quota,
    ) -> Result<Self, QuotaError>
    where
        E: KeyExtractor<Req>,
    {
        let quota = quota.named(name)?;
        if self
            .scopes
            .iter()
            .any(|s| s.quotas.as_slice()[0].name() == name)
        {
            return Err(QuotaError::DuplicateName(name.to_owned()));
        }
        if self.scopes.len() == crate::quota::MAX_QUOTAS {
            return Err(QuotaError::TooMany(self.scopes.len() + 1));
        }
        let scope: Arc<str> = Arc::from(name);
        self.scopes.push(Scope {
            extract: Arc::new(move |request| {
                let key = extractor.extract(request)?;
                Ok(ScopeKey {
                    scope: Arc::clone(&scope),
                    key: Arc::new(key),
                })
            }),
            quotas: Quotas::from(quota),
        });
        Ok(self)
    }

    /// The scopes' quotas, in order.
    pub fn quotas(&self) -> impl Iterator<Item = &Quotas> {
        self.scopes.iter().map(|scope| &scope.quotas)
    }
}

impl<Req> Default for Scopes<Req> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req> fmt::Debug for Scopes<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.scopes.iter().map(|s| &s.quotas.as_slice()[0]))
            .finish()
    }
}

impl<Req: 'static> KeyExtractor<Req> for Scopes<Req> {
    type Key = ScopedKeys;

    /// Every scope's key, with its quotas, in order.
    fn extract(&self, request: &Req) -> Result<ScopedKeys, KeyError> {
        if self.scopes.is_empty() {
            return Err(KeyError::missing("no scopes were configured"));
        }
        let parts = self
            .scopes
            .iter()
            .map(|scope| Ok(((scope.extract)(request)?, scope.quotas.clone())))
            .collect::<Result<_, KeyError>>()?;
        Ok(ScopedKeys(parts))
    }
}

/// The keys a [`Scopes`] extractor finds for a request, each with its scope's quotas: what
/// a scoped layer asks of its store in one all-or-nothing decision.
#[derive(Clone)]
pub struct ScopedKeys(Vec<(ScopeKey, Quotas)>);

impl ScopedKeys {
    /// Each scope's key with its quotas, in order.
    pub fn parts(&self) -> &[(ScopeKey, Quotas)] {
        &self.0
    }
}

impl Hash for ScopedKeys {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for (key, _) in &self.0 {
            key.hash(state);
        }
    }
}

impl fmt::Debug for ScopedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(key, _)| key))
            .finish()
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;
    use crate::key::{KeyWriter, RedisKey};
    use http::HeaderValue;

    fn written(key: &ScopeKey) -> String {
        let mut out = Vec::new();
        key.write_key(&mut KeyWriter::into_vec(&mut out));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn redis_names_of_distinct_keys_are_distinct() {
        let mut secret = HeaderValue::from_static("alice");
        secret.set_sensitive(true);
        let mut other = HeaderValue::from_static("bob");
        other.set_sensitive(true);
        let names = [
            written(&ScopeKey::new(
                "user",
                HeaderValue::from_bytes(b"k\xff").unwrap(),
            )),
            written(&ScopeKey::new(
                "user",
                HeaderValue::from_bytes(b"k\\xff").unwrap(),
            )),
            written(&ScopeKey::new("user", secret)),
            written(&ScopeKey::new("user", other)),
            written(&ScopeKey::new("user", "a}b")),
        ];
        for (i, name) in names.iter().enumerate() {
            assert!(name.starts_with("scope:user:"), "{name}");
            assert!(!name.contains('{') && !name.contains('}'), "{name}");
            assert!(!names[..i].contains(name), "{name} twice");
        }
        assert_eq!(
            names[4],
            written(&ScopeKey::new("user", "a}b")),
            "the same key, the same name"
        );
    }

    /// A scope's key as a request gives it: a header value (sensitive or not), or a string.
    #[derive(Clone, Debug, PartialEq)]
    enum Given {
        Header(Vec<u8>, bool),
        Text(String),
    }

    fn scope_key(scope: &str, given: &Given) -> ScopeKey {
        match given {
            Given::Header(bytes, sensitive) => {
                let mut value = HeaderValue::from_bytes(bytes).unwrap();
                value.set_sensitive(*sensitive);
                ScopeKey::new(scope, value)
            }
            Given::Text(text) => ScopeKey::new(scope, text.clone()),
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// Two keys of one kind get one name exactly when they are the same scope and value
        /// (whether a header value is marked sensitive does not make it another key).
        #[test]
        fn names_are_equal_only_for_equal_keys(
            scopes in proptest::collection::vec(
                proptest::sample::select(vec!["", "a", "a:", "user", "{u}", "%#"]),
                2,
            ),
            values in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![Just(b'a'), Just(b'b'), Just(b'\\'), Just(0xff), 32u8..127],
                    0..4,
                ),
                2,
            ),
            sensitive in proptest::collection::vec(proptest::bool::ANY, 2),
            text in proptest::bool::ANY,
        ) {
            let given: Vec<Given> = (0..2)
                .map(|i| match text {
                    true => Given::Text(String::from_utf8_lossy(&values[i]).into_owned()),
                    false => Given::Header(values[i].clone(), sensitive[i]),
                })
                .collect();
            let same_value = match (&given[0], &given[1]) {
                (Given::Header(a, _), Given::Header(b, _)) => a == b,
                (a, b) => a == b,
            };
            let same = scopes[0] == scopes[1] && same_value;
            let names = [
                written(&scope_key(scopes[0], &given[0])),
                written(&scope_key(scopes[1], &given[1])),
            ];
            prop_assert_eq!(names[0] == names[1], same, "{:?} {:?}: {:?}", scopes, given, names);
        }
    }
}
