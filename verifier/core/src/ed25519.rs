//! Ed25519 public keys as the core holds them, and `EdDSA` verification under them (RFC 8032
//! §5.1.7, with ed25519-dalek `verify_strict`'s refusals of a small-order `R` or key and a
//! non-canonical `R` or `s`).
//!
//! With `eddsa-tables`, a key carries a table of multiples of −A, built once when the JWKS is
//! read: a verifying key lives for months, so the per-signature work can move to load time.
//! [s]B and [k](−A) then take 64 table additions each and no doublings, where
//! `verify_strict` doubles 253 times and also decompresses `R`: a third less time in V8 (see
//! the feature's note in Cargo.toml). Building the table costs about thirty signatures, once
//! per key, and it holds 30 KB.

#[cfg(feature = "eddsa-tables")]
use alloc::boxed::Box;

#[cfg(feature = "eddsa-tables")]
use curve25519_dalek::{
    constants::ED25519_BASEPOINT_TABLE, edwards::EdwardsBasepointTable, traits::BasepointTable,
    Scalar,
};
use ed25519_dalek::VerifyingKey;
#[cfg(feature = "eddsa-tables")]
use sha2::{Digest, Sha512};

/// The length of an Ed25519 signature: `R` (32 bytes), then `s` (32 bytes, little-endian).
#[cfg(feature = "eddsa-tables")]
const SIGNATURE_LEN: usize = 64;

/// An Ed25519 public key of large order, ready to verify.
pub(crate) struct Ed25519Key {
    key: VerifyingKey,
    /// [2^(8i)·j](−A) for i in 0..32, j in 1..=8.
    #[cfg(feature = "eddsa-tables")]
    minus_a: Box<EdwardsBasepointTable>,
}

impl Ed25519Key {
    /// `None` for a key of small order: under it, some signatures verify for every message.
    pub(crate) fn new(key: VerifyingKey) -> Option<Self> {
        if key.is_weak() {
            return None;
        }
        Some(Self {
            #[cfg(feature = "eddsa-tables")]
            minus_a: Box::new(EdwardsBasepointTable::create(&-key.to_edwards())),
            key,
        })
    }

    /// The key as ed25519-dalek holds it.
    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `signature` is this key's signature of `message`.
    #[cfg(not(feature = "eddsa-tables"))]
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|signature| self.key.verify_strict(message, &signature).is_ok())
    }

    /// Whether `signature` is this key's signature of `message`: the same answer as
    /// `verify_strict` for every input (tests/ed25519.rs holds the two together).
    #[cfg(feature = "eddsa-tables")]
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != SIGNATURE_LEN {
            return false;
        }
        let (r, s) = signature.split_at(SIGNATURE_LEN / 2);
        // s ≥ ℓ would give every signature a second encoding.
        let Some(s) = <[u8; 32]>::try_from(s)
            .ok()
            .and_then(|s| Option::<Scalar>::from(Scalar::from_canonical_bytes(s)))
        else {
            return false;
        };
        // k = SHA-512(R ‖ A ‖ M), over the key's bytes as the JWK gave them.
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(r)
                .chain_update(self.key.as_bytes())
                .chain_update(message),
        );
        let expected_r = ED25519_BASEPOINT_TABLE.mul_base(&s) + self.minus_a.mul_base(&k);
        // Comparing encodings refuses a non-canonical `R` as `verify_strict` does. Where they
        // match, `R` decodes to `expected_r`, so `R`'s order is checked on the point already in
        // hand instead of decompressing `R` (a square root) first.
        expected_r.compress().as_bytes() == r && !expected_r.is_small_order()
    }
}
