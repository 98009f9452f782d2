//! What the readers of the dialects find, and what [`server::read`](super::server::read) makes
//! of it: the types the readers share, below them, so that no reader imports from the module
//! that imports it.

use std::time::Duration;

/// What a response says about the server's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServerSaid {
    /// How long the server asked the client to wait before its next request: the *later* of
    /// every field that asks for one. A `Retry-After` date or a reset already past is none
    /// (only gRPC's pushback can say "0 ms": retry now).
    pub(crate) delay: Option<Duration>,
    /// A gRPC server said not to retry (a negative pushback).
    pub(crate) stop: bool,
    /// The most constraining limit it announced, if any.
    pub(crate) limits: Option<Limits>,
}

/// A limit a server announced: the one with the fewest requests left, among every dialect
/// (see [`server`](super::server) for quotas in other units).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Requests left (0 as well when a quota in other units is spent).
    pub(crate) remaining: u64,
    /// When the allowance comes back, if said.
    pub(crate) reset: Option<Duration>,
    /// What it comes back to, in requests, if said.
    pub(crate) limit: Option<u64>,
    /// The server's name for the limit, if it gave one: the IETF policy's name, GitHub's
    /// `X-RateLimit-Resource`, or `requests` / `tokens` for OpenAI's two quotas.
    pub(crate) name: Option<String>,
}

/// A limit as one dialect states it, before the binding one is chosen.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) limits: Limits,
    /// Its units are requests; otherwise it binds only when exhausted.
    pub(crate) counts_requests: bool,
}
