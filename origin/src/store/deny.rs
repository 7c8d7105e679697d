//! The access-token deny-list backends: Redis in production (shared by every instance); an
//! in-process [`DenyState`] in the embedded mode. What they hold is a copy of the revocation
//! feed, kept until each entry's expiry plus the leeway, and rebuilt from the feed
//! ([`crate::deny_list`]) whenever it was lost.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::Duration,
};

use edgeauth_core::{DenyState, Revocation, RevocationCheck};

use super::{lock, redis_connection::RedisConnection, DenyList, DenyListRead, StoreError};

/// An in-process deny-list for one instance (the embedded mode): the core's own deny state. A
/// new process starts empty, so it is incomplete until the feed has been applied.
#[derive(Debug, Default)]
pub struct MemoryDenyList {
    state: Mutex<DenyState>,
    complete: AtomicBool,
}

#[async_trait::async_trait]
impl DenyList for MemoryDenyList {
    async fn apply(
        &self,
        revocation: &Revocation,
        leeway: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut state = lock(&self.state, "deny-list")?;
        // Expired entries are dropped on each write, which bounds the state by live tokens.
        state.sweep(now);
        state.apply(revocation, leeway);
        Ok(())
    }

    async fn read(&self, check: &RevocationCheck, now: i64) -> Result<DenyListRead, StoreError> {
        let complete = self.complete.load(Ordering::Acquire);
        let answer = lock(&self.state, "deny-list")?.answer(check, now, complete);
        Ok(DenyListRead { answer, complete })
    }

    async fn complete(&self) -> Result<bool, StoreError> {
        Ok(self.complete.load(Ordering::Acquire))
    }

    async fn rebuild_started(&self) -> Result<String, StoreError> {
        // Nothing can empty an in-process state behind the rebuild's back.
        Ok(String::new())
    }

    async fn rebuild_finished(&self, _mark: &str) -> Result<bool, StoreError> {
        self.complete.store(true, Ordering::Release);
        Ok(true)
    }

    async fn live_entries(&self, now: i64) -> Result<u64, StoreError> {
        let mut state = lock(&self.state, "deny-list")?;
        state.sweep(now);
        Ok(state.len() as u64)
    }
}

/// Redis commands get this long before the deny-list counts as unavailable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const JTI_PREFIX: &str = "edgeauth:deny:jti:";
const SESSION_PREFIX: &str = "edgeauth:deny:sid:";
const USER_PREFIX: &str = "edgeauth:deny:user:";
/// Written, without a TTL, after the feed has been applied: a Redis that lost its contents
/// (restarted without persistence, flushed) has lost this key too, which is how the origin
/// knows to rebuild.
const REBUILT_KEY: &str = "edgeauth:deny:rebuilt";
/// One per running rebuild, `<prefix><mark>`: gone when it finishes means the contents were
/// lost while it ran. The TTL only clears the marks of rebuilds whose process died.
const REBUILDING_PREFIX: &str = "edgeauth:deny:rebuilding:";
const REBUILDING_TTL_SECONDS: i64 = 3600;

/// Holds an entry: `KEYS[1]` gets the value `ARGV[1]` (the end of a hold, or a revoke-all's
/// watermark) for `ARGV[2]` seconds, unless it already holds a higher value or a longer TTL,
/// which stay. Atomic, so neither ever falls, whatever the order entries arrive in (a rebuild, a
/// retry, two instances).
const HOLD_SCRIPT: &str = r"
local value = ARGV[1]
local held = redis.call('GET', KEYS[1])
if held and tonumber(held) and tonumber(held) > tonumber(value) then value = held end
local ttl = math.max(tonumber(ARGV[2]), redis.call('TTL', KEYS[1]))
redis.call('SET', KEYS[1], value, 'EX', ttl)
return 1
";

/// Finishes a rebuild: only if its mark `KEYS[1]` survived is the list complete (`KEYS[2]`).
const FINISH_REBUILD_SCRIPT: &str = r"
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], '1')
  return 1
end
return 0
";

/// The deny-list in Redis: `edgeauth:deny:{jti,sid}:<id>` holding the end of the hold, and
/// `edgeauth:deny:user:<sub>` holding a revoke-all's watermark, each with a TTL to the end of its
/// hold.
#[derive(Debug, Clone)]
pub struct RedisDenyList {
    redis: RedisConnection,
    hold: std::sync::Arc<redis::Script>,
    finish_rebuild: std::sync::Arc<redis::Script>,
}

/// The deny-list's Redis may evict its keys, which would bring revoked tokens back.
#[derive(Debug, thiserror::Error)]
#[error(
    "the deny-list's Redis (`redis_denylist_url`) has maxmemory-policy `{0}`: it must be `noeviction`, as every deny-list key has a TTL and any eviction brings revoked tokens back"
)]
pub struct EvictingRedis(String);

