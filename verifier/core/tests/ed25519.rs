//! EdDSA as the core checks it gives ed25519-dalek `verify_strict`'s answer for every signature,
//! including the forgeries a cofactorless or cofactored check alone would let through. With
//! `eddsa-tables` (the Envoy builds) the core computes the check its own way (src/ed25519.rs);
//! these tests hold the two together.

use curve25519_dalek::{
    constants::ED25519_BASEPOINT_POINT,
    edwards::{CompressedEdwardsY, EdwardsPoint},
    Scalar,
};
use ed25519_dalek::{Signature, SigningKey, Verifier as _, VerifyingKey};
use edgeauth_core::{verify_token, DenyReason, KeyRing, Policy};
use proptest::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha512};

use crate::shared::*;

/// ℓ, the order of the base point (RFC 8032 §5.1), little-endian.
const GROUP_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

/// A key as a JWKS would publish it, with the scalar that signs for it (A = aB + `torsion`).
struct Key {
    a: Scalar,
    public: [u8; 32],
}

impl Key {
    fn new(seed: u8, torsion: &EdwardsPoint) -> Self {
        let a = SigningKey::from_bytes(&[seed; 32]).to_scalar();
        let public = (a * ED25519_BASEPOINT_POINT + torsion)
            .compress()
            .to_bytes();
        Self { a, public }
    }

