//! One Redis connection with a bounded wait per command: what the deny-list and the profile
//! cache each hold (two separately configured connections, which may point at one server). The
//! Redis is one server or a Redis Cluster; the callers do not tell them apart, except where a
//! command must reach every node ([`RedisConnection::on_each_node`]).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo},
    RedisFuture, Value,
};

use super::StoreError;
use crate::config::RedisTarget;

/// Retries of a cluster command (a `MOVED` after a failover, a connection lost), each after a
/// short random wait. The whole command stays bounded by [`RedisConnection`]'s timeout.
const CLUSTER_RETRIES: u32 = 3;
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (10, 100);

/// How many of its timeouts a cluster connection may answer nothing before it is replaced by a
/// new one from the seeds. redis-rs's cluster client can stop answering for good after a master
/// dies: its recovery (reconnecting to the seed nodes, one of them the dead master) never ends,
/// and every command waits out its timeout. The fleet test saw two of three origin instances
/// do so for minutes after one failover, while a third recovered at once.
const CLUSTER_SILENT_TIMEOUTS: u32 = 4;

/// What any Redis failure is to the callers.
fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("Redis: {error}"))
}

/// A handle on the connection, for one command.
#[derive(Clone)]
enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Where the handles come from.
#[derive(Clone)]
enum Source {
    Server(ConnectionManager),
    Cluster(Arc<Cluster>),
}

/// A cluster connection, replaced by a new one when it has answered nothing for
/// [`CLUSTER_SILENT_TIMEOUTS`] of its timeouts.
struct Cluster {
    client: ClusterClient,
    config: ClusterConfig,
    connection: RwLock<ClusterConnection>,
    /// When the connection last answered (anything, an error too), and when it was last
    /// replaced: milliseconds since `epoch`.
    epoch: Instant,
    answered_ms: AtomicU64,
    replaced_ms: AtomicU64,
}