impl RedisDenyList {
    /// A deny-list on the Redis at `url` (connected on first use).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            redis: RedisConnection::new(url, REDIS_TIMEOUT, "deny_list")?,
            hold: std::sync::Arc::new(redis::Script::new(HOLD_SCRIPT)),
            finish_rebuild: std::sync::Arc::new(redis::Script::new(FINISH_REBUILD_SCRIPT)),
        })
    }

    /// Refuses a Redis whose `maxmemory-policy` is not `noeviction`. A Redis that does not say
    /// (ElastiCache renames `CONFIG`, or it is not reachable yet) is accepted with a warning.
    pub async fn check_no_eviction(&self) -> Result<(), EvictingRedis> {
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg("maxmemory-policy");
        match self.redis.run::<HashMap<String, String>>(&get).await {
            Ok(reply) => match reply.get("maxmemory-policy") {
                Some(policy) if policy == "noeviction" => Ok(()),
                Some(policy) => Err(EvictingRedis(policy.clone())),
                None => {
                    tracing::warn!("the deny-list's Redis did not tell its maxmemory-policy; it must be noeviction");
                    Ok(())
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot read the deny-list Redis's maxmemory-policy; it must be noeviction");
                Ok(())
            }
        }
    }
}

#[async_trait::async_trait]
impl DenyList for RedisDenyList {
    async fn apply(
        &self,
        revocation: &Revocation,
        leeway: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let until = revocation.holds_until(leeway);
        let (key, value) = match revocation {
            Revocation::Token { jti, .. } => (format!("{JTI_PREFIX}{jti}"), until),
            Revocation::Session { sid, .. } => (format!("{SESSION_PREFIX}{sid}"), until),
            Revocation::User {
                subject,
                revoked_through,
                ..
            } => (format!("{USER_PREFIX}{subject}"), *revoked_through),
        };
        let mut invocation = self.hold.key(key);
        invocation.arg(value).arg((until - now).max(1));
        self.redis.run_script::<i64>(&invocation).await.map(drop)
    }

    /// One `MGET` of the completeness mark and the token's three keys.
    async fn read(&self, check: &RevocationCheck, now: i64) -> Result<DenyListRead, StoreError> {
        let (jti, sid, sub) = (check.jti(), check.session(), check.subject());
        let mut mget = redis::cmd("MGET");
        mget.arg(REBUILT_KEY);
        for (prefix, id) in [(JTI_PREFIX, jti), (SESSION_PREFIX, sid), (USER_PREFIX, sub)] {
            if let Some(id) = id {
                mget.arg(format!("{prefix}{id}"));
            }
        }
        let mut values = self
            .redis
            .run::<Vec<Option<String>>>(&mget)
            .await?
            .into_iter();
        let complete = values.next().flatten().is_some();
        // In the order asked: a value for each id the token has.
        let mut held = |id: Option<&str>| id.and_then(|_| values.next().flatten());
        // Redis expires what it holds, so whatever it answers is in force: held without an end.
        let mut state = DenyState::default();
        if let (Some(jti), Some(_)) = (jti, held(jti)) {
            let jti = jti.to_owned();
            state.apply(
                &Revocation::Token {
                    jti,
                    expires_at: i64::MAX,
                },
                0,
            );
        }
        if let (Some(sid), Some(_)) = (sid, held(sid)) {
            let sid = sid.to_owned();
            state.apply(
                &Revocation::Session {
                    sid,
                    expires_at: i64::MAX,
                },
                0,
            );
        }
        if let (Some(subject), Some(through)) = (sub, held(sub)) {
            let revoked_through = through.parse().map_err(|_| {
                StoreError::Unavailable(format!(
                    "deny-list: the watermark of {subject} is not a number"
                ))
            })?;
            let revocation = Revocation::User {
                subject: subject.to_owned(),
                revoked_through,
                expires_at: i64::MAX,
            };
            state.apply(&revocation, 0);
        }
        Ok(DenyListRead {
            answer: state.answer(check, now, complete),
            complete,
        })
    }

    async fn complete(&self) -> Result<bool, StoreError> {
        let mut exists = redis::cmd("EXISTS");
        exists.arg(REBUILT_KEY);
        self.redis.run::<i64>(&exists).await.map(|n| n > 0)
    }

    async fn rebuild_started(&self) -> Result<String, StoreError> {
        let mark = uuid::Uuid::new_v4().simple().to_string();
        let mut set = redis::cmd("SET");
        set.arg(format!("{REBUILDING_PREFIX}{mark}"))
            .arg(1)
            .arg("EX")
            .arg(REBUILDING_TTL_SECONDS);
        self.redis.run::<()>(&set).await?;
        Ok(mark)
    }

    async fn rebuild_finished(&self, mark: &str) -> Result<bool, StoreError> {
        let mut invocation = self
            .finish_rebuild
            .key(format!("{REBUILDING_PREFIX}{mark}"));
        invocation.key(REBUILT_KEY);
        self.redis
            .run_script::<i64>(&invocation)
            .await
            .map(|done| done == 1)
    }

    /// Counted with `SCAN` in pages of 1000: never a blocking `KEYS`. Redis expires entries, so
    /// every entry found is live.
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
            count += keys
                .iter()
                .filter(|k| {
                    [JTI_PREFIX, SESSION_PREFIX, USER_PREFIX]
                        .iter()
                        .any(|p| k.starts_with(p))
                })
                .count() as u64;
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
        }
    }
}
