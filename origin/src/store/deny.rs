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

use sha2::{Digest, Sha256};

use super::{lock, redis_connection::RedisConnection, DenyList, DenyListRead, StoreError};
use crate::config::RedisTarget;

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

    async fn holders(&self) -> Result<Option<String>, StoreError> {
        // The process is the holder: it cannot lose a write and go on.
        Ok(None)
    }
}

/// Redis commands get this long before the deny-list counts as unavailable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Every key of the list lives in one of this many buckets, `edgeauth:deny:{d<n>}:…`. The braces
/// are a Redis Cluster hash tag: a bucket is one slot, which holds its entries and its own
/// completeness mark, so a shard that loses its contents loses the marks of exactly the entries
/// it lost. Enough buckets to spread the list over any cluster's shards; few enough that
/// checking every mark is one small command per bucket.
const BUCKETS: u16 = 256;
/// The bucket's mark, written without a TTL once the feed has been applied to it: a Redis (or
/// one shard) that lost its contents (restarted without persistence, flushed) has lost its
/// marks too, which is how the origin knows to rebuild.
const REBUILT: &str = "rebuilt";
/// One per running rebuild and bucket, `rebuilding:<mark>`: gone when it finishes means the
/// bucket lost its contents while the rebuild ran. The TTL only clears the marks of rebuilds
/// whose process died.
const REBUILDING: &str = "rebuilding:";
const REBUILDING_TTL_SECONDS: i64 = 3600;

/// What a key holds: `jti` and `sid` the end of a hold, `user` a revoke-all's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A token, by `jti`.
    Token,
    /// A session, by `sid`.
    Session,
    /// Every token of a user issued up to a time, by `sub`.
    User,
}

impl Held {
    fn name(self) -> &'static str {
        match self {
            Self::Token => "jti",
            Self::Session => "sid",
            Self::User => "user",
        }
    }
}

/// The bucket of an id: from its SHA-256, so every instance and every version agree.
fn bucket(id: &str) -> u16 {
    let digest = Sha256::digest(id.as_bytes());
    u16::from_be_bytes([digest[0], digest[1]]) % BUCKETS
}

fn bucket_key(bucket: u16, name: &str) -> String {
    format!("edgeauth:deny:{{d{bucket}}}:{name}")
}

/// The key holding `id`. The id comes after the bucket's tag, so whatever it holds (braces
/// included) it cannot move its key to another slot.
pub fn key(held: Held, id: &str) -> String {
    key_in(bucket(id), held, id)
}

/// The key holding `id`, whose bucket is known.
fn key_in(bucket: u16, held: Held, id: &str) -> String {
    bucket_key(bucket, &format!("{}:{id}", held.name()))
}

fn rebuilt_key(bucket: u16) -> String {
    bucket_key(bucket, REBUILT)
}

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

/// Finishes a bucket's rebuild: only if its mark `KEYS[1]` survived is the bucket complete
/// (`KEYS[2]`). Both keys are in the bucket's slot.
const FINISH_REBUILD_SCRIPT: &str = r"
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], '1')
  return 1
end
return 0
";

/// The deny-list in Redis, one server or a cluster: `edgeauth:deny:{d<n>}:{jti,sid}:<id>`
/// holding the end of the hold, and `edgeauth:deny:{d<n>}:user:<sub>` holding a revoke-all's
/// watermark, each with a TTL to the end of its hold.
#[derive(Debug, Clone)]
pub struct RedisDenyList {
    redis: RedisConnection,
    hold: std::sync::Arc<redis::Script>,
    finish_rebuild: std::sync::Arc<redis::Script>,
}

/// The deny-list's Redis may evict its keys, which would bring revoked tokens back.
#[derive(Debug, thiserror::Error)]
#[error(
    "the deny-list's Redis ({0}) has maxmemory-policy `{1}`: it must be `noeviction`, as every deny-list key has a TTL and any eviction brings revoked tokens back"
)]
pub struct EvictingRedis(String, String);

impl RedisDenyList {
    /// A deny-list on the Redis `target` (connected on first use).
    pub fn new(target: &RedisTarget) -> Result<Self, StoreError> {
        Ok(Self {
            redis: RedisConnection::new(target, REDIS_TIMEOUT, "deny_list")?,
            hold: std::sync::Arc::new(redis::Script::new(HOLD_SCRIPT)),
            finish_rebuild: std::sync::Arc::new(redis::Script::new(FINISH_REBUILD_SCRIPT)),
        })
    }

