//! What Envoy's VMs share. Envoy runs one VM per worker thread plus one on the main thread, each
//! with its own memory; proxy-wasm shared data (a byte map with compare-and-swap, one per
//! `vm_id`) is the only thing they have in common. These are its records, as pure encode/decode
//! functions over plain data, so they are tested natively.
//!
//! - [`Lease`]: which VM is the fetcher. Only the fetcher reads the JWKS on schedule and polls
//!   the revocation feed; without the election every VM would, multiplying the origin's load by
//!   the worker count.
//! - [`KeysRecord`]: the last good JWKS, its version and when the call that fetched it started.
//!   One record, so a version always names one key set ([`crate::keys`]).
//! - the deny-list, a fixed ring of segments with a head ([`crate::deny_list`]). Every VM keeps a
//!   copy in memory, so a request's deny-list lookup is a map read, not a host call.
//!
//! Envoy's shared data (proxy-wasm-cpp-host `SharedData`) never deletes a key (writing an empty
//! value keeps it) and checks a CAS token only when the key already exists: the first write of a
//! key accepts any token. Every record here is designed for both: the set of keys is fixed, and
//! a write that raced another on a missing key is found afterwards and repaired.

use std::hash::{DefaultHasher, Hash, Hasher};

/// Envoy's shared data: a byte map with compare-and-swap, common to the VMs of one `vm_id`.
pub trait SharedData {
    /// The value under `key` (empty for a cleared key) and its CAS token; `None` when there is
    /// no such key, or the host could not answer.
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)>;
    /// Writes `value` (empty to clear: Envoy keeps the key) if `cas` still matches; whether it
    /// was written. Envoy compares `cas` only when the key exists.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

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
            forced_fetch: format!("{prefix}.keys.forced"),
            deny_list_head: format!("{prefix}.deny_list.head"),
            prefix,
        }
    }

    /// Slot `slot` of the deny-list's ring.
    pub fn deny_list_slot(&self, slot: u64) -> String {
        format!("{}.deny_list.slot.{slot}", self.prefix)
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

/// A JWKS the fetcher accepted: one record, so a version names exactly one key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysRecord {
    /// Bumped by every publication (written with compare-and-swap after reading the last one).
    pub version: u64,
    /// When the call that fetched it started, seconds since the epoch: a slower, older call's
    /// answer never replaces it ([`crate::keys::publish_keys`]).
    pub fetched_at: i64,
    /// Seconds since the epoch.
    pub fresh_until: i64,
    /// The JWKS as the origin served it.
    pub jwks: Vec<u8>,
}

impl KeysRecord {
    /// `version fetched_at fresh_until`, a newline, the JWKS.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = format!(
            "{} {} {}\n",
            self.version, self.fetched_at, self.fresh_until
        )
        .into_bytes();
        bytes.extend_from_slice(&self.jwks);
        bytes
    }

    /// `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&bytes[..newline]).ok()?;
        let mut fields = line.split(' ');
        let record = Self {
            version: fields.next()?.parse().ok()?,
            fetched_at: fields.next()?.parse().ok()?,
            fresh_until: fields.next()?.parse().ok()?,
            jwks: bytes[newline + 1..].to_vec(),
        };
        fields.next().is_none().then_some(record)
    }
}

/// A decimal counter or timestamp as stored (the forced-fetch slot); 0 for anything else.
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
            version: 3,
            fetched_at: 1000,
            fresh_until: 1300,
            jwks: br#"{"keys":[]}"#.to_vec(),
        };
        assert_eq!(KeysRecord::decode(&record.encode()), Some(record));
        assert_eq!(KeysRecord::decode(b"no newline"), None);
        assert_eq!(KeysRecord::decode(b"1 1000 soon\n{}"), None);
        assert_eq!(KeysRecord::decode(b"1 1000\n{}"), None, "a field missing");
        assert_eq!(
            KeysRecord::decode(b"1 1000 1300 7\n{}"),
            None,
            "one too many"
        );
        assert_eq!(decode_version(Some(b"42")), 42);
        assert_eq!(decode_version(Some(b"\xff")), 0);
        assert_eq!(decode_version(None), 0);
    }

    #[test]
    fn configurations_get_their_own_keys() {
        let a = Keys::for_configuration(b"{\"a\":1}");
        let b = Keys::for_configuration(b"{\"a\":2}");
        assert_ne!(a.deny_list_head, b.deny_list_head);
        assert_ne!(a.deny_list_slot(1), b.deny_list_slot(1));
        assert_eq!(a.keys, Keys::for_configuration(b"{\"a\":1}").keys);
    }
}

/// Envoy's shared data for native tests, with its semantics (proxy-wasm-cpp-host
/// `SharedData::set`): every write takes a new CAS token from one counter; a token is compared
/// only when the key exists, so the first write of a key accepts any; keys are never removed.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        cell::{Cell, RefCell},
        collections::BTreeMap,
    };

    use super::SharedData;

    #[derive(Debug, Default)]
    pub(crate) struct EnvoyMap {
        entries: RefCell<BTreeMap<String, (Vec<u8>, u32)>>,
        last_cas: Cell<u32>,
    }

    impl SharedData for EnvoyMap {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
            self.entries
                .borrow()
                .get(key)
                .map(|(value, cas)| (value.clone(), Some(*cas)))
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let mut entries = self.entries.borrow_mut();
            if let (Some(cas), Some((_, current))) = (cas, entries.get(key)) {
                if cas != *current {
                    return false;
                }
            }
            self.last_cas.set(self.last_cas.get() + 1);
            entries.insert(key.to_string(), (value.to_vec(), self.last_cas.get()));
            true
        }
    }

    impl EnvoyMap {
        /// Keys held, cleared ones included (Envoy never removes one).
        pub(crate) fn key_count(&self) -> usize {
            self.entries.borrow().len()
        }

        /// Bytes of every key and value held.
        pub(crate) fn total_bytes(&self) -> usize {
            self.entries
                .borrow()
                .iter()
                .map(|(key, (value, _))| key.len() + value.len())
                .sum()
        }

        /// Bytes of the value under `key`.
        pub(crate) fn value_bytes(&self, key: &str) -> usize {
            self.entries.borrow().get(key).map_or(0, |(v, _)| v.len())
        }
    }
}
