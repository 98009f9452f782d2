//! The connection a store talks through: one Redis (or a primary behind a proxy), the primary
//! Redis Sentinels name, or a Redis Cluster, plain or over TLS.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::{Arc, RwLock};

/// Where the store's Redis is.
#[derive(Clone)]
pub(super) enum Target {
    /// One server: a `redis://`, `rediss://` or `redis+unix://` URL.
    Single(String),
    /// A Redis Cluster, found from these seed nodes' URLs.
    Cluster(Vec<String>),
    /// The primary that Redis Sentinels (these URLs) name for `master`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        /// The primary's ACL user and password, if it asks for them.
        auth: Option<(Option<String>, String)>,
    },
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
    /// The connection to the primary a Sentinel named last; [`Connection::follow`] asks again.
    Sentinel(Followed),
}

/// A connection to the primary the Sentinels name, replaced when they name another.
pub(super) struct Followed {
    current: ConnectionManager,
    shared: Arc<FollowedShared>,
}

struct FollowedShared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The primary's name at the Sentinels.
    master: String,
    current: RwLock<(String, ConnectionManager)>,
    /// How to reach the primary named last (its address aside): its TLS and credentials.
    template: RwLock<redis::ConnectionInfo>,
    /// The replica a failover is promoting, switched to before the Sentinels name it, and
    /// when: until they name it (or [`PROMOTION_GRACE`] passes), asking them does not switch
    /// back to the old primary.
    promoting: std::sync::Mutex<Option<(String, std::time::Instant)>>,
    config: ConnectionManagerConfig,
}

/// How long a store that switched to a replica being promoted waits for the Sentinels to name
/// it before it believes them again (a failover that failed).
const PROMOTION_GRACE: Duration = Duration::from_secs(5);

impl FollowedShared {
    /// Asks the Sentinels which node is the primary, and switches to it if it moved.
    async fn follow(&self) -> Option<String> {
        let client = self.sentinel.lock().await.async_get_client().await.ok()?;
        let address = client.get_connection_info().addr().to_string();
        // One lock over the check and the switch: a promotion between them is not undone.
        let mut promoting = self.promoting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((replica, since)) = &*promoting {
            if *replica != address && since.elapsed() < PROMOTION_GRACE {
                // They name the old primary until they have seen the promotion.
                return None;
            }
            *promoting = None;
        }
        if read(&self.current).0 == address {
            return None;
        }
        let info = client.get_connection_info().clone();
        let manager = ConnectionManager::new_lazy_with_config(client, self.config.clone()).ok()?;
        *self.template.write().unwrap_or_else(|e| e.into_inner()) = info;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (address.clone(), manager);
        Some(address)
    }

    /// Switches to the replica a failover is promoting (the Sentinels'
    /// `+failover-state-send-slaveof-noone`, about a second before they name it): the writes
    /// of that second would go to the old primary, and be lost when it becomes a replica.
    /// Until the replica is promoted (milliseconds), its writes fail, and the failure policy
    /// decides.
    fn promote(&self, event: &str) -> Option<String> {
        let (host, port) = promoted_replica(event, &self.master)?;
        let template = read(&self.template).clone();
        let addr = match template.addr() {
            redis::ConnectionAddr::Tcp(..) => redis::ConnectionAddr::Tcp(host, port),
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => return None,
        };
        let address = addr.to_string();
        let mut promoting = self.promoting.lock().unwrap_or_else(|e| e.into_inner());
        if read(&self.current).0 == address {
            return None;
        }
        let client = redis::Client::open(template.set_addr(addr)).ok()?;
        let manager = ConnectionManager::new_lazy_with_config(client, self.config.clone()).ok()?;
        *promoting = Some((address.clone(), std::time::Instant::now()));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (address.clone(), manager);
        Some(address)
    }
}

/// The replica a Sentinel event about `master` names: `slave <ip>:<port> <ip> <port> @
/// <master> <master ip> <master port>`.
fn promoted_replica(event: &str, master: &str) -> Option<(String, u16)> {
    let words: Vec<&str> = event.split_whitespace().collect();
    match words.as_slice() {
        [_, _, ip, port, "@", name, _, _] if *name == master => {
            Some(((*ip).to_owned(), port.parse().ok()?))
        }
        _ => None,
    }
}

/// The Sentinels' event for a replica being promoted, just before they promote it.
const PROMOTING: &str = "+failover-state-send-slaveof-noone";

/// Follows the Sentinels' failovers: the store switches to the replica being promoted at their
/// first word of it (`+failover-state-send-slaveof-noone`, which only the Sentinel leading the
/// failover says), and to the primary they name (`+switch-master`), instead of writing to the
/// old one until it is demoted (Sentinel converts it about ten seconds later). Listens to every
/// Sentinel, each again after a lost connection; ends with the store.
fn watch_switches(shared: std::sync::Weak<FollowedShared>, sentinels: Vec<String>) {
    for url in sentinels {
        tokio::spawn(watch_one(shared.clone(), url));
    }
}

