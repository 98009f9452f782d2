//! RedisStore on a real Redis Cluster started by the test (`redis-server --cluster-enabled yes`
//! on loopback ports, joined with `redis-cli --cluster create`), and over real TLS. Without
//! `redis-server` the tests say they were skipped, unless `TOLLGATE_REQUIRE_REDIS=1` (as in
//! CI), which makes that a failure.

use common::DecideOne;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::store::{OnFailure, RedisStore};
use tollgate::{MemoryStore, Quota, Quotas, StoreError};

mod common;

use common::conformance::scenario;
use common::redis::{Cluster, Redis};

macro_rules! cluster_or_skip {
    ($masters:expr, $replicas:expr) => {
        match Cluster::start($masters, $replicas) {
            Some(cluster) => cluster,
            None => return,
        }
    };
}

async fn cluster_store(cluster: &Cluster) -> RedisStore {
    RedisStore::cluster(cluster.seeds())
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_cluster_gives_the_same_answers_as_the_memory_store() {
    let cluster = cluster_or_skip!(3, 0);
    let memory = scenario(&MemoryStore::new()).await;
    let remote = scenario(&cluster_store(&cluster).await).await;
    assert_eq!(memory.len(), remote.len());
    for (i, (m, r)) in memory.iter().zip(&remote).enumerate() {
        assert_eq!(m, r, "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn two_instances_on_a_cluster_keep_one_limit_per_client_with_keys_spread_over_the_nodes() {
    let cluster = cluster_or_skip!(3, 0);
    // Two stores with their own connections to every node, as two processes would have.
    let (a, b) = (cluster_store(&cluster).await, cluster_store(&cluster).await);
    let quotas = Quotas::from(Quota::per_minute(60).unwrap().with_burst(5).unwrap());
    let clients: Vec<String> = (0..40).map(|i| format!("client-{i}")).collect();
    let admitted: Arc<Vec<AtomicUsize>> =
        Arc::new(clients.iter().map(|_| AtomicUsize::new(0)).collect());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let (quotas, clients, admitted) = (quotas.clone(), clients.clone(), Arc::clone(&admitted));
        tasks.push(tokio::spawn(async move {
            for round in 0..10 {
                for (i, client) in clients.iter().enumerate().skip((t + round) % 3) {
                    let decision = store.decide_one(client, &quotas, 1, Duration::ZERO).await;
                    if decision.unwrap().is_allowed() {
                        admitted[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // burst + rate × t, plus at most one for a slot that came due during the run.
    let bound = 5 + start.elapsed().as_secs() as usize + 1;
    for (client, admitted) in clients.iter().zip(admitted.iter()) {
        let admitted = admitted.load(Ordering::Relaxed);
        assert!(
            (5..=bound).contains(&admitted),
            "{client}: {admitted}, bound {bound}"
        );
    }
    assert_eq!(a.errors() + b.errors(), 0, "every decision was Redis's");
    // The keys live on every primary, not on one.
    for node in cluster.primaries() {
        let keys: u64 = node.cli(&["DBSIZE"]).unwrap().trim().parse().unwrap();
        assert!(keys >= 3, "a primary holds {keys} of the 40 clients' keys");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_primary_killed_fails_over_and_its_keys_stay_limited() {
    let mut cluster = cluster_or_skip!(3, 1);
    // Without the over-limit cache, which would answer the spent clients' denials itself:
    // this test is about what Redis keeps through the failover.
    let store = RedisStore::cluster(cluster.seeds())
        .timeout(Duration::from_millis(200))
        .on_failure(OnFailure::Deny)
        .over_limit_cache(false)
        .connect()
        .await
        .unwrap();
    let quotas = Quotas::from(Quota::per_hour(3).unwrap());
    let clients: Vec<String> = (0..30).map(|i| format!("c{i}")).collect();
    for client in &clients {
        for _ in 0..3 {
            assert!(store
                .decide_one(client, &quotas, 1, Duration::ZERO)
                .await
                .unwrap()
                .is_allowed());
        }
        assert!(!store
            .decide_one(client, &quotas, 1, Duration::ZERO)
            .await
            .unwrap()
            .is_allowed());
    }
    // Let the replicas catch up, then kill a primary; its replica takes over after the
    // node timeout (1 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.cli(&["ROLE"]).is_some_and(|r| r.starts_with("master")))
        .unwrap();
    cluster.nodes[victim].kill();
    let killed_at = Instant::now();
    // Every client's state survives: no client passes again, whichever node holds it now.
    let mut pending: Vec<&String> = clients.iter().collect();
    while !pending.is_empty() {
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "no failover in 20 s"
        );
        let mut still = Vec::new();
        for client in pending {
            match store.decide_one(client, &quotas, 1, Duration::ZERO).await {
                Ok(decision) => assert!(!decision.is_allowed(), "{client} passed after failover"),
                Err(error) => {
                    if std::env::var("DEBUG_FAILOVER").is_ok() {
                        eprintln!("{:?} {client}: {error}", killed_at.elapsed());
                    }
                    still.push(client)
                }
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New clients are decided by Redis again, on every slot.
    let fresh = Quotas::from(Quota::per_hour(1).unwrap());
    for i in 0..30 {
        let decision = store
            .decide_one(&format!("new{i}"), &fresh, 1, Duration::ZERO)
            .await;
        assert!(decision.unwrap().is_allowed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_stalled_primary_costs_its_keys_a_few_slow_requests_not_three_per_slot_group() {
    // No replica: the stalled primary stays stalled, and every call to it times out.
    let cluster = cluster_or_skip!(3, 0);
    let timeout = Duration::from_millis(50);
    let store = || {
        RedisStore::cluster(cluster.seeds())
            .timeout(timeout)
            .on_failure(OnFailure::Local(MemoryStore::new()))
            .fleet_size(2)
            .build()
            .unwrap()
    };
    let fleet = [store(), store()];
    let quotas = Quotas::from(Quota::per_minute(100).unwrap());
    // Warm: each store's batcher has read the slot map.
    for (i, store) in fleet.iter().enumerate() {
        for k in 0..50 {
            let decision = store.decide_one(&format!("warm-{i}-{k}"), &quotas, 1, Duration::ZERO);
            assert!(decision.await.unwrap().is_allowed());
        }
    }
    let victim = &cluster.nodes[1];
    victim.signal("STOP");
    // Keys spread over every slot: a third of them on the stalled node, over about 85 of the
    // breaker's 256 slot groups.
    let mut slow = 0;
    for k in 0..600 {
        let store = &fleet[k % 2];
        let started = Instant::now();
        let decision = store.decide_one(&format!("spread-{k}"), &quotas, 1, Duration::ZERO);
        assert!(decision.await.is_ok_and(|d| d.is_allowed()));
        if started.elapsed() >= timeout / 2 {
            slow += 1;
        }
    }
    victim.signal("CONT");
    eprintln!("{slow} of 600 requests slow with one primary stalled");
    // Three failures of the node per instance trip all of its groups (a few more may be in
    // flight, or land in a group whose first slot another node serves); per group, it took
    // three each: about 200 of 600.
    assert!(
        slow <= 30,
        "{slow} slow requests for one stalled node, over a fleet of two"
    );
}

#[tokio::test]
#[cfg_attr(any(no_redis, no_openssl), ignore = "needs openssl and redis-server")]
async fn a_lone_redis_is_not_taken_for_a_cluster_nor_a_cluster_node_for_a_lone_redis() {
    let cluster = cluster_or_skip!(3, 0);
    let unusable = |result: Result<RedisStore, StoreError>| match result {
        Err(StoreError::Unusable(what)) => what,
        Err(other) => panic!("not Unusable: {other}"),
        Ok(_) => panic!("connected"),
    };
    let node = cluster.seeds().remove(0);
    let what = unusable(RedisStore::builder(node).connect().await);
    assert!(what.contains("RedisStore::cluster"), "{what}");
    let lone = Redis::start_tcp(&[]).unwrap();
    let what = unusable(
        RedisStore::cluster([lone.tcp_url().unwrap()])
            .connect()
            .await,
    );
    assert!(what.contains("not a Redis Cluster"), "{what}");
}

/// A CA, and a certificate for 127.0.0.1 it signed, made with `openssl` in `dir`.
fn certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the TLS test");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tollgate test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn rediss_works_against_a_real_tls_redis_and_refuses_an_unknown_certificate() {
    let dir = std::env::temp_dir().join(format!("tollgate-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let path = |f: &str| dir.join(f).display().to_string();
    let port = common::redis::free_port().to_string();
    let Some(redis_plain) = Redis::start_tcp(&[]) else {
        return;
    };
    let Some(redis) = Redis::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "tls-pw",
    ]) else {
        return;
    };
    let url = format!("rediss://:tls-pw@127.0.0.1:{port}");
    // The system's roots do not know the test CA: refused at start-up, saying why.
    match RedisStore::builder(url.clone()).connect().await {
        Err(StoreError::Unusable(what)) => {
            assert!(
                what.contains("signed by a certificate authority this store does not trust")
                    && what.contains("tls_root_certificates"),
                "{what}"
            );
            assert!(!what.contains("tls-pw"), "the password leaked: {what}");
        }
        other => panic!("connected without trusting the CA: {other:?}"),
    }
    // A CA file that holds no PEM certificate (DER, a key, an empty file) is named as such,
    // not reported later as an unknown issuer.
    for not_pem in [
        &b""[..],
        b"not a certificate",
        &std::fs::read(dir.join("server.key")).unwrap(),
    ] {
        match RedisStore::builder(url.clone())
            .tls_root_certificates(not_pem.to_vec())
            .connect()
            .await
        {
            Err(StoreError::Unusable(what)) => {
                assert!(what.contains("holds no PEM certificate"), "{what}")
            }
            other => panic!("a CA file without a certificate was taken: {other:?}"),
        }
    }
    // rediss:// to the port that serves Redis without TLS.
    let plain_port = redis_plain.port().unwrap();
    let started = Instant::now();
    match RedisStore::builder(format!("rediss://:tls-pw@127.0.0.1:{plain_port}"))
        .tls_root_certificates(std::fs::read(dir.join("ca.crt")).unwrap())
        .connect()
        .await
    {
        Err(StoreError::Unusable(what)) => {
            assert!(
                what.contains("speaks Redis without TLS") && what.contains("redis://"),
                "{what}"
            );
        }
        other => panic!("rediss:// to a plain port connected: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let store = RedisStore::builder(url)
        .tls_root_certificates(ca)
        .connect()
        .await
        .unwrap();
    let quotas = Quotas::from(Quota::per_hour(2).unwrap());
    let key = "over-tls".to_owned();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            store
                .decide_one(&key, &quotas, 1, Duration::ZERO)
                .await
                .unwrap()
                .is_allowed(),
        );
    }
    assert_eq!(seen, [true, true, false]);
    // The state is in the TLS server (read over its unix socket).
    assert!(redis
        .cli(&["GET", &store.key_of(&key, &quotas.as_slice()[0])])
        .is_some_and(|v| !v.trim().is_empty()));
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_cluster_that_serves_no_slots_is_refused_saying_so() {
    // A cluster node no one has created a cluster with: no slot is assigned.
    let Some(node) = Redis::start_tcp(&["--cluster-enabled", "yes"]) else {
        return;
    };
    let seed = node.tcp_url().unwrap();
    match RedisStore::cluster([seed]).connect().await {
        Err(StoreError::Unusable(what)) => assert!(
            what.contains("no node serves the cluster's slots")
                && what.contains("redis-cli --cluster create"),
            "{what}"
        ),
        other => panic!("a cluster without slots was taken: {other:?}"),
    }
}

/// A Redis Sentinel watching `master` as `mymaster`, killed when dropped.
struct Sentinel {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Sentinel {
    fn start(master: &Redis) -> Sentinel {
        let port = common::redis::free_port();
        let dir =
            std::env::temp_dir().join(format!("tollgate-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n",
                dir.display(),
                master.port().unwrap()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        Sentinel { child, port, dir }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary, its replica in sync, and a Sentinel that sees both (`None` without Redis).
fn primary_replica_and_sentinel() -> Option<(Redis, Redis, Sentinel)> {
    let master = Redis::start_tcp(&[])?;
    let master_port = master.port().unwrap().to_string();
    let replica = Redis::start_tcp(&["--replicaof", "127.0.0.1", &master_port]).unwrap();
    wait_for("the replica syncs", || {
        replica
            .cli(&["INFO", "replication"])
            .is_some_and(|i| i.contains("master_link_status:up"))
    });
    let sentinel = Sentinel::start(&master);
    wait_for("the sentinel sees the replica", || {
        sentinel
            .cli(&["SENTINEL", "REPLICAS", "mymaster"])
            .contains(&replica.port().unwrap().to_string())
    });
    Some((master, replica, sentinel))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not in 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_store_through_sentinel_follows_a_failover_and_keeps_its_keys_limited() {
    let Some((_master, replica, sentinel)) = primary_replica_and_sentinel() else {
        return;
    };

    // An unknown master name is an error at start-up.
    match RedisStore::sentinel([sentinel.url()], "no-such-master")
        .connect()
        .await
    {
        Err(StoreError::Unusable(what)) => assert!(what.contains("no-such-master"), "{what}"),
        other => panic!("connected to an unknown master: {other:?}"),
    }
    let store = RedisStore::sentinel([sentinel.url()], "mymaster")
        .timeout(Duration::from_millis(200))
        .on_failure(OnFailure::Deny)
        .connect()
        .await
        .unwrap();
    let quotas = Quotas::from(Quota::per_hour(3).unwrap());
    for i in 0..10 {
        let key = format!("k{i}");
        for _ in 0..3 {
            assert!(store
                .decide_one(&key, &quotas, 1, Duration::ZERO)
                .await
                .unwrap()
                .is_allowed());
        }
    }
    wait_for("the replica has every key", || {
        replica.cli(&["DBSIZE"]).is_some_and(|n| n.trim() == "10")
    });
    // Until the sentinel has read the replica's state it answers NOGOODSLAVE: ask again.
    wait_for("the sentinel starts a failover", || {
        sentinel
            .cli(&["SENTINEL", "FAILOVER", "mymaster"])
            .contains("OK")
    });
    wait_for("the sentinel names the replica", || {
        sentinel
            .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
            .contains(&replica.port().unwrap().to_string())
    });
    // New keys are written on the new primary once the store has followed it.
    let start = Instant::now();
    let mut n = 0;
    loop {
        // The Sentinels announce the switch (+switch-master) at once, and demote the old
        // primary only about ten seconds later: a store that waited for failed writes would
        // write to the old one meanwhile.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the store did not follow the failover in 5 s"
        );
        n += 1;
        if let Ok(decision) = store
            .decide_one(&format!("new{n}"), &quotas, 1, Duration::ZERO)
            .await
        {
            assert!(decision.is_allowed());
            let key = store.key_of(&format!("new{n}"), &quotas.as_slice()[0]);
            if replica
                .cli(&["EXISTS", &key])
                .is_some_and(|e| e.trim() == "1")
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the spent keys are still spent.
    for i in 0..10 {
        let decision = store
            .decide_one(&format!("k{i}"), &quotas, 1, Duration::ZERO)
            .await
            .unwrap();
        assert!(!decision.is_allowed(), "k{i} passed after the failover");
    }
}

/// Sum of `cmdstat_evalsha` calls over the cluster's nodes.
fn evalsha_calls(cluster: &Cluster) -> u64 {
    cluster.nodes.iter().map(|n| n.calls("evalsha")).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn batches_on_a_cluster_go_node_by_node_and_survive_a_resharding() {
    let cluster = cluster_or_skip!(3, 0);
    let store = cluster_store(&cluster).await;
    let quotas = Quotas::from(Quota::per_hour(2).unwrap());
    let keys: Vec<String> = (0..300).map(|i| format!("user{i}")).collect();
    // Three rounds of every key at once: 2 pass, the third is refused.
    let round = |expect: bool| {
        let store = store.clone();
        let (keys, quotas) = (keys.clone(), quotas.clone());
        async move {
            let decisions = keys
                .iter()
                .map(|k| store.decide_one(k, &quotas, 1, Duration::ZERO));
            for (key, decision) in keys
                .iter()
                .zip(futures_util::future::join_all(decisions).await)
            {
                assert_eq!(decision.unwrap().is_allowed(), expect, "{key}");
            }
        }
    };
    let before = evalsha_calls(&cluster);
    round(true).await;
    let calls = evalsha_calls(&cluster) - before;
    assert!(
        calls < 100,
        "300 decisions took {calls} script calls: not batched"
    );
    // Move a third of the slots between nodes: the store's map is now wrong for them.
    let ids: Vec<String> = cluster
        .primaries()
        .iter()
        .map(|n| n.cli(&["CLUSTER", "MYID"]).unwrap().trim().to_owned())
        .collect();
    let seed = cluster.nodes[0].tcp_url().unwrap().replace("redis://", "");
    let moved = Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &seed,
            "--cluster-from",
            &ids[0],
            "--cluster-to",
            &ids[1],
        ])
        .args(["--cluster-slots", "5000", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stdout)
    );
    cluster.wait_until_ok();
    round(true).await;
    round(false).await;
    assert_eq!(store.errors(), 0, "every decision was Redis's");
}

/// A quota change carries each key's debt over in batches that span slots, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn batched_decisions_on_a_cluster_carry_debt_over_a_quota_change() {
    let cluster = cluster_or_skip!(3, 0);
    let store = cluster_store(&cluster).await;
    let before = Quotas::from(Quota::per_hour(10).unwrap());
    let after = Quotas::from(Quota::per_hour(100).unwrap()).carry_over_from(&before);
    let keys: Vec<String> = (0..300).map(|i| format!("user{i}")).collect();
    let all_at_once = |quotas: &Quotas| {
        let decisions = keys
            .iter()
            .map(|k| store.decide_one(k, quotas, 1, Duration::ZERO));
        futures_util::future::join_all(decisions)
    };
    for _ in 0..4 {
        all_at_once(&before).await;
    }
    let calls = evalsha_calls(&cluster);
    for (key, decision) in keys.iter().zip(all_at_once(&after).await) {
        // 4 of 10 spent: 60 of 100 left, one more taken now.
        assert_eq!(decision.unwrap().remaining(), 59, "{key}");
    }
    assert!(evalsha_calls(&cluster) - calls < 100, "batched");
    assert_eq!(store.errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_stalled_primary_does_not_hold_back_the_other_nodes_keys() {
    let cluster = cluster_or_skip!(3, 0);
    let store = RedisStore::cluster(cluster.seeds())
        .timeout(Duration::from_millis(300))
        .on_failure(OnFailure::Deny)
        .connect()
        .await
        .unwrap();
    let quotas = Quotas::from(Quota::per_hour(100).unwrap());
    // Which keys the first node serves: its slot ranges, and each key's slot.
    let victim = &cluster.nodes[0];
    let nodes = victim.cli(&["CLUSTER", "NODES"]).unwrap();
    let mine = nodes.lines().find(|l| l.contains("myself")).unwrap();
    let ranges: Vec<(u16, u16)> = mine
        .split_whitespace()
        .skip(8)
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    let on_victim = |key: &String| {
        let name = store.key_of(key, &quotas.as_slice()[0]);
        let slot: u16 = victim
            .cli(&["CLUSTER", "KEYSLOT", &name])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    };
    let (stalled, healthy): (Vec<String>, Vec<String>) =
        (0..60).map(|i| format!("k{i}")).partition(on_victim);
    victim.signal("STOP");
    // Several calls to the stalled node out at once (a wave each), and meanwhile decide the
    // other nodes' keys.
    let mut hung = Vec::new();
    for wave in stalled.chunks(stalled.len().div_ceil(4)) {
        let waiting = wave
            .iter()
            .map(|k| store.decide_one(k, &quotas, 1, Duration::ZERO));
        hung.push(tokio::spawn(futures_util::future::join_all(waiting)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut slowest = Duration::ZERO;
    for key in &healthy {
        let start = Instant::now();
        assert!(store
            .decide_one(key, &quotas, 1, Duration::ZERO)
            .await
            .unwrap()
            .is_allowed());
        slowest = slowest.max(start.elapsed());
    }
    victim.signal("CONT");
    for wave in hung {
        let _ = wave.await;
    }
    assert!(
        slowest < Duration::from_millis(150),
        "a healthy node's key waited {slowest:?}"
    );
}

/// On a cluster the parts of a scoped decision live in different slots: charged in order, and
/// given back when a later part refuses.
#[tokio::test]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn scoped_decisions_on_a_cluster_give_back_what_a_later_refusal_would_have_spent() {
    use tollgate::key::{Global, ScopeKey};

    let cluster = cluster_or_skip!(3, 0);
    let store = cluster_store(&cluster).await;
    let user = Quotas::from(Quota::per_hour(3).unwrap().named("user").unwrap());
    let global = Quotas::from(Quota::per_hour(4).unwrap().named("global").unwrap());
    let parts = |who: String| -> Arc<[(ScopeKey, Quotas)]> {
        Arc::from(vec![
            (ScopeKey::new("user", who), user.clone()),
            (ScopeKey::new("global", Global), global.clone()),
        ])
    };
    let mut refused = 0;
    for i in 0..8 {
        let (binding, decision) = store
            .decide_across(parts(format!("user{i}")), 1, Duration::ZERO)
            .await
            .unwrap();
        if !decision.is_allowed() {
            assert_eq!(binding, 1, "the global quota refuses");
            refused += 1;
        }
    }
    assert_eq!(refused, 4);
    for i in 4..8 {
        let status = store
            .status(&ScopeKey::new("user", format!("user{i}")), &user)
            .await
            .unwrap();
        assert_eq!(status.remaining(), 3, "user{i}'s charge was given back");
    }
    assert_eq!(store.errors(), 0);
}

/// What a Sentinel failover costs a hot key: two instances (each its own store, fleet of 2,
/// `OnFailure::Local`) hammer one key of 100 a second (burst 100) through the primary
/// Sentinel names, for 2 s, a failover (`SENTINEL FAILOVER`), and 3 s after the switch.
/// Admitted over the whole run against the bound (burst + rate × elapsed): at most 1.01×.
/// The Sentinels name the promoted replica about 0.9 s after they promote it (they see the
/// promotion in its `INFO`, asked once a second); a store that switched only then wrote that
/// window to the old primary, lost when it became a replica, and admitted 1.13–1.14× (95–98
/// over, 90 of them the window's). The store switches at their first word of the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_sentinel_failover_costs_a_hot_key_at_most_one_percent_over_its_bound() {
    through_a_sentinel_failover(100, 1).await;
}

/// The same with a key hot enough to be leased (1,000 a second, burst 1,000, each instance
/// asking 5,000 times a second): its leases are charged on the primary the store switches to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_redis, ignore = "needs redis-server and redis-cli on PATH")]
async fn a_sentinel_failover_costs_a_leased_key_at_most_one_percent_over_its_bound() {
    through_a_sentinel_failover(1000, 10).await;
}

/// Two instances ask for one key of `rate` a second (burst `rate`), `per_tick` times every
/// 2 ms each, through a Sentinel failover; the run admits within 0.9–1.01× its bound.
async fn through_a_sentinel_failover(rate: u32, per_tick: usize) {
    let Some((_master, replica, sentinel)) = primary_replica_and_sentinel() else {
        return;
    };
    let quotas = Quotas::from(Quota::per_second(rate).unwrap().with_burst(rate).unwrap());
    let mut stores = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::sentinel([sentinel.url()], "mymaster")
            .timeout(Duration::from_millis(50))
            .fleet_size(2)
            .on_failure(OnFailure::Local(MemoryStore::new()))
            .connect()
            .await
            .unwrap();
        stores.push(store);
    }
    let admitted = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let start = Instant::now();
    let tasks: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let (quotas, admitted, running) =
                (quotas.clone(), Arc::clone(&admitted), Arc::clone(&running));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                let hot = "hot".to_owned();
                while running.load(Ordering::Relaxed) {
                    tick.tick().await;
                    for _ in 0..per_tick {
                        let decision = store.decide_one(&hot, &quotas, 1, Duration::ZERO).await;
                        if decision.unwrap().is_allowed() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                store.leased_keys()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replica_port = replica.port().unwrap().to_string();
    let (sentinel, replica, promoted, named) = tokio::task::spawn_blocking(move || {
        // Until the sentinel has read the replica's state it answers NOGOODSLAVE: ask again.
        wait_for("the sentinel starts a failover", || {
            sentinel
                .cli(&["SENTINEL", "FAILOVER", "mymaster"])
                .contains("OK")
        });
        let until = |what: &str, done: &dyn Fn() -> bool| {
            let asked = Instant::now();
            while !done() {
                assert!(
                    asked.elapsed() < Duration::from_secs(20),
                    "{what}: not in 20 s"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            start.elapsed()
        };
        let promoted = until("the replica is promoted", &|| {
            replica
                .cli(&["ROLE"])
                .is_some_and(|role| role.starts_with("master"))
        });
        let named = until("the sentinel names the replica", &|| {
            sentinel
                .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
                .contains(&replica_port)
        });
        (sentinel, replica, promoted, named)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.store(false, Ordering::Relaxed);
    let mut leased = 0;
    for task in tasks {
        leased += task.await.unwrap();
    }
    // One instance at 500 a second is not hot; at 5,000 both lease the key.
    assert_eq!(leased, if per_tick > 1 { 2 } else { 0 });
    drop((sentinel, replica));
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed);
    let bound = f64::from(rate) + f64::from(rate) * elapsed;
    let ratio = admitted as f64 / bound;
    let window = (named - promoted).as_secs_f64();
    let over = admitted as f64 - bound;
    eprintln!(
        "Sentinel failover: promoted at {promoted:?}, named at {named:?} ({window:.3} s later); \
         admitted {admitted} in {elapsed:.2} s against a bound of {bound:.0}: {ratio:.4}×, \
         {over:.0} over"
    );
    assert!(
        ratio <= 1.01,
        "{over:.0} over the bound of {bound:.0}: {ratio:.4}× (the {window:.3} s between the \
         promotion and the naming hold {:.0})",
        f64::from(rate) * window
    );
    assert!(ratio >= 0.9, "the limit starved: {admitted} of {bound:.0}");
}
