//! Arbitrary text as a token, against a fixed policy and a one-key ring at a fixed instant.
//!
//! Invariants:
//! - no panic, whatever the bytes;
//! - size is checked first: `token_too_large` exactly when the text is over `max_token_bytes`;
//! - `verify_token` is `check_signature` then `validate_claims`, with the same answer;
//! - the request path (`authorize`, cache on) agrees with `verify_token`, on a miss and on a hit;
//! - an accepted token really is signed by the fixed key: the signature is re-checked here with
//!   ed25519-dalek, outside the core, and the claims the policy demands are there.
//!
//! Seed the corpus with `GOOD_TOKEN` (see fuzz/README.md) so mutations start from a valid token.

#![no_main]

use std::sync::OnceLock;

use base64ct::{Base64UrlUnpadded, Encoding};
use edgeauth_core::{
    authorize, check_signature, validate_claims, verify_token, Algorithm, DenyReason, KeyRing,
    Policy, Request, Step, TokenCache, Verdict,
};
use libfuzzer_sys::fuzz_target;

/// 2026-01-01T00:00:00Z, the instant the test fixtures are minted around.
const NOW: i64 = 1_767_225_600;
const ISSUER: &str = "https://auth.example.test";
const AUDIENCE: &str = "api.example.test";
/// Defaults apart from issuer and audience: EdDSA/ES256/RS256/PS256, leeway 30 s,
/// `max_token_bytes` 8192, `sub` and `jti` required.
const POLICY: &str =
    r#"{"issuers":["https://auth.example.test"],"audiences":["api.example.test"]}"#;
const MAX_TOKEN_BYTES: usize = 8 * 1024;
const LEEWAY: i64 = 30;
/// `Signer::ed25519(1).jwk("current")` from verifier/core/tests/shared (seed `[1; 32]`); the
/// same public key as `2026-01-current` in examples/jwks.json.
const JWKS: &str = r#"{"keys":[{"crv":"Ed25519","kid":"current","kty":"OKP","x":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"}]}"#;
const PUBLIC_KEY_X: &str = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w";
/// `good_token(&Signer::ed25519(1), "current")`: valid at `NOW` under `POLICY` and `JWKS`.
const GOOD_TOKEN: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImN1cnJlbnQiLCJ0eXAiOiJhdCtqd3QifQ.eyJhdWQiOiJhcGkuZXhhbXBsZS50ZXN0IiwiZXhwIjoxNzY3MjI2NDQwLCJpYXQiOjE3NjcyMjU1NDAsImlzcyI6Imh0dHBzOi8vYXV0aC5leGFtcGxlLnRlc3QiLCJqdGkiOiJqdGktMDAwMSIsInNjb3BlIjoicHJvZmlsZSBvcmRlcnM6cmVhZCIsInN1YiI6IjNmMWMyYTllLTdiNGQtNGMxYS05ZTJmLTBhMWIyYzNkNGU1ZiJ9.1zr1x5M7WLARgAszf-FzRV8LWXDjIdn9YzmEbECfGMlqugteB4OH_HlABlBBd09ra1h9aNy0psHdx-NEwqqrAw";

struct Fixed {
    policy: Policy,
    ring: KeyRing,
    key: ed25519_dalek::VerifyingKey,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let policy = Policy::from_json(POLICY).expect("fixed policy is valid");
        let (ring, skipped) =
            KeyRing::from_jwks(JWKS.as_bytes(), &policy).expect("fixed JWKS is usable");
        assert!(skipped.is_empty() && ring.keys().len() == 1);
        let x: [u8; 32] = Base64UrlUnpadded::decode_vec(PUBLIC_KEY_X)
            .expect("base64url")
            .try_into()
            .expect("32 bytes");
        let key = ed25519_dalek::VerifyingKey::from_bytes(&x).expect("valid point");
        let fixed = Fixed { policy, ring, key };
        assert!(
            verify_token(GOOD_TOKEN, NOW, &fixed.ring, &fixed.policy).is_ok(),
            "the seed token must verify, or the oracle below is never exercised"
        );
        fixed
    })
}

/// The signature over `header.payload`, checked without the core.
fn signed_by_fixed_key(token: &str, key: &ed25519_dalek::VerifyingKey) -> bool {
    let Some((input, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = Base64UrlUnpadded::decode_vec(sig) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else {
        return false;
    };
    key.verify_strict(input.as_bytes(), &sig).is_ok()
}

fn request_verdict(token: &str, f: &Fixed, cache: &mut TokenCache) -> Result<(), DenyReason> {
    let authorization = format!("Bearer {token}");
    let headers = [("authorization", authorization.as_str())];
    let request = Request {
        method: "GET",
        path: "/orders",
        headers: &headers[..],
    };
    match authorize(&request, NOW, Some(&f.ring), &f.policy, cache) {
        Step::CheckRevocation(_) => Ok(()),
        Step::Done(Verdict::Deny(d)) => Err(d.reason),
        Step::Done(Verdict::Allow(_)) => panic!("a token route allowed without the deny-list step"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixed();

    let result = verify_token(token, NOW, &f.ring, &f.policy);

    let too_large = matches!(&result, Err(d) if d.reason == DenyReason::TokenTooLarge);
    assert_eq!(
        too_large,
        token.len() > MAX_TOKEN_BYTES,
        "size is checked first"
    );

    let split = check_signature(token, &f.ring, &f.policy)
        .and_then(|checked| validate_claims(checked, NOW, &f.policy));
    assert_eq!(
        result.as_ref().map(|_| ()),
        split.as_ref().map(|_| ()),
        "verify_token must equal check_signature + validate_claims"
    );

    // Through the request path, if the text can travel in an Authorization header as one token.
    if !token.is_empty() && token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        let expected = result.as_ref().map(|_| ()).map_err(|d| d.reason);
        let mut cache = TokenCache::new(16, 1 << 20);
        assert_eq!(
            request_verdict(token, f, &mut cache),
            expected,
            "authorize, miss"
        );
        assert_eq!(
            request_verdict(token, f, &mut cache),
            expected,
            "authorize, maybe a hit"
        );
    }

    if let Ok(verified) = result {
        assert!(token.len() <= MAX_TOKEN_BYTES);
        assert_eq!(
            token.matches('.').count(),
            2,
            "compact form has three segments"
        );
        assert!(
            signed_by_fixed_key(token, &f.key),
            "accepted a token the fixed key did not sign: {token:?}"
        );
        assert_eq!(verified.header().alg, Algorithm::EdDsa);
        assert!(matches!(
            verified.header().kid.as_deref(),
            None | Some("current")
        ));
        assert_eq!(verified.key_thumbprint(), f.ring.keys()[0].thumbprint());
        let claims = verified.claims();
        assert_eq!(claims.iss.as_deref(), Some(ISSUER));
        assert!(claims.aud.iter().any(|a| a == AUDIENCE));
        assert!(claims.exp.is_some_and(|exp| NOW < exp + LEEWAY));
        assert!(claims.sub.is_some() && claims.jti.is_some());
    }
});
