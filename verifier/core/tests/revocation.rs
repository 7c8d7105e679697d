//! Signed revocation messages: what an edge accepts from the origin's feed or a push.

use edgeauth_core::{
    verify_revocation, verify_token, DenyReason, Revocation, RevocationError, REVOCATION_TYPE,
};
use serde_json::{json, Value};

use crate::shared::*;

fn message_payload() -> Value {
    json!({"iss": ISSUER, "seq": 7, "jti": "jti-0001", "exp": NOW + 840, "iat": NOW})
}

fn message(signer: &Signer, kid: &str, typ: Option<&str>, payload: &Value) -> String {
    let mut header = json!({"alg": signer.alg(), "kid": kid});
    if let Some(typ) = typ {
        header["typ"] = json!(typ);
    }
    sign_raw(signer, &header.to_string(), &payload.to_string())
}

/// The usual message: the current key, the right type, the standard payload.
fn good_message() -> String {
    message(
        &Signer::ed25519(1),
        "current",
        Some(REVOCATION_TYPE),
        &message_payload(),
    )
}

fn reason(result: Result<Revocation, RevocationError>) -> DenyReason {
    match result {
        Err(RevocationError::Invalid(denial)) => denial.reason,
        other => panic!("expected an invalid message, got {other:?}"),
    }
}

#[test]
fn a_message_signed_with_a_published_key_is_accepted() {
    let policy = policy("");
    let ring = standard_ring(&policy);
    let signed = good_message();
    assert_eq!(
        verify_revocation(&signed, NOW, &ring, &policy),
        Ok(Revocation::Token {
            jti: "jti-0001".into(),
            expires_at: NOW + 840
        })
    );
    // The previous key still signs valid messages during rotation.
    let previous = message(
        &Signer::ed25519(2),
        "previous",
        Some(REVOCATION_TYPE),
        &message_payload(),
    );
    assert!(verify_revocation(&previous, NOW, &ring, &policy).is_ok());
}

#[test]
fn a_message_without_jti_revokes_every_token_of_its_user_through_iat() {
    let policy = policy("");
    let ring = standard_ring(&policy);
    let payload = json!({"iss": ISSUER, "seq": 8, "sub": "3f1c2a9e-7b4d-4c1a-9e2f-0a1b2c3d4e5f", "iat": NOW, "exp": NOW + 900});
    let signed = message(
        &Signer::ed25519(1),
        "current",
        Some(REVOCATION_TYPE),
        &payload,
    );
    assert_eq!(
        verify_revocation(&signed, NOW, &ring, &policy),
        Ok(Revocation::User {
            subject: "3f1c2a9e-7b4d-4c1a-9e2f-0a1b2c3d4e5f".into(),
            revoked_through: NOW,
            expires_at: NOW + 900
        })
    );
    // Neither a token nor a user: nothing to revoke.
    let mut neither = payload.clone();
    neither.as_object_mut().expect("object").remove("sub");
    let signed = message(
        &Signer::ed25519(1),
        "current",
        Some(REVOCATION_TYPE),
        &neither,
    );
    assert_eq!(
        reason(verify_revocation(&signed, NOW, &ring, &policy)),
        DenyReason::MissingClaim
    );
    let mut unsafe_sub = payload;
    unsafe_sub["sub"] = json!("a\nb");
    let signed = message(
        &Signer::ed25519(1),
        "current",
        Some(REVOCATION_TYPE),
        &unsafe_sub,
    );
    assert_eq!(
        reason(verify_revocation(&signed, NOW, &ring, &policy)),
        DenyReason::InvalidClaim
    );
}

#[test]
fn forged_or_foreign_messages_are_refused() {
    let policy = policy("");
    let ring = standard_ring(&policy);
    let changed = |field: &str, value: Option<Value>| {
        let mut payload = message_payload();
        match value {
            Some(value) => payload[field] = value,
            None => drop(payload.as_object_mut().expect("object").remove(field)),
        }
        payload
    };
    let cases = [
        // Signed by a key the edge does not hold, under a kid it does.
        (9, message_payload(), DenyReason::BadSignature),
        // Another issuer's message, correctly signed.
        (
            1,
            changed("iss", Some(json!("https://evil.example"))),
            DenyReason::IssuerNotAllowed,
        ),
        // A jti that could not be a deny-list key.
        (
            1,
            changed("jti", Some(json!("a b"))),
            DenyReason::InvalidClaim,
        ),
        (1, changed("exp", None), DenyReason::MissingClaim),
    ];
    for (seed, payload, expected) in cases {
        let signed = message(
            &Signer::ed25519(seed),
            "current",
            Some(REVOCATION_TYPE),
            &payload,
        );
        assert_eq!(
            reason(verify_revocation(&signed, NOW, &ring, &policy)),
            expected,
            "{payload}"
        );
    }
    assert_eq!(
        reason(verify_revocation("not.a.jws", NOW, &ring, &policy)),
        DenyReason::MalformedToken
    );
}

/// RFC 8725 §3.11: each kind of signed object has its own `typ`, so neither passes as the other.
#[test]
fn messages_and_access_tokens_are_never_confused() {
    let policy = policy("");
    let ring = standard_ring(&policy);
    let access_token = good_token(&Signer::ed25519(1), "current");
    assert_eq!(
        reason(verify_revocation(&access_token, NOW, &ring, &policy)),
        DenyReason::TokenTypeNotAllowed
    );
    let untyped = message(&Signer::ed25519(1), "current", None, &message_payload());
    assert_eq!(
        reason(verify_revocation(&untyped, NOW, &ring, &policy)),
        DenyReason::TokenTypeNotAllowed
    );
    // A message crafted to look like an access token (aud, sub) still carries its own typ.
    let mut lookalike = message_payload();
    lookalike["aud"] = json!(AUDIENCE);
    lookalike["sub"] = json!("3f1c2a9e-7b4d-4c1a-9e2f-0a1b2c3d4e5f");
    let signed = message(
        &Signer::ed25519(1),
        "current",
        Some(REVOCATION_TYPE),
        &lookalike,
    );
    let denial = verify_token(&signed, NOW, &ring, &policy).expect_err("not an access token");
    assert_eq!(denial.reason, DenyReason::TokenTypeNotAllowed);
}

#[test]
fn a_message_about_an_expired_token_has_nothing_to_store() {
    let policy = policy(r#","leeway_seconds":30"#);
    let ring = standard_ring(&policy);
    let signed = good_message();
    // Within the leeway the token could still pass, so the revocation still matters.
    assert!(verify_revocation(&signed, NOW + 840 + 29, &ring, &policy).is_ok());
    assert_eq!(
        verify_revocation(&signed, NOW + 840 + 30, &ring, &policy),
        Err(RevocationError::Expired)
    );
}
