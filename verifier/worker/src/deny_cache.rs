//! The isolate's memory of Workers KV answers about deny-list keys (`jti:<jti>`,
//! `user:<sub>`), so the hot path does not pay a KV round trip on every request. A listed token
//! holds until it expires (revocation is final); anything else (nothing listed, a user's
//! revoke-all watermark, which a later revoke-all may raise) holds for `DENY_CACHE_SECONDS`,
//! which is what this cache adds to the revocation bound (README, "Revocation bound").

use std::collections::HashMap;

/// Most entries held; past this, expired ones are dropped, then everything.
const MAX_ENTRIES: usize = 10_000;

/// KV key → (the value found: `None` when there was none, trusted until).
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
