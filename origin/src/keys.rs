//! Signing keys: the current key signs access tokens; previous keys stay in the JWKS until every
//! token they signed has expired, so edges holding the set keep accepting those tokens.
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

    /// The private JWK, for the embedded key file only.
    fn private_jwk(&self) -> Value {
        let members = json!({"kid": self.kid, "alg": self.alg.name()});
        match &self.key {
            PrivateKey::Ed(k) => with_members(&JsonWebKey::from(k), members),
            PrivateKey::Es(k) => with_members(&JsonWebKey::from(k), members),
            PrivateKey::Rs(k) => with_members(&JsonWebKey::from(k), members),
        }
    }

    fn from_private_jwk(value: &Value) -> Result<Self, KeyError> {
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
            PrivateKey::Es(k) => Es256.sign(k, message).as_bytes().into_owned(),
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

/// The keys the origin holds: one signs, earlier ones are only published.
#[derive(Debug)]
pub struct KeySet {
    current: SigningKey,
    previous: Vec<SigningKey>,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    current: Value,
    #[serde(default)]
    previous: Vec<Value>,
}

impl KeySet {
    /// A set with one key.
    pub fn new(current: SigningKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }

    /// The signing key.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// Published for verification only.
    pub fn previous(&self) -> &[SigningKey] {
        &self.previous
    }

    /// The set after a rotation: a fresh `alg` key signs, the old current key stays published
    /// (so tokens it signed verify until they expire) and older keys are dropped.
    pub fn rotated(self, alg: SigningAlgorithm) -> Result<Self, KeyError> {
        Ok(Self {
            current: SigningKey::generate(alg)?,
            previous: vec![self.current],
        })
    }

    /// Signs an access token with the current key.
    pub fn mint_access_token(&self, claims: &AccessClaims) -> Result<String, serde_json::Error> {
        self.current.sign_jws(ACCESS_TOKEN_TYPE, claims)
    }

    /// The JWKS document: current key first, then previous ones.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = std::iter::once(&self.current)
            .chain(&self.previous)
            .map(SigningKey::public_jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// Loads a key file that must exist: several instances share one key set, so none of them may
    /// invent its own.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        let file: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self {
            current: SigningKey::from_private_jwk(&file.current)?,
            previous: file
                .previous
                .iter()
                .map(SigningKey::from_private_jwk)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Loads the embedded key file, or creates it with a fresh key of `alg` on first start.
    /// The file holds private keys: it is written owner-only, through a rename so a crash
    /// never leaves half a file.
    pub fn load_or_create(path: &Path, alg: SigningAlgorithm) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let set = Self::new(SigningKey::generate(alg)?);
                set.save(path).map_err(io)?;
                Ok(set)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Writes the key file (owner-only, through a rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;

        let file = KeyFile {
            current: self.current.private_jwk(),
            previous: self.previous.iter().map(SigningKey::private_jwk).collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut out = options.open(&tmp)?;
        out.write_all(&text)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    }
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

    #[test]
    fn minted_tokens_verify_at_the_edge_for_every_algorithm() {
        for alg in [
            SigningAlgorithm::EdDsa,
            SigningAlgorithm::Es256,
            SigningAlgorithm::Rs256,
        ] {
            let set = KeySet::new(SigningKey::generate(alg).expect("key"));
            let token = set.mint_access_token(&claims()).expect("token");
            let (ring, skipped) =
                KeyRing::from_jwks(set.jwks().to_string().as_bytes(), &policy()).expect("jwks");
            assert!(skipped.is_empty(), "{skipped:?}");
            let verified = verify_token(&token, NOW, &ring, &policy())
                .unwrap_or_else(|d| panic!("{alg:?}: {d:?}"));
            assert_eq!(verified.header().kid.as_deref(), Some(set.current().kid()));
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

    #[test]
    fn key_file_survives_a_restart_and_is_owner_only() {
        let dir = std::env::temp_dir().join(format!("edgeauth-keys-{}", uuid::Uuid::new_v4()));
        let path = dir.join("signing-keys.json");
        let first = KeySet::load_or_create(&path, SigningAlgorithm::EdDsa).expect("created");
        let again = KeySet::load_or_create(&path, SigningAlgorithm::Es256).expect("loaded");
        assert_eq!(first.current().kid(), again.current().kid());
        assert_eq!(again.current().algorithm(), SigningAlgorithm::EdDsa);
        // A token minted before the restart verifies against the set after it.
        let token = first.mint_access_token(&claims()).expect("token");
        let (ring, _) =
            KeyRing::from_jwks(again.jwks().to_string().as_bytes(), &policy()).expect("jwks");
        assert!(verify_token(&token, NOW, &ring, &policy()).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "key file is readable by others: {mode:o}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn rotation_keeps_the_old_key_published_and_drops_older_ones() {
        let first = KeySet::new(SigningKey::generate(SigningAlgorithm::EdDsa).expect("key"));
        let old_token = first.mint_access_token(&claims()).expect("token");
        let first_kid = first.current().kid().to_string();
        let second = first.rotated(SigningAlgorithm::EdDsa).expect("rotated");
        let new_token = second.mint_access_token(&claims()).expect("token");
        let (ring, _) =
            KeyRing::from_jwks(second.jwks().to_string().as_bytes(), &policy()).expect("jwks");
        assert!(verify_token(&old_token, NOW, &ring, &policy()).is_ok());
        assert!(verify_token(&new_token, NOW, &ring, &policy()).is_ok());
        assert_ne!(second.current().kid(), first_kid);

        let third = second.rotated(SigningAlgorithm::EdDsa).expect("rotated");
        let (ring, _) =
            KeyRing::from_jwks(third.jwks().to_string().as_bytes(), &policy()).expect("jwks");
        assert_eq!(ring.keys().len(), 2, "current and previous only");
        assert!(verify_token(&new_token, NOW, &ring, &policy()).is_ok());
        assert!(verify_token(&old_token, NOW, &ring, &policy()).is_err());
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
