//! Signature checks through WebCrypto (`crypto.subtle`), which workerd runs as native code: the
//! core prepares everything up to the signature ([`edgeauth_core::authorize_deferred`]), this
//! module checks it, and the core decides the rest. Imported keys are kept per isolate.
//!
//! WebCrypto and the core agree on every well-formed signature; the one known difference is
//! Ed25519 signatures with a small-order `R`, which the core's `verify_strict` refuses and
//! BoringSSL accepts when the equation holds. Only the private key's holder (the origin) can
//! make one, so it cannot be used to forge.

use std::collections::HashMap;

use base64ct::{Base64UrlUnpadded, Encoding as _};
use edgeauth_core::{Algorithm, KeyRing, PublicKey, SignatureCheck, Thumbprint};
use web_sys::{CryptoKey, SubtleCrypto, WorkerGlobalScope};
use worker::{
    js_sys::{self, Array, Object, Promise, Reflect, Uint8Array},
    wasm_bindgen::{JsCast as _, JsValue},
    wasm_bindgen_futures::JsFuture,
};

use crate::describe;

/// What an isolate keeps of WebCrypto: `crypto.subtle`, each algorithm's parameters and the
/// imported keys, each looked up or built once. A verification is started while the isolate's
/// state is borrowed (no handle is cloned out, which would cost a call into JavaScript each) and
/// awaited after.
#[derive(Debug, Default)]
pub struct WebCrypto {
    subtle: Option<SubtleCrypto>,
    parameters: HashMap<Algorithm, Object>,
    /// By key and algorithm: an RSA key may serve RS256 and PS256, and WebCrypto binds each
    /// imported key to one.
    keys: HashMap<(Thumbprint, Algorithm), CryptoKey>,
}

/// A rotation's worth of keys at most: past that, old imports are dropped.
const MAX_IMPORTED_KEYS: usize = 16;

impl WebCrypto {
    /// Starts checking `check`'s signature; `None` when its key is not imported yet.
    pub fn start_verify(&mut self, check: &SignatureCheck) -> Option<Result<Promise, String>> {
        let key = self.keys.get(&key_id(check))?;
        let subtle = match &self.subtle {
            Some(subtle) => subtle,
            None => match subtle() {
                Ok(subtle) => self.subtle.insert(subtle),
                Err(e) => return Some(Err(e)),
            },
        };
        let alg = check.algorithm();
        let parameters = match self.parameters.get(&alg) {
            Some(parameters) => parameters,
            None => match parameters(alg) {
                Ok(parameters) => self.parameters.entry(alg).or_insert(parameters),
                Err(e) => return Some(Err(e)),
            },
        };
        Some(
            subtle
                .verify_with_object_and_u8_array_and_u8_array(
                    parameters,
                    key,
                    check.signature(),
                    check.signing_input(),
                )
                .map_err(describe),
        )
    }

    /// Keeps the key imported for `check`.
    pub fn insert(&mut self, check: &SignatureCheck, key: CryptoKey) {
        if self.keys.len() >= MAX_IMPORTED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(key_id(check), key);
    }
}

fn key_id(check: &SignatureCheck) -> (Thumbprint, Algorithm) {
    (*check.key_thumbprint(), check.algorithm())
}

fn subtle() -> Result<SubtleCrypto, String> {
    js_sys::global()
        .unchecked_into::<WorkerGlobalScope>()
        .crypto()
        .map(|crypto| crypto.subtle())
        .map_err(describe)
}

fn object(fields: &[(&str, JsValue)]) -> Result<Object, String> {
    let object = Object::new();
    for (name, value) in fields {
        Reflect::set(&object, &(*name).into(), value).map_err(describe)?;
    }
    Ok(object)
}

/// The WebCrypto algorithm for `alg`, as `importKey` and `verify` take it.
fn parameters(alg: Algorithm) -> Result<Object, String> {
    let sha256: JsValue = "SHA-256".into();
    match alg {
        Algorithm::EdDsa => object(&[("name", "Ed25519".into())]),
        Algorithm::Es256 => object(&[
            ("name", "ECDSA".into()),
            ("namedCurve", "P-256".into()),
            ("hash", sha256),
        ]),
        Algorithm::Rs256 => object(&[("name", "RSASSA-PKCS1-v1_5".into()), ("hash", sha256)]),
        // RFC 7518 §3.5: the salt is as long as the hash.
        Algorithm::Ps256 => object(&[
            ("name", "RSA-PSS".into()),
            ("hash", sha256),
            ("saltLength", 32.into()),
        ]),
        other => Err(format!(
            "{} is not verified through WebCrypto",
            other.name()
        )),
    }
}

async fn import_key(
    subtle: &SubtleCrypto,
    key: &PublicKey,
    alg: Algorithm,
) -> Result<CryptoKey, String> {
    let usages: JsValue = Array::of1(&"verify".into()).into();
    let algorithm = parameters(alg)?;
    let promise = match key {
        PublicKey::Ed25519(raw) | PublicKey::P256(raw) => subtle.import_key_with_object(
            "raw",
            &Uint8Array::from(raw.as_slice()),
            &algorithm,
            false,
            &usages,
        ),
        PublicKey::Rsa { modulus, exponent } => {
            let jwk = object(&[
                ("kty", "RSA".into()),
                ("n", Base64UrlUnpadded::encode_string(modulus).into()),
                ("e", Base64UrlUnpadded::encode_string(exponent).into()),
            ])?;
            subtle.import_key_with_object("jwk", &jwk, &algorithm, false, &usages)
        }
    }
    .map_err(describe)?;
    JsFuture::from(promise)
        .await
        .map_err(describe)?
        .dyn_into::<CryptoKey>()
        .map_err(|_| "importKey gave no CryptoKey".to_string())
}

/// Imports the key that must verify `check` (the caller keeps it for the isolate).
pub async fn import(check: &SignatureCheck, keys: &KeyRing) -> Result<CryptoKey, String> {
    let public = check
        .public_key(keys)
        .ok_or_else(|| "the key has no public form or left the ring".to_string())?;
    import_key(&subtle()?, &public, check.algorithm()).await
}

/// Whether the signature verifies, once WebCrypto answers a started verification.
pub async fn verified(promise: Promise) -> Result<bool, String> {
    let answer = JsFuture::from(promise).await.map_err(describe)?;
    answer
        .as_bool()
        .ok_or_else(|| "verify gave no boolean".to_string())
}
