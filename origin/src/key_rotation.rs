//! Signing keys shared by every instance through the `SigningKeys` table, and their rotation.
//!
//! A rotation adds a key of the next generation that starts signing `propagation_seconds`
//! later. Until then it is published as *next*, so every edge holds it before the first token it
//! signs arrives. The key it supersedes stays published until every token it signed has expired
//! (`access_token_ttl_seconds + retire_margin_seconds` after the new key starts signing), and is
//! then deleted. Key states follow from the stored schedule and the clock ([`KeySet`]), so
//! instances agree without talking to each other; each rereads the table every
//! `refresh_seconds`. Writes are conditional on the generation, so two instances rotating at
//! once add one key between them.

use std::{
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use edgeauth_core::{KeyRing, Policy};
use serde::Deserialize;

use crate::{
    audit::{Audit, RequestFacts},
    clock,
    key_encryption::{KeyEncryption, Sealer},
    keys::{read_key_file, KeyError, KeySet, KeyState, ScheduledKey, SigningAlgorithm, SigningKey},
    store::{SigningKeyStore, StoreError, StoredKey},
};

/// The audit subject of key events.
pub const AUDIT_SUBJECT: &str = "system:signing-keys";

const DAY: i64 = 24 * 3600;

/// `signing_keys` in the configuration. See the README, "Signing keys".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotationSettings {
    /// Days between scheduled rotations (a new key starts signing this long after the last).
    #[serde(default = "default_rotation_days")]
    pub rotation_days: u32,
    /// How long a new key is published before it signs.
    #[serde(default = "default_propagation")]
    pub propagation_seconds: u32,
    /// How often each instance rereads the keys.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u32,
    /// Added to the access-token lifetime before a superseded key retires: the edges' leeway and
    /// clock skew.
    #[serde(default = "default_retire_margin")]
    pub retire_margin_seconds: u32,
    /// The key-encryption key. Required with storage `dynamodb`; the embedded mode makes one in
    /// `data_dir` when it is not set.
    #[serde(default)]
    pub encryption: Option<KeyEncryption>,
}

fn default_rotation_days() -> u32 {
    90
}
fn default_propagation() -> u32 {
    3600
}
fn default_refresh() -> u32 {
    60
}
fn default_retire_margin() -> u32 {
    120
}

impl Default for KeyRotationSettings {
    fn default() -> Self {
        Self {
            rotation_days: default_rotation_days(),
            propagation_seconds: default_propagation(),
            refresh_seconds: default_refresh(),
            retire_margin_seconds: default_retire_margin(),
            encryption: None,
        }
    }
}

impl KeyRotationSettings {
    /// Checks the bounds and that a new key reaches every edge before it signs.
    pub fn validate(
        &self,
        jwks_max_age_seconds: u32,
        access_ttl_seconds: u32,
    ) -> Result<(), String> {
        if !(1..=600).contains(&self.refresh_seconds) {
            return Err("refresh_seconds must be between 1 and 600".into());
        }
        if !(1..=365).contains(&self.rotation_days) {
            return Err("rotation_days must be between 1 and 365".into());
        }
        if self.retire_margin_seconds > 86_400 {
            return Err("retire_margin_seconds must be at most a day".into());
        }
        // An edge may hold a JWKS fetched just before an instance read the new key.
        let needed = u64::from(jwks_max_age_seconds) + u64::from(self.refresh_seconds);
        if u64::from(self.propagation_seconds) < needed {
            return Err(format!(
                "propagation_seconds must be at least jwks_max_age_seconds + refresh_seconds ({needed}), or edges could meet a token before its key"
            ));
        }
        if self.propagation_seconds > 7 * 86_400 {
            return Err("propagation_seconds must be at most 7 days".into());
        }
        // At most three keys are published: next, current and previous.
        let cycle = i64::from(self.propagation_seconds)
            + i64::from(access_ttl_seconds)
            + i64::from(self.retire_margin_seconds);
        if i64::from(self.rotation_days) * DAY <= cycle {
            return Err("rotation_days must exceed propagation, token lifetime and margin".into());
        }
        Ok(())
    }
}

/// What the origin currently holds: the keys, and the ring that verifies its own tokens.
#[derive(Debug)]
pub struct KeySnapshot {
    /// The keys and their schedule.
    pub set: KeySet,
    /// The published keys, as the edges' core reads them.
    pub ring: KeyRing,
}

