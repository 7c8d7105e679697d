//! Fixed keys, a fixed clock and a raw signer, so every test token is reproducible and tests can
//! build tokens no well-behaved library would (duplicate members, odd `typ`, bad encodings).
#![allow(dead_code)]

use base64ct::{Base64UrlUnpadded, Encoding};
use edgeauth_core::{KeyRing, Policy};
use jwt_compact::{
    alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPrivateKey},
    jwk::JsonWebKey,
    Algorithm, AlgorithmSignature,
};
use rsa::pkcs8::DecodePrivateKey;
use serde_json::{json, Value};

/// 2026-01-01T00:00:00Z: every fixture token is minted around this instant.
pub const NOW: i64 = 1_767_225_600;
pub const ISSUER: &str = "https://auth.example.test";
pub const AUDIENCE: &str = "api.example.test";

pub const RSA_2048_PEM: &str = include_str!("../fixtures/rsa2048-test-only.pem");
pub const RSA_1024_PEM: &str = include_str!("../fixtures/rsa1024-test-only.pem");

#[derive(Clone)]
pub enum Signer {
    Ed(ed25519_dalek::SigningKey),
    Es(<Es256 as Algorithm>::SigningKey),
    Rs(RsaPrivateKey),
    Ps(RsaPrivateKey),
    Hs(Hs256Key),
}

impl Signer {
    pub fn ed25519(seed: u8) -> Self {
        Self::Ed(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }
    pub fn es256(seed: u8) -> Self {
        Self::Es(
            <Es256 as Algorithm>::SigningKey::from_slice(&[seed; 32]).expect("scalar in range"),
        )
    }
    pub fn rs256() -> Self {
        Self::Rs(RsaPrivateKey::from_pkcs8_pem(RSA_2048_PEM).expect("fixture key"))
    }
    pub fn ps256() -> Self {
        Self::Ps(RsaPrivateKey::from_pkcs8_pem(RSA_2048_PEM).expect("fixture key"))
    }
    pub fn hs256(secret: &[u8]) -> Self {
        Self::Hs(Hs256Key::new(secret))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Self::Ed(_) => "EdDSA",
            Self::Es(_) => "ES256",
            Self::Rs(_) => "RS256",
            Self::Ps(_) => "PS256",
            Self::Hs(_) => "HS256",
        }
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Ed(k) => Ed25519.sign(k, message).as_bytes().into_owned(),
            // The low-S form, as the origin signs; `sign_high_s` gives the twin.
            Self::Es(k) => {
                let signature = Es256.sign(k, message);
                signature
                    .normalize_s()
                    .unwrap_or(signature)
                    .to_bytes()
                    .to_vec()
            }
            Self::Rs(k) => Rsa::rs256().sign(k, message).as_bytes().into_owned(),
            Self::Ps(k) => Rsa::ps256().sign(k, message).as_bytes().into_owned(),
            Self::Hs(k) => Hs256.sign(k, message).as_bytes().into_owned(),
        }
    }

    /// The public JWK with `kid` (and `alg`/`use` when given).
    pub fn jwk(&self, kid: &str) -> Value {
        let mut v = match self {
            Self::Ed(k) => serde_json::to_value(JsonWebKey::from(&k.verifying_key())),
            Self::Es(k) => serde_json::to_value(JsonWebKey::from(k.verifying_key())),
            Self::Rs(k) | Self::Ps(k) => serde_json::to_value(JsonWebKey::from(&k.to_public_key())),
            Self::Hs(k) => serde_json::to_value(JsonWebKey::from(k)),
        }
        .expect("jwk serialises");
        v["kid"] = json!(kid);
        v
    }
}

pub fn b64(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

/// Signs the exact header and payload text given.
pub fn sign_raw(signer: &Signer, header: &str, payload: &str) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = signer.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&sig))
}

/// Claims of a good token at [`NOW`]: 15 minutes, all the claims the origin sets.
pub fn good_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "3f1c2a9e-7b4d-4c1a-9e2f-0a1b2c3d4e5f",
        "jti": "jti-0001",
        "scope": "profile orders:read",
        "iat": NOW - 60,
        "exp": NOW + 840,
    })
}

/// A token with standard header (`alg`, `kid`, `typ: at+jwt`) and these claims.
pub fn token(signer: &Signer, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": signer.alg(), "kid": kid, "typ": "at+jwt"});
    sign_raw(signer, &header.to_string(), &claims.to_string())
}

pub fn good_token(signer: &Signer, kid: &str) -> String {
    token(signer, kid, &good_claims())
}

pub fn policy_json(extra: &str) -> String {
    format!(r#"{{"issuers":["{ISSUER}"],"audiences":["{AUDIENCE}"]{extra}}}"#)
}

pub fn policy(extra: &str) -> Policy {
    Policy::from_json(&policy_json(extra)).expect("fixture policy is valid")
}

pub fn jwks(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

pub fn ring(keys: &[Value], policy: &Policy) -> KeyRing {
    KeyRing::from_jwks(&jwks(keys), policy)
        .expect("fixture ring")
        .0
}

/// The usual ring: Ed25519 `current` and `previous`, ES256 `ec`, RSA `rsa`.
pub fn standard_ring(policy: &Policy) -> KeyRing {
    ring(
        &[
            Signer::ed25519(1).jwk("current"),
            Signer::ed25519(2).jwk("previous"),
            Signer::es256(7).jwk("ec"),
            Signer::rs256().jwk("rsa"),
        ],
        policy,
    )
}

/// The order of P-256 (FIPS 186-4 D.1.2.3), big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The same token with its ES256 `s` replaced by `n - s`: what anyone can make from a token
/// they hold, without the key.
pub fn ecdsa_twin(token: &str) -> String {
    let (input, signature) = token.rsplit_once('.').expect("three segments");
    let mut signature = Base64UrlUnpadded::decode_vec(signature).expect("base64url signature");
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_ORDER[i]) - i16::from(signature[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        signature[32 + i] = d.rem_euclid(256) as u8;
    }
    format!("{input}.{}", b64(&signature))
}
