//! Encryption of stored private keys: AES-256-GCM under a key-encryption key (KEK) from the
//! configuration, so the signing-keys table alone gives nobody a signing key.
//!
//! The associated data binds each ciphertext to its item (generation, `kid`, algorithm, start
//! of signing): moving a ciphertext to another item, or moving a key's schedule, makes it fail to
//! open. Only one backend exists; the configuration is tagged (`backend`) so a KMS or Secrets
//! Manager one can sit beside it.

use std::{fmt, path::Path};

use base64ct::{Base64, Encoding};
use ring::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN},
    rand::{SecureRandom, SystemRandom},
};
use serde::Deserialize;

use crate::keys::{write_owner_only, KeyError};

/// The scheme name stored with each sealed key.
pub const LOCAL_AES_256_GCM: &str = "local-aes256gcm";

/// File of the embedded mode's generated KEK under `data_dir`.
pub const EMBEDDED_KEK_FILE: &str = "key-encryption-key";

/// A 256-bit key-encryption key, written as standard base64. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct LocalKek([u8; 32]);

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalKek(<redacted>)")
    }
}

impl LocalKek {
    /// From its base64 text.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = Base64::decode_vec(text.trim())
            .map_err(|_| "the key must be standard base64".to_owned())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the key must be 32 bytes (44 base64 characters)".to_owned())?;
        Ok(Self(bytes))
    }

    /// An HMAC-SHA256 key for one `purpose`, derived with HKDF (RFC 5869), so the KEK itself
    /// is only ever an AES key and each purpose's key is independent of the others.
    pub fn hmac_key(&self, purpose: &[u8]) -> ring::hmac::Key {
        let info = [purpose];
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"edgeauth").extract(&self.0);
        match prk.expand(&info, ring::hmac::HMAC_SHA256) {
            Ok(okm) => ring::hmac::Key::from(okm),
            // HKDF-SHA256 can expand up to 8160 bytes; a 32-byte key always fits.
            Err(_) => unreachable!("a 32-byte HKDF output is always available"),
        }
    }

    /// Its base64 text.
    pub fn to_base64(&self) -> String {
        Base64::encode_string(&self.0)
    }

    /// A fresh key from the OS RNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Generation("the OS RNG failed".into()))?;
        Ok(Self(bytes))
    }

    /// The embedded mode's KEK: read from `data_dir`, or made there (owner-only) on first start.
    pub fn load_or_create_embedded(data_dir: &Path) -> Result<Self, KeyError> {
        let path = data_dir.join(EMBEDDED_KEK_FILE);
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_base64(&text).map_err(KeyError::Invalid),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kek = Self::generate()?;
                write_owner_only(&path, kek.to_base64().as_bytes()).map_err(io)?;
                Ok(kek)
            }
            Err(e) => Err(io(e)),
        }
    }
}

impl<'de> Deserialize<'de> for LocalKek {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// Where the key-encryption key comes from (`signing_keys.encryption`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyEncryption {
    /// A KEK in the configuration itself (an environment variable from a secret store).
    Local {
        /// The KEK.
        key: LocalKek,
    },
}

/// Seals and opens private keys.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Sealer {
    /// AES-256-GCM under `kek`.
    pub fn local(kek: &LocalKek) -> Self {
        // A 32-byte key is always a valid AES-256 key.
        let key = UnboundKey::new(&AES_256_GCM, &kek.0).map_or_else(
            |_| unreachable!("AES-256-GCM takes any 32-byte key"),
            LessSafeKey::new,
        );
        Self {
            key,
            rng: SystemRandom::new(),
        }
    }

    /// The scheme it writes ([`LOCAL_AES_256_GCM`]).
    pub fn scheme(&self) -> &'static str {
        LOCAL_AES_256_GCM
    }

    /// `nonce ‖ ciphertext ‖ tag`. Nonces are random: a KEK seals a few keys a year, far from
    /// the 2³² messages where random 96-bit nonces begin to risk a collision.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| KeyError::Generation("the OS RNG failed".into()))?;
        let mut sealed = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed,
            )
            .map_err(|_| KeyError::Sealed("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.append(&mut sealed);
        Ok(out)
    }

    /// The plaintext of [`Sealer::seal`]'s output, if it was sealed under this KEK with this
    /// associated data and not changed since.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let refused = || {
            KeyError::Sealed(
                "cannot decrypt: another key-encryption key, or the item was altered".into(),
            )
        };
        if sealed.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buffer)
            .map_err(|_| refused())?;
        Ok(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::local(&LocalKek::generate().expect("kek"))
    }

    #[test]
    fn what_is_sealed_opens_only_with_its_key_and_associated_data() {
        let sealer = sealer();
        let sealed = sealer.seal(b"item 1", b"private jwk").expect("sealed");
        assert!(!sealed
            .windows(b"private jwk".len())
            .any(|w| w == b"private jwk"));
        assert_eq!(
            sealer.open(b"item 1", &sealed).expect("opens"),
            b"private jwk"
        );
        assert!(sealer.open(b"item 2", &sealed).is_err(), "other item");
        assert!(super::Sealer::local(&LocalKek::generate().expect("kek"))
            .open(b"item 1", &sealed)
            .is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(sealer.open(b"item 1", &flipped).is_err(), "altered");
        assert!(sealer.open(b"item 1", &sealed[..5]).is_err(), "truncated");
    }

    #[test]
    fn a_kek_is_32_bytes_of_base64_and_never_printed() {
        let kek = LocalKek::generate().expect("kek");
        assert_eq!(LocalKek::from_base64(&kek.to_base64()), Ok(kek.clone()));
        assert!(LocalKek::from_base64("c2hvcnQ=").is_err());
        assert!(LocalKek::from_base64("not base64!").is_err());
        assert!(!format!("{kek:?}").contains(&kek.to_base64()));
        let config: KeyEncryption = serde_json::from_str(&format!(
            r#"{{"backend":"local","key":"{}"}}"#,
            kek.to_base64()
        ))
        .expect("config");
        assert_eq!(config, KeyEncryption::Local { key: kek });
    }

    #[test]
    fn the_embedded_kek_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("edgeauth-kek-{}", uuid::Uuid::new_v4()));
        let first = LocalKek::load_or_create_embedded(&dir).expect("made");
        let again = LocalKek::load_or_create_embedded(&dir).expect("read");
        assert_eq!(first, again);
        std::fs::remove_dir_all(dir).ok();
    }
}
