//! Cache-aside for profiles: read the cache, fall back to DynamoDB and fill the cache; a change
//! (`PATCH /v1/me`, `origin set-scopes`) invalidates. The cache is an optimisation only: every
//! error here is logged by the caller and the request goes on against DynamoDB, so a slow or
//! dead cache never fails a request.
//!
//! A fill races a change: a reader takes the old profile from DynamoDB, the change writes and
//! invalidates, then the reader caches the old profile for the whole TTL. So each user has a
//! generation, read with the entry *before* DynamoDB is read; an invalidation raises it (after
//! the write), and a fill is stored only while the generation is still the one read. A fill
//! stored before the invalidation is deleted by it; one after it is refused.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde::{Deserialize, Serialize};

use super::{redis_connection::RedisConnection, StoreError, User, UserId};
use crate::config::RedisTarget;

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
    /// Whether the address was verified (a profile cached before this was recorded says no
    /// until it expires).
    #[serde(default)]
    pub email_verified: bool,
}

impl From<&User> for Profile {
    fn from(user: &User) -> Self {
        Self {
            user_id: user.id.to_string(),
            email: user.email.clone(),
            display_name: user.display_name.clone(),
            scopes: user.scopes.clone(),
            created_at: user.created_at,
            email_verified: user.email_verified,
        }
    }
}

/// What a cache read gives: the profile if cached, and the generation a fill must still find.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheRead {
    /// The cached profile, if any.
    pub profile: Option<Profile>,
    /// The user's generation when it was read.
    pub generation: u64,
}

/// A profile cache.
#[async_trait::async_trait]
pub trait ProfileCache: Send + Sync {
    /// The cached profile, if any, and the generation (one round trip).
    async fn get(&self, id: UserId, now: i64) -> Result<CacheRead, StoreError>;
    /// Caches `profile` until `expires_at`, unless the generation moved past `generation`.
    async fn put(
        &self,
        id: UserId,
        profile: &Profile,
        expires_at: i64,
        now: i64,
        generation: u64,
    ) -> Result<(), StoreError>;
    /// Drops the cached profile and raises the generation, so no fill begun before stores.
    async fn invalidate(&self, id: UserId) -> Result<(), StoreError>;
}

/// Most profiles the in-process cache holds; past it, expired entries go, then the map is
/// cleared (a cache may always forget).
const MEMORY_CAPACITY: usize = 100_000;

/// Cached profiles with their expiry, and each invalidated user's generation.
#[derive(Debug, Default)]
struct Entries {
    profiles: HashMap<UserId, (Profile, i64)>,
    generations: HashMap<UserId, u64>,
}

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
    async fn get(&self, id: UserId, now: i64) -> Result<CacheRead, StoreError> {
        let entries = self.lock()?;
        Ok(CacheRead {
            profile: entries
                .profiles
                .get(&id)
                .filter(|(_, expires_at)| *expires_at > now)
                .map(|(p, _)| p.clone()),
            generation: entries.generations.get(&id).copied().unwrap_or(0),
        })
    }

    async fn put(
        &self,
        id: UserId,
        profile: &Profile,
        expires_at: i64,
        now: i64,
        generation: u64,
    ) -> Result<(), StoreError> {
        let mut entries = self.lock()?;
        if entries.generations.get(&id).copied().unwrap_or(0) != generation {
            return Ok(());
        }
        if entries.profiles.len() >= MEMORY_CAPACITY {
            entries.profiles.retain(|_, (_, exp)| *exp > now);
            if entries.profiles.len() >= MEMORY_CAPACITY {
                entries.profiles.clear();
            }
        }
        // Generations are only needed while a fill could be in flight; a cleared map refuses
        // nothing it should not (a fill then finds 0 where it read more, and is dropped).
        if entries.generations.len() >= MEMORY_CAPACITY {
            entries.generations.clear();
        }
        entries.profiles.insert(id, (profile.clone(), expires_at));
        Ok(())
    }

    async fn invalidate(&self, id: UserId) -> Result<(), StoreError> {
        let mut entries = self.lock()?;
        entries.profiles.remove(&id);
        *entries.generations.entry(id).or_default() += 1;
        Ok(())
    }
}

