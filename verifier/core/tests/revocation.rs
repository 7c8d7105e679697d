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

#[test]
fn a_message_with_sid_revokes_every_token_of_that_session() {
    let policy = policy("");
    let ring = standard_ring(&policy);
    let payload =
        json!({"iss": ISSUER, "seq": 9, "sid": "5b0e", "sub": "u", "iat": NOW, "exp": NOW + 900});
    let signed = message(
        &Signer::ed25519(1),
        "current",
        Some(REVOCATION_TYPE),
        &payload,
    );
    assert_eq!(
        verify_revocation(&signed, NOW, &ring, &policy),
        Ok(Revocation::Session {
            sid: "5b0e".into(),
            expires_at: NOW + 900
        })
    );
    let mut bad = payload;
    bad["sid"] = json!(7);
    let signed = message(&Signer::ed25519(1), "current", Some(REVOCATION_TYPE), &bad);
    assert_eq!(
        reason(verify_revocation(&signed, NOW, &ring, &policy)),
        DenyReason::InvalidClaim
    );
}

mod feed_reader {
    use edgeauth_core::{
        FeedEntry, FeedNext, FeedPage, FeedReader, KeyRing, Policy, Revocation, WaitingForKeys,
        FEED_PAGE_LIMIT,
    };
    use serde_json::json;

    use super::message;
    use crate::shared::*;

    fn entry(seq: u64, signer_seed: u8, kid: &str) -> FeedEntry {
        let payload = json!({"iss": ISSUER, "seq": seq, "jti": format!("jti-{seq}"), "exp": NOW + 900, "iat": NOW});
        FeedEntry {
            seq,
            jws: message(
                &Signer::ed25519(signer_seed),
                kid,
                Some(edgeauth_core::REVOCATION_TYPE),
                &payload,
            ),
        }
    }

    fn page(entries: Vec<FeedEntry>, next: u64) -> FeedPage {
        FeedPage { entries, next }
    }

