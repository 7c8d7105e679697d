//! `POST /.edgeauth/revocations`: the origin pushes each signed revocation as it happens. The
//! message is checked with the keys the Worker already holds (no shared secret), so the route is
//! reachable from anywhere; the Cron Trigger's feed pull (`feed.rs`) repairs any push lost or
//! deferred here.

use edgeauth_core::{verify_revocation, DenyReason, RevocationError};
use serde_json::json;
use worker::{
    console_error,
    js_sys::Uint8Array,
    wasm_bindgen::JsCast,
    wasm_bindgen_futures::JsFuture,
    web_sys::{self, ReadableStreamDefaultReader, ReadableStreamReadResult},
    Env, Response,
};

use crate::{
    deny_list, describe,
    keys::{current_keys, may_force},
    log, now_seconds,
    response::{json_response, unavailable},
    settings::Settings,
    with_isolate,
};

/// Where the origin pushes signed revocations.
pub const PUSH_PATH: &str = "/.edgeauth/revocations";
/// Largest pushed message read; a revocation JWS is a few hundred bytes.
const MAX_PUSH_BYTES: usize = 8 * 1024;
/// `Retry-After` when the Worker cannot check or store a message right now.
const RETRY_SECONDS: u32 = 5;

/// Why a pushed body was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Over [`MAX_PUSH_BYTES`]: reading stopped there.
    #[error("the message is over {0} bytes")]
    TooLarge(usize),
    /// The stream failed or gave something other than bytes.
    #[error("the message could not be read: {0}")]
    Unreadable(String),
}

/// A body read chunk by chunk that refuses to grow past its cap, so an endless or huge stream
/// costs at most the cap in memory and is abandoned as soon as it passes it.
#[derive(Debug)]
pub struct CappedBody {
    bytes: Vec<u8>,
    cap: usize,
}

impl CappedBody {
    /// An empty body that holds at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
        }
    }

    /// Room for the next chunk of `len` bytes, to be filled by the caller; refused (nothing
    /// added) when the body would pass the cap.
    pub fn room_for(&mut self, len: usize) -> Result<&mut [u8], BodyError> {
        let start = self.bytes.len();
        if len > self.cap - start {
            return Err(BodyError::TooLarge(self.cap));
        }
        self.bytes.resize(start + len, 0);
        Ok(&mut self.bytes[start..])
    }

    /// The bytes read.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads the request's body, chunk by chunk, up to `cap` bytes.
async fn read_capped(request: &web_sys::Request, cap: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = CappedBody::new(cap);
    let Some(stream) = request.body() else {
        return Ok(body.into_bytes());
    };
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    loop {
        let result: ReadableStreamReadResult = JsFuture::from(reader.read())
            .await
            .map_err(|e| BodyError::Unreadable(describe(e)))?
            .unchecked_into();
        if result.get_done() == Some(true) {
            return Ok(body.into_bytes());
        }
        let chunk: Uint8Array = result
            .get_value()
            .dyn_into()
            .map_err(|_| BodyError::Unreadable("a chunk that is not bytes".into()))?;
        match body.room_for(chunk.length() as usize) {
            Ok(room) => chunk.copy_to(room),
            Err(too_large) => {
                // Nothing more is read; the runtime drops the rest of the stream.
                let _ = reader.cancel();
                return Err(too_large);
            }
        }
    }
}

/// Answers a push.
pub async fn receive(
    request: web_sys::Request,
    env: &Env,
    settings: &Settings,
) -> worker::Result<Response> {
    if request.method() != "POST" {
        let mut response = json_response(
            405,
            &json!({"error": "method_not_allowed", "error_description": "POST a signed revocation"}),
        )?;
        response.headers_mut().set("allow", "POST")?;
        return Ok(response);
    }
    let too_large =
        json!({"error": "invalid_request", "error_description": "The message is too large"});
    let declared = request
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_PUSH_BYTES) {
        return json_response(413, &too_large);
    }
    let body = match read_capped(&request, MAX_PUSH_BYTES).await {
        Ok(body) => body,
        Err(BodyError::TooLarge(_)) => return json_response(413, &too_large),
        Err(BodyError::Unreadable(error)) => {
            return json_response(
                400,
                &json!({"error": "invalid_request", "error_description": "The message could not be read", "detail": error}),
            )
        }
    };
    let message = String::from_utf8_lossy(&body);
    let message = message.trim();
    let now = now_seconds();
    let Some(keys) = current_keys(env, settings, now, false).await else {
        return unavailable("no key set to check the message with", RETRY_SECONDS);
    };
    let mut verified = verify_revocation(message, now, &keys, &settings.policy);
    if matches!(&verified, Err(RevocationError::Invalid(d)) if d.reason == DenyReason::UnknownKey) {
        // A key the origin may just have rotated in: refetch when allowed. When not, the message
        // may still be the origin's: deferred, not refused (the Cron Trigger reads it from the
        // feed once the keys arrive).
        let refreshed = match may_force(env, settings, now) {
            true => current_keys(env, settings, now, true).await,
            false => None,
        };
        let fetched_now = with_isolate(env, |i| i.keys.fetched_at()) >= now;
        match refreshed {
            Some(keys) if fetched_now => {
                verified = verify_revocation(message, now, &keys, &settings.policy);
            }
            _ => {
                log(json!({"event": "revocation_push_deferred", "reason": "unknown_key"}));
                return unavailable(
                    "the key that signed the message is not held yet",
                    settings.keys_refetch_interval,
                );
            }
        }
    }
    let revocation = match verified {
        Ok(revocation) => revocation,
        Err(RevocationError::Expired) => return Ok(Response::empty()?.with_status(204)),
        Err(RevocationError::Invalid(denial)) => {
            let reason = denial.reason.code();
            log(json!({"event": "revocation_push_rejected", "reason": reason}));
            return json_response(
                400,
                &json!({"error": "invalid_request", "error_description": "Not a revocation signed by the origin", "reason": reason}),
            );
        }
    };
    match deny_list::store(env, settings, &revocation, now).await {
        Ok(_) => {
            log(json!({"event": "revocation_pushed"}));
            Ok(Response::empty()?.with_status(204))
        }
        Err(error) => {
            console_error!(
                "{}",
                json!({"event": "denylist_write_failed", "error": error})
            );
            unavailable("the deny-list could not be written", RETRY_SECONDS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(chunks: &[&[u8]], cap: usize) -> Result<Vec<u8>, BodyError> {
        let mut body = CappedBody::new(cap);
        for chunk in chunks {
            body.room_for(chunk.len())?.copy_from_slice(chunk);
        }
        Ok(body.into_bytes())
    }

    #[test]
    fn a_body_is_read_up_to_its_cap() {
        assert_eq!(read(&[b"ab", b"", b"cd"], 4), Ok(b"abcd".to_vec()));
        assert_eq!(read(&[], 4), Ok(Vec::new()));
    }

    #[test]
    fn reading_stops_at_the_chunk_that_passes_the_cap() {
        let mut body = CappedBody::new(4);
        body.room_for(3).expect("fits").copy_from_slice(b"abc");
        assert_eq!(body.room_for(2), Err(BodyError::TooLarge(4)));
        // Nothing of the refused chunk was taken.
        assert_eq!(body.into_bytes(), b"abc");
        assert_eq!(read(&[&[0; 5]], 4), Err(BodyError::TooLarge(4)));
        assert!(read(&[&[0; 4], &[]], 4).is_ok());
    }
}
