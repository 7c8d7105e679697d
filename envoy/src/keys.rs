//! The key set: fetched by the fetcher on schedule, or by any VM for a token with an unknown
//! `kid` (the forced refetch, rate-limited across VMs), published as one [`KeysRecord`] and
//! copied by every VM into its own ring.
//!
//! - **One record, one version.** The version lives inside the record and is bumped with
//!   compare-and-swap after reading the last one, so two publishers never share a version and a
//!   VM that copies on a version change never misses a key set.
//! - **Never older keys over newer.** The record says when the call that fetched it started; a
//!   slow answer (a forced refetch overtaken by a scheduled one, say) is not written over a key
//!   set fetched later, and its VM adopts the stored one instead.

use edgeauth_core::forced_fetch_claimable;

use crate::shared::{decode_version, KeysRecord, SharedData};

/// Publication attempts before giving up (other VMs kept writing).
const ATTEMPTS: usize = 4;

/// What publishing a key set did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored under this version.
    Stored(u64),
    /// Not stored: shared data holds a key set fetched later, to use instead.
    Newer(KeysRecord),
}

/// Why a key set was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishKeysError {
    /// Shared data refused every attempt.
    #[error("shared data refused the key set")]
    Refused,
}

/// Publishes `jwks`, fetched by a call started at `fetched_at` and fresh until `fresh_until`,
/// under `key`, unless the stored key set was fetched later.
pub fn publish_keys(
    shared: &impl SharedData,
    key: &str,
    fetched_at: i64,
    fresh_until: i64,
    jwks: &[u8],
) -> Result<Published, PublishKeysError> {
    for _ in 0..ATTEMPTS {
        let (bytes, cas) = shared.get(key).unwrap_or_default();
        let current = KeysRecord::decode(&bytes);
        if let Some(newer) = current.clone().filter(|c| c.fetched_at > fetched_at) {
            return Ok(Published::Newer(newer));
        }
        let record = KeysRecord {
            version: current.map_or(0, |c| c.version).wrapping_add(1),
            fetched_at,
            fresh_until,
            jwks: jwks.to_vec(),
        };
        if shared.set(key, &record.encode(), cas) {
            return Ok(Published::Stored(record.version));
        }
    }
    Err(PublishKeysError::Refused)
}

/// The stored key set, if there is a readable one.
pub fn stored_keys(shared: &impl SharedData, key: &str) -> Option<KeysRecord> {
    shared
        .get(key)
        .and_then(|(bytes, _)| KeysRecord::decode(&bytes))
}

/// Claims the shared right to refetch the JWKS for an unknown `kid` at `now`: at most once per
/// `interval` seconds across every VM, so made-up `kid`s cannot flood the origin. `key` holds
/// when the last claim was made.
pub fn claim_forced_fetch(shared: &impl SharedData, key: &str, now: i64, interval: u32) -> bool {
    let (last, cas) = shared.get(key).unwrap_or_default();
    let last = i64::try_from(decode_version(Some(&last)))
        .ok()
        .filter(|&at| at > 0);
    if !forced_fetch_claimable(last, now, interval) {
        return false;
    }
    shared.set(key, now.to_string().as_bytes(), cas)
}

/// Largest JWKS read.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

#[cfg(target_family = "wasm")]
pub(crate) use self::vm::call_jwks;

/// The VM's side: copying, fetching and publishing through the host.
#[cfg(target_family = "wasm")]
mod vm {
    use std::sync::Arc;

    use crate::abi::LogLevel;
    use edgeauth_core::{freshness_seconds, KeyRing};

    use super::{claim_forced_fetch, publish_keys, stored_keys, Published};
    use crate::{
        call_answer::CallAnswer,
        filter::Vm,
        host::{call_origin, log, Host},
        metrics::bump,
        settings::Settings,
        shared::KeysRecord,
    };

    impl Vm {
        /// Copies the shared key set into this VM's ring when its version changed.
        pub(crate) fn sync_keys(&mut self) {
            let Some(record) = stored_keys(&Host, &self.shared.keys) else {
                return;
            };
            if record.version != self.keys_version {
                self.adopt(&record);
            }
        }

        /// Takes a key set from shared data; one that does not parse any more (a policy change
        /// in this VM, say) is remembered so it is not parsed again every tick.
        fn adopt(&mut self, record: &KeysRecord) {
            if let Ok((ring, _)) = KeyRing::from_jwks(&record.jwks, &self.settings.policy) {
                self.keys
                    .store(Arc::new(ring), record.fetched_at, record.fresh_until);
            }
            self.keys_version = record.version;
        }

