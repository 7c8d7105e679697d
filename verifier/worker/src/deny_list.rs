//! The deny-list in Workers KV, and the isolate's memory of it.
//!
//! KV keys (all expire with KV's `expirationTtl` when what they revoke no longer matters:
//! [`Revocation::holds_until`], the revoked token's `exp` plus the leeway):
//! - `jti:<jti>` = `1`: one access token revoked;
//! - `sid:<sid>` = `1`: every access token of a session revoked (logout, session ended);
//! - `user:<sub>` = a [`Watermark`] as JSON, `{"revoked_through":…,"until":…}`: every token of
//!   the user issued through `revoked_through` revoked (revoke-all). A plain number is the form
//!   written before watermarks recorded their end, still read.
//!
//! A request's three keys come from one KV bulk read. The isolate remembers answers so the hot
//! path does not pay a KV round trip on every request: a listed token or session holds until it
//! expires (revocation of one token is final); anything else (nothing listed, or a watermark,
//! which a later revoke-all through another isolate may raise) only for `DENY_CACHE_SECONDS`,
//! which is what this memory adds to the revocation bound (README, "Revocation bound").

use std::collections::HashMap;

use edgeauth_core::{
    DenyListStatus, Revocation, RevocationAnswer, RevocationCheck, Watermark, WatermarkStatus,
};
use serde_json::json;
use worker::{console_error, Env, KvStore};

use crate::{settings::Settings, with_isolate};

/// The Workers KV binding of the deny-list.
pub const DENYLIST_BINDING: &str = "DENYLIST";
/// KV's shortest `expirationTtl`.
const KV_MIN_TTL: i64 = 60;
/// The most KV operations [`store`] makes for one revocation (a watermark: a read, a write).
pub const MAX_KV_OPERATIONS_PER_REVOCATION: u32 = 2;

/// KV key of a revoked `jti`.
fn jti_key(jti: &str) -> String {
    format!("jti:{jti}")
}
/// KV key of a revoked session.
fn sid_key(sid: &str) -> String {
    format!("sid:{sid}")
}
/// KV key of a user's revoke-all watermark.
fn user_key(subject: &str) -> String {
    format!("user:{subject}")
}

/// The deny-list's KV namespace, for writes and the cron's cursor.
pub fn kv(env: &Env) -> Result<KvStore, String> {
    env.kv(DENYLIST_BINDING).map_err(|e| e.to_string())
}

/// A watermark as KV holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredWatermark {
    /// Written with its end.
    Recorded(Watermark),
    /// A plain number, written before watermarks recorded their end: its KV expiry is its end.
    Legacy(i64),
}

impl StoredWatermark {
    /// Reads `user:<sub>`'s text; `None` when it is neither form.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(watermark) = serde_json::from_str::<Watermark>(text) {
            return Some(Self::Recorded(watermark));
        }
        text.parse().ok().map(Self::Legacy)
    }

    /// Tokens with `iat` up to this are revoked.
    pub fn revoked_through(self) -> i64 {
        match self {
            Self::Recorded(w) => w.revoked_through,
            Self::Legacy(through) => through,
        }
    }
}

/// What to write under `user:<sub>` when `new` arrives and KV holds `stored`: `None` when the
/// stored watermark already covers it (a replayed or late, older revoke-all writes nothing), else
/// the raised watermark ([`Watermark::raised`]: never lower, never ending sooner). A legacy value
/// has no recorded end, so it is replaced only by a higher revoke-all, whose end is later.
pub fn watermark_to_write(stored: Option<StoredWatermark>, new: Watermark) -> Option<Watermark> {
    match stored {
        None => Some(new),
        Some(StoredWatermark::Legacy(through)) => (new.revoked_through > through).then_some(new),
        Some(StoredWatermark::Recorded(held)) => {
            let raised = held.raised(new);
            (raised != held).then_some(raised)
        }
    }
}

