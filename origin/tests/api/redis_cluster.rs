//! The origin on a Redis Cluster of the test's own (three masters, three replicas, started by
//! scripts/lib.sh's `start_redis_cluster`), for what acts on single nodes and would disturb the
//! run's shared cluster: a shard that loses its contents, a failover that loses a write. They
//! run in the scripts/test pass that sets `EDGEAUTH_TEST_REDIS_CLUSTER`, and skip otherwise.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use edgeauth_origin::{
    config::RedisTarget,
    store::{
        deny::{key as deny_key, Held, RedisDenyList},
        DenyList as _,
    },
};
use serde_json::json;

use super::{claims_of, origin_with, Origin};

/// A node: its port and its process.
struct Node {
    port: u16,
    pid: u32,
}

struct OwnCluster {
    nodes: Vec<Node>,
    dir: std::path::PathBuf,
}

impl OwnCluster {
    async fn start() -> Option<Self> {
        std::env::var_os("EDGEAUTH_TEST_REDIS_CLUSTER")?;
        let dir = std::env::temp_dir().join(format!("edgeauth-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        // Read when the test runs, not built in: a target directory shared between checkouts
        // (a CI cache) keeps a binary whose build-time path may be gone.
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test");
        let lib = std::path::Path::new(&manifest).join("../scripts/lib.sh");
        // The project's one way to start a cluster: the one scripts/test uses.
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#"set -e; source "$0"; start_redis_cluster "$1"; echo "$REDIS_CLUSTER_SEEDS"; echo "$REDIS_CLUSTER_PIDS""#)
            .arg(&lib)
            .arg(&dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("bash");
        let text = String::from_utf8(out.stdout).expect("text");
        let mut lines = text.lines();
        let (Some(seeds), Some(pids)) = (lines.next(), lines.next()) else {
            panic!("start_redis_cluster failed: {text}");
        };
        let seeds: Vec<String> = serde_json::from_str(seeds).expect("seeds");
        let nodes = seeds
            .iter()
            .zip(pids.split_whitespace())
            .map(|(seed, pid)| Node {
                port: seed
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("port"),
                pid: pid.parse().expect("pid"),
            })
            .collect();
        Some(Self { nodes, dir })
    }

    fn seeds(&self) -> String {
        json!(self
            .nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>())
        .to_string()
    }

    /// A command on one node.
    async fn command<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> T {
        let mut connection = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut connection)
            .await
            .expect("redis command")
    }

    /// The ports of the master serving `key` and of its replica, from `CLUSTER NODES` as the
    /// first live node sees it.
    async fn master_and_replica(&self, key: &str) -> (u16, u16) {
        let port = self.nodes[0].port;
        let slot: u16 = self.command(port, &["CLUSTER", "KEYSLOT", key]).await;
        let nodes: String = self.command(port, &["CLUSTER", "NODES"]).await;
        let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split(' ').collect()).collect();
        let port_of = |fields: &[&str]| -> u16 {
            let address = fields[1].split('@').next().expect("address");
            address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port")
        };
        let master = lines
            .iter()
            .find(|f| {
                f[2].contains("master")
                    && f[8..].iter().any(|range| {
                        let (low, high) = range.split_once('-').unwrap_or((range, range));
                        let (Ok(low), Ok(high)) = (low.parse::<u16>(), high.parse::<u16>()) else {
                            return false;
                        };
                        (low..=high).contains(&slot)
                    })
            })
            .expect("a master serves every slot");
        let replica = lines
            .iter()
            .find(|f| f[2].contains("slave") && f[3] == master[0])
            .expect("each master has a replica");
        (port_of(master), port_of(replica))
    }

    /// The masters' ports.
    async fn masters(&self) -> Vec<u16> {
        let mut masters = Vec::new();
        for node in &self.nodes {
            let role: Vec<redis::Value> = self.command(node.port, &["ROLE"]).await;
            if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                masters.push(node.port);
            }
        }
        masters
    }

