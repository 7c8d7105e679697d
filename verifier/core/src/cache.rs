//! Bounded cache of verified tokens, keyed by SHA-256 of the token text.
//!
//! A hit skips the signature and claim parsing only: the caller still re-checks time, route
//! rules and the deny-list. An entry whose key has left the ring is dropped on sight, so
//! retiring a key retires what it verified.

use alloc::collections::VecDeque;

use hashbrown::HashMap;
use sha2::{Digest, Sha256};

use crate::{key_ring::KeyRing, token::VerifiedToken};

/// Cache key: SHA-256 of the token. A collision-resistant hash, because two tokens sharing a key
/// would let one ride on the other's verification.
pub type TokenDigest = [u8; 32];

/// Hashes a token for [`TokenCache`].
pub fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

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
/// age is a good proxy for usefulness and costs no bookkeeping on a hit.
#[derive(Debug)]
pub struct TokenCache {
    max_entries: usize,
    entries: HashMap<TokenDigest, VerifiedToken>,
    order: VecDeque<TokenDigest>,
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

    /// The cached token for `digest`, if its key is still in `keys` and `now` is before its
    /// `exp` (plus `leeway`). Stale entries are removed.
    pub fn get(
        &mut self,
        digest: &TokenDigest,
        keys: &KeyRing,
        now: i64,
        leeway: i64,
    ) -> Option<VerifiedToken> {
        if self.max_entries == 0 {
            return None;
        }
        let Some(token) = self.entries.get(digest) else {
            self.stats.misses += 1;
            return None;
        };
        let expired = token
            .claims()
            .exp
            .is_none_or(|exp| now >= exp.saturating_add(leeway));
        if expired || !keys.contains(token.key_thumbprint()) {
            self.entries.remove(digest);
            self.stats.misses += 1;
            return None;
        }
        self.stats.hits += 1;
        Some(token.clone())
    }

    /// Remembers a verified token.
    pub fn insert(&mut self, digest: TokenDigest, token: VerifiedToken) {
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
        if self.entries.insert(digest, token).is_none() {
            self.order.push_back(digest);
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