/// A cache gets little time: past this, asking DynamoDB is the faster answer.
const CACHE_TIMEOUT: Duration = Duration::from_millis(200);
const KEY_PREFIX: &str = "edgeauth:profile:";
const GENERATION_PREFIX: &str = "edgeauth:profile-generation:";

/// Profiles in Redis as JSON under `edgeauth:profile:{<user id>}`, with a TTL. The braces are a
/// Redis Cluster hash tag: the entry and its generation, which one script and one transaction
/// use together, hash to the same slot.
#[derive(Debug, Clone)]
pub struct RedisProfileCache {
    redis: RedisConnection,
}

impl RedisProfileCache {
    /// A cache on the Redis `target` (connected on first use).
    pub fn new(target: &RedisTarget) -> Result<Self, StoreError> {
        Ok(Self {
            redis: RedisConnection::new(target, CACHE_TIMEOUT, "profile_cache")?,
        })
    }
}

/// Stores the entry only while the generation is the one the reader saw (absent counts as 0).
const PUT_IF_GENERATION: &str = r"
if (redis.call('GET', KEYS[2]) or '0') == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 0
";

/// How long a generation outlives its last invalidation: longer than any fill takes. Once it
/// expires it reads as 0 again, which refuses fills that read a higher one (harmless misses).
const GENERATION_SECONDS: u32 = 3600;

impl RedisProfileCache {
    fn keys(id: UserId) -> (String, String) {
        (
            format!("{KEY_PREFIX}{{{id}}}"),
            format!("{GENERATION_PREFIX}{{{id}}}"),
        )
    }
}

#[async_trait::async_trait]
impl ProfileCache for RedisProfileCache {
    async fn get(&self, id: UserId, _now: i64) -> Result<CacheRead, StoreError> {
        let (entry, generation) = Self::keys(id);
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&entry).arg(&generation);
        let (value, generation): (Option<String>, Option<u64>) = self.redis.run(&cmd).await?;
        Ok(CacheRead {
            // An entry that does not parse (an older format, say) is a miss, not an error.
            profile: value.and_then(|v| serde_json::from_str(&v).ok()),
            generation: generation.unwrap_or(0),
        })
    }

    async fn put(
        &self,
        id: UserId,
        profile: &Profile,
        expires_at: i64,
        now: i64,
        generation: u64,
    ) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(profile).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (entry, generation_key) = Self::keys(id);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUT_IF_GENERATION)
            .arg(2)
            .arg(entry)
            .arg(generation_key)
            .arg(json)
            .arg((expires_at - now).max(1))
            .arg(generation);
        self.redis.run::<i64>(&cmd).await.map(drop)
    }

    async fn invalidate(&self, id: UserId) -> Result<(), StoreError> {
        let (entry, generation) = Self::keys(id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("INCR")
            .arg(&generation)
            .ignore()
            .cmd("EXPIRE")
            .arg(&generation)
            .arg(GENERATION_SECONDS)
            .ignore()
            .cmd("DEL")
            .arg(&entry)
            .ignore();
        self.redis.run_pipeline::<()>(&pipe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> Profile {
        Profile {
            user_id: "u".into(),
            email: "e@example.com".into(),
            display_name: Some(name.into()),
            scopes: vec!["profile".into()],
            created_at: 0,
            email_verified: false,
        }
    }

    #[tokio::test]
    async fn a_fill_that_read_before_a_change_is_not_stored() {
        let cache = MemoryProfileCache::default();
        let id = UserId(uuid::Uuid::new_v4());
        // A reader misses, then reads the old profile from the store...
        let read = cache.get(id, 0).await.expect("read");
        assert_eq!(read.profile, None);
        // ...while a change is written and invalidates...
        cache.invalidate(id).await.expect("invalidated");
        // ...so the reader's old profile is not cached.
        cache
            .put(id, &profile("old"), 100, 0, read.generation)
            .await
            .expect("put");
        assert_eq!(cache.get(id, 0).await.expect("read").profile, None);
        // A fill that began after the change is.
        let read = cache.get(id, 0).await.expect("read");
        cache
            .put(id, &profile("new"), 100, 0, read.generation)
            .await
            .expect("put");
        assert_eq!(
            cache.get(id, 0).await.expect("read").profile,
            Some(profile("new"))
        );
    }
}
