//! What Envoy's VMs share. Envoy runs one VM per worker thread plus one on the main thread, each
//! with its own memory; proxy-wasm shared data (a byte map with compare-and-swap, one per
//! `vm_id`) is the only thing they have in common. These are its records, as pure encode/decode
//! functions over plain data, so they are tested natively.
//!
//! - [`Lease`]: which VM is the fetcher. Only the fetcher reads the JWKS on schedule and polls
//!   the revocation feed; without the election every VM would, multiplying the origin's load by
//!   the worker count.
//! - [`KeysRecord`]: the last good JWKS and until when it is fresh. Every VM parses it into its
//!   own key ring when its version changes.
//! - [`DenyList`]: the live revocations and the feed cursor. Every VM keeps a copy in memory, so a
//!   request's deny-list lookup is a hash-map read, not a host call.
//!
//! Each record has a small version key beside it, bumped after every write: a VM checks the
//! version on its tick and copies the record only when it changed.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
};

use edgeauth_core::DenyListStatus;
use serde::{Deserialize, Serialize};

/// How long a fetcher's lease lasts without renewal, in seconds: three ticks, so a fetcher that
/// misses one tick under load keeps its place, and a VM that is gone is replaced within seconds.
pub const LEASE_SECONDS: i64 = 3;

/// The shared-data keys of one plugin configuration. Envoy shares a VM (and its shared data)
/// between filters whose `vm_config` is the same, so keys carry a fingerprint of the plugin
/// configuration: two configurations never read each other's keys or revocations.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The fetcher's [`Lease`].
    pub fetcher: String,
    /// The [`KeysRecord`].
    pub keys: String,
    /// The [`KeysRecord`]'s version.
    pub keys_version: String,
    /// When a refetch for an unknown `kid` last started, in seconds (shared rate limit).
    pub forced_fetch: String,
    /// The [`DenyList`].
    pub deny_list: String,
    /// The [`DenyList`]'s version.
    pub deny_list_version: String,
}

impl Keys {
    /// The keys for this plugin configuration.
    pub fn for_configuration(configuration: &[u8]) -> Self {
        // SipHash with fixed keys: the same fingerprint in every VM of this binary.
        let mut hasher = DefaultHasher::new();
        configuration.hash(&mut hasher);
        let prefix = format!("edgeauth.{:016x}", hasher.finish());
        Self {
            fetcher: format!("{prefix}.fetcher"),
            keys: format!("{prefix}.keys"),
            keys_version: format!("{prefix}.keys.version"),
            forced_fetch: format!("{prefix}.keys.forced"),
            deny_list: format!("{prefix}.deny_list"),
            deny_list_version: format!("{prefix}.deny_list.version"),
        }
    }
}

/// A VM's claim to be the fetcher until `until` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The VM's random identity.
    pub owner: u64,
    /// Seconds since the epoch.
    pub until: i64,
}

impl Lease {
    /// `owner until`, in decimal.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.owner, self.until).into_bytes()
    }

    /// `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (owner, until) = text.split_once(' ')?;
        Some(Self {
            owner: owner.parse().ok()?,
            until: until.parse().ok()?,
        })
    }

    /// Whether VM `me` may take (or renew) the lease at `now`, given the current one: it is free,
    /// ours, expired, or unreadable.
    pub fn may_take(current: Option<&[u8]>, me: u64, now: i64) -> bool {
        match current.map(Self::decode) {
            None | Some(None) => true,
            Some(Some(lease)) => lease.owner == me || lease.until <= now,
        }
    }
}

/// A JWKS the fetcher accepted, and until when it is fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysRecord {
    /// Seconds since the epoch.
    pub fresh_until: i64,
    /// The JWKS as the origin served it.
    pub jwks: Vec<u8>,
}

impl KeysRecord {
    /// `fresh_until`, a newline, the JWKS.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = format!("{}\n", self.fresh_until).into_bytes();
        bytes.extend_from_slice(&self.jwks);
        bytes
    }

    /// `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let fresh_until = std::str::from_utf8(&bytes[..newline]).ok()?.parse().ok()?;
        Some(Self {
            fresh_until,
            jwks: bytes[newline + 1..].to_vec(),
        })
    }
}

