//! Signing keys and their schedule: a *next* key is published before it signs, the *current*
//! key signs access tokens, and *previous* keys stay in the JWKS until every token they signed
//! has expired, so edges holding the set never miss a key. Storage and refresh are in
//! [`crate::key_rotation`].
//!
//! Keys are typed like the verifier's: each fixes its algorithm, and its `kid` is its RFC 7638
//! thumbprint, so a `kid` can never name two different keys.

use std::{fmt, path::Path};

use base64ct::{Base64UrlUnpadded, Encoding};
use jwt_compact::{
    alg::{Ed25519, Es256, ModulusBits, Rsa, RsaPrivateKey},
    jwk::JsonWebKey,
    Algorithm, AlgorithmSignature,
};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

/// Algorithms the origin can sign with. EdDSA is the default: small keys, fast, deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// ECDSA P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    #[serde(rename = "RS256")]
    Rs256,
}

impl SigningAlgorithm {
    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        }
    }

    /// Parses a JWS `alg` name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::EdDsa, Self::Es256, Self::Rs256]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The OS RNG or the key generator failed.
    #[error("key generation failed: {0}")]
    Generation(String),
    /// A stored key is not a private JWK of a supported type.
    #[error("stored key is invalid: {0}")]
    Invalid(String),
    /// A stored key could not be encrypted or decrypted.
    #[error("sealed key: {0}")]
    Sealed(String),
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

enum PrivateKey {
    Ed(ed25519_dalek::SigningKey),
    Es(<Es256 as Algorithm>::SigningKey),
    Rs(RsaPrivateKey),
}

/// One private signing key with its `kid`.
pub struct SigningKey {
    kid: String,
    alg: SigningAlgorithm,
    key: PrivateKey,
}

impl fmt::Debug for SigningKey {
    // Never print private material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn with_members(jwk: &JsonWebKey<'_>, members: Value) -> Value {
    let mut value = serde_json::to_value(jwk).unwrap_or(Value::Null);
    if let (Some(object), Some(extra)) = (value.as_object_mut(), members.as_object()) {
        for (k, v) in extra {
            object.insert(k.clone(), v.clone());
        }
    }
    value
}

impl SigningKey {
    /// A fresh key from the OS RNG.
    pub fn generate(alg: SigningAlgorithm) -> Result<Self, KeyError> {
        let key = match alg {
            SigningAlgorithm::EdDsa => {
                PrivateKey::Ed(ed25519_dalek::SigningKey::generate(&mut OsRng))
            }
            SigningAlgorithm::Es256 => {
                PrivateKey::Es(<Es256 as Algorithm>::SigningKey::random(&mut OsRng))
            }
            SigningAlgorithm::Rs256 => {
                let (private, _) = Rsa::generate(&mut OsRng, ModulusBits::TwoKibibytes)
                    .map_err(|e| KeyError::Generation(e.to_string()))?;
                PrivateKey::Rs(private.into_inner())
            }
        };
        Ok(Self::from_parts(alg, key))
    }

    fn from_parts(alg: SigningAlgorithm, key: PrivateKey) -> Self {
        let mut this = Self {
            kid: String::new(),
            alg,
            key,
        };
        let thumbprint = this.public_key(|jwk| jwk.thumbprint::<Sha256>());
        this.kid = Base64UrlUnpadded::encode_string(&thumbprint);
        this
    }

    fn public_key<R>(&self, f: impl FnOnce(&JsonWebKey<'_>) -> R) -> R {
        match &self.key {
            PrivateKey::Ed(k) => f(&JsonWebKey::from(&k.verifying_key())),
            PrivateKey::Es(k) => f(&JsonWebKey::from(k.verifying_key())),
            PrivateKey::Rs(k) => f(&JsonWebKey::from(&k.to_public_key())),
        }
    }

    /// The key's `kid`: its RFC 7638 thumbprint, base64url.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm it signs with.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.alg
    }

