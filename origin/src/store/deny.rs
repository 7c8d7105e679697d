//! The access-token deny-list: a `jti` stays listed until the token would have expired anyway.
//! Redis in production (shared by every instance); an in-process map in the embedded mode.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use super::{lock, redis_connection::RedisConnection, DenyList, StoreError};

/// An in-process deny-list for one instance (the embedded mode).
#[derive(Debug, Default)]
pub struct MemoryDenyList {
    /// `jti` → expiry (seconds).
    entries: Mutex<HashMap<String, i64>>,
    /// `sub` → (revoked through, expiry).
    users: Mutex<HashMap<String, (i64, i64)>>,
}

#[async_trait::async_trait]
impl DenyList for MemoryDenyList {
    async fn revoke_jti(&self, jti: &str, expires_at: i64, now: i64) -> Result<(), StoreError> {
        let mut entries = lock(&self.entries, "deny-list")?;
        // Expired entries are dropped on each write, which bounds the map by live tokens.
        entries.retain(|_, exp| *exp > now);
        entries.insert(jti.to_owned(), expires_at);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str, now: i64) -> Result<bool, StoreError> {
        let entries = lock(&self.entries, "deny-list")?;
        Ok(entries.get(jti).is_some_and(|exp| *exp > now))
    }

    async fn revoke_user(
        &self,
        subject: &str,
        revoked_through: i64,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut users = lock(&self.users, "deny-list")?;
        users.retain(|_, (_, exp)| *exp > now);
        let entry = users
            .entry(subject.to_owned())
            .or_insert((revoked_through, expires_at));
        *entry = (entry.0.max(revoked_through), entry.1.max(expires_at));
        Ok(())
    }

    async fn user_watermark(&self, subject: &str, now: i64) -> Result<Option<i64>, StoreError> {
        let users = lock(&self.users, "deny-list")?;
        Ok(users
            .get(subject)
            .filter(|(_, exp)| *exp > now)
            .map(|(through, _)| *through))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn live_entries(&self, now: i64) -> Result<u64, StoreError> {
        let tokens = lock(&self.entries, "deny-list")?
            .values()
            .filter(|exp| **exp > now)
            .count();
        let users = lock(&self.users, "deny-list")?
            .values()
            .filter(|(_, exp)| *exp > now)
            .count();
        Ok((tokens + users) as u64)
    }
}

/// Redis commands get this long before the deny-list counts as unavailable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const KEY_PREFIX: &str = "edgeauth:deny:jti:";
const USER_KEY_PREFIX: &str = "edgeauth:deny:user:";

/// The deny-list in Redis: `SET edgeauth:deny:jti:<jti> 1 EX <remaining life>`.
#[derive(Debug, Clone)]
pub struct RedisDenyList {
    redis: RedisConnection,
}

impl RedisDenyList {
    /// A deny-list on the Redis at `url` (connected on first use).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            redis: RedisConnection::new(url, REDIS_TIMEOUT, "deny_list")?,
        })
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
        self.redis.run::<()>(&cmd).await
    }

    async fn is_revoked(&self, jti: &str, _now: i64) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(format!("{KEY_PREFIX}{jti}"));
        self.redis.run::<i64>(&cmd).await.map(|n| n > 0)
    }

    async fn revoke_user(
        &self,
        subject: &str,
        revoked_through: i64,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        // A revoke-all's watermark is the moment it happened, so the latest one is the one to
        // keep; it lives until the last token it revokes has expired.
        let ttl = (expires_at - now).max(1);
        let mut set = redis::cmd("SET");
        set.arg(format!("{USER_KEY_PREFIX}{subject}"))
            .arg(revoked_through)
            .arg("EX")
            .arg(ttl);
        self.redis.run::<()>(&set).await
    }

    async fn user_watermark(&self, subject: &str, _now: i64) -> Result<Option<i64>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{USER_KEY_PREFIX}{subject}"));
        self.redis.run(&cmd).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.redis
            .run::<String>(&redis::cmd("PING"))
            .await
            .map(drop)
    }

    /// Counted with `SCAN` in pages of 1000: never a blocking `KEYS`. Redis expires entries, so
    /// every key found is live.
    async fn live_entries(&self, _now: i64) -> Result<u64, StoreError> {
        let mut cursor = 0u64;
        let mut count = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg("edgeauth:deny:*")
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.redis.run(&scan).await?;
            count += keys.len() as u64;
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
        }
    }
}
