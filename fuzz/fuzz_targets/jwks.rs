//! Arbitrary bytes as a JWKS document, loaded under an asymmetric and a symmetric policy.
//!
//! Invariants:
//! - no panic, whatever the bytes;
//! - a usable ring is non-empty, at most `MAX_KEYS` keys, with distinct `kid`s, and every key
//!   verifies at least one algorithm the policy accepts;
//! - no algorithm confusion: under the asymmetric policy no key can verify HS256, under the
//!   HS256-only policy no key can verify anything else;
//! - every skipped key is reported once, in order;
//! - no key set makes a token verify unless it holds the key that signed it: a fixed EdDSA
//!   token verifies only under a ring containing that key's thumbprint.

#![no_main]

use std::sync::OnceLock;

use edgeauth_core::{verify_token, Algorithm, JwksError, KeyRing, Policy, Thumbprint};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_767_225_600;
/// `edgeauth_core`'s `MAX_JWKS_BYTES` and `MAX_KEYS` (not exported).
const MAX_JWKS_BYTES: usize = 256 * 1024;
const MAX_KEYS: usize = 64;
const ASYMMETRIC: &str =
    r#"{"issuers":["https://auth.example.test"],"audiences":["api.example.test"]}"#;
const SYMMETRIC: &str = r#"{"issuers":["https://auth.example.test"],"audiences":["api.example.test"],"algorithms":["HS256"]}"#;
/// `Signer::ed25519(1).jwk("current")` from verifier/core/tests/shared.
const JWKS: &str = r#"{"keys":[{"crv":"Ed25519","kid":"current","kty":"OKP","x":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"}]}"#;
/// `good_token(&Signer::ed25519(1), "current")`, valid at `NOW`.
const GOOD_TOKEN: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImN1cnJlbnQiLCJ0eXAiOiJhdCtqd3QifQ.eyJhdWQiOiJhcGkuZXhhbXBsZS50ZXN0IiwiZXhwIjoxNzY3MjI2NDQwLCJpYXQiOjE3NjcyMjU1NDAsImlzcyI6Imh0dHBzOi8vYXV0aC5leGFtcGxlLnRlc3QiLCJqdGkiOiJqdGktMDAwMSIsInNjb3BlIjoicHJvZmlsZSBvcmRlcnM6cmVhZCIsInN1YiI6IjNmMWMyYTllLTdiNGQtNGMxYS05ZTJmLTBhMWIyYzNkNGU1ZiJ9.1zr1x5M7WLARgAszf-FzRV8LWXDjIdn9YzmEbECfGMlqugteB4OH_HlABlBBd09ra1h9aNy0psHdx-NEwqqrAw";

const ALL: [Algorithm; 5] = [
    Algorithm::EdDsa,
    Algorithm::Es256,
    Algorithm::Rs256,
    Algorithm::Ps256,
    Algorithm::Hs256,
];

struct Fixed {
    policies: [Policy; 2],
    signer: Thumbprint,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let asymmetric = Policy::from_json(ASYMMETRIC).expect("valid policy");
        let symmetric = Policy::from_json(SYMMETRIC).expect("valid policy");
        let (ring, _) = KeyRing::from_jwks(JWKS.as_bytes(), &asymmetric).expect("usable JWKS");
        assert!(verify_token(GOOD_TOKEN, NOW, &ring, &asymmetric).is_ok());
        let signer = *ring.keys()[0].thumbprint();
        Fixed {
            policies: [asymmetric, symmetric],
            signer,
        }
    })
}

fn check_ring(ring: &KeyRing, skipped: &[edgeauth_core::SkippedKey], policy: &Policy, f: &Fixed) {
    let keys = ring.keys();
    assert!(!keys.is_empty(), "a usable ring has a key");
    assert!(keys.len() <= MAX_KEYS);
    for (i, key) in keys.iter().enumerate() {
        if let Some(kid) = key.kid() {
            assert!(
                keys[..i].iter().all(|k| k.kid() != Some(kid)),
                "duplicate kid {kid:?} in the ring"
            );
        }
        assert!(
            policy.algorithms().iter().any(|&a| key.verifies(a)),
            "ring key {:?} verifies nothing the policy accepts",
            key.kid()
        );
        for alg in ALL {
            if key.verifies(alg) {
                assert_eq!(
                    alg.is_symmetric(),
                    policy.is_symmetric(),
                    "{:?} can verify {} under this policy",
                    key.kid(),
                    alg.name()
                );
            }
        }
        assert!(ring.contains(key.thumbprint()));
    }
    assert!(
        skipped.windows(2).all(|w| w[0].index < w[1].index),
        "skipped keys out of order or repeated"
    );
    if verify_token(GOOD_TOKEN, NOW, ring, policy).is_ok() {
        assert!(
            ring.contains(&f.signer),
            "a token verified under a ring without the key that signed it"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixed();
    for policy in &f.policies {
        match KeyRing::from_jwks(data, policy) {
            Ok((ring, skipped)) => {
                assert!(data.len() <= MAX_JWKS_BYTES);
                check_ring(&ring, &skipped, policy, f);
            }
            Err(JwksError::TooLarge(n)) => assert!(n == data.len() && n > MAX_JWKS_BYTES),
            Err(JwksError::NoUsableKey(skipped)) => {
                assert!(skipped.windows(2).all(|w| w[0].index < w[1].index));
            }
            Err(_) => {}
        }
    }
});
