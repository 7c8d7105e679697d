//! What verification costs beyond the signature primitive, what a cache hit costs, and what the
//! reject paths cost. `scripts/bench` runs this and writes `bench-results/core.md`.
//!
//! Groups (criterion writes `target/criterion/<group>/<bench>/new/estimates.json`):
//! - `eddsa`, `es256`, `rs256`, `ps256`: `verify_token` beside the bare primitive on the same
//!   signing input and key;
//! - `cache`: the full `authorize` + `finish` hot path on a cache hit, and a miss with the cache off;
//! - `reject`: malformed, bad signature, expired, unknown `kid`, `alg: none`.

#[path = "../tests/shared/mod.rs"]
mod shared;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use edgeauth_core::{
    authorize, verify_token, DenyReason, KeyRing, Policy, Request, RevocationAnswer, Step,
    TokenCache, Verdict,
};
use jwt_compact::{
    alg::{Ed25519, Es256, Rsa},
    Algorithm as _, AlgorithmSignature,
};
use serde_json::json;

use shared::{b64, good_claims, good_token, standard_ring, token, Signer, NOW};

/// The signing input (`header.payload`) and raw signature bytes of a compact token.
fn split(token: &str) -> (Vec<u8>, Vec<u8>) {
    use base64ct::{Base64UrlUnpadded, Encoding};
    let (input, sig) = token.rsplit_once('.').expect("three segments");
    let sig = Base64UrlUnpadded::decode_vec(sig).expect("canonical signature");
    (input.as_bytes().to_vec(), sig)
}

fn expect_denial(token: &str, ring: &KeyRing, policy: &Policy, reason: DenyReason) {
    match verify_token(token, NOW, ring, policy) {
        Err(d) => assert_eq!(d.reason, reason, "wrong reject path for {token}"),
        Ok(_) => panic!("expected {reason:?}, token verified: {token}"),
    }
}

/// `verify_token` beside the primitive it wraps, one group per algorithm.
fn per_algorithm(c: &mut Criterion) {
    let policy = shared::policy("");
    let ring = standard_ring(&policy);

    let cases = [
        ("eddsa", Signer::ed25519(1), "current"),
        ("es256", Signer::es256(7), "ec"),
        ("rs256", Signer::rs256(), "rsa"),
        ("ps256", Signer::ps256(), "rsa"),
    ];
    for (name, signer, kid) in cases {
        let token = good_token(&signer, kid);
        assert!(
            verify_token(&token, NOW, &ring, &policy).is_ok(),
            "{name} fixture token must verify"
        );
        let (input, sig) = split(&token);

        let mut group = c.benchmark_group(name);
        group.bench_function("verify_token", |b| {
            b.iter(|| verify_token(black_box(&token), NOW, &ring, &policy))
        });
        // Signature parsed (and key derived) outside the timed loop: only the check is timed.
        match &signer {
            Signer::Ed(k) => {
                let key = k.verifying_key();
                let sig = <Ed25519 as jwt_compact::Algorithm>::Signature::try_from_slice(&sig)
                    .expect("ed25519 signature");
                assert!(key.verify_strict(&input, &sig).is_ok());
                group.bench_function("primitive", |b| {
                    b.iter(|| {
                        key.verify_strict(black_box(&input), black_box(&sig))
                            .is_ok()
                    })
                });
            }
            Signer::Es(k) => {
                let key = *k.verifying_key();
                let sig = <Es256 as jwt_compact::Algorithm>::Signature::try_from_slice(&sig)
                    .expect("es256 signature");
                assert!(Es256.verify_signature(&sig, &key, &input));
                group.bench_function("primitive", |b| {
                    b.iter(|| Es256.verify_signature(black_box(&sig), &key, black_box(&input)))
                });
            }
            Signer::Rs(k) | Signer::Ps(k) => {
                let key = k.to_public_key();
                let alg = if matches!(signer, Signer::Rs(_)) {
                    Rsa::rs256()
                } else {
                    Rsa::ps256()
                };
                let sig = <Rsa as jwt_compact::Algorithm>::Signature::try_from_slice(&sig)
                    .expect("rsa signature");
                assert!(alg.verify_signature(&sig, &key, &input));
                group.bench_function("primitive", |b| {
                    b.iter(|| alg.verify_signature(black_box(&sig), &key, black_box(&input)))
                });
            }
            Signer::Hs(_) => unreachable!("no HS256 case"),
        }
        group.finish();
    }
}

