//! Public keys by `kid`, built from a JWKS (RFC 7517). Fetching is the host's job; this module
//! only turns bytes into typed keys, each fixed to the algorithms it may verify.

use alloc::{
    borrow::ToOwned,
    format,
    string::{String, ToString},
    vec::Vec,
};
use core::fmt;

use jwt_compact::{
    alg::{Es256, Hs256Key, RsaPublicKey},
    jwk::JsonWebKey,
    Algorithm as JwtAlgorithm,
};
use serde::{de::IgnoredAny, Deserialize};
use sha2::Sha256;

use crate::{alg::Algorithm, config::Policy, ed25519::Ed25519Key};

/// A JWKS document larger than this is refused unread.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys past this index are skipped: a ring is a handful of keys (current, previous, next).
pub const MAX_KEYS: usize = 64;
/// RSA keys shorter than this are refused (RFC 7518 §3.3 requires 2048 bits).
pub const MIN_RSA_BITS: usize = 2048;
/// RSA keys longer than this are refused: verification cost grows with the modulus.
pub const MAX_RSA_BITS: usize = 4096;
/// HMAC secrets shorter than the hash output are refused (RFC 7518 §3.2).
pub const MIN_HMAC_BYTES: usize = 32;

/// Why a whole JWKS was refused. The host keeps its previous ring when this happens.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwksError {
    /// Over [`MAX_JWKS_BYTES`].
    #[error("key set is {0} bytes, over the {MAX_JWKS_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not a JSON object with a `keys` array.
    #[error("key set is not a JWKS document: {0}")]
    Malformed(String),
    /// Every key was skipped; the reasons are listed.
    #[error("key set has no usable key ({} skipped)", .0.len())]
    NoUsableKey(Vec<SkippedKey>),
}

/// Why one key of a set was not taken into the ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SkipReason {
    /// `kty` is not `OKP`, `EC`, `RSA` or `oct`.
    #[error("unsupported key type `{0}`")]
    UnsupportedKeyType(String),
    /// The curve is not Ed25519 (OKP) or P-256 (EC).
    #[error("unsupported curve `{0}`")]
    UnsupportedCurve(String),
    /// `use` is present and not `sig`.
    #[error("`use` is `{0}`, not `sig`")]
    NotForSignatures(String),
    /// `key_ops` is present and lacks `verify`.
    #[error("`key_ops` does not include `verify`")]
    NotForVerification,
    /// `alg` names an algorithm the core does not know.
    #[error("unknown `alg` `{0}`")]
    UnknownAlgorithm(String),
    /// `alg` does not fit the key type (for example `RS256` on an EC key).
    #[error("`alg` `{0}` does not fit the key type")]
    AlgorithmDoesNotFitKey(String),
    /// The policy accepts none of the algorithms this key could verify.
    #[error("the policy accepts no algorithm this key can verify")]
    AlgorithmNotAllowed,
    /// RSA modulus out of bounds.
    #[error("RSA modulus of {0} bits is outside {MIN_RSA_BITS}..={MAX_RSA_BITS}")]
    RsaSize(usize),
    /// HMAC secret shorter than [`MIN_HMAC_BYTES`].
    #[error("HMAC secret shorter than {MIN_HMAC_BYTES} bytes")]
    WeakSecret,
    /// An Ed25519 key of small order: anything "verifies" under it.
    #[error("Ed25519 key of small order")]
    WeakKey,
    /// A private asymmetric key was published; taking it would hide a leak.
    #[error("private key material is published in the key set")]
    PrivateKeyPublished,
    /// A second key with a `kid` already in the ring: selection would be ambiguous.
    #[error("duplicate `kid`")]
    DuplicateKid,
    /// Missing or mistyped members, or bytes that are not a valid key.
    #[error("invalid key: {0}")]
    Invalid(String),
    /// Past [`MAX_KEYS`].
    #[error("more than {MAX_KEYS} keys in the set")]
    TooManyKeys,
}

