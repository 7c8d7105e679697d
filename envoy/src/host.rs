//! What the filter asks of Envoy, in its own terms: the clock, logs, shared data, calls to the
//! origin and Envoy's signature check. Each host call's failure is a value here (see
//! [`crate::abi`]); none traps the VM.

use crate::{
    abi::{self, BufferType, LogLevel, MapType},
    call_answer::CallAnswer,
    host_crypto::{
        host_hash, host_signature, spki_der, verify_arguments, verify_result, SELF_TEST,
    },
    settings::OriginRoute,
    shared::SharedData,
};
use base64ct::{Base64UrlUnpadded, Encoding as _};
use edgeauth_core::{Algorithm, KeyRing, Policy};

/// Seconds since the epoch from the host, or `None`: without a clock no token can be judged,
/// and guessing one would fail open.
pub(crate) fn now() -> Option<i64> {
    let nanos = abi::current_time_nanos().ok()?;
    i64::try_from(nanos / 1_000_000_000).ok()
}

pub(crate) fn log(level: LogLevel, line: serde_json::Value) {
    let _ = abi::log(level, &line.to_string());
}

/// A fresh random tag for a deny-list segment: WASI `random_get`, which Envoy provides. Should it
/// fail, the clock's nanoseconds mixed with this VM's identity still tell two VMs' writes apart.
pub(crate) fn fresh_tag(me: u64) -> u64 {
    getrandom::u64().unwrap_or_else(|_| abi::current_time_nanos().unwrap_or(0) ^ me.rotate_left(32))
}

/// Envoy's shared data, through the host calls.
#[derive(Debug)]
pub(crate) struct Host;

impl SharedData for Host {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        // A key that holds an empty value (cleared) still has its CAS token; 0 is none.
        let (value, cas) = abi::shared_data(key).ok()??;
        Some((value, (cas != 0).then_some(cas)))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        abi::set_shared_data(key, value, cas.unwrap_or(0)).is_ok()
    }
}

/// Read from the proxy-wasm host.
impl CallAnswer {
    /// Reads the current call answer; a body over `max` is an error, not a truncation.
    pub(crate) fn read(body_size: usize, max: usize) -> Self {
        let header = |name: &str| {
            abi::header_value(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
                .and_then(|v| String::from_utf8(v).ok())
        };
        let body = if body_size > max {
            Err(format!("the answer is over {max} bytes"))
        } else if body_size == 0 {
            Ok(Vec::new())
        } else {
            abi::buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .map_err(|status| format!("the body could not be read: {}", status.name()))
        };
        Self {
            status: header(":status").and_then(|s| s.parse().ok()),
            cache_control: header("cache-control"),
            etag: header("etag"),
            body,
        }
    }
}

/// Starts a GET to the origin, conditional on `if_none_match` if given; `None` if the host
/// refuses (an unknown cluster, say).
pub(crate) fn call_origin(
    route: &OriginRoute,
    path: &str,
    if_none_match: Option<&str>,
    timeout_ms: u32,
) -> Option<u32> {
    let headers = route.get_headers(path, if_none_match);
    let result = abi::http_call(&route.cluster, &headers, timeout_ms);
    match result {
        Ok(token) => Some(token),
        Err(status) => {
            log(
                LogLevel::Error,
                serde_json::json!({"event": "call_refused", "cluster": route.cluster, "status": status.name()}),
            );
            None
        }
    }
}

/// Envoy's `verify_signature` foreign function: `Some(valid)`, or `None` if the host could not
/// answer (no such function, a key it cannot parse).
pub(crate) fn host_verify(hash: &str, spki: &[u8], signature: &[u8], text: &[u8]) -> Option<bool> {
    let arguments = verify_arguments(hash, spki, signature, text);
    // An empty answer is an empty message: `result` is false and there is no error text.
    let result = abi::call_foreign_function("verify_signature", &arguments).ok()?;
    verify_result(&result)
}

/// The host's known-answer test: for each algorithm it might take, a valid signature must pass
/// and the same signature over other bytes must fail. Returns the algorithms that passed.
pub(crate) fn host_self_test() -> Vec<Algorithm> {
    let Ok(vectors) = serde_json::from_str::<serde_json::Value>(SELF_TEST) else {
        return Vec::new();
    };
    let policy = Policy::from_json(
        r#"{"issuers":["self-test"],"audiences":["self-test"],"algorithms":["ES256","RS256"]}"#,
    );
    let (Ok(policy), Some(keys)) = (policy, vectors.get("jwks")) else {
        return Vec::new();
    };
    let Ok((ring, _)) = KeyRing::from_jwks(keys.to_string().as_bytes(), &policy) else {
        return Vec::new();
    };
    let mut passed = Vec::new();
    for (alg, name) in [(Algorithm::Es256, "ES256"), (Algorithm::Rs256, "RS256")] {
        let check = || -> Option<bool> {
            let token = vectors.get("tokens")?.get(name)?.as_str()?;
            let (input, signature) = token.rsplit_once('.')?;
            let signature = Base64UrlUnpadded::decode_vec(signature).ok()?;
            let kid = format!("self-test-{name}");
            let key = ring.keys().iter().find(|k| k.kid() == Some(kid.as_str()))?;
            let spki = spki_der(&key.public_key()?);
            let signature = host_signature(alg, &signature)?;
            let hash = host_hash(alg)?;
            let tampered = [input.as_bytes(), b"x"].concat();
            Some(
                host_verify(hash, &spki, &signature, input.as_bytes())?
                    && !host_verify(hash, &spki, &signature, &tampered)?,
            )
        };
        if check() == Some(true) {
            passed.push(alg);
        }
    }
    passed
}
