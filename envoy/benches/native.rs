//! The native module's request path without Envoy: what `Edge::decide_headers` costs on a
//! verified-token cache hit and on a miss, and what the Ed25519 check costs with ring against the
//! core's own (ed25519-dalek, which the module uses), on the same token. `cargo bench -p edgeauth-envoy --bench native`.

// The native module only exists for the host; built for Wasm (clippy's --all-targets), this bench
// is empty.
#[cfg(not(target_family = "wasm"))]
mod native {
    use std::hint::black_box;

    use base64ct::{Base64UrlUnpadded, Encoding as _};
    use criterion::{criterion_group, Criterion};
    use ed25519_dalek::{Signer as _, SigningKey};
    use edgeauth_core::{authorize_deferred, Deferred, Request, TokenCache};
    use edgeauth_envoy::{
        call_answer::CallAnswer,
        native::{
            crypto,
            edge::{Edge, Outcome},
        },
        settings::Settings,
    };
    use serde_json::json;

    const ISSUER: &str = "https://auth.bench.test";

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    fn b64(bytes: &[u8]) -> String {
        Base64UrlUnpadded::encode_string(bytes)
    }

    fn setup() -> (Edge, String) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "alg": "EdDSA",
            "x": b64(key.verifying_key().as_bytes())}]});
        let configuration = json!({
            "policy": {"issuers": [ISSUER], "audiences": ["api"]},
            "jwks": {"cluster": "origin", "path": "/.well-known/jwks.json"},
            "revocation_feed": {"cluster": "origin", "path": "/v1/revocations"},
        });
        let edge =
            Edge::new(Settings::from_json(configuration.to_string().as_bytes()).expect("settings"));
        let ok = |body: String| CallAnswer {
            status: Some(200),
            cache_control: Some("max-age=3600".into()),
            etag: None,
            body: Ok(body.into_bytes()),
        };
        let now = now();
        edge.take_keys(&ok(jwks.to_string()), now, now, true)
            .expect("keys");
        edge.take_feed(&ok(r#"{"entries":[],"next":0}"#.into()), 0, now)
            .expect("feed");
        let header = json!({"alg": "EdDSA", "kid": "k", "typ": "at+jwt"}).to_string();
        let claims = json!({"iss": ISSUER, "aud": "api", "sub": "user-1", "scope": "profile",
            "jti": "jti-1", "iat": now, "exp": now + 3600})
        .to_string();
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature = key.sign(input.as_bytes()).to_bytes();
        (edge, format!("{input}.{}", b64(&signature)))
    }

    fn bench(c: &mut Criterion) {
        let (edge, token) = setup();
        let bearer = format!("Bearer {token}");
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":authority", b"api.bench.test"),
            (b":path", b"/orders?page=2"),
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b"user-agent", b"wrk"),
            (b"authorization", bearer.as_bytes()),
        ];
        let now = now();
        let mut group = c.benchmark_group("native");
        // One request as a worker thread decides it, with that thread's token cache.
        let hit = |cache: &mut TokenCache| {
            let outcome =
                edge.decide_headers(&edge.view(), &headers, now, cache, crypto::verify, true);
            assert!(matches!(outcome, Outcome::Allow(_)));
            black_box(outcome)
        };
        let mut cache = TokenCache::for_policy(&edge.settings.policy);
        group.bench_function("decide_cache_hit", |b| b.iter(|| hit(&mut cache)));
        // Every worker thread at once, each with its own token cache as in Envoy: what one
        // decision costs when the threads share the edge's key set and deny state. Anything a
        // request writes that the other thread also writes (a reference count) shows up here
        // as a cache line moving between cores, and not in the one-thread figure above.
        group.bench_function("decide_cache_hit_two_threads", |b| {
            b.iter_custom(|iters| {
                let run = || {
                    let mut cache = TokenCache::for_policy(&edge.settings.policy);
                    for _ in 0..iters {
                        hit(&mut cache);
                    }
                };
                let started = std::time::Instant::now();
                std::thread::scope(|scope| {
                    scope.spawn(run);
                    scope.spawn(run);
                });
                started.elapsed()
            })
        });
        let policy = edgeauth_core::Policy::from_json(&format!(
            r#"{{"issuers":["{ISSUER}"],"audiences":["api"],"cache":{{"max_entries":0}}}}"#
        ))
        .expect("policy");
        let mut off = TokenCache::for_policy(&policy);
        group.bench_function("decide_cache_off_eddsa", |b| {
            b.iter(|| {
                black_box(edge.decide_headers(
                    &edge.view(),
                    &headers,
                    now,
                    &mut off,
                    crypto::verify,
                    true,
                ))
            })
        });
        // The signature alone, on the same token: ring's Ed25519 and the core's (ed25519-dalek).
        let view = edge.view();
        let ring = view.keys.usable(now, 0).expect("keys");
        let request = Request {
            method: "GET",
            path: "/orders",
            headers: &[("authorization", bearer.as_str())][..],
        };
        let Deferred::VerifySignature(check) =
            authorize_deferred(&request, now, Some(ring), &edge.settings.policy, &mut off)
        else {
            panic!("a signature to check");
        };
        group.bench_function("ed25519_ring", |b| {
            b.iter(|| assert!(crypto::verify(black_box(&check), ring)))
        });
        group.bench_function("ed25519_core", |b| {
            b.iter(|| assert!(black_box(&check).verify_here(ring)))
        });
        group.finish();
    }

    criterion_group!(benches, bench);
}

#[cfg(not(target_family = "wasm"))]
criterion::criterion_main!(native::benches);

#[cfg(target_family = "wasm")]
fn main() {}
