//! Bounded cache of verified tokens, keyed by the token text itself.
//!
//! A hit skips the signature and claim parsing only: the caller still re-checks time, route
//! rules and the deny-list. An entry whose key has left the ring is dropped on sight, so
//! retiring a key retires what it verified.
//!
//! The key is the whole token, compared byte for byte on a hit, so no two tokens can ever share
//! an entry (one riding on the other's verification). It used to be a SHA-256 digest of the
//! token: the same guarantee, but hashing a token in Wasm cost 2.5 to 4 µs, more than the rest of
//! a cache hit in Envoy (`bench-results/envoy.md`). The lookup hash is hashbrown's default; only
//! verified tokens are ever inserted, so an attacker cannot fill a bucket with chosen keys.

use alloc::{collections::VecDeque, sync::Arc};

use hashbrown::HashMap;

use crate::{key_ring::KeyRing, token::VerifiedToken};

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to verify.
    pub misses: u64,
    /// Entries dropped to stay within bounds.
    pub evictions: u64,
}

/// A bounded map of verified tokens. Eviction is first-in first-out: tokens live minutes, so
/// age is a good proxy for usefulness and costs no bookkeeping on a hit. Each entry holds its
/// token text once (shared by the map and the eviction order): at most `max_token_bytes`.
#[derive(Debug)]
pub struct TokenCache {
    max_entries: usize,
    entries: HashMap<Arc<str>, VerifiedToken>,
    order: VecDeque<Arc<str>>,
    stats: CacheStats,
}

impl TokenCache {
    /// A cache holding at most `max_entries` tokens; 0 disables it.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            entries: HashMap::new(),
            order: VecDeque::new(),
            stats: CacheStats::default(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// The cached verification of `token`, if its key is still in `keys` and `now` is before its
    /// `exp` (plus `leeway`). Stale entries are removed.
    pub fn get(
        &mut self,
        token: &str,
        keys: &KeyRing,
        now: i64,
        leeway: i64,
    ) -> Option<VerifiedToken> {
        if self.max_entries == 0 {
            return None;
        }
        let Some(verified) = self.entries.get(token) else {
            self.stats.misses += 1;
            return None;
        };
        let expired = verified
            .claims()
            .exp
            .is_none_or(|exp| now >= exp.saturating_add(leeway));
        if expired || !keys.contains(verified.key_thumbprint()) {
            self.entries.remove(token);
            self.stats.misses += 1;
            return None;
        }
        self.stats.hits += 1;
        Some(verified.clone())
    }

    /// Remembers the verification of `text`.
    pub fn insert(&mut self, text: &str, token: VerifiedToken) {
        if self.max_entries == 0 {
            return;
        }
        while self.entries.len() >= self.max_entries {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.entries.remove(&oldest).is_some() {
                self.stats.evictions += 1;
            }
        }
        let text: Arc<str> = Arc::from(text);
        if self.entries.insert(text.clone(), token).is_none() {
            self.order.push_back(text);
        }
        // `order` may hold digests already removed on expiry; keep it from outgrowing the map.
        if self.order.len() > self.max_entries.saturating_mul(2) {
            let entries = &self.entries;
            self.order.retain(|d| entries.contains_key(d));
        }
    }

    /// Drops every entry (for example after a policy change).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}
