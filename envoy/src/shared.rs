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
//! - the deny-list, a log of segments with a head ([`crate::deny_list`]). Every VM keeps a copy in
//!   memory, so a request's deny-list lookup is a hash-map read, not a host call.
//!
//! The key set has a small version key beside it, bumped after every write: a VM checks the
//! version on its tick and copies the record only when it changed.

use std::hash::{DefaultHasher, Hash, Hasher};

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
    /// The deny-list's head ([`crate::deny_list::Head`]).
    pub deny_list_head: String,
    prefix: String,
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
            deny_list_head: format!("{prefix}.deny_list.head"),
            prefix,
        }
    }

    /// Segment `n` of the deny-list.
    pub fn deny_list_segment(&self, n: u64) -> String {
        format!("{}.deny_list.segment.{n}", self.prefix)
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
    }

    #[test]
    fn configurations_get_their_own_keys() {
        let a = Keys::for_configuration(b"{\"a\":1}");
        let b = Keys::for_configuration(b"{\"a\":2}");
        assert_ne!(a.deny_list_head, b.deny_list_head);
        assert_ne!(a.deny_list_segment(1), b.deny_list_segment(1));
        assert_eq!(a.keys, Keys::for_configuration(b"{\"a\":1}").keys);
    }
}