/// [`watch_switches`] for the Sentinel at `url`.
async fn watch_one(shared: std::sync::Weak<FollowedShared>, url: String) {
    use futures_util::StreamExt;
    let mut pause = Duration::from_millis(100);
    loop {
        let client = redis::Client::open(url.as_str());
        if let Ok(mut pubsub) = match client {
            Ok(client) => client.get_async_pubsub().await,
            Err(error) => Err(error),
        } {
            if pubsub
                .subscribe(&["+switch-master", PROMOTING])
                .await
                .is_ok()
            {
                pause = Duration::from_millis(100);
                let mut switches = pubsub.into_on_message();
                let mut alive = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        switch = switches.next() => {
                            let Some(switch) = switch else {
                                break;
                            };
                            let Some(shared) = shared.upgrade() else { return };
                            if switch.get_channel_name() == PROMOTING {
                                let event: String = switch.get_payload().unwrap_or_default();
                                if let Some(replica) = shared.promote(&event) {
                                    tracing::warn!(target: "tollgate::store::redis", %replica, "the Sentinels are promoting a replica: switched to it");
                                }
                            } else if let Some(primary) = shared.follow().await {
                                tracing::warn!(target: "tollgate::store::redis", %primary, "the Sentinels switched the primary");
                            }
                        }
                        _ = alive.tick() => {
                            if shared.strong_count() == 0 {
                                return;
                            }
                        }
                    }
                }
            }
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

impl Clone for Followed {
    /// A snapshot: the connection to the primary named last.
    fn clone(&self) -> Self {
        let current = read(&self.shared.current).1.clone();
        Self {
            current,
            shared: Arc::clone(&self.shared),
        }
    }
}

pub(super) fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

impl Connection {
    /// A connection made lazily, in the background: Redis need not be up yet. (Through
    /// Sentinel, the primary must be named first: see [`Connection::sentinel`].)
    pub(super) fn lazy(target: &Target, tls: &Tls, timeout: Duration) -> redis::RedisResult<Self> {
        let connect_timeout = timeout.max(Duration::from_millis(100));
        match target {
            Target::Single(url) => {
                ConnectionManager::new_lazy_with_config(client(url, tls)?, manager_config(timeout))
                    .map(Self::Single)
            }
            Target::Cluster(seeds) => {
                let client = cluster_client(seeds, tls, connect_timeout, timeout)?;
                Ok(Self::Cluster(
                    client.get_pending_async_connection_with_config(
                        redis::cluster::ClusterConfig::new(),
                    ),
                ))
            }
            Target::Sentinel { .. } => Err((
                redis::ErrorKind::InvalidClientConfig,
                "a store through Redis Sentinel is made with connect().await",
            )
                .into()),
        }
    }

    /// A connection to the primary the Sentinels at `sentinels` name for `master`, asking them
    /// now.
    pub(super) async fn sentinel(
        sentinels: &[String],
        master: &str,
        auth: Option<&(Option<String>, String)>,
        timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let mut node = redis::RedisConnectionInfo::default();
        if let Some((user, password)) = auth {
            if let Some(user) = user {
                node = node.set_username(user);
            }
            node = node.set_password(password);
        }
        // `build` takes a `String` without redis-rs's rustls feature, `impl AsRef<str>` with it.
        #[allow(clippy::unnecessary_to_owned)]
        let mut sentinel = SentinelClient::build(
            sentinels.to_vec(),
            master.to_owned(),
            Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(node)),
            SentinelServerType::Master,
        )?;
        let client = sentinel.async_get_client().await?;
        let address = client.get_connection_info().addr().to_string();
        let template = client.get_connection_info().clone();
        let config = manager_config(timeout);
        let current = ConnectionManager::new_lazy_with_config(client, config.clone())?;
        let shared = Arc::new(FollowedShared {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master: master.to_owned(),
            current: RwLock::new((address, current.clone())),
            template: RwLock::new(template),
            promoting: std::sync::Mutex::new(None),
            config,
        });
        watch_switches(Arc::downgrade(&shared), sentinels.to_vec());
        Ok(Self::Sentinel(Followed { current, shared }))
    }

    /// Through Sentinel, asks which node is the primary now and switches to it if it moved;
    /// elsewhere, nothing to do. Returns the primary's address when it changed.
    pub(super) async fn follow(&self) -> Option<String> {
        let Self::Sentinel(followed) = self else {
            return None;
        };
        followed.shared.follow().await
    }

    /// Whether this follows the primary Redis Sentinels name.
    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self, Self::Sentinel(_))
    }

    /// Whether this is a cluster: each decision goes to its key's node, in its own call.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
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
            Self::Sentinel(c) => c.current.req_packed_command(cmd),
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
            Self::Sentinel(c) => c.current.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(c) => c.current.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::promoted_replica;

    #[test]
    fn the_replica_being_promoted_is_read_from_the_sentinels_event() {
        let event = "slave 10.0.0.2:6380 10.0.0.2 6380 @ mymaster 10.0.0.1 6379";
        assert_eq!(
            promoted_replica(event, "mymaster"),
            Some(("10.0.0.2".to_owned(), 6380))
        );
        // Another primary's failover, or an event of another shape, switches nothing.
        assert_eq!(promoted_replica(event, "other"), None);
        assert_eq!(
            promoted_replica("master mymaster 10.0.0.1 6379", "mymaster"),
            None
        );
        assert_eq!(
            promoted_replica("slave a b port @ mymaster c 1", "mymaster"),
            None
        );
        assert_eq!(promoted_replica("", "mymaster"), None);
    }
}