    /// The public JWK as published: `kid`, `alg` and `use: sig` pin it to one purpose
    /// (RFC 8725 §3.1; the edges refuse a token whose `alg` differs from the key's).
    pub fn public_jwk(&self) -> Value {
        let members = json!({"kid": self.kid, "alg": self.alg.name(), "use": "sig"});
        self.public_key(|jwk| with_members(jwk, members))
    }

    /// The private JWK, to be stored encrypted ([`crate::key_rotation`]).
    pub fn private_jwk(&self) -> Value {
        let members = json!({"kid": self.kid, "alg": self.alg.name()});
        match &self.key {
            PrivateKey::Ed(k) => with_members(&JsonWebKey::from(k), members),
            PrivateKey::Es(k) => with_members(&JsonWebKey::from(k), members),
            PrivateKey::Rs(k) => with_members(&JsonWebKey::from(k), members),
        }
    }

    /// The key from its private JWK; its `kid`, if present, must be its thumbprint.
    pub fn from_private_jwk(value: &Value) -> Result<Self, KeyError> {
        let alg = value
            .get("alg")
            .and_then(Value::as_str)
            .and_then(SigningAlgorithm::from_name)
            .ok_or_else(|| KeyError::Invalid("missing or unknown `alg`".into()))?;
        let jwk: JsonWebKey<'_> =
            serde_json::from_value(value.clone()).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let invalid = |e: jwt_compact::jwk::JwkError| KeyError::Invalid(e.to_string());
        let key = match alg {
            SigningAlgorithm::EdDsa => {
                PrivateKey::Ed(ed25519_dalek::SigningKey::try_from(&jwk).map_err(invalid)?)
            }
            SigningAlgorithm::Es256 => {
                PrivateKey::Es(<Es256 as Algorithm>::SigningKey::try_from(&jwk).map_err(invalid)?)
            }
            SigningAlgorithm::Rs256 => {
                PrivateKey::Rs(RsaPrivateKey::try_from(&jwk).map_err(invalid)?)
            }
        };
        let key = Self::from_parts(alg, key);
        match value.get("kid").and_then(Value::as_str) {
            Some(kid) if kid != key.kid => Err(KeyError::Invalid(format!(
                "stored kid `{kid}` is not the key's thumbprint"
            ))),
            _ => Ok(key),
        }
    }

    /// Signs `message` with jwt-compact's implementation of the key's algorithm.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.key {
            PrivateKey::Ed(k) => Ed25519.sign(k, message).as_bytes().into_owned(),
            // Edges refuse the high-S twin of a signature (it is a second text of one token).
            PrivateKey::Es(k) => {
                let signature = Es256.sign(k, message);
                let low = signature.normalize_s().unwrap_or(signature);
                low.to_bytes().to_vec()
            }
            PrivateKey::Rs(k) => Rsa::rs256().sign(k, message).as_bytes().into_owned(),
        }
    }

    /// A compact JWS of `payload` with header `{alg, kid, typ}`.
    pub fn sign_jws(
        &self,
        typ: &str,
        payload: &impl Serialize,
    ) -> Result<String, serde_json::Error> {
        let header = json!({"alg": self.alg.name(), "kid": self.kid, "typ": typ});
        let header = Base64UrlUnpadded::encode_string(header.to_string().as_bytes());
        let payload = Base64UrlUnpadded::encode_string(&serde_json::to_vec(payload)?);
        let signing_input = format!("{header}.{payload}");
        let signature = Base64UrlUnpadded::encode_string(&self.sign(signing_input.as_bytes()));
        Ok(format!("{signing_input}.{signature}"))
    }
}

/// The claims of an access token: RFC 9068's minimum, and nothing that identifies a person
/// beyond the opaque `sub` (no email or name: tokens are readable by anyone who holds them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The origin's issuer URL.
    pub iss: String,
    /// The API audience.
    pub aud: String,
    /// The user's UUID.
    pub sub: String,
    /// Space-separated scopes (RFC 9068 §2.2.3).
    pub scope: String,
    /// Issued at, seconds.
    pub iat: i64,
    /// Expires at, seconds.
    pub exp: i64,
    /// Unique token id: the deny-list key.
    pub jti: String,
    /// The session (refresh family) the token belongs to, so logout can end it from the access
    /// token alone (`sid`, as in OpenID Connect); a random UUID, not personal data.
    pub sid: String,
    /// Authentication methods (RFC 8176), e.g. `["pwd"]`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub amr: Vec<String>,
}