    fn ring(&self, policy: &Policy) -> KeyRing {
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&self.public), "kid": "k"});
        ring(&[jwk], policy)
    }

    /// k = SHA-512(R ‖ A ‖ M) mod ℓ.
    fn challenge(&self, r: &[u8; 32], message: &[u8]) -> Scalar {
        Scalar::from_hash(
            Sha512::new()
                .chain_update(r)
                .chain_update(self.public)
                .chain_update(message),
        )
    }

    /// The signature (R, s) with s = nonce + k·a, whatever R is: with R = nonce·B this is an
    /// honest signature, with other choices of R it is a forgery aimed at one check or another.
    fn sign_with(&self, r: [u8; 32], nonce: Scalar, message: &[u8]) -> [u8; 64] {
        let s = nonce + self.challenge(&r, message) * self.a;
        let mut signature = [0; 64];
        signature[..32].copy_from_slice(&r);
        signature[32..].copy_from_slice(s.as_bytes());
        signature
    }

    fn strict_verdict(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(&self.public)
            .expect("the key decodes")
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    fn plain_verdict(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(&self.public)
            .expect("the key decodes")
            .verify(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

/// A point of order 4, (√−1, 0).
fn order_four() -> EdwardsPoint {
    CompressedEdwardsY([0; 32])
        .decompress()
        .expect("y = 0 is on the curve")
}

/// The signing input of an access token whose `jti` is `jti`.
fn signing_input(jti: &str) -> String {
    let header = json!({"alg": "EdDSA", "kid": "k", "typ": "at+jwt"});
    let mut claims = good_claims();
    claims["jti"] = json!(jti);
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// The core's verdict on the token with this signing input and signature: `Ok` accepted;
/// a refusal for any reason but the signature fails the test.
fn core_verdict(ring: &KeyRing, policy: &Policy, input: &str, signature: &[u8]) -> bool {
    let token = format!("{input}.{}", b64(signature));
    match verify_token(&token, NOW, ring, policy) {
        Ok(_) => true,
        Err(denial) => {
            assert_eq!(denial.reason, DenyReason::BadSignature, "{token}");
            false
        }
    }
}

/// `verify_strict` refuses the signature, and the core refuses the token.
fn assert_refused(key: &Key, input: &str, signature: &[u8; 64]) {
    assert!(
        !key.strict_verdict(input.as_bytes(), signature),
        "verify_strict takes {input}"
    );
    let policy = policy("");
    assert!(
        !core_verdict(&key.ring(&policy), &policy, input, signature),
        "the core takes {input}"
    );
}

#[test]
fn an_honest_signature_verifies_and_one_changed_bit_does_not() {
    let policy = policy("");
    let key = Key::new(11, &EdwardsPoint::default());
    let ring = key.ring(&policy);
    let input = signing_input("honest");
    let nonce = Scalar::from(987_654_321u64);
    let r = (nonce * ED25519_BASEPOINT_POINT).compress().to_bytes();
    let signature = key.sign_with(r, nonce, input.as_bytes());
    assert!(key.strict_verdict(input.as_bytes(), &signature));
    assert!(core_verdict(&ring, &policy, &input, &signature));
    for bit in [0, 7, 255, 256, 300, 511] {
        let mut flipped = signature;
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            !core_verdict(&ring, &policy, &input, &flipped),
            "bit {bit} flipped"
        );
    }
}

#[test]
fn s_plus_the_group_order_is_refused() {
    // (R, s + ℓ) satisfies the same equation as (R, s): a second encoding of one signature.
    let key = Key::new(12, &EdwardsPoint::default());
    let input = signing_input("malleable");
    let nonce = Scalar::from(5u64);
    let r = (nonce * ED25519_BASEPOINT_POINT).compress().to_bytes();
    let mut signature = key.sign_with(r, nonce, input.as_bytes());
    let mut carry = 0u16;
    for (byte, order) in signature[32..].iter_mut().zip(GROUP_ORDER) {
        let sum = u16::from(*byte) + u16::from(order) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "s + ℓ fits in 32 bytes");
    assert_refused(&key, &input, &signature);
}

#[test]
fn a_small_order_r_that_satisfies_the_equation_is_refused() {
    // R = identity and s = k·a: [s]B − [k]A = identity = R, so a cofactorless check alone
    // (the plain `verify`) accepts it without any nonce; `verify_strict` refuses small-order R.
    let key = Key::new(13, &EdwardsPoint::default());
    let input = signing_input("small-order-r");
    let identity = EdwardsPoint::default().compress().to_bytes();
    let signature = key.sign_with(identity, Scalar::ZERO, input.as_bytes());
    assert!(
        key.plain_verdict(input.as_bytes(), &signature),
        "the forgery is real"
    );
    assert_refused(&key, &input, &signature);
}

#[test]
fn a_small_order_r_under_a_key_with_a_torsion_part_is_refused() {
    // A = aB + T, T of order 4 (not a small-order key, so the ring takes it). With s = k·a,
    // [s]B − [k]A = −[k]T: whenever that is R itself, the cofactorless equation holds for a
    // small-order R other than the identity.
    let torsion = order_four();
    let key = Key::new(14, &torsion);
    let candidates: Vec<_> = (0..4u64)
        .map(|m| (Scalar::from(m) * torsion).compress().to_bytes())
        .collect();
    let mut forged = 0;
    for n in 0..64 {
        let input = signing_input(&format!("torsion-{n}"));
        for r in &candidates {
            let signature = key.sign_with(*r, Scalar::ZERO, input.as_bytes());
            if key.plain_verdict(input.as_bytes(), &signature) {
                forged += 1;
                assert_refused(&key, &input, &signature);
            }
        }
    }
    assert!(
        forged > 0,
        "some forgery satisfied the cofactorless equation"
    );
}

#[test]
fn a_torsion_component_in_r_is_refused() {
    // R = rB + T with s = r + k·a: a cofactored check ([8]·(…) = identity) accepts it;
    // RFC 8032's cofactorless check, which `verify_strict` and the core make, does not.
    let key = Key::new(15, &EdwardsPoint::default());
    let input = signing_input("torsion-in-r");
    let nonce = Scalar::from(424_242u64);
    let r = (nonce * ED25519_BASEPOINT_POINT + order_four())
        .compress()
        .to_bytes();
    let signature = key.sign_with(r, nonce, input.as_bytes());
    let cofactored = {
        let k = key.challenge(&r, input.as_bytes());
        let s = Scalar::from_canonical_bytes(signature[32..].try_into().expect("32 bytes"))
            .expect("canonical s");
        let a = CompressedEdwardsY(key.public).decompress().expect("key");
        let r = CompressedEdwardsY(r).decompress().expect("R");
        (s * ED25519_BASEPOINT_POINT - k * a - r).is_small_order()
    };
    assert!(cofactored, "the forgery passes a cofactored check");
    assert_refused(&key, &input, &signature);
}

#[test]
fn a_non_canonical_encoding_of_r_is_refused() {
    // y = 1 written as 1 + p (p = 2^255 − 19): the identity, encoded a second way.
    let key = Key::new(16, &EdwardsPoint::default());
    let input = signing_input("non-canonical-r");
    let mut r = [0xff; 32];
    r[0] = 0xee; // p + 1 = 2^255 − 18, little-endian
    r[31] = 0x7f;
    assert!(CompressedEdwardsY(r).decompress().is_some(), "it decodes");
    let signature = key.sign_with(r, Scalar::ZERO, input.as_bytes());
    assert_refused(&key, &input, &signature);
}

/// What to do to an honest signature before it is checked.
#[derive(Debug, Clone)]
enum Tamper {
    None,
    FlipBit(usize),
    TorsionInR,
    SmallOrderR(u64),
    ReplaceS([u8; 32]),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        Just(Tamper::None),
        (0..512usize).prop_map(Tamper::FlipBit),
        Just(Tamper::TorsionInR),
        (0..4u64).prop_map(Tamper::SmallOrderR),
        any::<[u8; 32]>().prop_map(Tamper::ReplaceS),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_core_agrees_with_verify_strict(
        seed in any::<u8>(),
        torsion_part in any::<bool>(),
        nonce in any::<u64>(),
        jti in "[a-z0-9-]{1,24}",
        tamper in tamper(),
    ) {
        let policy = policy("");
        let torsion = if torsion_part { order_four() } else { EdwardsPoint::default() };
        let key = Key::new(seed, &torsion);
        let input = signing_input(&jti);
        let nonce = Scalar::from(nonce);
        let honest_r = nonce * ED25519_BASEPOINT_POINT;
        let signature = match tamper {
            Tamper::None => key.sign_with(honest_r.compress().to_bytes(), nonce, input.as_bytes()),
            Tamper::FlipBit(bit) => {
                let mut s = key.sign_with(honest_r.compress().to_bytes(), nonce, input.as_bytes());
                s[bit / 8] ^= 1 << (bit % 8);
                s
            }
            Tamper::TorsionInR => {
                let r = (honest_r + order_four()).compress().to_bytes();
                key.sign_with(r, nonce, input.as_bytes())
            }
            Tamper::SmallOrderR(m) => {
                let r = (Scalar::from(m) * order_four()).compress().to_bytes();
                key.sign_with(r, Scalar::ZERO, input.as_bytes())
            }
            Tamper::ReplaceS(s) => {
                let mut signature =
                    key.sign_with(honest_r.compress().to_bytes(), nonce, input.as_bytes());
                signature[32..].copy_from_slice(&s);
                signature
            }
        };
        let expected = key.strict_verdict(input.as_bytes(), &signature);
        prop_assert_eq!(core_verdict(&key.ring(&policy), &policy, &input, &signature), expected);
    }
}
