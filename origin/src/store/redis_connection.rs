//! One Redis connection with a bounded wait per command: what the deny-list and the profile
//! cache each hold (two separately configured connections, which may point at one server). The
//! Redis is one server or a Redis Cluster; the callers do not tell them apart, except where a
//! command must reach every node ([`RedisConnection::on_each_node`]).

use std::time::Duration;

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterConfig,
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

/// What any Redis failure is to the callers.
fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("Redis: {error}"))
}

#[derive(Clone)]
enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
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
    connection: Connection,
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
        let connection = match target {
            RedisTarget::Server(url) => {
                let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                Connection::Server(
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
                Connection::Cluster(client.get_pending_async_connection_with_config(config))
            }
        };
        Ok(Self {
            connection,
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
        let mut connection = self.connection.clone();
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
        let mut connection = self.connection.clone();
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
        let mut connection = self.connection.clone();
        self.bounded(invocation.invoke_async(&mut connection)).await
    }

    /// Runs a pipeline (`MULTI`/`EXEC` when atomic), under the same bounds as [`Self::run`].
    pub async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        self.bounded(pipeline.query_async(&mut connection)).await
    }

    /// Runs one command; any failure or a wait past twice the timeout is `Unavailable`.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        self.bounded(cmd.query_async(&mut connection)).await
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let span = tracing::info_span!("redis", "db.system" = "redis", connection = self.role);
        let call = tracing::Instrument::instrument(call, span);
        let result = match tokio::time::timeout(self.timeout * 2, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StoreError::Unavailable("Redis: timed out".into())),
        };
        crate::metrics::METRICS.redis(self.role, started.elapsed(), result.is_err());
        result
    }
}