impl Cluster {
    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn connection(&self) -> ClusterConnection {
        self.connection
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After a command of this connection timed out: replaces it if neither it nor the one
    /// before has answered for the silence allowed.
    fn timed_out(&self, timeout: Duration, role: &'static str) {
        let silence =
            u64::try_from((timeout * CLUSTER_SILENT_TIMEOUTS).as_millis()).unwrap_or(u64::MAX);
        let now = self.since_epoch();
        let answered = self.answered_ms.load(Ordering::Relaxed);
        let replaced = self.replaced_ms.load(Ordering::Relaxed);
        if now.saturating_sub(answered.max(replaced)) < silence
            || self
                .replaced_ms
                .compare_exchange(replaced, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        tracing::warn!(
            connection = role,
            silent_ms = now.saturating_sub(answered),
            "Redis Cluster connection answers nothing; connecting again from the seeds"
        );
        crate::metrics::METRICS.redis_reconnect(role);
        let fresh = self
            .client
            .get_pending_async_connection_with_config(self.config.clone());
        *self
            .connection
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A lazily connecting Redis connection whose commands give up after `timeout`.
#[derive(Clone)]
pub struct RedisConnection {
    source: Source,
    timeout: Duration,
    /// Its `connection` label in the metrics.
    role: &'static str,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("timeout", &self.timeout)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// Connects on first use: a Redis that is down at start-up makes requests fail (or, for the
    /// cache, fall back to DynamoDB); it does not keep the origin from starting.
    /// `role` names it in the metrics: `deny_list`, `profile_cache`, `rate_limit`, `soft_lock`.
    pub fn new(
        target: &RedisTarget,
        timeout: Duration,
        role: &'static str,
    ) -> Result<Self, StoreError> {
        let source = match target {
            RedisTarget::Server(url) => {
                let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                Source::Server(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?,
                )
            }
            RedisTarget::Cluster(seeds) => {
                let (min_wait, max_wait) = CLUSTER_RETRY_WAIT_MS;
                let client =
                    redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                        .retries(CLUSTER_RETRIES)
                        .min_retry_wait(min_wait)
                        .max_retry_wait(max_wait)
                        .build()
                        .map_err(unavailable)?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                let connection = client.get_pending_async_connection_with_config(config.clone());
                Source::Cluster(Arc::new(Cluster {
                    client,
                    config,
                    connection: RwLock::new(connection),
                    epoch: Instant::now(),
                    answered_ms: AtomicU64::new(0),
                    replaced_ms: AtomicU64::new(0),
                }))
            }
        };
        Ok(Self {
            source,
            timeout,
            role,
        })
    }

    /// Sends `cmd` to every node (replicas too) of a cluster, or to the one server, under the
    /// same bounds as [`Self::run`]: each node's reply, by `host:port` (`""` for one server).
    /// For what a cluster's routing would send to one node only: `SCAN`, `CONFIG GET`.
    pub async fn on_each_node<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        masters_only: bool,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut connection = self.connection();
        let replies: Vec<(String, Value)> = match &mut connection {
            Connection::Server(c) => {
                let reply = self.bounded(cmd.query_async::<Value>(c)).await?;
                vec![(String::new(), reply)]
            }
            Connection::Cluster(c) => {
                let nodes = if masters_only {
                    MultipleNodeRoutingInfo::AllMasters
                } else {
                    MultipleNodeRoutingInfo::AllNodes
                };
                // With no response policy, the cluster client answers a map of node → reply.
                let reply = self
                    .bounded(c.route_command(cmd.clone(), RoutingInfo::MultiNode((nodes, None))))
                    .await?;
                match reply {
                    Value::Map(pairs) => pairs
                        .into_iter()
                        .map(|(node, reply)| Ok((redis::from_redis_value(node)?, reply)))
                        .collect::<Result<_, redis::ParsingError>>()
                        .map_err(unavailable)?,
                    other => {
                        return Err(StoreError::Unavailable(format!(
                            "Redis: a reply per node expected, got {other:?}"
                        )))
                    }
                }
            }
        };
        replies
            .into_iter()
            .map(|(node, reply)| {
                let reply = redis::from_redis_value(reply)
                    .map_err(|e| StoreError::Unavailable(format!("Redis ({node}): {e}")))?;
                Ok((node, reply))
            })
            .collect()
    }

    /// The masters, by `host:port` (`""` for one server).
    pub async fn masters(&self) -> Result<Vec<String>, StoreError> {
        let nodes = self
            .on_each_node::<Value>(&redis::cmd("PING"), true)
            .await?;
        Ok(nodes.into_iter().map(|(node, _)| node).collect())
    }

    /// Runs `cmd` on the node at `node` (`host:port`, as [`Self::on_each_node`] names it; `""`
    /// for one server), under the same bounds as [`Self::run`].
    pub async fn run_on_node<T: redis::FromRedisValue>(
        &self,
        node: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection();
        match &mut connection {
            Connection::Server(c) => self.bounded(cmd.query_async(c)).await,
            Connection::Cluster(c) => {
                let (host, port) = node
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
                    .ok_or_else(|| StoreError::Unavailable(format!("Redis: no node {node}")))?;
                let routing =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                let reply = self.bounded(c.route_command(cmd.clone(), routing)).await?;
                redis::from_redis_value(reply).map_err(unavailable)
            }
        }
    }

    /// Runs a Lua script (`EVALSHA`, loading it on first use), under the same bounds as [`Self::run`].
    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection();
        self.bounded(invocation.invoke_async(&mut connection)).await
    }

    /// Runs a pipeline (`MULTI`/`EXEC` when atomic), under the same bounds as [`Self::run`].
    pub async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection();
        self.bounded(pipeline.query_async(&mut connection)).await
    }

    /// Runs one command; any failure or a wait past twice the timeout is `Unavailable`.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection();
        self.bounded(cmd.query_async(&mut connection)).await
    }

    /// A handle for one command.
    fn connection(&self) -> Connection {
        match &self.source {
            Source::Server(c) => Connection::Server(c.clone()),
            Source::Cluster(cluster) => Connection::Cluster(cluster.connection()),
        }
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let span = tracing::info_span!("redis", "db.system" = "redis", connection = self.role);
        let call = tracing::Instrument::instrument(call, span);
        let answer = tokio::time::timeout(self.timeout * 2, call).await;
        if let Source::Cluster(cluster) = &self.source {
            match answer {
                Ok(_) => cluster
                    .answered_ms
                    .store(cluster.since_epoch(), Ordering::Relaxed),
                Err(_) => cluster.timed_out(self.timeout, self.role),
            }
        }
        let result = match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StoreError::Unavailable("Redis: timed out".into())),
        };
        crate::metrics::METRICS.redis(self.role, started.elapsed(), result.is_err());
        result
    }
}
