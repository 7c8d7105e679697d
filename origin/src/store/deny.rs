//! The access-token deny-list: a `jti` stays listed until the token would have expired anyway.
//! Redis in production (shared by every instance); an in-process map in the embedded mode.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{DenyList, StoreError};

/// An in-process deny-list for one instance (the embedded mode).
#[derive(Debug, Default)]
pub struct MemoryDenyList {
    /// `jti` → expiry (seconds).
    entries: Mutex<HashMap<String, i64>>,
}

#[async_trait::async_trait]
impl DenyList for MemoryDenyList {
    async fn revoke_jti(&self, jti: &str, expires_at: i64, now: i64) -> Result<(), StoreError> {
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| StoreError::Unavailable("deny-list lock poisoned".into()))?;
        // Expired entries are dropped on each write, which bounds the map by live tokens.
        entries.retain(|_, exp| *exp > now);
        entries.insert(jti.to_owned(), expires_at);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str, now: i64) -> Result<bool, StoreError> {
        let entries = self
            .entries
            .lock()
            .map_err(|_| StoreError::Unavailable("deny-list lock poisoned".into()))?;
        Ok(entries.get(jti).is_some_and(|exp| *exp > now))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Redis commands get this long before the deny-list counts as unavailable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const KEY_PREFIX: &str = "edgeauth:deny:jti:";

/// The deny-list in Redis: `SET edgeauth:deny:jti:<jti> 1 EX <remaining life>`.
#[derive(Clone)]
pub struct RedisDenyList {
    connection: ConnectionManager,
}

impl std::fmt::Debug for RedisDenyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDenyList").finish_non_exhaustive()
    }
}

impl RedisDenyList {
    /// Connects lazily: a Redis that is down at start-up makes requests fail with 503, it does
    /// not keep the origin from starting.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { connection })
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(REDIS_TIMEOUT * 2, cmd.query_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("Redis: {e}"))),
            Err(_) => Err(StoreError::Unavailable("Redis: timed out".into())),
        }
    }
}

#[async_trait::async_trait]
impl DenyList for RedisDenyList {
    async fn revoke_jti(&self, jti: &str, expires_at: i64, now: i64) -> Result<(), StoreError> {
        let ttl = (expires_at - now).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{KEY_PREFIX}{jti}"))
            .arg(1)
            .arg("EX")
            .arg(ttl);
        self.run::<()>(&cmd).await
    }

    async fn is_revoked(&self, jti: &str, _now: i64) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(format!("{KEY_PREFIX}{jti}"));
        self.run::<i64>(&cmd).await.map(|n| n > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run::<String>(&redis::cmd("PING")).await.map(drop)
    }
}
