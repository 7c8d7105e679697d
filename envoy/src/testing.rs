//! Keys, key sets, feed entries and access tokens for the unit tests, signed with Ed25519 keys
//! made from a one-byte seed.

use base64ct::{Base64UrlUnpadded, Encoding as _};
use ed25519_dalek::{Signer as _, SigningKey};
use edgeauth_core::{KeyRing, Policy, REVOCATION_TYPE};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://auth.example";
pub const NOW: i64 = 1_800_000_000;

/// The policy JSON the tests use: this issuer, audience `api`, EdDSA.
pub fn policy_json() -> String {
    format!(r#"{{"issuers":["{ISSUER}"],"audiences":["api"],"algorithms":["EdDSA"]}}"#)
}

pub fn policy() -> Policy {
    Policy::from_json(&policy_json()).expect("a policy")
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A JWKS of the keys made from these seeds, under these `kid`s.
pub fn jwks(keys: &[(u8, &str)]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|(seed, kid)| {
            let x = Base64UrlUnpadded::encode_string(key(*seed).verifying_key().as_bytes());
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA"})
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

pub fn ring(keys: &[(u8, &str)]) -> KeyRing {
    KeyRing::from_jwks(jwks(keys).as_bytes(), &policy())
        .expect("a ring")
        .0
}

/// A compact JWS of `payload` with this `typ`, signed by key `seed` under `kid`.
pub fn sign(payload: &Value, typ: &str, seed: u8, kid: &str) -> String {
    let header = json!({"alg": "EdDSA", "kid": kid, "typ": typ}).to_string();
    let input = format!(
        "{}.{}",
        Base64UrlUnpadded::encode_string(header.as_bytes()),
        Base64UrlUnpadded::encode_string(payload.to_string().as_bytes())
    );
    let signature = key(seed).sign(input.as_bytes()).to_bytes();
    format!("{input}.{}", Base64UrlUnpadded::encode_string(&signature))
}

/// A feed entry revoking `jti`, signed by key `seed` under `kid`.
pub fn entry(seq: u64, jti: &str, seed: u8, kid: &str) -> Value {
    let payload = json!({"iss": ISSUER, "seq": seq, "jti": jti, "exp": NOW + 900, "iat": NOW});
    json!({"seq": seq, "jws": sign(&payload, REVOCATION_TYPE, seed, kid)})
}

/// An access token for `jti`, valid at [`NOW`], signed by key `seed` under `kid` (the native
/// module's tests).
#[cfg(not(target_family = "wasm"))]
pub fn access_token(jti: &str, seed: u8, kid: &str) -> String {
    let claims = json!({"iss": ISSUER, "aud": "api", "sub": "user-1", "scope": "profile",
        "jti": jti, "iat": NOW, "exp": NOW + 600});
    sign(&claims, "at+jwt", seed, kid)
}