/// A version counter, as stored beside a record.
pub fn decode_version(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The revocations still in force and how far the feed has been read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyList {
    /// Every feed entry up to this sequence number has been applied.
    pub cursor: u64,
    /// When the feed was last read successfully (seconds since the epoch); 0 = never.
    pub read_at: i64,
    /// Revoked `jti` → until when it must be refused (its token's `exp` plus leeway).
    pub revoked: HashMap<String, i64>,
}

impl DenyList {
    /// Records a revocation; a later `until` for the same `jti` wins.
    pub fn insert(&mut self, jti: String, until: i64) {
        let entry = self.revoked.entry(jti).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Drops revocations whose tokens can no longer pass anyway.
    pub fn prune(&mut self, now: i64) {
        self.revoked.retain(|_, until| now < *until);
    }

    /// The answer about `jti` at `now`. A listed `jti` is listed however old the list; otherwise,
    /// a list never read or not read for `max_stale` seconds cannot vouch for a token.
    pub fn status(&self, jti: Option<&str>, now: i64, max_stale: u32) -> DenyListStatus {
        if jti.is_some_and(|jti| self.revoked.get(jti).is_some_and(|until| now < *until)) {
            return DenyListStatus::Listed;
        }
        if self.read_at == 0 || now.saturating_sub(self.read_at) > i64::from(max_stale) {
            return DenyListStatus::Unavailable;
        }
        DenyListStatus::NotListed
    }

    /// As stored in shared data.
    pub fn encode(&self) -> Vec<u8> {
        // A map of strings and integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_when_free_expired_or_ours_and_not_otherwise() {
        let theirs = Lease {
            owner: 7,
            until: 1003,
        }
        .encode();
        assert!(Lease::may_take(None, 1, 1000));
        assert!(!Lease::may_take(Some(&theirs), 1, 1002));
        assert!(Lease::may_take(Some(&theirs), 1, 1003), "expired");
        assert!(Lease::may_take(Some(&theirs), 7, 1002), "renewal");
        assert!(Lease::may_take(Some(b"garbage"), 1, 1000));
        assert_eq!(
            Lease::decode(&theirs),
            Some(Lease {
                owner: 7,
                until: 1003
            })
        );
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let record = KeysRecord {
            fresh_until: 1300,
            jwks: br#"{"keys":[]}"#.to_vec(),
        };
        assert_eq!(KeysRecord::decode(&record.encode()), Some(record));
        assert_eq!(KeysRecord::decode(b"no newline"), None);
        assert_eq!(KeysRecord::decode(b"soon\n{}"), None);
        assert_eq!(decode_version(Some(b"42")), 42);
        assert_eq!(decode_version(Some(b"\xff")), 0);
        assert_eq!(decode_version(None), 0);

        let mut list = DenyList {
            cursor: 9,
            read_at: 1000,
            ..DenyList::default()
        };
        list.insert("a".into(), 1600);
        assert_eq!(DenyList::decode(&list.encode()), Some(list));
        assert_eq!(DenyList::decode(b"[]"), None);
    }

    #[test]
    fn the_deny_list_answers_listed_not_listed_or_unavailable() {
        let mut list = DenyList::default();
        list.insert("revoked".into(), 1600);
        list.insert("revoked".into(), 1500);
        assert_eq!(list.revoked["revoked"], 1600, "the later expiry wins");
        assert_eq!(
            list.status(Some("other"), 1000, 300),
            DenyListStatus::Unavailable,
            "never read"
        );
        assert_eq!(
            list.status(Some("revoked"), 1000, 300),
            DenyListStatus::Listed
        );
        list.read_at = 1000;
        assert_eq!(
            list.status(Some("other"), 1300, 300),
            DenyListStatus::NotListed
        );
        assert_eq!(list.status(None, 1300, 300), DenyListStatus::NotListed);
        assert_eq!(
            list.status(Some("other"), 1301, 300),
            DenyListStatus::Unavailable,
            "stale"
        );
        assert_eq!(
            list.status(Some("revoked"), 1599, 300),
            DenyListStatus::Listed
        );
        list.prune(1600);
        assert!(list.revoked.is_empty());
    }

    #[test]
    fn configurations_get_their_own_keys() {
        let a = Keys::for_configuration(b"{\"a\":1}");
        let b = Keys::for_configuration(b"{\"a\":2}");
        assert_ne!(a.deny_list, b.deny_list);
        assert_eq!(a.keys, Keys::for_configuration(b"{\"a\":1}").keys);
    }
}