    fn signal(&self, port: u16, signal: &str) {
        let node = self.nodes.iter().find(|n| n.port == port).expect("a node");
        let status = std::process::Command::new("kill")
            .args([signal, &node.pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {}", node.pid);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            for signal in ["-CONT", "-KILL"] {
                let _ = std::process::Command::new("kill")
                    .args([signal, &node.pid.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn origin_on(cluster: &OwnCluster) -> Origin {
    let seeds = cluster.seeds();
    origin_with(&[
        ("EDGEAUTH_REDIS_DENYLIST_CLUSTER", seeds.as_str()),
        ("EDGEAUTH_REDIS_CACHE_CLUSTER", seeds.as_str()),
    ])
    .await
}

/// Registers `email` and logs in: the access token, and its session's key in the deny-list.
async fn signed_in(o: &Origin, email: &str) -> (String, String) {
    o.register(email, "a fine passphrase").await;
    let login = o.login(email, "a fine passphrase").await;
    let access = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let sid = claims_of(&access)["sid"].as_str().expect("sid").to_owned();
    (access, deny_key(Held::Session, &sid))
}

/// Logs in as `email` and logs out: the access token, now revoked, and its session's key in the
/// deny-list.
async fn revoked_token(o: &Origin, email: &str) -> (String, String) {
    let (access, key) = signed_in(o, email).await;
    let out = o.with_bearer("POST", "/v1/logout", &access, None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.body);
    (access, key)
}

/// Asks `/v1/me` with a revoked token until it is refused as revoked: never a 200 meanwhile,
/// only "revocation unavailable" while the list is rebuilt; within `bound`.
async fn refused_within(o: &Origin, access: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let me = o.with_bearer("GET", "/v1/me", access, None).await;
        match me.status {
            StatusCode::UNAUTHORIZED => {
                assert_eq!(me.body["reason"], "token_revoked", "{}", me.body);
                return started.elapsed();
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(me.body["reason"], "revocation_unavailable", "{}", me.body);
            }
            other => panic!("a revoked token answered {other}: {}", me.body),
        }
        assert!(
            started.elapsed() <= bound,
            "still not refused after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_shard_that_lost_its_contents_never_lets_a_revoked_token_pass() {
    let Some(cluster) = OwnCluster::start().await else {
        return;
    };
    // Whichever shard loses its contents, the list knows it is no longer complete. One mark
    // for the whole list, on one shard, would go on saying "complete" when another is flushed.
    let seeds = serde_json::from_str(&cluster.seeds()).expect("seeds");
    let list = RedisDenyList::new(&RedisTarget::Cluster(seeds)).expect("client");
    for master in cluster.masters().await {
        let mark = list.rebuild_started().await.expect("started");
        assert!(list.rebuild_finished(&mark).await.expect("finished"));
        assert!(list.complete().await.expect("read"));
        let () = cluster.command(master, &["FLUSHALL"]).await;
        assert!(!list.complete().await.expect("read"), "{master} flushed");
    }
    let o = origin_on(&cluster).await;
    let (access, key) = revoked_token(&o, "shard@example.com").await;
    let (master, _) = cluster.master_and_replica(&key).await;
    // The shard holding the revocation: never a 200 for the token, and the entry is back.
    let () = cluster.command(master, &["FLUSHALL"]).await;
    let took = refused_within(&o, &access, Duration::from_secs(10)).await;
    eprintln!("refused again {took:?} after the shard was flushed");
    // The rebuild puts the entry back on that shard.
    let took = held_again_within(&cluster, master, &key, Duration::from_secs(10)).await;
    eprintln!("held again {took:?} after the shard was flushed");
    refused_within(&o, &access, Duration::ZERO).await;
}

/// Polls `node` until it holds `key` again, within `bound`.
async fn held_again_within(
    cluster: &OwnCluster,
    node: u16,
    key: &str,
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let held: Option<String> = cluster.command(node, &["GET", key]).await;
        if held.is_some() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{key} not held again after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_write_lost_in_a_failover_is_applied_again() {
    let Some(cluster) = OwnCluster::start().await else {
        return;
    };
    let o = origin_on(&cluster).await;
    let (live_access, _) = signed_in(&o, "live@example.com").await;
    let (access, key) = signed_in(&o, "lost@example.com").await;
    let (master, replica) = cluster.master_and_replica(&key).await;
    // The replica stops reading, and its link is cut so that nothing the master writes next
    // waits in its socket: the logout's write exists on the master only, as when a master dies
    // before replicating what it acknowledged.
    cluster.signal(replica, "-STOP");
    let _: i64 = cluster
        .command(master, &["CLIENT", "KILL", "TYPE", "replica"])
        .await;
    let out = o.with_bearer("POST", "/v1/logout", &access, None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.body);
    let held: Option<String> = cluster.command(master, &["GET", &key]).await;
    assert!(held.is_some(), "the master acknowledged the write");
    // Past the origin's next check, which applies the feed's new entries (this one again):
    // after it, only the change of masters can bring the entry back.
    tokio::time::sleep(edgeauth_origin::deny_list::CHECK_EVERY + Duration::from_millis(500)).await;
    cluster.signal(master, "-KILL");
    cluster.signal(replica, "-CONT");
    let failed_over = Instant::now();
    let () = cluster
        .command(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"])
        .await;
    // The promoted replica serves the slot without the write. A master that saw the cluster
    // fail (this one was stopped) answers CLUSTERDOWN for a rejoin delay (up to the node
    // timeout) after it is promoted: wait for its own view of the cluster to be whole again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let role: Vec<redis::Value> = cluster.command(replica, &["ROLE"]).await;
        let info: String = cluster.command(replica, &["CLUSTER", "INFO"]).await;
        if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
            && info.lines().any(|l| l.trim_end() == "cluster_state:ok")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica was not promoted and serving"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lost: Option<String> = cluster.command(replica, &["GET", &key]).await;
    assert_eq!(lost, None, "the failover lost the write");
    // A live session is served again once the origin's client follows the new master.
    loop {
        let me = o.with_bearer("GET", "/v1/me", &live_access, None).await;
        if me.status == StatusCode::OK {
            break;
        }
        assert_eq!(me.status, StatusCode::SERVICE_UNAVAILABLE, "{}", me.body);
        assert!(
            failed_over.elapsed() < Duration::from_secs(15),
            "a live token still answered {} after the failover: {}",
            me.status,
            me.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("live again {:?} after the failover", failed_over.elapsed());
    // The instance that made the write still holds it in process: refused at once.
    refused_within(&o, &access, Duration::ZERO).await;
    // It sees new holders and applies the feed again, for the instances that never saw it.
    let took = held_again_within(&cluster, replica, &key, Duration::from_secs(15)).await;
    eprintln!("held again {took:?} after the failover");
}
