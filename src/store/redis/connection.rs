//! The connection a store talks through: one Redis (or a primary behind a proxy), or a Redis
//! Cluster, plain or over TLS.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where the store's Redis is.
#[derive(Clone)]
pub(super) enum Target {
    /// One server: a `redis://`, `rediss://` or `redis+unix://` URL.
    Single(String),
    /// A Redis Cluster, found from these seed nodes' URLs.
    Cluster(Vec<String>),
}

/// Certificates for `rediss://` beyond the system's roots.
#[derive(Clone, Default)]
pub(super) struct Tls {
    /// PEM certificates of the authorities to trust (a private CA).
    #[cfg_attr(not(feature = "redis-tls"), allow(dead_code))]
    pub(super) roots: Option<Vec<u8>>,
    /// A PEM client certificate and key, for servers that ask for one.
    #[cfg_attr(not(feature = "redis-tls"), allow(dead_code))]
    pub(super) client: Option<(Vec<u8>, Vec<u8>)>,
}

/// One multiplexed connection, re-established in the background when lost; on a cluster, one
/// per node, following `MOVED` and `ASK` and the slot map when a node fails over.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// A connection made lazily, in the background: Redis need not be up yet.
    pub(super) fn lazy(target: &Target, tls: &Tls, timeout: Duration) -> redis::RedisResult<Self> {
        let connect_timeout = timeout.max(Duration::from_millis(100));
        match target {
            Target::Single(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client(url, tls)?, config).map(Self::Single)
            }
            Target::Cluster(seeds) => {
                let client = cluster_client(seeds, tls, connect_timeout, timeout)?;
                Ok(Self::Cluster(
                    client.get_pending_async_connection_with_config(
                        redis::cluster::ClusterConfig::new(),
                    ),
                ))
            }
        }
    }

    /// Whether this is a cluster: each decision goes to its key's node, in its own call.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// A client for one server.
pub(super) fn client(url: &str, tls: &Tls) -> redis::RedisResult<redis::Client> {
    #[cfg(feature = "redis-tls")]
    if tls.roots.is_some() || tls.client.is_some() {
        return redis::Client::build_with_tls(url, certificates(tls));
    }
    let _ = tls;
    redis::Client::open(url)
}

/// A client for a cluster.
pub(super) fn cluster_client(
    seeds: &[String],
    tls: &Tls,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    let builder = redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(connect_timeout)
        .response_timeout(response_timeout)
        .retries(2);
    #[cfg(feature = "redis-tls")]
    let builder = if tls.roots.is_some() || tls.client.is_some() {
        builder.certs(certificates(tls))
    } else {
        builder
    };
    let _ = tls;
    builder.build()
}

#[cfg(feature = "redis-tls")]
fn certificates(tls: &Tls) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls
            .client
            .clone()
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: tls.roots.clone(),
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