/// `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// `typ` of revocation-feed entries, defined by the core that checks them at the edges.
pub use edgeauth_core::REVOCATION_TYPE;

/// Where a key is in its life. Derived from the schedule and the clock, never stored, so every
/// instance holding the same keys agrees on it without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not signing yet: edges learn it before the first token it signs.
    Next,
    /// Signs.
    Current,
    /// Superseded; published until every token it signed has expired.
    Previous,
    /// Superseded long enough ago that nothing it signed is still valid: no longer published.
    Retired,
}

/// A key with its place in the rotation: generations count up from 1, and a key signs from
/// `signs_from` until a later generation's `signs_from`.
#[derive(Debug)]
pub struct ScheduledKey {
    /// Its position in the sequence of keys.
    pub generation: u64,
    /// When it starts signing (Unix seconds).
    pub signs_from: i64,
    /// The key.
    pub key: SigningKey,
}

/// Every key of the rotation, and how long a superseded key stays published.
#[derive(Debug)]
pub struct KeySet {
    /// By generation, ascending; never empty.
    keys: Vec<ScheduledKey>,
    /// Seconds a key stays published after its successor starts signing.
    retire_after: i64,
}

impl KeySet {
    /// A set from `keys` (any order); `None` when there are none. A key stays published
    /// `retire_after` seconds after its successor starts signing: the access-token lifetime plus
    /// a margin for the edges' leeway and clock skew.
    pub fn new(mut keys: Vec<ScheduledKey>, retire_after: i64) -> Option<Self> {
        keys.sort_by_key(|k| k.generation);
        (!keys.is_empty()).then_some(Self { keys, retire_after })
    }

    /// One key that signs from the epoch: tools and tests that need no rotation.
    pub fn single(key: SigningKey) -> Self {
        Self {
            keys: vec![ScheduledKey {
                generation: 1,
                signs_from: 0,
                key,
            }],
            retire_after: 0,
        }
    }

    fn current_index(&self, now: i64) -> usize {
        // Only a clock behind the instance that made the first key finds none due: that key.
        self.keys
            .iter()
            .rposition(|k| k.signs_from <= now)
            .unwrap_or(0)
    }

    /// The key that signs at `now`.
    pub fn current(&self, now: i64) -> &SigningKey {
        &self.keys[self.current_index(now)].key
    }

    /// The state of every key at `now`, by generation, with when a superseded key retires.
    pub fn states(&self, now: i64) -> Vec<(&ScheduledKey, KeyState, Option<i64>)> {
        let current = self.current_index(now);
        self.keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let retires_at = self
                    .keys
                    .get(i + 1)
                    .map(|successor| successor.signs_from + self.retire_after);
                let state = if i == current {
                    KeyState::Current
                } else if i > current {
                    KeyState::Next
                } else if retires_at.is_some_and(|at| now >= at) {
                    KeyState::Retired
                } else {
                    KeyState::Previous
                };
                (key, state, retires_at.filter(|_| i < current))
            })
            .collect()
    }

    /// The key of the highest generation.
    pub fn newest(&self) -> &ScheduledKey {
        // `new` refuses an empty set.
        &self.keys[self.keys.len() - 1]
    }

    /// Signs an access token with the key current at `now`.
    pub fn mint_access_token(
        &self,
        claims: &AccessClaims,
        now: i64,
    ) -> Result<String, serde_json::Error> {
        self.current(now).sign_jws(ACCESS_TOKEN_TYPE, claims)
    }

    /// The JWKS document at `now`: the current key first, then the next and previous ones;
    /// retired keys are left out.
    pub fn jwks(&self, now: i64) -> Value {
        let mut states = self.states(now);
        states.retain(|(_, state, _)| *state != KeyState::Retired);
        states.sort_by_key(|(_, state, _)| *state != KeyState::Current);
        let keys: Vec<Value> = states
            .iter()
            .map(|(scheduled, _, _)| scheduled.key.public_jwk())
            .collect();
        json!({ "keys": keys })
    }
}