    /// Refuses a Redis any of whose nodes (a cluster's replicas too: one may become a master)
    /// has a `maxmemory-policy` other than `noeviction`. A Redis that does not say (ElastiCache
    /// renames `CONFIG`, or it is not reachable yet) is accepted with a warning.
    pub async fn check_no_eviction(&self) -> Result<(), EvictingRedis> {
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg("maxmemory-policy");
        match self
            .redis
            .on_each_node::<HashMap<String, String>>(&get, false)
            .await
        {
            Ok(nodes) => {
                for (node, reply) in nodes {
                    let node = if node.is_empty() {
                        "redis_denylist_url".to_owned()
                    } else {
                        node
                    };
                    match reply.get("maxmemory-policy") {
                        Some(policy) if policy == "noeviction" => {}
                        Some(policy) => return Err(EvictingRedis(node, policy.clone())),
                        None => {
                            tracing::warn!(%node, "the deny-list's Redis did not tell its maxmemory-policy; it must be noeviction")
                        }
                    }
                }
                Ok(())
            }
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
            Revocation::Token { jti, .. } => (key(Held::Token, jti), until),
            Revocation::Session { sid, .. } => (key(Held::Session, sid), until),
            Revocation::User {
                subject,
                revoked_through,
                ..
            } => (key(Held::User, subject), *revoked_through),
        };
        let mut invocation = self.hold.key(key);
        invocation.arg(value).arg((until - now).max(1));
        self.redis.run_script::<i64>(&invocation).await.map(drop)
    }

