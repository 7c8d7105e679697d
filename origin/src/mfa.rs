//! TOTP (RFC 6238) second factor and single-use recovery codes.
//!
//! - **Enrolment.** A 160-bit secret (RFC 4226 §4's recommended length) is stored unconfirmed and
//!   shown once as an `otpauth://` URI (the key-URI format authenticator apps read from a QR
//!   code). The first valid code confirms it and returns ten recovery codes, stored only as
//!   SHA-256 hashes (each is 50 random bits: a slow hash adds nothing a guess-limited login does
//!   not already give).
//! - **Verification.** SHA-1, six digits, 30-second steps, one step of skew either way (RFC 6238
//!   §5.2). A step is accepted only if it is later than the last one used (the store checks it
//!   with a conditional write), so a code cannot be replayed, even within its window.
//! - **Admin scopes.** Tokens carry `amr` (`pwd`, plus `otp` after a second factor, RFC 8176), and
//!   the scopes in `mfa_scopes` (default `admin`) are granted only in sessions that used one.

use std::fmt::Write as _;

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, TOTP};

/// Seconds per step.
const STEP: u64 = 30;
/// Digits per code.
const DIGITS: usize = 6;
/// Secret length in bytes (160 bits).
const SECRET_BYTES: usize = 20;
/// Recovery codes given at confirmation.
pub const RECOVERY_CODES: usize = 10;

/// A new random TOTP secret.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut secret);
    secret
}

fn totp(secret: &[u8]) -> TOTP {
    // `new_unchecked`: the 128-bit minimum `new` enforces holds for every secret made here.
    TOTP::new_unchecked(Algorithm::SHA1, DIGITS, 1, STEP, secret.to_vec())
}

/// The step a code matches at `now` (seconds), within one step either way; `None` if it
/// matches none. Steps are compared, not just codes, so the caller can refuse replays.
pub fn matching_step(secret: &[u8], code: &str, now: i64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = u64::try_from(now).ok()? / STEP;
    let totp = totp(secret);
    // Every candidate is computed and compared, so timing does not tell which one matched.
    let mut matched = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = totp.generate(step * STEP);
        if constant_time_eq(expected.as_bytes(), code.as_bytes()) && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 4648 base32 without padding, as the key URI's `secret` takes it.
pub fn base32(bytes: &[u8]) -> String {
    base32::encode(base32::Alphabet::Rfc4648 { padding: false }, bytes)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The key URI an authenticator app reads: `otpauth://totp/<issuer>:<account>?secret=…`.
pub fn key_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP}",
        percent_encode(issuer),
        percent_encode(account),
        base32(secret),
        percent_encode(issuer),
    )
}

/// Ten new recovery codes (`xxxxx-xxxxx`, base32) and their hashes, in the same order.
pub fn new_recovery_codes() -> (Vec<String>, Vec<String>) {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 7];
            OsRng.fill_bytes(&mut bytes);
            let text = base32(&bytes).to_ascii_lowercase();
            let code = format!("{}-{}", &text[..5], &text[5..10]);
            let hash = recovery_code_hash(&code);
            (code, hash)
        })
        .unzip()
}

/// The stored form of a recovery code: SHA-256 (hex) of it without separators or case.
pub fn recovery_code_hash(code: &str) -> String {
    let normalised: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Sha256::digest(normalised.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The code for `secret` at `time` (seconds): what an authenticator app shows. For tests and
/// the CLI.
pub fn code_at(secret: &[u8], time: u64) -> String {
    totp(secret).generate(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1, truncated to six digits.
    #[test]
    fn codes_match_the_rfc_6238_vectors() {
        let secret = b"12345678901234567890";
        for (time, eight_digits) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            assert_eq!(code_at(secret, time), eight_digits[2..], "{time}");
        }
    }

    #[test]
    fn a_code_matches_its_step_and_the_neighbours_only() {
        let secret = new_secret();
        let now = 1_767_225_615; // 15 s into a step
        let step = 1_767_225_615 / 30;
        let code = code_at(&secret, step * 30);
        assert_eq!(matching_step(&secret, &code, now as i64), Some(step));
        assert_eq!(matching_step(&secret, &code, now as i64 + 30), Some(step));
        assert_eq!(matching_step(&secret, &code, now as i64 - 30), Some(step));
        assert_eq!(matching_step(&secret, &code, now as i64 + 60), None);
        assert_eq!(matching_step(&secret, "12345", now as i64), None);
        assert_eq!(matching_step(&secret, "abcdef", now as i64), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_hashed_loosely() {
        let (codes, hashes) = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(hashes[0], recovery_code_hash(&codes[0]));
        assert_eq!(
            recovery_code_hash(&codes[0].to_ascii_uppercase().replace('-', " ")),
            hashes[0]
        );
        let mut unique = hashes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), RECOVERY_CODES);
    }

    #[test]
    fn the_key_uri_is_what_authenticator_apps_read() {
        let uri = key_uri("edgeauth", "ann@example.com", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/edgeauth:ann%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=edgeauth&algorithm=SHA1&digits=6&period=30"
        );
    }
}
