//! Published known-answer vectors: RFC 7515 appendix A.2 (RS256) and A.3 (ES256), and RFC 8037
//! appendix A.2, A.4 and A.5 (Ed25519). Every value is the RFC's own, with the line breaks the
//! RFC inserted for display removed (each `concat!` piece is one displayed line), so these tests
//! pin the verifier to tokens and keys it did not mint itself.
//!
//! None of the tokens has a `kid` or a `typ`: each ring holds exactly one key for the token's
//! algorithm, and the default policy accepts a missing `typ`.

use base64ct::{Base64UrlUnpadded, Encoding};
use edgeauth_core::{check_signature, DenyReason, JwksError, KeyRing, Policy, SkipReason};

/// RFC 7515 A.2: the JWS Compact Serialization of the RS256 example.
const RFC7515_A2_JWS: &str = concat!(
    "eyJhbGciOiJSUzI1NiJ9",
    ".",
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt",
    "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".",
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7",
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4",
    "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K",
    "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv",
    "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB",
    "p0igcN_IoypGlUPQGe77Rw",
);

/// RFC 7515 A.2.1: the public half (`kty`, `n`, `e`) of the example RSA key, as a JWKS.
const RFC7515_A2_JWKS: &str = concat!(
    r#"{"keys":[{"kty":"RSA","n":""#,
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddx",
    "HmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMs",
    "D1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSH",
    "SXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdV",
    "MTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8",
    "NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
    r#"","e":"AQAB"}]}"#,
);

/// RFC 7515 A.3: the JWS Compact Serialization of the ES256 example. ECDSA signatures are
/// randomized, so signing again gives another value, but this published one still verifies.
const RFC7515_A3_JWS: &str = concat!(
    "eyJhbGciOiJFUzI1NiJ9",
    ".",
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt",
    "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".",
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
);

/// RFC 7515 A.3.1: the public half (`kty`, `crv`, `x`, `y`) of the example P-256 key, as a JWKS.
const RFC7515_A3_JWKS: &str = concat!(
    r#"{"keys":[{"kty":"EC","crv":"P-256","#,
    r#""x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","#,
    r#""y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
);

/// RFC 8037 A.4 (signing) and A.5 (validation): the Ed25519 JWS over the text
/// `Example of Ed25519 signing`.
const RFC8037_A4_JWS: &str = concat!(
    "eyJhbGciOiJFZERTQSJ9",
    ".",
    "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
    ".",
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg",
);

/// RFC 8037 A.2: the public key of A.1. The private `d` is left out on purpose: the key ring skips
/// JWKs that publish private key material.
const RFC8037_A2_JWKS: &str = concat!(
    r#"{"keys":[{"kty":"OKP","crv":"Ed25519","#,
    r#""x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
);

/// The JWS Payload shared by RFC 7515 A.1 to A.3 (A.1.1 lists its octets): CRLF line breaks and
/// a leading space on the second and third lines.
const RFC7515_PAYLOAD: &[u8] =
    b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";

/// A policy whose only algorithm is `alg`; `issuers`/`audiences` are required but unused here.
/// The RFCs' example headers carry no `typ`, so the policy lets that through.
fn policy_for(alg: &str) -> Policy {
    Policy::from_json(&format!(
        r#"{{"issuers":["joe"],"audiences":["x"],"algorithms":["{alg}"],"allow_missing_type":true}}"#
    ))
    .expect("a minimal policy is valid")
}

/// Loads `jwks` under `policy` and checks the ring kept its single key.
fn ring(jwks: &str, policy: &Policy) -> KeyRing {
    let (ring, skipped) =
        KeyRing::from_jwks(jwks.as_bytes(), policy).expect("the RFC key is a usable JWKS");
    assert!(skipped.is_empty(), "RFC key skipped: {skipped:?}");
    assert_eq!(ring.keys().len(), 1);
    ring
}

/// The segment of a compact JWS at `index` (0 header, 1 payload, 2 signature).
fn segment(token: &str, index: usize) -> &str {
    token
        .split('.')
        .nth(index)
        .expect("a compact JWS has three segments")
}

