//! Arbitrary text as a policy; each policy that loads is then used for a few requests.
//!
//! Invariants:
//! - no panic, whatever the text, both when loading and when deciding requests under it;
//! - a loaded policy keeps its documented bounds (algorithms listed, HS256 alone, sizes);
//! - a symmetric policy never takes the fixed Ed25519 key;
//! - whatever the policy, every header the core asks a host to set, remove or send back is a
//!   valid header name with a value of printable ASCII: no policy can make the core inject a
//!   header line.

#![no_main]

use edgeauth_core::{
    authorize, DenyListStatus, HeaderEdit, KeyRing, Policy, Request, RevocationAnswer, Step,
    TokenCache, Verdict, WatermarkStatus,
};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_767_225_600;
/// `Signer::ed25519(1).jwk("current")` from verifier/core/tests/shared.
const JWKS: &str = r#"{"keys":[{"crv":"Ed25519","kid":"current","kty":"OKP","x":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"}]}"#;
/// `good_token(&Signer::ed25519(1), "current")`: scope `profile orders:read`, no `amr`.
const GOOD_TOKEN: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImN1cnJlbnQiLCJ0eXAiOiJhdCtqd3QifQ.eyJhdWQiOiJhcGkuZXhhbXBsZS50ZXN0IiwiZXhwIjoxNzY3MjI2NDQwLCJpYXQiOjE3NjcyMjU1NDAsImlzcyI6Imh0dHBzOi8vYXV0aC5leGFtcGxlLnRlc3QiLCJqdGkiOiJqdGktMDAwMSIsInNjb3BlIjoicHJvZmlsZSBvcmRlcnM6cmVhZCIsInN1YiI6IjNmMWMyYTllLTdiNGQtNGMxYS05ZTJmLTBhMWIyYzNkNGU1ZiJ9.1zr1x5M7WLARgAszf-FzRV8LWXDjIdn9YzmEbECfGMlqugteB4OH_HlABlBBd09ra1h9aNy0psHdx-NEwqqrAw";

/// Method, path with query, headers.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Header names travel lowercase (HTTP/2, Envoy).
fn header_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| is_token_char(b) && !b.is_ascii_uppercase())
}

/// Printable ASCII: no CR, LF, NUL or other control byte, nothing outside ASCII.
fn header_value_ok(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn check_verdict(verdict: &Verdict, policy: &Policy, request_headers: &[(&str, &str)]) {
    match verdict {
        Verdict::Allow(allowed) => {
            for edit in allowed.edits(policy) {
                match edit {
                    HeaderEdit::Remove(name) => {
                        assert!(header_name_ok(name), "header to remove {name:?}")
                    }
                    HeaderEdit::Replace(name, value) | HeaderEdit::Add(name, value) => {
                        assert!(header_name_ok(name), "header to set {name:?}");
                        assert!(header_value_ok(value), "{name}: {value:?}");
                    }
                }
            }
        }
        Verdict::Deny(denial) => {
            for (name, value) in denial.response_headers(policy, request_headers) {
                assert!(header_name_ok(name), "reply header {name:?}");
                assert!(header_value_ok(&value), "{name}: {value:?}");
            }
            assert!(matches!(denial.status(), 400..=599));
            assert!(header_value_ok(&denial.body()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_json(text) else {
        return;
    };

    let algorithms = policy.algorithms();
    assert!(!algorithms.is_empty(), "a policy accepts some algorithm");
    if policy.is_symmetric() {
        assert_eq!(algorithms.len(), 1, "HS256 must stand alone");
    }
    assert!((512..=64 * 1024).contains(&policy.max_token_bytes()));
    assert!((1..=3600).contains(&policy.retry_after_seconds()));

    let ring = KeyRing::from_jwks(JWKS.as_bytes(), &policy)
        .ok()
        .map(|(ring, _)| ring);
    if policy.is_symmetric() {
        assert!(ring.is_none(), "a symmetric policy took a public key");
    }

    let bearer = format!("Bearer {GOOD_TOKEN}");
    let cookie = format!("access_token={GOOD_TOKEN}");
    let query = format!("/orders?access_token={GOOD_TOKEN}");
    let requests: [Case<'_>; 6] = [
        (
            "GET",
            "/orders",
            vec![
                ("authorization", bearer.as_str()),
                ("origin", "https://app.example.test"),
            ],
        ),
        (
            "POST",
            "/admin/users",
            vec![("authorization", bearer.as_str()), ("x-user-id", "admin")],
        ),
        ("GET", "/public/x", vec![]),
        ("GET", query.as_str(), vec![("cookie", cookie.as_str())]),
        (
            "OPTIONS",
            "/orders",
            vec![
                ("origin", "https://app.example.test"),
                ("access-control-request-method", "POST"),
            ],
        ),
        ("GET", "/%61dmin//x/", vec![("authorization", "Basic eDp5")]),
    ];
    let answers = [
        RevocationAnswer::CLEAR,
        RevocationAnswer {
            jti: DenyListStatus::Unavailable,
            session: DenyListStatus::NotListed,
            user: WatermarkStatus::RevokedThrough(NOW - 3600),
        },
    ];
    for answer in answers {
        let mut cache = TokenCache::for_policy(&policy);
        for (method, path, headers) in &requests {
            let request = Request {
                method,
                path,
                headers: headers.as_slice(),
            };
            // The first pass fills the cache; the second may answer from it.
            for _ in 0..2 {
                let verdict = match authorize(&request, NOW, ring.as_ref(), &policy, &mut cache) {
                    Step::Done(verdict) => verdict,
                    Step::CheckRevocation(check) => check.finish(answer, &policy),
                };
                check_verdict(&verdict, &policy, headers);
            }
        }
    }
});