        /// Takes the answer to a JWKS call dispatched at `started_at`: on success the keys are
        /// this VM's at once and every other VM's on its next tick.
        pub(crate) fn accept_keys(
            &mut self,
            answer: &CallAnswer,
            started_at: i64,
            now: i64,
        ) -> Result<usize, String> {
            let result = self.parse_keys(answer, started_at, now);
            match &result {
                Ok(_) => bump(self.metrics.jwks_fetch_success, 1),
                Err(error) => {
                    bump(self.metrics.jwks_fetch_failure, 1);
                    log(
                        LogLevel::Warn,
                        serde_json::json!({"event": "jwks_fetch_failed", "error": error}),
                    );
                }
            }
            result
        }

        fn parse_keys(
            &mut self,
            answer: &CallAnswer,
            started_at: i64,
            now: i64,
        ) -> Result<usize, String> {
            let body = answer.body_if_ok(super::MAX_JWKS_BYTES)?;
            let (ring, skipped) = KeyRing::from_jwks(body, &self.settings.policy)
                .map_err(|e| format!("unusable JWKS: {e}"))?;
            for key in skipped {
                log(
                    LogLevel::Warn,
                    serde_json::json!({"event": "jwks_key_skipped", "kid": key.kid, "reason": format!("{:?}", key.reason)}),
                );
            }
            let max_age = freshness_seconds(answer.cache_control.as_deref())
                .unwrap_or(self.settings.keys_default_max_age);
            let fresh_until = now.saturating_add(i64::from(max_age));
            let published = publish_keys(&Host, &self.shared.keys, started_at, fresh_until, body)
                .map_err(|e| e.to_string())?;
            let count = ring.keys().len();
            match published {
                Published::Stored(version) => {
                    let kids: Vec<&str> = ring.keys().iter().filter_map(|k| k.kid()).collect();
                    log(
                        LogLevel::Info,
                        serde_json::json!({"event": "jwks_loaded", "kids": kids, "fresh_for": max_age, "version": version}),
                    );
                    self.keys.store(Arc::new(ring), started_at, fresh_until);
                    self.keys_version = version;
                }
                // A call started later has already published: its keys are the ones to hold.
                Published::Newer(record) => self.adopt(&record),
            }
            Ok(count)
        }

        /// Claims the shared forced-fetch slot (see [`claim_forced_fetch`]).
        pub(crate) fn claim_forced_fetch(&mut self, now: i64) -> bool {
            let interval = self.settings.keys_refetch_interval;
            let claimed = claim_forced_fetch(&Host, &self.shared.forced_fetch, now, interval);
            if claimed {
                self.keys.attempted(now, true);
            }
            claimed
        }
    }

    /// Starts a JWKS call to the origin.
    pub(crate) fn call_jwks(settings: &Settings) -> Option<u32> {
        call_origin(
            &settings.jwks,
            &settings.jwks.path,
            None,
            settings.fetch_timeout_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::testing::EnvoyMap;

    const KEY: &str = "edgeauth.test.keys";

    #[test]
    fn an_older_key_set_never_overwrites_a_newer_one() {
        let shared = EnvoyMap::default();
        // The scheduled fetch started at 1010 and answered first.
        assert_eq!(
            publish_keys(&shared, KEY, 1010, 1310, b"{\"keys\":[\"new\"]}"),
            Ok(Published::Stored(1))
        );
        // A forced refetch started at 1000 answers late, with the keys before a rotation.
        let late = publish_keys(&shared, KEY, 1000, 1300, b"{\"keys\":[\"old\"]}");
        let Ok(Published::Newer(stored)) = late else {
            panic!("the late answer was stored: {late:?}");
        };
        assert_eq!((stored.version, stored.fetched_at), (1, 1010));
        let kept = stored_keys(&shared, KEY).expect("a record");
        assert_eq!(kept.jwks, b"{\"keys\":[\"new\"]}");
    }

    #[test]
    fn every_publication_gets_its_own_version_in_the_same_write() {
        let shared = EnvoyMap::default();
        assert_eq!(
            publish_keys(&shared, KEY, 1000, 1300, b"a"),
            Ok(Published::Stored(1))
        );
        assert_eq!(
            publish_keys(&shared, KEY, 1000, 1300, b"b"),
            Ok(Published::Stored(2))
        );
        let record = stored_keys(&shared, KEY).expect("a record");
        assert_eq!((record.version, record.jwks.as_slice()), (2, &b"b"[..]));
        // The only key: the version cannot be read apart from the key set it names.
        assert_eq!(shared.key_count(), 1);
    }

    #[test]
    fn the_forced_fetch_is_claimed_once_per_interval_across_vms() {
        let shared = EnvoyMap::default();
        let key = "edgeauth.test.keys.forced";
        assert!(claim_forced_fetch(&shared, key, 1000, 30));
        assert!(!claim_forced_fetch(&shared, key, 1029, 30), "held");
        assert!(claim_forced_fetch(&shared, key, 1030, 30));
    }
}
