//! Cache-aside for profiles: read the cache, fall back to DynamoDB and fill the cache; a `PATCH`
//! invalidates. The cache is an optimisation only: every error here is logged by the caller and
//! the request goes on against DynamoDB, so a slow or dead cache never fails a request.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde::{Deserialize, Serialize};

use super::{redis_connection::RedisConnection, StoreError, User, UserId};

/// What is cached of a user: the profile, never the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Id.
    pub user_id: String,
    /// Email.
    pub email: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Seconds since the epoch.
    pub created_at: i64,
}

impl From<&User> for Profile {
    fn from(user: &User) -> Self {
        Self {
            user_id: user.id.to_string(),
            email: user.email.clone(),
            display_name: user.display_name.clone(),
            scopes: user.scopes.clone(),
            created_at: user.created_at,
        }
    }
}

/// A profile cache.
#[async_trait::async_trait]
pub trait ProfileCache: Send + Sync {
    /// The cached profile, if any.
    async fn get(&self, id: UserId, now: i64) -> Result<Option<Profile>, StoreError>;
    /// Caches `profile` until `expires_at`.
    async fn put(
        &self,
        id: UserId,
        profile: &Profile,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Drops the cached profile.
    async fn invalidate(&self, id: UserId) -> Result<(), StoreError>;
}

/// Most profiles the in-process cache holds; past it, expired entries go, then the map is
/// cleared (a cache may always forget).
const MEMORY_CAPACITY: usize = 100_000;

/// Cached profiles with their expiry.
type Entries = HashMap<UserId, (Profile, i64)>;

/// The embedded mode's in-process cache.
#[derive(Debug, Default)]
pub struct MemoryProfileCache {
    entries: Mutex<Entries>,
}

impl MemoryProfileCache {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Entries>, StoreError> {
        super::lock(&self.entries, "cache")
    }
}

#[async_trait::async_trait]
impl ProfileCache for MemoryProfileCache {
    async fn get(&self, id: UserId, now: i64) -> Result<Option<Profile>, StoreError> {
        let entries = self.lock()?;
        Ok(entries
            .get(&id)
            .filter(|(_, expires_at)| *expires_at > now)
            .map(|(p, _)| p.clone()))
    }

    async fn put(
        &self,
        id: UserId,
        profile: &Profile,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut entries = self.lock()?;
        if entries.len() >= MEMORY_CAPACITY {
            entries.retain(|_, (_, exp)| *exp > now);
            if entries.len() >= MEMORY_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(id, (profile.clone(), expires_at));
        Ok(())
    }

    async fn invalidate(&self, id: UserId) -> Result<(), StoreError> {
        let mut entries = self.lock()?;
        entries.remove(&id);
        Ok(())
    }
}

/// A cache gets little time: past this, asking DynamoDB is the faster answer.
const CACHE_TIMEOUT: Duration = Duration::from_millis(200);
const KEY_PREFIX: &str = "edgeauth:profile:";

/// Profiles in Redis as JSON under `edgeauth:profile:<user id>`, with a TTL.
#[derive(Debug, Clone)]
pub struct RedisProfileCache {
    redis: RedisConnection,
}

impl RedisProfileCache {
    /// A cache on the Redis at `url` (connected on first use).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            redis: RedisConnection::new(url, CACHE_TIMEOUT, "profile_cache")?,
        })
    }
}

#[async_trait::async_trait]
impl ProfileCache for RedisProfileCache {
    async fn get(&self, id: UserId, _now: i64) -> Result<Option<Profile>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{KEY_PREFIX}{id}"));
        let value: Option<String> = self.redis.run(&cmd).await?;
        // An entry that does not parse (an older format, say) is a miss, not an error.
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn put(
        &self,
        id: UserId,
        profile: &Profile,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(profile).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{KEY_PREFIX}{id}"))
            .arg(json)
            .arg("EX")
            .arg((expires_at - now).max(1));
        self.redis.run::<()>(&cmd).await
    }

    async fn invalidate(&self, id: UserId) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{KEY_PREFIX}{id}"));
        self.redis.run::<i64>(&cmd).await.map(drop)
    }
}