/// What a deny-list entry's stored text means to the hot path: a revoked `jti` or `sid` reads as
/// `Some(0)`, a watermark as its `revoked_through`.
fn listed_value(key: &str, text: Option<String>) -> Result<Option<i64>, ()> {
    match text {
        None => Ok(None),
        Some(_) if key.starts_with("jti:") || key.starts_with("sid:") => Ok(Some(0)),
        Some(text) => match StoredWatermark::parse(&text) {
            Some(watermark) => Ok(Some(watermark.revoked_through())),
            None => {
                console_error!("{}", json!({"event": "denylist_unreadable", "key": key}));
                Err(())
            }
        },
    }
}

/// The deny-list's answer for a valid token: the isolate's memory, else Workers KV.
pub async fn revocation_answer(
    env: &Env,
    settings: &Settings,
    check: &RevocationCheck,
    now: i64,
) -> RevocationAnswer {
    let jti = check.jti().map(jti_key);
    let sid = check.session().map(sid_key);
    let user = check.subject().map(user_key);
    // A listed token or session stays listed while this token lives; the rest is trusted for
    // the cache time.
    let token_exp = check.token().claims().exp.unwrap_or(now);
    let [jti, sid, user] = entries(
        env,
        settings,
        [
            (jti.as_deref(), token_exp),
            (sid.as_deref(), token_exp),
            (user.as_deref(), now),
        ],
        now,
    )
    .await;
    let listed = |value: Result<Option<i64>, ()>| match value {
        Ok(None) => DenyListStatus::NotListed,
        Ok(Some(_)) => DenyListStatus::Listed,
        Err(()) => DenyListStatus::Unavailable,
    };
    RevocationAnswer {
        jti: listed(jti),
        session: listed(sid),
        user: match user {
            Ok(None) => WatermarkStatus::None,
            Ok(Some(through)) => WatermarkStatus::RevokedThrough(through),
            Err(()) => WatermarkStatus::Unavailable,
        },
    }
}

/// The deny-list's values under `keys` (none: nothing listed), each with the time a listed value
/// is remembered until if that is later than the cache time. What the isolate does not remember
/// comes from one KV bulk read: one round trip, billed per key like single reads.
async fn entries<const N: usize>(
    env: &Env,
    settings: &Settings,
    keys: [(Option<&str>, i64); N],
    now: i64,
) -> [Result<Option<i64>, ()>; N] {
    let mut values = keys.map(|(key, _)| match key {
        None => Some(Ok(None)),
        Some(key) => with_isolate(env, |i| i.denied.get(key, now)).map(Ok),
    });
    let missing: Vec<&str> = keys
        .iter()
        .zip(&values)
        .filter(|(_, value)| value.is_none())
        .filter_map(|((key, _), _)| *key)
        .collect();
    if missing.is_empty() {
        return values.map(|value| value.unwrap_or(Err(())));
    }
    let read = match with_isolate(env, |i| i.deny_list.clone()) {
        Ok(kv) => kv.read(&missing).await,
        Err(e) => Err(e),
    };
    let read = match read {
        Ok(read) => read,
        Err(error) => {
            console_error!(
                "{}",
                json!({"event": "denylist_unavailable", "error": error})
            );
            return values.map(|value| value.unwrap_or(Err(())));
        }
    };
    let cached_until = now + i64::from(settings.deny_cache_seconds);
    let mut read = read.into_iter();
    for ((key, listed_until), value) in keys.iter().zip(values.iter_mut()) {
        let (Some(key), None) = (key, value.as_ref()) else {
            continue;
        };
        let entry = listed_value(key, read.next().flatten());
        if let Ok(entry) = entry {
            let until = if entry.is_some() {
                (*listed_until).max(cached_until)
            } else {
                cached_until
            };
            // With no cache time (DENY_CACHE_SECONDS = 0) only a revoked jti or sid is
            // remembered.
            if until > now {
                with_isolate(env, |i| i.denied.insert(key, entry, until, now));
            }
        }
        *value = Some(entry);
    }
    values.map(|value| value.unwrap_or(Err(())))
}

/// A checked revocation, stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// KV operations it took (gets and puts), for the cron's budget.
    pub kv_operations: u32,
}