/// The key file of earlier versions (`signing-keys.json`): a current and previous private JWKs.
#[derive(Deserialize)]
struct KeyFile {
    current: Value,
    #[serde(default)]
    previous: Vec<Value>,
}

/// Reads a key file of earlier versions: its current key, then its previous ones. `None` if
/// there is no file.
pub fn read_key_file(path: &Path) -> Result<Option<Vec<SigningKey>>, KeyError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KeyError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let file: KeyFile =
        serde_json::from_slice(&bytes).map_err(|e| KeyError::Invalid(e.to_string()))?;
    std::iter::once(&file.current)
        .chain(&file.previous)
        .map(SigningKey::from_private_jwk)
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Writes `bytes` to `path` readable by the owner only, through a rename so a crash never leaves
/// half a file.
pub fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut out = options.open(&tmp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeauth_core::{verify_token, KeyRing, Policy};

    const NOW: i64 = 1_767_225_600;

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "https://auth.example.test".into(),
            aud: "api".into(),
            sub: "6b0f5a8e-2d5c-4b1e-9a61-1c1a2b3c4d5e".into(),
            scope: "profile".into(),
            iat: NOW,
            exp: NOW + 900,
            jti: "j-1".into(),
            sid: "s-1".into(),
            amr: vec!["pwd".into()],
        }
    }

    fn policy() -> Policy {
        Policy::from_json(r#"{"issuers":["https://auth.example.test"],"audiences":["api"]}"#)
            .expect("valid")
    }

    /// The edges refuse ES256 signatures with `s` in the high half; an unnormalised signer
    /// would have about half its tokens refused.
    #[test]
    fn es256_tokens_verify_at_the_edge_every_time() {
        let set = KeySet::single(SigningKey::generate(SigningAlgorithm::Es256).expect("key"));
        let (ring, _) =
            KeyRing::from_jwks(set.jwks(NOW).to_string().as_bytes(), &policy()).expect("jwks");
        for n in 0..32 {
            let claims = AccessClaims {
                jti: format!("j-{n}"),
                ..claims()
            };
            let token = set.mint_access_token(&claims, NOW).expect("token");
            verify_token(&token, NOW, &ring, &policy()).unwrap_or_else(|d| panic!("{n}: {d:?}"));
        }
    }

    #[test]
    fn minted_tokens_verify_at_the_edge_for_every_algorithm() {
        for alg in [
            SigningAlgorithm::EdDsa,
            SigningAlgorithm::Es256,
            SigningAlgorithm::Rs256,
        ] {
            let set = KeySet::single(SigningKey::generate(alg).expect("key"));
            let token = set.mint_access_token(&claims(), NOW).expect("token");
            let (ring, skipped) =
                KeyRing::from_jwks(set.jwks(NOW).to_string().as_bytes(), &policy()).expect("jwks");
            assert!(skipped.is_empty(), "{skipped:?}");
            let verified = verify_token(&token, NOW, &ring, &policy())
                .unwrap_or_else(|d| panic!("{alg:?}: {d:?}"));
            assert_eq!(
                verified.header().kid.as_deref(),
                Some(set.current(NOW).kid())
            );
            assert_eq!(verified.header().typ.as_deref(), Some("at+jwt"));
            assert_eq!(verified.claims().amr, ["pwd"]);
        }
    }

    #[test]
    fn published_keys_carry_no_private_material() {
        for alg in [
            SigningAlgorithm::EdDsa,
            SigningAlgorithm::Es256,
            SigningAlgorithm::Rs256,
        ] {
            let key = SigningKey::generate(alg).expect("key");
            let jwk = key.public_jwk();
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(jwk.get(private).is_none(), "{alg:?} publishes {private}");
            }
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["alg"], alg.name());
            assert_eq!(jwk["kid"], key.kid());
        }
    }

    fn scheduled(generation: u64, signs_from: i64) -> ScheduledKey {
        ScheduledKey {
            generation,
            signs_from,
            key: SigningKey::generate(SigningAlgorithm::EdDsa).expect("key"),
        }
    }

    fn published_kids(set: &KeySet, now: i64) -> Vec<String> {
        let (ring, _) =
            KeyRing::from_jwks(set.jwks(now).to_string().as_bytes(), &policy()).expect("jwks");
        ring.keys()
            .iter()
            .filter_map(|k| k.kid().map(str::to_owned))
            .collect()
    }

    #[test]
    fn a_next_key_is_published_before_it_signs_and_the_old_one_retires_after_its_tokens() {
        // Generation 2 signs from NOW + 100; tokens live 900 s, plus a 60 s margin.
        let set = KeySet::new(vec![scheduled(2, NOW + 100), scheduled(1, NOW - 5000)], 960)
            .expect("keys");
        let kid = |i: usize| set.keys[i].key.kid().to_owned();
        let state_of = |now: i64| -> Vec<KeyState> {
            set.states(now).into_iter().map(|(_, s, _)| s).collect()
        };

        assert_eq!(state_of(NOW), [KeyState::Current, KeyState::Next]);
        assert_eq!(set.current(NOW).kid(), kid(0));
        assert_eq!(published_kids(&set, NOW), [kid(0), kid(1)]);
        let old_token = set.mint_access_token(&claims(), NOW + 99).expect("token");

        assert_eq!(state_of(NOW + 100), [KeyState::Previous, KeyState::Current]);
        assert_eq!(set.current(NOW + 100).kid(), kid(1));
        assert_eq!(published_kids(&set, NOW + 100), [kid(1), kid(0)]);
        let (ring, _) = KeyRing::from_jwks(set.jwks(NOW + 1059).to_string().as_bytes(), &policy())
            .expect("jwks");
        assert!(
            verify_token(&old_token, NOW + 900, &ring, &policy()).is_ok(),
            "a token of the previous key verifies until it expires"
        );

        assert_eq!(state_of(NOW + 1060), [KeyState::Retired, KeyState::Current]);
        assert_eq!(published_kids(&set, NOW + 1060), [kid(1)]);
        assert_eq!(
            set.states(NOW)[0].2,
            None,
            "a current key has no retirement date"
        );
        assert_eq!(set.states(NOW + 100)[0].2, Some(NOW + 1060));
    }

    #[test]
    fn a_clock_behind_the_first_key_still_signs_with_it() {
        let set = KeySet::new(vec![scheduled(1, NOW)], 960).expect("keys");
        assert_eq!(set.current(NOW - 3).kid(), set.keys[0].key.kid());
        assert_eq!(set.states(NOW - 3)[0].1, KeyState::Current);
        assert!(KeySet::new(Vec::new(), 960).is_none());
    }

    #[test]
    fn a_key_file_of_earlier_versions_is_read_current_first() {
        let dir = std::env::temp_dir().join(format!("edgeauth-keys-{}", uuid::Uuid::new_v4()));
        let path = dir.join("signing-keys.json");
        assert!(read_key_file(&path).expect("no file is fine").is_none());
        let current = SigningKey::generate(SigningAlgorithm::Es256).expect("key");
        let previous = SigningKey::generate(SigningAlgorithm::EdDsa).expect("key");
        let file = json!({"current": current.private_jwk(), "previous": [previous.private_jwk()]});
        write_owner_only(&path, file.to_string().as_bytes()).expect("written");
        let keys = read_key_file(&path).expect("read").expect("a file");
        let kids: Vec<&str> = keys.iter().map(SigningKey::kid).collect();
        assert_eq!(kids, [current.kid(), previous.kid()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "written readable by others: {mode:o}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_tampered_key_file_is_refused() {
        let key = SigningKey::generate(SigningAlgorithm::EdDsa).expect("key");
        let mut jwk = key.private_jwk();
        jwk["kid"] = json!("not-the-thumbprint");
        assert!(matches!(
            SigningKey::from_private_jwk(&jwk),
            Err(KeyError::Invalid(_))
        ));
    }
}