/// A key just added to the rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedKey {
    /// Its generation.
    pub generation: u64,
    /// Its `kid`.
    pub kid: String,
    /// When it starts signing.
    pub signs_from: i64,
}

/// Why a rotation was not made.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A next key is already published and waiting to sign.
    #[error("key {kid} is already waiting to sign (from {signs_from}); rotate again after that")]
    Pending {
        /// The waiting key.
        kid: String,
        /// When it starts signing.
        signs_from: i64,
    },
    /// Another instance added a key at the same moment; read the keys again.
    #[error("another instance rotated at the same moment")]
    Raced,
    /// The keys could not be read, decrypted or written.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The table did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The keys every handler signs and verifies with: a handle, cheap to clone.
#[derive(Clone)]
pub struct SigningKeys {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SigningKeyStore>,
    sealer: Sealer,
    settings: KeyRotationSettings,
    algorithm: SigningAlgorithm,
    retire_after: i64,
    verifier_policy: Policy,
    legacy_key_file: PathBuf,
    audit: Audit,
    snapshot: RwLock<Option<Arc<KeySnapshot>>>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys").finish_non_exhaustive()
    }
}

/// The associated data of a sealed key: everything stored beside it in the clear.
fn associated_data(generation: u64, kid: &str, alg: &str, signs_from: i64) -> Vec<u8> {
    format!("edgeauth signing key\0{generation}\0{kid}\0{alg}\0{signs_from}").into_bytes()
}

/// What [`SigningKeys::new`] needs besides the store.
#[derive(Debug)]
pub struct KeyContext {
    /// The schedule.
    pub settings: KeyRotationSettings,
    /// Algorithm of new keys.
    pub algorithm: SigningAlgorithm,
    /// The access-token lifetime, which a superseded key must outlive.
    pub access_ttl_seconds: u32,
    /// The policy the origin verifies its own tokens with.
    pub verifier_policy: Policy,
    /// The key file of earlier versions, imported into an empty table.
    pub legacy_key_file: PathBuf,
}

impl SigningKeys {
    /// A handle with no keys loaded yet: call [`SigningKeys::refresh`].
    pub fn new(
        store: Arc<dyn SigningKeyStore>,
        sealer: Sealer,
        context: KeyContext,
        audit: Audit,
    ) -> Self {
        let retire_after = i64::from(context.access_ttl_seconds)
            + i64::from(context.settings.retire_margin_seconds);
        Self {
            inner: Arc::new(Inner {
                store,
                sealer,
                settings: context.settings,
                algorithm: context.algorithm,
                retire_after,
                verifier_policy: context.verifier_policy,
                legacy_key_file: context.legacy_key_file,
                audit,
                snapshot: RwLock::new(None),
            }),
        }
    }

