//! The host calls this filter makes, each `Result` handled: the clock, logs, shared data, calls
//! to the origin and Envoy's signature check. The SDK's trait helpers `unwrap` the same calls,
//! and a trap takes the VM, and every request on its worker thread with it.

use std::time::{Duration, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding as _};
use edgeauth_core::{Algorithm, KeyRing, Policy};
use proxy_wasm::{
    hostcalls,
    types::{BufferType, LogLevel, MapType},
};

use crate::{
    host_crypto::{
        host_hash, host_signature, spki_der, verify_arguments, verify_result, SELF_TEST,
    },
    settings::OriginRoute,
    shared::SharedData,
};

/// Seconds since the epoch from the host, or `None`: without a clock no token can be judged,
/// and guessing one would fail open.
pub(crate) fn now() -> Option<i64> {
    let time = hostcalls::get_current_time().ok()?;
    let seconds = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(seconds).ok()
}

pub(crate) fn log(level: LogLevel, line: serde_json::Value) {
    let _ = hostcalls::log(level, &line.to_string());
}

/// A fresh random tag for a deny-list segment: WASI `random_get`, which Envoy provides. Should it
/// fail, the clock's nanoseconds mixed with this VM's identity still tell two VMs' writes apart.
pub(crate) fn fresh_tag(me: u64) -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ me.rotate_left(32)
    })
}

/// Envoy's shared data, through the host calls.
#[derive(Debug)]
pub(crate) struct Host;

impl SharedData for Host {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas)),
            // A key that holds an empty value (cleared) still has its CAS token.
            Ok((None, Some(cas))) => Some((Vec::new(), Some(cas))),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

/// A finished call to the origin, read from the host.
#[derive(Debug)]
pub(crate) struct CallAnswer {
    pub(crate) status: Option<u16>,
    pub(crate) cache_control: Option<String>,
    body: Result<Vec<u8>, String>,
}

impl CallAnswer {
    /// Reads the current call answer; a body over `max` is an error, not a truncation.
    pub(crate) fn read(body_size: usize, max: usize) -> Self {
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
                .and_then(|v| String::from_utf8(v).ok())
        };
        let body = if body_size > max {
            Err(format!("the answer is over {max} bytes"))
        } else if body_size == 0 {
            Ok(Vec::new())
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .map(Option::unwrap_or_default)
                .map_err(|status| format!("the body could not be read: {status:?}"))
        };
        Self {
            status: header(":status").and_then(|s| s.parse().ok()),
            cache_control: header("cache-control"),
            body,
        }
    }

    pub(crate) fn body_if_ok(&self, max: usize) -> Result<&[u8], String> {
        match self.status {
            Some(200) => {}
            Some(status) => return Err(format!("the origin answered {status}")),
            // No `:status`: the call failed (no connection, timeout, reset).
            None => return Err("the call failed".to_string()),
        }
        let body = self.body.as_deref().map_err(Clone::clone)?;
        if body.len() > max {
            return Err(format!("the answer is over {max} bytes"));
        }
        Ok(body)
    }
}

/// Starts a GET to the origin; `None` if the host refuses (an unknown cluster, say).
pub(crate) fn call_origin(route: &OriginRoute, path: &str, timeout_ms: u32) -> Option<u32> {
    let result = hostcalls::dispatch_http_call(
        &route.cluster,
        vec![
            (":method", "GET"),
            (":path", path),
            (":authority", &route.authority),
            ("accept", "application/json"),
        ],
        None,
        vec![],
        Duration::from_millis(u64::from(timeout_ms)),
    );
    match result {
        Ok(token) => Some(token),
        Err(status) => {
            log(
                LogLevel::Error,
                serde_json::json!({"event": "call_refused", "cluster": route.cluster, "status": format!("{status:?}")}),
            );
            None
        }
    }
}

/// Envoy's `verify_signature` foreign function: `Some(valid)`, or `None` if the host could not
/// answer (no such function, a key it cannot parse).
pub(crate) fn host_verify(hash: &str, spki: &[u8], signature: &[u8], text: &[u8]) -> Option<bool> {
    let arguments = verify_arguments(hash, spki, signature, text);
    match hostcalls::call_foreign_function("verify_signature", Some(&arguments)) {
        Ok(Some(result)) => verify_result(&result),
        // An empty message: `result` is false and there is no error text.
        Ok(None) => Some(false),
        Err(_) => None,
    }
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