    /// One `MGET` of each id's key beside its bucket's mark: a pair is in one slot, so each is
    /// read at one instant even from a cluster.
    async fn read(&self, check: &RevocationCheck, now: i64) -> Result<DenyListRead, StoreError> {
        let (jti, sid, sub) = (check.jti(), check.session(), check.subject());
        let mut mget = redis::cmd("MGET");
        let asked = [(Held::Token, jti), (Held::Session, sid), (Held::User, sub)];
        for (held, id) in asked {
            if let Some(id) = id {
                // One hash per id: its bucket names both keys.
                let bucket = bucket(id);
                mget.arg(rebuilt_key(bucket)).arg(key_in(bucket, held, id));
            }
        }
        if asked.iter().all(|(_, id)| id.is_none()) {
            // Nothing to look up (the core requires `jti`): the list is asked whether it is
            // complete.
            let complete = self.complete().await?;
            return Ok(DenyListRead {
                answer: DenyState::default().answer(check, now, complete),
                complete,
            });
        }
        let mut values = self
            .redis
            .run::<Vec<Option<String>>>(&mget)
            .await?
            .into_iter();
        let mut complete = true;
        // In the order asked: a mark and a value for each id the token has.
        let mut held = |id: Option<&str>| {
            id.and_then(|_| {
                complete &= values.next().flatten().is_some();
                values.next().flatten()
            })
        };
        let (jti_held, sid_held, user_held) = (held(jti), held(sid), held(sub));
        // Redis expires what it holds, so whatever it answers is in force: held without an end.
        let mut state = DenyState::default();
        if let (Some(jti), Some(_)) = (jti, jti_held) {
            let jti = jti.to_owned();
            state.apply(
                &Revocation::Token {
                    jti,
                    expires_at: i64::MAX,
                },
                0,
            );
        }
        if let (Some(sid), Some(_)) = (sid, sid_held) {
            let sid = sid.to_owned();
            state.apply(
                &Revocation::Session {
                    sid,
                    expires_at: i64::MAX,
                },
                0,
            );
        }
        if let (Some(subject), Some(through)) = (sub, user_held) {
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

    /// Every bucket's mark is there.
    async fn complete(&self) -> Result<bool, StoreError> {
        let mut exists = redis::cmd("EXISTS");
        for bucket in 0..BUCKETS {
            exists.arg(rebuilt_key(bucket));
        }
        self.redis
            .run::<i64>(&exists)
            .await
            .map(|n| n == i64::from(BUCKETS))
    }

    async fn rebuild_started(&self) -> Result<String, StoreError> {
        let mark = uuid::Uuid::new_v4().simple().to_string();
        // One command a bucket: a cluster takes a pipeline only within one slot.
        for bucket in 0..BUCKETS {
            let mut set = redis::cmd("SET");
            set.arg(bucket_key(bucket, &format!("{REBUILDING}{mark}")))
                .arg(1)
                .arg("EX")
                .arg(REBUILDING_TTL_SECONDS);
            self.redis.run::<()>(&set).await?;
        }
        Ok(mark)
    }

    /// Finishes every bucket; `false` if any lost its mark (the rest are complete again, and
    /// the next rebuild re-applies what they hold, which changes nothing).
    async fn rebuild_finished(&self, mark: &str) -> Result<bool, StoreError> {
        let mut all = true;
        for bucket in 0..BUCKETS {
            let mut invocation = self
                .finish_rebuild
                .key(bucket_key(bucket, &format!("{REBUILDING}{mark}")));
            invocation.key(rebuilt_key(bucket));
            all &= self.redis.run_script::<i64>(&invocation).await? == 1;
        }
        Ok(all)
    }

    /// Counted with `SCAN` in pages of 1000 on every master: never a blocking `KEYS`. Redis
    /// expires entries, so every entry found is live.
    async fn live_entries(&self, _now: i64) -> Result<u64, StoreError> {
        let entries: Vec<String> = [Held::Token, Held::Session, Held::User]
            .iter()
            .map(|held| format!("}}:{}:", held.name()))
            .collect();
        let mut count = 0u64;
        for master in self.redis.masters().await? {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg("edgeauth:deny:{d*}:*")
                    .arg("COUNT")
                    .arg(1000);
                let (next, keys): (u64, Vec<String>) =
                    self.redis.run_on_node(&master, &scan).await?;
                count += keys
                    .iter()
                    .filter(|k| entries.iter().any(|entry| k.contains(entry.as_str())))
                    .count() as u64;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(count)
    }

    /// Each master's `run_id`: a new one is a server restarted or a replica promoted, either of
    /// which may have lost writes it had acknowledged.
    async fn holders(&self) -> Result<Option<String>, StoreError> {
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let mut ids: Vec<String> = self
            .redis
            .on_each_node::<String>(&info, true)
            .await?
            .into_iter()
            .map(|(node, info)| {
                let id = info
                    .lines()
                    .find_map(|line| line.strip_prefix("run_id:"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                format!("{node}={id}")
            })
            .collect();
        ids.sort();
        Ok(Some(ids.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC16 of a key's hash tag, as Redis Cluster assigns slots (the tag is what is between
    /// the first `{` and the next `}`, when that is not empty).
    fn slot(key: &str) -> u16 {
        let tagged = key
            .find('{')
            .and_then(|open| {
                let close = key[open + 1..].find('}')?;
                (close > 0).then(|| &key[open + 1..open + 1 + close])
            })
            .unwrap_or(key);
        let mut crc = 0u16;
        for byte in tagged.bytes() {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn an_id_shares_its_slot_with_its_buckets_marks_whatever_it_holds() {
        for id in ["a", "x}{y", "{}", "}", "{d3}", "{", "user-1", "ünïcode"] {
            for held in [Held::Token, Held::Session, Held::User] {
                let key = key(held, id);
                let bucket = bucket(id);
                assert_eq!(slot(&key), slot(&rebuilt_key(bucket)), "{key}");
                assert_eq!(
                    slot(&key),
                    slot(&bucket_key(bucket, &format!("{REBUILDING}0123abcd"))),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn the_buckets_spread_over_the_slots() {
        let slots: std::collections::HashSet<u16> =
            (0..BUCKETS).map(|b| slot(&rebuilt_key(b))).collect();
        assert_eq!(slots.len(), usize::from(BUCKETS), "one slot per bucket");
        // Three masters take a third of the slots each: every one holds buckets.
        for third in 0..3u16 {
            let range = third * 5462..(third + 1) * 5462;
            let held = slots.iter().filter(|s| range.contains(s)).count();
            assert!(held > 60, "{held} buckets in slots {range:?}");
        }
    }

    #[test]
    fn ids_spread_over_the_buckets() {
        let buckets: std::collections::HashSet<u16> =
            (0..10_000).map(|i| bucket(&format!("jti-{i}"))).collect();
        assert_eq!(buckets.len(), usize::from(BUCKETS));
    }
}
