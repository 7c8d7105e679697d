//! Signatures checked natively. The core decides everything up to and after the signature
//! ([`edgeauth_core::authorize_deferred`]), so the verdict is the core's; only the primitive
//! differs.
//!
//! - ES256, RS256 and PS256 go to ring, whose P-256 and RSA code is BoringSSL's, as
//!   `jwt_authn`'s is.
//! - EdDSA stays with the core's own ed25519-dalek, compiled natively: on the same token it
//!   took 58 µs against ring's 93 µs (`cargo bench -p edgeauth-envoy --bench native`, one run).
//!
//! The core has already refused what ring would judge differently: ES256 signatures with a high
//! `s` (ring accepts both halves) and RSA moduli outside 2048–4096 bits (ring's range is wider).

use edgeauth_core::{Algorithm, KeyRing, PublicKey, SignatureCheck};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};

/// Whether the token's signature is valid under the key the core chose from `keys`. EdDSA, HMAC
/// and any pairing ring has no primitive for go to the core's own implementation.
pub fn verify(check: &SignatureCheck, keys: &KeyRing) -> bool {
    let Some(key) = check.public_key(keys) else {
        return check.verify_here(keys);
    };
    let (message, signature) = (check.signing_input(), check.signature());
    let result = match (check.algorithm(), &key) {
        (Algorithm::Es256, PublicKey::P256(point)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
        }
        (Algorithm::Rs256, PublicKey::Rsa { modulus, exponent }) => RsaPublicKeyComponents {
            n: modulus,
            e: exponent,
        }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature),
        (Algorithm::Ps256, PublicKey::Rsa { modulus, exponent }) => RsaPublicKeyComponents {
            n: modulus,
            e: exponent,
        }
        .verify(&signature::RSA_PSS_2048_8192_SHA256, message, signature),
        _ => return check.verify_here(keys),
    };
    result.is_ok()
}