/// Stores a checked revocation in KV (and in this isolate's memory), kept as long as what it
/// revokes could still pass.
pub async fn store(
    env: &Env,
    settings: &Settings,
    revocation: &Revocation,
    now: i64,
) -> Result<Stored, String> {
    let kv = kv(env)?;
    let until = revocation.holds_until(settings.policy.leeway_seconds());
    let key = match revocation {
        Revocation::Token { jti, .. } => jti_key(jti),
        Revocation::Session { sid, .. } => sid_key(sid),
        Revocation::User {
            subject,
            revoked_through,
            ..
        } => {
            let new = Watermark {
                revoked_through: *revoked_through,
                until,
            };
            return raise_watermark(env, settings, &kv, &user_key(subject), new, now).await;
        }
    };
    put(&kv, &key, "1".to_string(), until, now).await?;
    // Revocation of one token or session is final: remembered until it no longer matters.
    with_isolate(env, |i| i.denied.insert(&key, Some(0), until, now));
    Ok(Stored { kv_operations: 1 })
}

/// Raises `user:<sub>` in KV to at least `new`, never lowering it.
///
/// KV has no compare-and-swap, so this is a read, then a write of max(read, new). Two writers
/// that read before either wrote (two isolates in the same moment, or in two locations within
/// KV's propagation delay, up to about a minute) can still end with the lower of the two stored.
/// The race is bounded: each write is the max of what it read and an entry the origin signed, so
/// it never goes below the older of the two racing revoke-alls; a lowered value is repaired by
/// the next write for that user, and the Cron Trigger applies every feed entry past its cursor in
/// feed order, raising the watermark again (the higher revoke-all is the later entry). Only the
/// tokens issued between the two racing revoke-alls are exposed, and only until then.
async fn raise_watermark(
    env: &Env,
    settings: &Settings,
    kv: &KvStore,
    key: &str,
    new: Watermark,
    now: i64,
) -> Result<Stored, String> {
    let text = kv.get(key).text().await.map_err(|e| e.to_string())?;
    let stored = text.as_deref().and_then(|text| {
        let stored = StoredWatermark::parse(text);
        if stored.is_none() {
            // Unreadable, so it vouches for nothing: the new watermark replaces it.
            console_error!("{}", json!({"event": "denylist_unreadable", "key": key}));
        }
        stored
    });
    let (held, kv_operations) = match watermark_to_write(stored, new) {
        Some(raised) => {
            let text = serde_json::to_string(&raised).map_err(|e| e.to_string())?;
            put(kv, key, text, raised.until, now).await?;
            (raised.revoked_through, 2)
        }
        None => (
            stored.map_or(new.revoked_through, |s| s.revoked_through()),
            1,
        ),
    };
    // Remembered no longer than a KV answer: a higher revoke-all may reach KV through another
    // isolate, and this one must see it within DENY_CACHE_SECONDS.
    let remembered_until = now + i64::from(settings.deny_cache_seconds);
    if remembered_until > now {
        with_isolate(env, |i| {
            i.denied.insert(key, Some(held), remembered_until, now)
        });
    }
    Ok(Stored { kv_operations })
}

/// Writes `value` under `key` until `until` (at least KV's shortest TTL).
async fn put(kv: &KvStore, key: &str, value: String, until: i64, now: i64) -> Result<(), String> {
    let ttl = (until - now).max(KV_MIN_TTL);
    kv.put(key, value)
        .map_err(|e| e.to_string())?
        .expiration_ttl(ttl as u64)
        .execute()
        .await
        .map_err(|e| e.to_string())
}

/// Most entries the isolate's memory holds; past this, expired ones are dropped, then everything.
const MAX_ENTRIES: usize = 10_000;

/// The isolate's memory of KV answers: key → (the value found, `None` when there was none;
/// trusted until).
#[derive(Debug, Default)]
pub struct DenyCache {
    entries: HashMap<String, (Option<i64>, i64)>,
}

impl DenyCache {
    /// The remembered answer for `key` at `now`, if still trusted: `Some(None)` means "not
    /// listed".
    pub fn get(&self, key: &str, now: i64) -> Option<Option<i64>> {
        self.entries
            .get(key)
            .filter(|(_, until)| now < *until)
            .map(|(value, _)| *value)
    }

