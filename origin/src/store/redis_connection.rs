//! One Redis connection with a bounded wait per command: what the deny-list and the profile
//! cache each hold (two separately configured connections, which may point at one server).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::StoreError;

/// A lazily connecting Redis connection whose commands give up after `timeout`.
#[derive(Clone)]
pub struct RedisConnection {
    connection: ConnectionManager,
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
    pub fn new(url: &str, timeout: Duration, role: &'static str) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("Redis: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Unavailable(format!("Redis: {e}")))?;
        Ok(Self {
            connection,
            timeout,
            role,
        })
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
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("Redis: {e}"))),
            Err(_) => Err(StoreError::Unavailable("Redis: timed out".into())),
        };
        crate::metrics::METRICS.redis(self.role, started.elapsed(), result.is_err());
        result
    }
}
