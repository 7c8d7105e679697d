//! Arbitrary and mutated input never panics and is never accepted.

use edgeauth_core::{verify_token, KeyRing, Policy};
use proptest::prelude::*;

use crate::shared::*;

/// Built once: parsing the RSA fixture per case would dominate the run.
fn setup() -> &'static (Policy, KeyRing, String) {
    static SETUP: std::sync::OnceLock<(Policy, KeyRing, String)> = std::sync::OnceLock::new();
    SETUP.get_or_init(|| {
        let p = policy("");
        let r = standard_ring(&p);
        (p, r, good_token(&Signer::ed25519(1), "current"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (p, r, _) = setup();
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(verify_token(&text, NOW, r, p).is_err());
    }

    #[test]
    fn token_shaped_noise_is_refused(a in "[A-Za-z0-9_-]{0,200}", b in "[A-Za-z0-9_-]{0,400}", c in "[A-Za-z0-9_-]{0,400}") {
        let (p, r, _) = setup();
        let text = format!("{a}.{b}.{c}");
        prop_assert!(verify_token(&text, NOW, r, p).is_err());
    }

    #[test]
    fn mutated_tokens_are_refused(position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let (p, r, good) = setup();
        let mut bytes = good.clone().into_bytes();
        let i = position.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(verify_token(&text, NOW, r, p).is_err(), "accepted a mutation at {}", i);
    }

    #[test]
    fn truncated_or_extended_tokens_are_refused(cut in any::<prop::sample::Index>(), tail in "[A-Za-z0-9_.-]{1,8}") {
        let (p, r, good) = setup();
        let i = cut.index(good.len());
        prop_assert!(verify_token(&good[..i], NOW, r, p).is_err());
        let extended = format!("{good}{tail}");
        prop_assert!(verify_token(&extended, NOW, r, p).is_err());
    }

    #[test]
    fn arbitrary_jwks_and_policies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let p = policy("");
        let _ = KeyRing::from_jwks(&bytes, &p);
        let _ = Policy::from_json(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn deeply_nested_json_is_a_reject_not_a_crash() {
    let (p, r, _) = setup();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let payload = b64(deep.as_bytes());
    let header = b64(br#"{"alg":"EdDSA","kid":"current"}"#);
    let t = format!("{header}.{payload}.{}", b64(&[0u8; 64]));
    assert!(verify_token(&t, NOW, r, p).is_err());
    let nested_header = b64(format!(
        r#"{{"alg":"EdDSA","x":{}{}}}"#,
        "[".repeat(3000),
        "]".repeat(3000)
    )
    .as_bytes());
    let t = format!("{nested_header}.{payload}.{}", b64(&[0u8; 64]));
    assert!(verify_token(&t, NOW, r, p).is_err());
    let jwks = format!(
        r#"{{"keys":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(KeyRing::from_jwks(jwks.as_bytes(), p).is_err());
}
