//! Arbitrary bytes as what Envoy hands the native module: a request's header map (names and
//! values unchecked, pseudo-headers included) and a callout's answer body. A panic here would be
//! caught at the hook and answered 500, but it would still be a request this module cannot
//! judge.
//!
//! Input: the bytes split at `\n` into lines, each line split at the first `:` after its first
//! byte into a name and a value (so `:path:/a` is `:path` = `/a`); the whole input is also taken
//! as a JWKS answer and as a feed page.
//!
//! Invariants:
//! - no panic, whatever the bytes;
//! - a request without a text `:method` and `:path` is refused 400 `invalid_request`;
//! - an allowed request carries a verified token (the input has no key of the ring's).

#![no_main]

use edgeauth_core::{DenyReason, TokenCache};
use edgeauth_envoy::{
    call_answer::CallAnswer,
    native::{
        crypto,
        edge::{Edge, Outcome},
    },
    settings::Settings,
};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_767_225_600;
const CONFIGURATION: &str = r#"{
    "policy": {"issuers": ["https://auth.example"], "audiences": ["api"],
               "routes": [{"prefix": "/public/", "public": true}]},
    "jwks": {"cluster": "origin", "path": "/.well-known/jwks.json"},
    "revocation_feed": {"cluster": "origin", "path": "/v1/revocations"}
}"#;
const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"current","alg":"EdDSA",
    "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

fn ok(body: &[u8]) -> CallAnswer {
    CallAnswer {
        status: Some(200),
        cache_control: None,
        etag: None,
        body: Ok(body.to_vec()),
    }
}

fuzz_target!(|data: &[u8]| {
    let settings = Settings::from_json(CONFIGURATION.as_bytes()).expect("a configuration");
    let edge = Edge::new(settings);
    let _ = edge.take_keys(&ok(data), NOW, NOW, true);
    edge.take_keys(&ok(JWKS.as_bytes()), NOW, NOW, true)
        .expect("the fixed key set");
    let _ = edge.take_feed(&ok(data), 0, NOW);

    let headers: Vec<(&[u8], &[u8])> = data
        .split(|&b| b == b'\n')
        .map(|line| {
            let colon = line
                .iter()
                .skip(1)
                .position(|&b| b == b':')
                .map_or(line.len(), |i| i + 1);
            (&line[..colon], line.get(colon + 1..).unwrap_or_default())
        })
        .collect();
    let text = |name: &[u8]| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .is_some_and(|(_, v)| std::str::from_utf8(v).is_ok())
    };
    let names_are_text = headers.iter().all(|(k, _)| std::str::from_utf8(k).is_ok());
    let mut tokens = TokenCache::for_policy(&edge.settings.policy);
    let outcome = edge.decide_headers(
        &edge.view(),
        &headers,
        NOW,
        &mut tokens,
        crypto::verify,
        true,
    );
    if !(names_are_text && text(b":method") && text(b":path")) {
        assert!(
            matches!(&outcome, Outcome::Deny(d, _) if d.reason == DenyReason::InvalidRequest),
            "{outcome:?}"
        );
    }
    if let Outcome::Allow(allowed) = &outcome {
        // Only a public route passes without a token; the input signs nothing with the key.
        assert!(allowed.token.is_none(), "{allowed:?}");
    }
});