    /// Remembers an answer until `until`. Something listed is never overwritten by a stale
    /// "nothing" read, nor a watermark by a lower one.
    pub fn insert(&mut self, key: &str, value: Option<i64>, until: i64, now: i64) {
        if let Some(Some(known)) = self.get(key, now) {
            if value.is_none_or(|v| v < known) {
                return;
            }
        }
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(key) {
            self.entries.retain(|_, (_, until)| now < *until);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(key.to_string(), (value, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watermark(revoked_through: i64, until: i64) -> Watermark {
        Watermark {
            revoked_through,
            until,
        }
    }

    #[test]
    fn a_replayed_older_revoke_all_writes_nothing() {
        let stored = StoredWatermark::parse(r#"{"revoked_through":2000,"until":2930}"#);
        assert_eq!(
            stored,
            Some(StoredWatermark::Recorded(watermark(2000, 2930)))
        );
        // An old entry replayed, or a push that arrives after a later one.
        assert_eq!(watermark_to_write(stored, watermark(1000, 1930)), None);
        assert_eq!(watermark_to_write(stored, watermark(2000, 2930)), None);
        // A later revoke-all raises it.
        assert_eq!(
            watermark_to_write(stored, watermark(3000, 3930)),
            Some(watermark(3000, 3930))
        );
        // Never ending sooner, never falling, whatever the mix.
        assert_eq!(
            watermark_to_write(stored, watermark(1500, 4000)),
            Some(watermark(2000, 4000))
        );
        assert_eq!(
            watermark_to_write(None, watermark(1000, 1930)),
            Some(watermark(1000, 1930))
        );
    }

    #[test]
    fn a_legacy_watermark_is_read_and_only_raised() {
        let legacy = StoredWatermark::parse(" 2000\n");
        assert_eq!(legacy, Some(StoredWatermark::Legacy(2000)));
        assert_eq!(legacy.map(StoredWatermark::revoked_through), Some(2000));
        assert_eq!(watermark_to_write(legacy, watermark(1000, 9999)), None);
        assert_eq!(
            watermark_to_write(legacy, watermark(2001, 2931)),
            Some(watermark(2001, 2931))
        );
        assert_eq!(StoredWatermark::parse("soon"), None);
        assert_eq!(StoredWatermark::parse(r#"{"revoked_through":1}"#), None);
    }

    #[test]
    fn the_hot_path_reads_every_kind_of_entry() {
        assert_eq!(listed_value("jti:a", None), Ok(None));
        assert_eq!(listed_value("jti:a", Some("1".into())), Ok(Some(0)));
        assert_eq!(listed_value("sid:s", Some("1".into())), Ok(Some(0)));
        assert_eq!(listed_value("user:u", Some("700".into())), Ok(Some(700)));
        assert_eq!(
            listed_value(
                "user:u",
                Some(r#"{"revoked_through":800,"until":900}"#.into())
            ),
            Ok(Some(800))
        );
    }

    #[test]
    fn answers_expire_and_revocations_stick() {
        let mut cache = DenyCache::default();
        cache.insert("jti:a", None, 105, 100);
        assert_eq!(cache.get("jti:a", 104), Some(None));
        assert_eq!(cache.get("jti:a", 105), None);
        cache.insert("jti:a", Some(0), 1000, 101);
        cache.insert("jti:a", None, 106, 102);
        assert_eq!(cache.get("jti:a", 103), Some(Some(0)));
        // A watermark is raised by a later revoke-all, never lowered by a stale read.
        cache.insert("user:u", Some(500), 110, 100);
        cache.insert("user:u", Some(400), 110, 101);
        assert_eq!(cache.get("user:u", 102), Some(Some(500)));
        cache.insert("user:u", Some(600), 110, 103);
        assert_eq!(cache.get("user:u", 104), Some(Some(600)));
    }

    #[test]
    fn a_full_cache_makes_room() {
        let mut cache = DenyCache::default();
        for i in 0..MAX_ENTRIES {
            cache.insert(&i.to_string(), None, 10, 0);
        }
        cache.insert("new", Some(0), 100, 20);
        assert_eq!(cache.get("new", 21), Some(Some(0)));
        assert!(cache.entries.len() < MAX_ENTRIES);
    }
}
