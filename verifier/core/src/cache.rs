//! Cache of verified tokens, keyed by the token text itself, bounded in entries and in bytes.
//!
//! A hit skips the signature and claim parsing only: the caller still re-checks time, route
//! rules and the deny-list. An entry whose key has left the ring is dropped on sight, so
//! retiring a key retires what it verified.
//!
//! The key is the whole token, compared byte for byte on a hit, so no two tokens can ever share
//! an entry (one riding on the other's verification). It used to be a SHA-256 digest of the
//! token: the same guarantee, but hashing a token in Wasm cost 2.5 to 4 µs, more than the rest of
//! a cache hit in Envoy (`bench-results/envoy.md`). The lookup hashes only the token's last
//! [`HASHED_TAIL`] bytes, which are its signature's, with hashbrown's randomly seeded default
//! hasher: a token is hundreds of bytes, and in Wasm each 16 of them cost a 128-bit multiply
//! made of 64-bit ones. Only verified tokens are ever inserted, and nobody can choose the
//! signature of one, so an attacker cannot fill a bucket with chosen keys.

use alloc::{collections::VecDeque, string::String, sync::Arc};
use core::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashMap};

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

/// What an entry costs beyond its strings: the map's slot and control byte, the eviction
/// queue's slot, the `Arc` headers of the text and the checked token, the token's `Vec`s and
/// `Option<String>`s, its thumbprint, and the allocator's rounding of each block. Measured with a
/// counting allocator (`tests/cache_memory.rs`), with a margin.
const ENTRY_OVERHEAD_BYTES: usize = 512;

/// What `token` (cached under `text`) holds on the heap, at most: its strings, each rounded up
/// to the allocator's granularity, plus [`ENTRY_OVERHEAD_BYTES`].
fn entry_bytes(text: &str, token: &VerifiedToken) -> usize {
    let block = |len: usize| len.div_ceil(16) * 16 + 16;
    let claims = token.claims();
    let header = token.header();
    let optional = [
        &claims.iss,
        &claims.sub,
        &claims.jti,
        &claims.sid,
        &header.kid,
        &header.typ,
    ];
    let strings = optional
        .iter()
        .filter_map(|s| s.as_deref())
        .chain(claims.aud.iter().map(String::as_str))
        .chain(claims.scope.iter().map(String::as_str))
        .chain(claims.amr.iter().map(String::as_str))
        .map(|s| block(s.len()))
        .sum::<usize>();
    let lists = (claims.aud.len() + claims.scope.len() + claims.amr.len()) * 24;
    // The forwarded `sub` and joined scopes.
    let forwarded = &token.checked.forwarded;
    let forwarded = forwarded
        .user_id
        .as_ref()
        .map_or(0, |user_id| block(user_id.len()))
        + block(forwarded.scope.len());
    ENTRY_OVERHEAD_BYTES + block(text.len()) + strings + lists + forwarded
}

/// How many of a token's last bytes the lookup hashes: all of them are the signature's (86
/// characters for EdDSA and ES256, 342 for RS256), whatever the claims.
const HASHED_TAIL: usize = 32;

/// A cached token's text: the map's key.
#[derive(Debug, Clone)]
struct TokenText(Arc<str>);

/// A token's text to look up, without making a key of it.
struct Lookup<'a>(&'a str);

fn hash_tail<H: Hasher>(text: &str, state: &mut H) {
    let bytes = text.as_bytes();
    state.write(&bytes[bytes.len().saturating_sub(HASHED_TAIL)..]);
}

/// Whether two texts are the same token. Every byte is compared, without an early exit, so that
/// the compiler compares many at a time: Wasm's `memcmp` goes one byte at a time.
fn same_text(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(true, |same, (x, y)| same & (x == y))
}

impl Hash for TokenText {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_tail(&self.0, state);
    }
}

impl PartialEq for TokenText {
    fn eq(&self, other: &Self) -> bool {
        same_text(&self.0, &other.0)
    }
}

impl Eq for TokenText {}

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_tail(self.0, state);
    }
}

impl Equivalent<TokenText> for Lookup<'_> {
    fn equivalent(&self, key: &TokenText) -> bool {
        same_text(self.0, &key.0)
    }
}

/// A map of verified tokens, bounded in entries and in (estimated) heap bytes. Eviction is
/// first-in first-out: tokens live minutes, so age is a good proxy for usefulness and costs no
/// bookkeeping on a hit. Each entry holds its token text once (shared by the map and the
/// eviction order).
///
/// The byte bound is what keeps a host alive: entries alone let large tokens (up to
/// `max_token_bytes` each) outgrow a Worker isolate's 128 MB or a Wasm VM's heap, and a Wasm
/// VM that cannot grow its memory traps.
#[derive(Debug)]
pub struct TokenCache {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    entries: HashMap<TokenText, (VerifiedToken, usize)>,
    order: VecDeque<TokenText>,
    stats: CacheStats,
}

impl TokenCache {
    /// A cache holding at most `max_entries` tokens in at most `max_bytes`; either 0 disables it.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries: if max_bytes == 0 { 0 } else { max_entries },
            max_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            stats: CacheStats::default(),
        }
    }

    /// The cache a policy asks for (`cache.max_entries`, `cache.max_bytes`).
    pub fn for_policy(policy: &crate::Policy) -> Self {
        Self::new(policy.cache_entries(), policy.cache_bytes())
    }

    /// Estimated heap bytes held by the entries, never above `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether it holds anything at all (both bounds above 0).
    pub fn is_enabled(&self) -> bool {
        self.max_entries != 0
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
        let Some((verified, _)) = self.entries.get(&Lookup(token)) else {
            self.stats.misses += 1;
            return None;
        };
        let expired = verified
            .claims()
            .exp
            .is_none_or(|exp| now >= exp.saturating_add(leeway));
        if expired || !keys.contains(verified.key_thumbprint()) {
            if let Some((_, cost)) = self.entries.remove(&Lookup(token)) {
                self.bytes -= cost;
            }
            self.stats.misses += 1;
            return None;
        }
        self.stats.hits += 1;
        Some(verified.clone())
    }

    /// Remembers the verification of `text`, evicting the oldest entries to make room. A token
    /// that alone exceeds the byte budget is not cached.
    pub fn insert(&mut self, text: &str, token: VerifiedToken) {
        let cost = entry_bytes(text, &token);
        if self.max_entries == 0 || cost > self.max_bytes {
            return;
        }
        if let Some(held) = self.entries.get_mut(&Lookup(text)) {
            // The same text is the same token: the same cost, and already in the order.
            held.0 = token;
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + cost > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, freed)) = self.entries.remove(&oldest) {
                self.bytes -= freed;
                self.stats.evictions += 1;
            }
        }
        let text = TokenText(Arc::from(text));
        self.bytes += cost;
        self.entries.insert(text.clone(), (token, cost));
        self.order.push_back(text);
        // `order` may hold texts already removed on expiry or re-insertion; keep it from
        // outgrowing the map.
        if self.order.len() > self.entries.len().saturating_mul(2).max(16) {
            let entries = &self.entries;
            self.order.retain(|d| entries.contains_key(d));
        }
    }

    /// Drops every entry (for example after a policy change).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.bytes = 0;
    }
}