/// A key left out of the ring, with where it stood in the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Position in `keys`.
    pub index: usize,
    /// Its `kid`, if it had a readable one.
    pub kid: Option<String>,
    /// Why.
    pub reason: SkipReason,
}

pub(crate) enum KeyMaterial {
    Ed25519(Ed25519Key),
    P256(<Es256 as JwtAlgorithm>::VerifyingKey),
    Rsa(RsaPublicKey),
    Hmac(Hs256Key),
}

impl fmt::Debug for KeyMaterial {
    // Never print key bytes: an HMAC secret must not reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ed25519(_) => "Ed25519",
            Self::P256(_) => "P-256",
            Self::Rsa(_) => "RSA",
            Self::Hmac(_) => "HMAC",
        })
    }
}

/// RFC 7638 thumbprint (SHA-256) of a key: identifies the key material itself, whatever its `kid`.
pub type Thumbprint = [u8; 32];

/// One usable key.
#[derive(Debug)]
pub struct RingKey {
    kid: Option<String>,
    /// The JWK's own `alg`; when present it is the only algorithm the key verifies (RFC 8725 §3.1).
    jwk_alg: Option<Algorithm>,
    pub(crate) material: KeyMaterial,
    thumbprint: Thumbprint,
}

impl RingKey {
    /// The key's `kid`.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// RFC 7638 thumbprint of the public key.
    pub fn thumbprint(&self) -> &Thumbprint {
        &self.thumbprint
    }

    /// Whether this key may verify a token of `alg`.
    pub fn verifies(&self, alg: Algorithm) -> bool {
        if let Some(fixed) = self.jwk_alg {
            return fixed == alg;
        }
        matches!(
            (&self.material, alg),
            (KeyMaterial::Ed25519(_), Algorithm::EdDsa)
                | (KeyMaterial::P256(_), Algorithm::Es256)
                | (KeyMaterial::Rsa(_), Algorithm::Rs256 | Algorithm::Ps256)
                | (KeyMaterial::Hmac(_), Algorithm::Hs256)
        )
    }
}

/// A ring key's public material, for hosts that verify with their own crypto (WebCrypto in the
/// Worker): the encodings WebCrypto's `importKey` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Ed25519: the 32-byte public key (`importKey("raw", …, "Ed25519")`).
    Ed25519(Vec<u8>),
    /// P-256: the uncompressed SEC1 point, `04 || x || y` (`importKey("raw", …, ECDSA P-256)`).
    P256(Vec<u8>),
    /// RSA: modulus and public exponent, big-endian (`importKey("jwk", {kty: "RSA", n, e})`).
    Rsa {
        /// `n`
        modulus: Vec<u8>,
        /// `e`
        exponent: Vec<u8>,
    },
}

impl RingKey {
    /// The public material, or `None` for an HMAC secret, which never leaves the core.
    pub fn public_key(&self) -> Option<PublicKey> {
        let jwk = match &self.material {
            KeyMaterial::Ed25519(k) => JsonWebKey::from(k.verifying_key()),
            KeyMaterial::P256(k) => JsonWebKey::from(k),
            KeyMaterial::Rsa(k) => JsonWebKey::from(k),
            KeyMaterial::Hmac(_) => return None,
        };
        match jwk {
            JsonWebKey::KeyPair { x, .. } => Some(PublicKey::Ed25519(x.into_owned())),
            JsonWebKey::EllipticCurve { x, y, .. } => {
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Some(PublicKey::P256(point))
            }
            JsonWebKey::Rsa {
                modulus,
                public_exponent,
                ..
            } => Some(PublicKey::Rsa {
                modulus: modulus.into_owned(),
                exponent: public_exponent.into_owned(),
            }),
            _ => None,
        }
    }
}

/// The keys a host currently trusts: typically the origin's current, previous and next key.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<RingKey>,
}