/// One request through `authorize` and, on `CheckRevocation`, `finish` with a clear deny-list.
fn full_request(
    headers: &[(&str, String)],
    ring: &KeyRing,
    policy: &Policy,
    cache: &mut TokenCache,
) -> Verdict {
    let request = Request {
        method: "GET",
        path: "/orders",
        headers,
    };
    match authorize(black_box(&request), NOW, Some(ring), policy, cache) {
        Step::CheckRevocation(check) => check.finish(RevocationAnswer::CLEAR, policy),
        Step::Done(verdict) => verdict,
    }
}

/// The request hot path on a cache hit, and an EdDSA miss with the cache off for comparison.
fn cache(c: &mut Criterion) {
    let headers = vec![(
        "authorization",
        format!("Bearer {}", good_token(&Signer::ed25519(1), "current")),
    )];
    let mut group = c.benchmark_group("cache");

    let policy = shared::policy("");
    let ring = standard_ring(&policy);
    let mut cache = TokenCache::for_policy(&policy);
    assert!(matches!(
        full_request(&headers, &ring, &policy, &mut cache),
        Verdict::Allow(_)
    ));
    let before = cache.stats();
    assert!(matches!(
        full_request(&headers, &ring, &policy, &mut cache),
        Verdict::Allow(_)
    ));
    assert_eq!(
        cache.stats().hits,
        before.hits + 1,
        "second request must hit"
    );
    group.bench_function("hit", |b| {
        b.iter(|| full_request(&headers, &ring, &policy, &mut cache))
    });

    let off = shared::policy(r#","cache":{"max_entries":0}"#);
    let off_ring = standard_ring(&off);
    let mut no_cache = TokenCache::for_policy(&off);
    assert!(matches!(
        full_request(&headers, &off_ring, &off, &mut no_cache),
        Verdict::Allow(_)
    ));
    group.bench_function("miss_eddsa", |b| {
        b.iter(|| full_request(&headers, &off_ring, &off, &mut no_cache))
    });
    group.finish();
}

/// The main reject paths of `verify_token`; each case is checked to take the intended path.
fn reject(c: &mut Criterion) {
    let policy = shared::policy("");
    let ring = standard_ring(&policy);
    let ed = Signer::ed25519(1);

    let malformed = "this is not a token at all".to_owned();
    // Signed by another key under the ring's `kid`: well-formed, verifies to false.
    let bad_signature = good_token(&Signer::ed25519(9), "current");
    let mut claims = good_claims();
    claims["iat"] = json!(NOW - 1800);
    claims["exp"] = json!(NOW - 900);
    let expired = token(&ed, "current", &claims);
    let unknown_kid = good_token(&ed, "retired-2019");
    // A signature segment is present so the token gets past the compact-form check to `alg`.
    let alg_none = format!(
        "{}.{}.{}",
        b64(json!({"alg": "none", "typ": "at+jwt"})
            .to_string()
            .as_bytes()),
        b64(good_claims().to_string().as_bytes()),
        b64(b"none"),
    );

    let cases = [
        ("malformed", malformed, DenyReason::MalformedToken),
        ("bad_signature", bad_signature, DenyReason::BadSignature),
        ("expired", expired, DenyReason::Expired),
        ("unknown_kid", unknown_kid, DenyReason::UnknownKey),
        ("alg_none", alg_none, DenyReason::AlgorithmNotAllowed),
    ];
    let mut group = c.benchmark_group("reject");
    for (name, token, reason) in &cases {
        expect_denial(token, &ring, &policy, *reason);
        group.bench_function(*name, |b| {
            b.iter(|| verify_token(black_box(token), NOW, &ring, &policy))
        });
    }
    group.finish();
}

criterion_group!(benches, per_algorithm, cache, reject);
criterion_main!(benches);
