//! The isolate's memory of Workers KV answers about `jti`s, so the hot path does not pay a KV
//! round trip on every request. A "revoked" answer holds until the token expires (revocation is
//! final); a "not revoked" answer holds for `DENY_CACHE_SECONDS`, which is what this cache adds
//! to the revocation bound (README, "Revocation bound").

use std::collections::HashMap;

/// Most entries held; past this, expired ones are dropped, then everything.
const MAX_ENTRIES: usize = 10_000;

/// `jti` → (revoked, trusted until).
#[derive(Debug, Default)]
pub struct DenyCache {
    entries: HashMap<String, (bool, i64)>,
}

impl DenyCache {
    /// The remembered answer for `jti` at `now`, if still trusted.
    pub fn get(&self, jti: &str, now: i64) -> Option<bool> {
        self.entries
            .get(jti)
            .filter(|(_, until)| now < *until)
            .map(|(revoked, _)| *revoked)
    }

    /// Remembers an answer until `until`. A revocation is never overwritten by a stale "not
    /// revoked" read.
    pub fn insert(&mut self, jti: &str, revoked: bool, until: i64, now: i64) {
        if !revoked && self.get(jti, now) == Some(true) {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(jti) {
            self.entries.retain(|_, (_, until)| now < *until);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(jti.to_string(), (revoked, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_revocations_stick() {
        let mut cache = DenyCache::default();
        cache.insert("a", false, 105, 100);
        assert_eq!(cache.get("a", 104), Some(false));
        assert_eq!(cache.get("a", 105), None);
        cache.insert("a", true, 1000, 101);
        cache.insert("a", false, 106, 102);
        assert_eq!(cache.get("a", 103), Some(true));
    }

    #[test]
    fn a_full_cache_makes_room() {
        let mut cache = DenyCache::default();
        for i in 0..MAX_ENTRIES {
            cache.insert(&i.to_string(), false, 10, 0);
        }
        cache.insert("new", true, 100, 20);
        assert_eq!(cache.get("new", 21), Some(true));
        assert!(cache.entries.len() < MAX_ENTRIES);
    }
}