/// Why no key could be selected for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SelectError {
    UnknownKid,
    AlgorithmMismatch,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// The JWK members the core reads besides key material. Unknown members are ignored, as RFC 7517
/// §4 asks; `x5c`/`x5u` are never read, let alone fetched.
#[derive(Deserialize)]
struct JwkMeta {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    d: Option<IgnoredAny>,
}

impl KeyRing {
    /// Parses a JWKS and keeps every key this policy can use. Unusable keys are listed, not fatal;
    /// a set with no usable key at all is an error so the host keeps its last good ring.
    pub fn from_jwks(json: &[u8], policy: &Policy) -> Result<(Self, Vec<SkippedKey>), JwksError> {
        if json.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge(json.len()));
        }
        let raw: RawJwks =
            serde_json::from_slice(json).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let mut ring = Self::default();
        let mut skipped = Vec::new();
        for (index, value) in raw.keys.iter().enumerate() {
            let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
            let outcome = if index >= MAX_KEYS {
                Err(SkipReason::TooManyKeys)
            } else {
                parse_key(value, policy).and_then(|key| {
                    if key.kid.is_some() && ring.keys.iter().any(|k| k.kid == key.kid) {
                        Err(SkipReason::DuplicateKid)
                    } else {
                        Ok(key)
                    }
                })
            };
            match outcome {
                Ok(key) => ring.keys.push(key),
                Err(reason) => skipped.push(SkippedKey { index, kid, reason }),
            }
        }
        if ring.keys.is_empty() {
            return Err(JwksError::NoUsableKey(skipped));
        }
        Ok((ring, skipped))
    }

    /// The keys, in JWKS order.
    pub fn keys(&self) -> &[RingKey] {
        &self.keys
    }

    /// Whether a key with this thumbprint is still in the ring (the cache asks this on a hit).
    pub fn contains(&self, thumbprint: &Thumbprint) -> bool {
        self.keys.iter().any(|k| &k.thumbprint == thumbprint)
    }

    /// Finds the key for a token's `kid` and `alg`. Without a `kid`, the ring must hold exactly one
    /// key for that algorithm: trying every key would let one token cost many verifications.
    pub(crate) fn select(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<&RingKey, SelectError> {
        match kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(SelectError::UnknownKid)?;
                if key.verifies(alg) {
                    Ok(key)
                } else {
                    Err(SelectError::AlgorithmMismatch)
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.verifies(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(key),
                    _ => Err(SelectError::UnknownKid),
                }
            }
        }
    }
}