/// `token` with one character in the middle of its signature changed. A middle character carries
/// six full bits, so the result is still canonical base64url of the same length: only the
/// signature check can reject it.
fn flip_signature(token: &str) -> String {
    let (signing_input, signature) = token.rsplit_once('.').expect("a compact JWS has dots");
    let middle = signature.len() / 2;
    let replacement = if &signature[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    let tampered = format!(
        "{signing_input}.{}{replacement}{}",
        &signature[..middle],
        &signature[middle + 1..]
    );
    assert_ne!(tampered, token);
    assert_eq!(tampered.len(), token.len());
    tampered
}

/// The refusal reason for `token`; panics if it was accepted.
fn refusal(token: &str, ring: &KeyRing, policy: &Policy) -> DenyReason {
    check_signature(token, ring, policy)
        .expect_err("token should be refused")
        .reason
}

#[test]
fn rfc7515_a2_rs256_verifies() {
    assert_eq!(
        Base64UrlUnpadded::decode_vec(segment(RFC7515_A2_JWS, 1)).expect("payload is base64url"),
        RFC7515_PAYLOAD
    );
    let policy = policy_for("RS256");
    let ring = ring(RFC7515_A2_JWKS, &policy);
    let checked =
        check_signature(RFC7515_A2_JWS, &ring, &policy).expect("RFC 7515 A.2 JWS verifies");
    assert_eq!(checked.claims.iss.as_deref(), Some("joe"));
    assert_eq!(checked.claims.exp, Some(1_300_819_380));
}

#[test]
fn rfc7515_a2_rs256_tampered_signature_is_bad() {
    let policy = policy_for("RS256");
    let ring = ring(RFC7515_A2_JWKS, &policy);
    assert_eq!(
        refusal(&flip_signature(RFC7515_A2_JWS), &ring, &policy),
        DenyReason::BadSignature
    );
}

#[test]
fn rfc7515_a2_rs256_needs_rs256_in_the_policy() {
    let ring = ring(RFC7515_A2_JWKS, &policy_for("RS256"));
    assert_eq!(
        refusal(RFC7515_A2_JWS, &ring, &policy_for("PS256")),
        DenyReason::AlgorithmNotAllowed
    );
}

/// RFC 7515 A.3's signature has `s` in the high half: the malleable twin every host refuses.
/// Its low-S form, the one a normalising signer gives, verifies.
#[test]
fn rfc7515_a3_es256_verifies_in_its_low_s_form() {
    assert_eq!(
        Base64UrlUnpadded::decode_vec(segment(RFC7515_A3_JWS, 1)).expect("payload is base64url"),
        RFC7515_PAYLOAD
    );
    let policy = policy_for("ES256");
    let ring = ring(RFC7515_A3_JWKS, &policy);
    assert_eq!(
        refusal(RFC7515_A3_JWS, &ring, &policy),
        DenyReason::BadSignature
    );
    let low_s = crate::shared::ecdsa_twin(RFC7515_A3_JWS);
    let checked = check_signature(&low_s, &ring, &policy).expect("RFC 7515 A.3 JWS verifies");
    assert_eq!(checked.claims.iss.as_deref(), Some("joe"));
    assert_eq!(checked.claims.exp, Some(1_300_819_380));
}

#[test]
fn rfc7515_a3_es256_tampered_signature_is_bad() {
    let policy = policy_for("ES256");
    let ring = ring(RFC7515_A3_JWKS, &policy);
    assert_eq!(
        refusal(&flip_signature(RFC7515_A3_JWS), &ring, &policy),
        DenyReason::BadSignature
    );
}

#[test]
fn rfc7515_a3_es256_needs_es256_in_the_policy() {
    let ring = ring(RFC7515_A3_JWKS, &policy_for("ES256"));
    assert_eq!(
        refusal(RFC7515_A3_JWS, &ring, &policy_for("RS256")),
        DenyReason::AlgorithmNotAllowed
    );
}

/// The RFC 8037 payload is plain text, not a JSON claims set. The signature is checked before the
/// payload is parsed, so `invalid_claim` (not `bad_signature`) proves the signature verified.
#[test]
fn rfc8037_a5_ed25519_signature_verifies() {
    assert_eq!(
        Base64UrlUnpadded::decode_vec(segment(RFC8037_A4_JWS, 1)).expect("payload is base64url"),
        b"Example of Ed25519 signing"
    );
    let policy = policy_for("EdDSA");
    let ring = ring(RFC8037_A2_JWKS, &policy);
    assert_eq!(
        refusal(RFC8037_A4_JWS, &ring, &policy),
        DenyReason::InvalidClaim
    );
}

#[test]
fn rfc8037_a5_ed25519_tampered_signature_is_bad() {
    let policy = policy_for("EdDSA");
    let ring = ring(RFC8037_A2_JWKS, &policy);
    assert_eq!(
        refusal(&flip_signature(RFC8037_A4_JWS), &ring, &policy),
        DenyReason::BadSignature
    );
}

#[test]
fn rfc8037_a5_ed25519_needs_eddsa_in_the_policy() {
    let ring = ring(RFC8037_A2_JWKS, &policy_for("EdDSA"));
    assert_eq!(
        refusal(RFC8037_A4_JWS, &ring, &policy_for("ES256")),
        DenyReason::AlgorithmNotAllowed
    );
}

/// The RFC 8037 A.1 key with its private `d` is skipped, not trusted: a published private key
/// proves nothing about who signed.
#[test]
fn rfc8037_a1_private_jwk_is_skipped() {
    let jwks = concat!(
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","#,
        r#""d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","#,
        r#""x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
    );
    match KeyRing::from_jwks(jwks.as_bytes(), &policy_for("EdDSA")) {
        Err(JwksError::NoUsableKey(skipped)) => {
            assert_eq!(skipped.len(), 1);
            assert_eq!(skipped[0].reason, SkipReason::PrivateKeyPublished);
        }
        other => panic!("a published private key must be skipped, got {other:?}"),
    }
}