    /// The keys as last read; `None` until the first read succeeds.
    pub fn snapshot(&self) -> Option<Arc<KeySnapshot>> {
        // Writers only assign, so a poisoned lock still holds a whole snapshot.
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn seal(
        &self,
        generation: u64,
        key: &SigningKey,
        signs_from: i64,
    ) -> Result<StoredKey, KeyError> {
        let alg = key.algorithm().name();
        let plaintext = key.private_jwk().to_string();
        let aad = associated_data(generation, key.kid(), alg, signs_from);
        Ok(StoredKey {
            generation,
            kid: key.kid().to_owned(),
            alg: alg.to_owned(),
            signs_from,
            created_at: clock::now(),
            scheme: self.inner.sealer.scheme().to_owned(),
            sealed: self.inner.sealer.seal(&aad, plaintext.as_bytes())?,
        })
    }

    fn open(&self, stored: &StoredKey) -> Result<ScheduledKey, KeyError> {
        let invalid =
            |what: &str| KeyError::Invalid(format!("signing key {}: {what}", stored.generation));
        if stored.scheme != self.inner.sealer.scheme() {
            return Err(invalid(&format!(
                "sealed with unknown scheme `{}`",
                stored.scheme
            )));
        }
        let aad = associated_data(
            stored.generation,
            &stored.kid,
            &stored.alg,
            stored.signs_from,
        );
        let plaintext = self
            .inner
            .sealer
            .open(&aad, &stored.sealed)
            .map_err(|e| KeyError::Sealed(format!("signing key {}: {e}", stored.generation)))?;
        let jwk: serde_json::Value =
            serde_json::from_slice(&plaintext).map_err(|e| invalid(&e.to_string()))?;
        let key = SigningKey::from_private_jwk(&jwk)?;
        if key.kid() != stored.kid || key.algorithm().name() != stored.alg {
            return Err(invalid("kid or alg differs from the sealed key"));
        }
        Ok(ScheduledKey {
            generation: stored.generation,
            signs_from: stored.signs_from,
            key,
        })
    }

    async fn load(&self) -> Result<Option<KeySet>, RotationError> {
        let stored = self.inner.store.signing_keys().await?;
        let keys = stored
            .iter()
            .map(|s| self.open(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeySet::new(keys, self.inner.retire_after))
    }

    async fn audit(&self, event: &'static str, key: &str) {
        tracing::info!(event, kid = key, "signing keys changed");
        self.inner
            .audit
            .record_and_wait(event, AUDIT_SUBJECT, &RequestFacts::default())
            .await;
    }

    /// The first keys of an empty table: those of a key file of earlier versions (its current
    /// key signs from now, so its previous ones stay published for their tokens), or a new key.
    async fn create_first(&self, now: i64) -> Result<(), RotationError> {
        let (keys, event) = match read_key_file(&self.inner.legacy_key_file)? {
            Some(keys) => (keys, "signing_key_imported"),
            None => (
                vec![SigningKey::generate(self.inner.algorithm)?],
                "signing_key_created",
            ),
        };
        // The current key is written first, under the highest generation: an instance that
        // reads the table between two writes signs with it already.
        let count = keys.len() as u64;
        for (i, key) in keys.iter().enumerate() {
            let generation = count - i as u64;
            let signs_from = if i == 0 { now } else { 0 };
            match self
                .inner
                .store
                .add_signing_key(&self.seal(generation, key, signs_from)?)
                .await
            {
                Ok(()) => self.audit(event, key.kid()).await,
                // Another instance is creating them.
                Err(StoreError::Conflict) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn load_or_create(&self, now: i64) -> Result<KeySet, RotationError> {
        if let Some(set) = self.load().await? {
            return Ok(set);
        }
        self.create_first(now).await?;
        self.load()
            .await?
            .ok_or_else(|| KeyError::Invalid("the signing-keys table is still empty".into()).into())
    }

    async fn add_next(&self, set: &KeySet, now: i64) -> Result<AddedKey, RotationError> {
        let newest = set.newest();
        let generation = newest.generation + 1;
        let signs_from =
            (now + i64::from(self.inner.settings.propagation_seconds)).max(newest.signs_from + 1);
        let key = SigningKey::generate(self.inner.algorithm)?;
        match self
            .inner
            .store
            .add_signing_key(&self.seal(generation, &key, signs_from)?)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Err(RotationError::Raced),
            Err(e) => return Err(e.into()),
        }
        self.audit("signing_key_rotated", key.kid()).await;
        Ok(AddedKey {
            generation,
            kid: key.kid().to_owned(),
            signs_from,
        })
    }

    /// Adds a next key now (`origin keys rotate`), unless one is already waiting.
    pub async fn rotate(&self, now: i64) -> Result<AddedKey, RotationError> {
        let set = self.load_or_create(now).await?;
        let newest = set.newest();
        if newest.signs_from > now {
            return Err(RotationError::Pending {
                kid: newest.key.kid().to_owned(),
                signs_from: newest.signs_from,
            });
        }
        self.add_next(&set, now).await
    }

    /// Whether the scheduled rotation is due: the newest key has signed for `rotation_days`
    /// minus the propagation window, so its successor signs on the day.
    fn rotation_due(&self, set: &KeySet, now: i64) -> bool {
        let newest = set.newest();
        let settings = &self.inner.settings;
        newest.signs_from <= now
            && now
                >= newest.signs_from + i64::from(settings.rotation_days) * DAY
                    - i64::from(settings.propagation_seconds)
    }

    /// Rereads the table: creates the first key of an empty one, makes a scheduled rotation when
    /// due, deletes retired keys, and replaces the snapshot.
    pub async fn refresh(&self, now: i64) -> Result<Arc<KeySnapshot>, RotationError> {
        let mut set = self.load_or_create(now).await?;
        if self.rotation_due(&set, now) {
            match self.add_next(&set, now).await {
                Ok(_) | Err(RotationError::Raced) => {}
                Err(e) => return Err(e),
            }
            set = self.load_or_create(now).await?;
        }
        // One pass over the states: retired keys are deleted, the current one dates the metric.
        for (key, state, _) in set.states(now) {
            match state {
                KeyState::Retired => {
                    if self.inner.store.delete_signing_key(key.generation).await? {
                        self.audit("signing_key_retired", key.key.kid()).await;
                    }
                }
                KeyState::Current => crate::metrics::METRICS.signing_key_since(key.signs_from),
                KeyState::Next | KeyState::Previous => {}
            }
        }
        let jwks = set.jwks(now).to_string();
        let (ring, _) = KeyRing::from_jwks(jwks.as_bytes(), &self.inner.verifier_policy)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let snapshot = Arc::new(KeySnapshot { set, ring });
        *self
            .inner
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// Rereads the keys every `refresh_seconds` (every second until the first read succeeds), on
    /// the current runtime, for as long as the process runs.
    pub fn spawn_refresh(&self) {
        let keys = self.clone();
        let every = Duration::from_secs(u64::from(self.inner.settings.refresh_seconds));
        tokio::spawn(async move {
            loop {
                let wait = if keys.snapshot().is_some() {
                    every
                } else {
                    Duration::from_secs(1)
                };
                tokio::time::sleep(wait).await;
                if let Err(error) = keys.refresh(clock::now()).await {
                    tracing::warn!(%error, "signing keys not reread; the last ones stay in use");
                }
            }
        });
    }

    /// Every key with its state at `now` (`origin keys list`).
    pub async fn list(&self, now: i64) -> Result<Vec<KeyListing>, RotationError> {
        let set = self.load_or_create(now).await?;
        Ok(set
            .states(now)
            .into_iter()
            .map(|(key, state, retires_at)| KeyListing {
                generation: key.generation,
                kid: key.key.kid().to_owned(),
                alg: key.key.algorithm().name(),
                state,
                signs_from: key.signs_from,
                retires_at,
            })
            .collect())
    }
}

/// One line of `origin keys list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyListing {
    /// Generation.
    pub generation: u64,
    /// `kid`.
    pub kid: String,
    /// `alg`.
    pub alg: &'static str,
    /// State now.
    pub state: KeyState,
    /// When it signs (or signed) from.
    pub signs_from: i64,
    /// When a superseded key retires.
    pub retires_at: Option<i64>,
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Mutex};

    use edgeauth_core::verify_token;

    use super::*;
    use crate::{
        key_encryption::LocalKek,
        keys::AccessClaims,
        store::{AuditEvent, AuditLog},
    };

    const NOW: i64 = 1_767_225_600;
    const TTL: u32 = 900;

    /// The table, in memory, with DynamoDB's conditional writes.
    #[derive(Default)]
    struct MemoryKeys(Mutex<BTreeMap<u64, StoredKey>>);

    #[async_trait::async_trait]
    impl SigningKeyStore for MemoryKeys {
        async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
            Ok(self.0.lock().expect("lock").values().cloned().collect())
        }
        async fn add_signing_key(&self, key: &StoredKey) -> Result<(), StoreError> {
            let mut keys = self.0.lock().expect("lock");
            if keys.contains_key(&key.generation) {
                return Err(StoreError::Conflict);
            }
            keys.insert(key.generation, key.clone());
            Ok(())
        }
        async fn delete_signing_key(&self, generation: u64) -> Result<bool, StoreError> {
            Ok(self.0.lock().expect("lock").remove(&generation).is_some())
        }
    }

    #[derive(Default)]
    struct MemoryAudit(Mutex<Vec<AuditEvent>>);

    #[async_trait::async_trait]
    impl AuditLog for MemoryAudit {
        async fn record(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
            self.0.lock().expect("lock").extend_from_slice(events);
            Ok(())
        }
        async fn for_user(&self, _: &str, _: u32) -> Result<Vec<AuditEvent>, StoreError> {
            Ok(Vec::new())
        }
        async fn pseudonymise(&self, _: &str) -> Result<u32, StoreError> {
            Ok(0)
        }
    }

    fn policy() -> Policy {
        Policy::from_json(r#"{"issuers":["https://auth.example.test"],"audiences":["api"]}"#)
            .expect("policy")
    }

    fn settings() -> KeyRotationSettings {
        KeyRotationSettings {
            propagation_seconds: 600,
            retire_margin_seconds: 60,
            ..KeyRotationSettings::default()
        }
    }

    /// An instance over `table`, with its own handle, as a second process would have.
    fn instance(
        table: &Arc<MemoryKeys>,
        kek: &LocalKek,
        audit: &Arc<MemoryAudit>,
        legacy_key_file: PathBuf,
    ) -> SigningKeys {
        SigningKeys::new(
            table.clone(),
            Sealer::local(kek),
            KeyContext {
                settings: settings(),
                algorithm: SigningAlgorithm::EdDsa,
                access_ttl_seconds: TTL,
                verifier_policy: policy(),
                legacy_key_file,
            },
            Audit::new(audit.clone()),
        )
    }

    fn no_file() -> PathBuf {
        std::env::temp_dir().join(format!("edgeauth-none-{}", uuid::Uuid::new_v4()))
    }

    fn token(keys: &KeySnapshot, now: i64) -> String {
        let claims = AccessClaims {
            iss: "https://auth.example.test".into(),
            aud: "api".into(),
            sub: "6b0f5a8e-2d5c-4b1e-9a61-1c1a2b3c4d5e".into(),
            scope: "profile".into(),
            iat: now,
            exp: now + i64::from(TTL),
            jti: uuid::Uuid::new_v4().to_string(),
            sid: uuid::Uuid::new_v4().to_string(),
            amr: vec!["pwd".into()],
        };
        keys.set.mint_access_token(&claims, now).expect("token")
    }

    fn events(audit: &MemoryAudit) -> Vec<String> {
        audit
            .0
            .lock()
            .expect("lock")
            .iter()
            .map(|e| format!("{} {}", e.user_id, e.event))
            .collect()
    }

    /// Two instances on one fresh table, with its audit log.
    fn two_instances() -> (Arc<MemoryKeys>, Arc<MemoryAudit>, SigningKeys, SigningKeys) {
        let (table, audit) = (Arc::default(), Arc::default());
        let kek = LocalKek::generate().expect("kek");
        let a = instance(&table, &kek, &audit, no_file());
        let b = instance(&table, &kek, &audit, no_file());
        (table, audit, a, b)
    }

    #[tokio::test]
    async fn instances_share_one_key_and_a_rotation_is_published_before_it_signs() {
        let (table, audit, a, b) = two_instances();
        let first = a
            .refresh(NOW)
            .await
            .expect("keys")
            .set
            .current(NOW)
            .kid()
            .to_owned();
        assert_eq!(
            b.refresh(NOW).await.expect("keys").set.current(NOW).kid(),
            first
        );

        let added = b.rotate(NOW).await.expect("rotated");
        assert_eq!((added.generation, added.signs_from), (2, NOW + 600));
        assert!(matches!(
            b.rotate(NOW + 1).await,
            Err(RotationError::Pending { .. })
        ));

        // `a` has not reread: it signs with the first key and publishes only it.
        let before = a.snapshot().expect("keys");
        let old_token = token(&before, NOW + 10);
        // After its refresh, the next key is published while the first still signs.
        let next = a.refresh(NOW + 60).await.expect("keys");
        assert_eq!(next.ring.keys().len(), 2);
        assert_eq!(next.set.current(NOW + 60).kid(), first);
        // At signs_from both instances sign with the new key, without another read.
        assert_eq!(next.set.current(NOW + 600).kid(), added.kid);
        let new_token = token(&next, NOW + 600);
        for t in [&old_token, &new_token] {
            assert!(verify_token(t, NOW + 700, &next.ring, &policy()).is_ok());
        }

        // The first key retires when the tokens it signed have expired: 600 + 900 + 60.
        let still = b.refresh(NOW + 1559).await.expect("keys");
        assert_eq!(still.ring.keys().len(), 2);
        let retired = b.refresh(NOW + 1560).await.expect("keys");
        assert_eq!(retired.ring.keys().len(), 1);
        assert!(verify_token(&old_token, NOW + 1560 - 900, &retired.ring, &policy()).is_err());
        assert_eq!(
            table.0.lock().expect("lock").len(),
            1,
            "deleted from the table"
        );
        // The other instance finds it deleted already: one retirement event.
        a.refresh(NOW + 1561).await.expect("keys");
        assert_eq!(
            events(&audit),
            [
                "system:signing-keys signing_key_created",
                "system:signing-keys signing_key_rotated",
                "system:signing-keys signing_key_retired",
            ]
        );
    }

    #[tokio::test]
    async fn the_scheduled_rotation_is_made_once_so_the_next_key_signs_on_the_day() {
        let (_, _, a, b) = two_instances();
        a.refresh(NOW).await.expect("keys");
        let due = NOW + 90 * DAY - 600;
        assert_eq!(a.refresh(due - 1).await.expect("keys").ring.keys().len(), 1);
        // Both instances find it due at once; the conditional write lets one key in.
        let (x, y) = tokio::join!(a.refresh(due), b.refresh(due));
        x.expect("keys");
        y.expect("keys");
        let keys = a.list(due).await.expect("list");
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[1].state, KeyState::Next);
        assert_eq!(keys[1].signs_from, NOW + 90 * DAY);
    }

    #[tokio::test]
    async fn keys_of_a_key_file_are_imported_and_its_previous_key_stays_published() {
        let dir = no_file();
        let current = SigningKey::generate(SigningAlgorithm::EdDsa).expect("key");
        let previous = SigningKey::generate(SigningAlgorithm::Es256).expect("key");
        let file = serde_json::json!({"current": current.private_jwk(), "previous": [previous.private_jwk()]});
        crate::keys::write_owner_only(&dir.join("signing-keys.json"), file.to_string().as_bytes())
            .expect("file");
        let (table, kek, audit) = (
            Arc::default(),
            LocalKek::generate().expect("kek"),
            Arc::default(),
        );
        let a = instance(&table, &kek, &audit, dir.join("signing-keys.json"));
        let keys = a.refresh(NOW).await.expect("keys");
        assert_eq!(keys.set.current(NOW).kid(), current.kid());
        let listed = a.list(NOW).await.expect("list");
        assert_eq!(listed[0].kid, previous.kid());
        assert_eq!(listed[0].retires_at, Some(NOW + i64::from(TTL) + 60));
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn keys_sealed_under_another_kek_or_moved_are_refused() {
        let (table, audit) = (Arc::<MemoryKeys>::default(), Arc::default());
        let kek = LocalKek::generate().expect("kek");
        instance(&table, &kek, &audit, no_file())
            .refresh(NOW)
            .await
            .expect("keys");
        let stored = table.0.lock().expect("lock")[&1].clone();
        assert!(!String::from_utf8_lossy(&stored.sealed).contains("\"d\""));

        let other = instance(
            &table,
            &LocalKek::generate().expect("kek"),
            &audit,
            no_file(),
        );
        assert!(matches!(
            other.refresh(NOW).await,
            Err(RotationError::Keys(KeyError::Sealed(_)))
        ));
        // Moving the key's schedule in the table breaks its seal.
        table
            .0
            .lock()
            .expect("lock")
            .get_mut(&1)
            .expect("key")
            .signs_from = NOW - 1;
        let same = instance(&table, &kek, &audit, no_file());
        assert!(same.refresh(NOW).await.is_err());
        assert!(same.snapshot().is_none(), "nothing half-loaded");
    }

    #[test]
    fn a_next_key_must_have_time_to_reach_the_edges() {
        let s = KeyRotationSettings::default();
        assert!(s.validate(300, TTL).is_ok());
        let short = KeyRotationSettings {
            propagation_seconds: 300,
            ..KeyRotationSettings::default()
        };
        assert!(short
            .validate(300, TTL)
            .expect_err("too short")
            .contains("jwks_max_age_seconds"));
        let daily = KeyRotationSettings {
            rotation_days: 1,
            propagation_seconds: 86_000,
            ..KeyRotationSettings::default()
        };
        assert!(daily.validate(300, TTL).is_err());
    }
}