fn parse_key(value: &serde_json::Value, policy: &Policy) -> Result<RingKey, SkipReason> {
    let meta = JwkMeta::deserialize(value).map_err(|e| SkipReason::Invalid(e.to_string()))?;
    if let Some(use_) = &meta.use_ {
        if use_ != "sig" {
            return Err(SkipReason::NotForSignatures(use_.clone()));
        }
    }
    if let Some(ops) = &meta.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Err(SkipReason::NotForVerification);
        }
    }
    let jwk_alg = match &meta.alg {
        Some(name) => Some(
            Algorithm::from_name(name).ok_or_else(|| SkipReason::UnknownAlgorithm(name.clone()))?,
        ),
        None => None,
    };
    let curve = meta.crv.as_deref().unwrap_or("");
    let (material, fits): (_, &[Algorithm]) = match meta.kty.as_str() {
        "OKP" | "EC" | "RSA" if meta.d.is_some() => return Err(SkipReason::PrivateKeyPublished),
        "OKP" if curve == "Ed25519" => {
            let key = jwk(value)?;
            let key = ed25519_dalek::VerifyingKey::try_from(&key)
                .map_err(|e| SkipReason::Invalid(e.to_string()))?;
            if key.is_weak() {
                return Err(SkipReason::WeakKey);
            }
            (Read::Ed25519(key), &[Algorithm::EdDsa])
        }
        "EC" if curve == "P-256" => {
            let key = jwk(value)?;
            let key = <Es256 as JwtAlgorithm>::VerifyingKey::try_from(&key)
                .map_err(|e| SkipReason::Invalid(e.to_string()))?;
            (Read::Ready(KeyMaterial::P256(key)), &[Algorithm::Es256])
        }
        "OKP" | "EC" => return Err(SkipReason::UnsupportedCurve(curve.to_owned())),
        "RSA" => {
            let key = jwk(value)?;
            if let JsonWebKey::Rsa { modulus, .. } = &key {
                let bits = modulus_bits(modulus);
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(SkipReason::RsaSize(bits));
                }
            }
            let key =
                RsaPublicKey::try_from(&key).map_err(|e| SkipReason::Invalid(e.to_string()))?;
            (
                Read::Ready(KeyMaterial::Rsa(key)),
                &[Algorithm::Rs256, Algorithm::Ps256],
            )
        }
        "oct" => {
            let key = jwk(value)?;
            if let JsonWebKey::Symmetric { secret } = &key {
                if secret.len() < MIN_HMAC_BYTES {
                    return Err(SkipReason::WeakSecret);
                }
            }
            let key = Hs256Key::try_from(&key).map_err(|e| SkipReason::Invalid(e.to_string()))?;
            (Read::Ready(KeyMaterial::Hmac(key)), &[Algorithm::Hs256])
        }
        other => return Err(SkipReason::UnsupportedKeyType(other.to_owned())),
    };
    if let Some(alg) = jwk_alg {
        if !fits.contains(&alg) {
            return Err(SkipReason::AlgorithmDoesNotFitKey(alg.name().to_owned()));
        }
    }
    // A symmetric policy takes only `oct` keys and an asymmetric one never does: the algorithm
    // list of the policy decides, so a stray secret cannot join a public-key ring.
    let usable = match jwk_alg {
        Some(alg) => policy.algorithms().contains(&alg),
        None => fits.iter().any(|a| policy.algorithms().contains(a)),
    };
    if !usable {
        return Err(SkipReason::AlgorithmNotAllowed);
    }
    let thumbprint = thumbprint_of(value)?;
    let material = match material {
        Read::Ready(material) => material,
        // Last, for a key the ring keeps: with `eddsa-tables` this builds the key's 30 KB table.
        Read::Ed25519(key) => {
            KeyMaterial::Ed25519(Ed25519Key::new(key).ok_or(SkipReason::WeakKey)?)
        }
    };
    Ok(RingKey {
        kid: meta.kid,
        jwk_alg,
        material,
        thumbprint,
    })
}

/// A key's material as its JWK gave it. An Ed25519 key is checked at once but made ready to
/// verify only once the policy's checks keep it (see [`Ed25519Key`]).
enum Read {
    Ready(KeyMaterial),
    Ed25519(ed25519_dalek::VerifyingKey),
}

fn jwk(value: &serde_json::Value) -> Result<JsonWebKey<'static>, SkipReason> {
    JsonWebKey::deserialize(value).map_err(|e| SkipReason::Invalid(e.to_string()))
}

fn thumbprint_of(value: &serde_json::Value) -> Result<Thumbprint, SkipReason> {
    let key = jwk(value)?;
    Ok(key.thumbprint::<Sha256>().into())
}

/// Bit length of a big-endian modulus, ignoring leading zero bytes.
fn modulus_bits(modulus: &[u8]) -> usize {
    let trimmed = match modulus.iter().position(|&b| b != 0) {
        Some(first) => &modulus[first..],
        None => return 0,
    };
    trimmed.len() * 8 - trimmed[0].leading_zeros() as usize
}

/// Hex form of a thumbprint, for logs and the CLI.
pub fn thumbprint_hex(thumbprint: &Thumbprint) -> String {
    thumbprint.iter().map(|b| format!("{b:02x}")).collect()
}