    fn jtis(revocations: &[Revocation]) -> Vec<String> {
        revocations
            .iter()
            .map(|r| match r {
                Revocation::Token { jti, .. } => jti.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// The standard ring plus the key rotated in as `next` (seed 3).
    fn rotated_ring(policy: &Policy) -> KeyRing {
        ring(
            &[
                Signer::ed25519(1).jwk("current"),
                Signer::ed25519(2).jwk("previous"),
                Signer::ed25519(3).jwk("next"),
            ],
            policy,
        )
    }

    #[test]
    fn the_cursor_moves_only_past_entries_handed_back() {
        let policy = policy("");
        let keys = standard_ring(&policy);
        let reader = FeedReader::at(1);
        assert_eq!(
            reader.url("/v1/revocations"),
            "/v1/revocations?after=1&limit=100"
        );
        assert_eq!(reader.url("/feed?x=1"), "/feed?x=1&after=1&limit=100");
        let read = reader.read(
            &page(
                vec![
                    entry(1, 1, "current"),
                    entry(2, 1, "current"),
                    entry(3, 1, "current"),
                ],
                5,
            ),
            NOW,
            &keys,
            NOW,
            &policy,
            usize::MAX,
        );
        // Entry 1 was applied before; the page's `next` covers expired entries left out.
        assert_eq!(jtis(&read.revocations), ["jti-2", "jti-3"]);
        assert_eq!((read.reader.cursor(), read.next), (5, FeedNext::CaughtUp));
        // The reader itself did not move: a failed write reads the page again.
        assert_eq!(reader.cursor(), 1);
        // A budget stops the reader where the host stops writing, and it reads on at once.
        let cut = reader.read(
            &page(vec![entry(2, 1, "current"), entry(3, 1, "current")], 3),
            NOW,
            &keys,
            NOW,
            &policy,
            1,
        );
        assert_eq!(jtis(&cut.revocations), ["jti-2"]);
        assert_eq!((cut.reader.cursor(), cut.next), (2, FeedNext::ReadMore));
        // A page never moves the cursor back.
        let behind = read
            .reader
            .read(&page(vec![], 2), NOW, &keys, NOW, &policy, usize::MAX);
        assert_eq!(behind.reader.cursor(), 5);
    }

    #[test]
    fn a_full_page_asks_for_the_next_at_once() {
        let policy = policy("");
        let keys = standard_ring(&policy);
        let entries: Vec<FeedEntry> = (1..=FEED_PAGE_LIMIT as u64)
            .map(|s| entry(s, 1, "current"))
            .collect();
        let read =
            FeedReader::default().read(&page(entries, 100), NOW, &keys, NOW, &policy, usize::MAX);
        assert_eq!(
            (read.revocations.len(), read.next),
            (FEED_PAGE_LIMIT, FeedNext::ReadMore)
        );
    }

    #[test]
    fn an_entry_signed_by_a_key_not_yet_held_is_never_skipped_for_it() {
        let policy = policy("");
        let old_keys = standard_ring(&policy);
        let feed = page(
            vec![
                entry(1, 1, "current"),
                entry(2, 3, "next"),
                entry(3, 3, "next"),
            ],
            3,
        );
        let first =
            FeedReader::default().read(&feed, NOW, &old_keys, NOW - 60, &policy, usize::MAX);
        assert_eq!(jtis(&first.revocations), ["jti-1"]);
        assert_eq!(first.next, FeedNext::NeedKeys);
        assert_eq!(first.reader.cursor(), 1);
        assert_eq!(
            first.reader.waiting(),
            Some(WaitingForKeys { seq: 2, since: NOW })
        );
        // The host could not refetch (its slot was taken): polls with the same old keys keep
        // stopping there, for as long as it takes.
        let mut reader = first.reader;
        for later in [NOW + 1, NOW + 30, NOW + 600] {
            let again = reader.read(&feed, later, &old_keys, NOW - 60, &policy, usize::MAX);
            assert!(again.revocations.is_empty() && again.rejected.is_empty());
            assert_eq!((again.reader.cursor(), again.next), (1, FeedNext::NeedKeys));
            assert_eq!(
                again.reader.waiting().map(|w| w.since),
                Some(NOW),
                "first seen stays"
            );
            reader = again.reader;
        }
        // Once the new key is fetched, the entries are applied.
        let rotated = rotated_ring(&policy);
        let done = reader.read(&feed, NOW + 601, &rotated, NOW + 601, &policy, usize::MAX);
        assert_eq!(jtis(&done.revocations), ["jti-2", "jti-3"]);
        assert_eq!((done.reader.cursor(), done.reader.waiting()), (3, None));
    }

    #[test]
    fn an_unknown_key_is_skipped_only_when_keys_fetched_after_it_lack_it() {
        let policy = policy("");
        let keys = standard_ring(&policy);
        let feed = page(vec![entry(1, 3, "made-up"), entry(2, 1, "current")], 2);
        let first = FeedReader::default().read(&feed, NOW, &keys, NOW - 10, &policy, usize::MAX);
        assert_eq!(first.next, FeedNext::NeedKeys);
        // Keys fetched in the same second might predate the entry: not proof yet.
        let same_second = first
            .reader
            .read(&feed, NOW, &keys, NOW, &policy, usize::MAX);
        assert_eq!(same_second.next, FeedNext::NeedKeys);
        let proven = first
            .reader
            .read(&feed, NOW + 2, &keys, NOW + 1, &policy, usize::MAX);
        assert_eq!(
            proven.rejected,
            [(1, edgeauth_core::DenyReason::UnknownKey)]
        );
        assert_eq!(jtis(&proven.revocations), ["jti-2"]);
        assert_eq!(proven.reader.cursor(), 2);
    }

    #[test]
    fn a_reader_survives_being_stored_and_read_back() {
        let reader: FeedReader =
            serde_json::from_str(r#"{"cursor":7,"waiting":{"seq":8,"since":5}}"#).expect("reader");
        assert_eq!(reader.cursor(), 7);
        assert_eq!(
            serde_json::to_string(&reader).expect("json"),
            r#"{"cursor":7,"waiting":{"seq":8,"since":5}}"#
        );
        let plain: FeedReader = serde_json::from_str(r#"{"cursor":3}"#).expect("reader");
        assert_eq!(plain, FeedReader::at(3));
    }
}
