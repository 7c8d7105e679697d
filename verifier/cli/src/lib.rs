//! `edge-verify`: what the edge would say about a token, offline and reproducibly.
//!
//! `edge-verify --jwks FILE --policy FILE [--now UNIX_SECONDS] [--signature-only] < token`
//! prints a JSON verdict and exits 0 (accept), 1 (reject) or 2 (usage or configuration error).
//! `--now` pins the clock so an old token can be judged as it was at any instant.

use std::io::Read;

use anyhow::{bail, Context, Result};
use edgeauth_core::{
    check_signature, thumbprint_hex, verify_token, Claims, Denial, KeyRing, Policy, TokenHeader,
};
use serde_json::{json, Value};

/// Exit status for an accepted token.
pub const EXIT_ACCEPT: i32 = 0;
/// Exit status for a rejected token.
pub const EXIT_REJECT: i32 = 1;
/// Exit status for bad arguments, policy or key set.
pub const EXIT_USAGE: i32 = 2;

/// Stdin is read up to this many bytes; beyond the policy's token limit it is a reject anyway,
/// and a bound keeps `yes | edge-verify` from eating memory.
const MAX_STDIN_BYTES: u64 = 1024 * 1024;

/// Usage text.
pub const USAGE: &str =
    "usage: edge-verify --jwks FILE --policy FILE [--now UNIX_SECONDS] [--signature-only] < token";

/// Parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// JWKS file.
    pub jwks: String,
    /// Policy file.
    pub policy: String,
    /// Clock override, seconds since the epoch.
    pub now: Option<i64>,
    /// Check header and signature only.
    pub signature_only: bool,
}

/// Parses arguments (without the program name).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Args> {
    let mut jwks = None;
    let mut policy = None;
    let mut now = None;
    let mut signature_only = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| args.next()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value"),
            }
        };
        match flag.as_str() {
            "--jwks" => jwks = Some(value("--jwks")?),
            "--policy" => policy = Some(value("--policy")?),
            "--now" => {
                let v = value("--now")?;
                now = Some(v.parse::<i64>().with_context(|| {
                    format!("--now `{v}` is not whole seconds since the epoch")
                })?);
            }
            "--signature-only" => signature_only = true,
            other => bail!("unknown argument `{other}`"),
        }
    }
    Ok(Args {
        jwks: jwks.context("--jwks FILE is required")?,
        policy: policy.context("--policy FILE is required")?,
        now,
        signature_only,
    })
}

/// The loaded configuration: what the edge holds before any request.
#[derive(Debug)]
pub struct Loaded {
    /// The validated policy.
    pub policy: Policy,
    /// The key ring.
    pub ring: KeyRing,
    /// Warnings about skipped keys.
    pub warnings: Vec<String>,
}

/// Reads and validates the policy and the key set.
pub fn load(args: &Args) -> Result<Loaded> {
    let policy_text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("cannot read policy `{}`", args.policy))?;
    let policy =
        Policy::from_json(&policy_text).with_context(|| format!("policy `{}`", args.policy))?;
    let jwks = std::fs::read(&args.jwks)
        .with_context(|| format!("cannot read key set `{}`", args.jwks))?;
    let (ring, skipped) =
        KeyRing::from_jwks(&jwks, &policy).with_context(|| format!("key set `{}`", args.jwks))?;
    let warnings = skipped
        .iter()
        .map(|s| {
            format!(
                "key {} ({}) skipped: {}",
                s.index,
                s.kid.as_deref().unwrap_or("no kid"),
                s.reason
            )
        })
        .collect();
    Ok(Loaded {
        policy,
        ring,
        warnings,
    })
}

/// Reads the token from `input`: surrounding whitespace is ignored; bytes that are not UTF-8
/// become text that can only fail, so binary input is a reject rather than an error.
pub fn read_token(input: &mut impl Read) -> Result<String> {
    let mut bytes = Vec::new();
    input
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut bytes)
        .context("cannot read the token from stdin")?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .to_string())
}

fn header_json(header: &TokenHeader) -> Value {
    json!({ "alg": header.alg.name(), "kid": header.kid, "typ": header.typ })
}

fn claims_json(claims: &Claims) -> Value {
    serde_json::to_value(claims).unwrap_or(Value::Null)
}

fn reject_json(denial: &Denial, policy: &Policy) -> Value {
    json!({
        "verdict": "reject",
        "reason": denial.reason.code(),
        "claim": denial.claim,
        "status": denial.status(),
        "www_authenticate": denial.www_authenticate(policy),
        "description": denial.reason.description(),
    })
}

/// Judges `token` and returns the JSON verdict with its exit status.
pub fn judge(token: &str, loaded: &Loaded, now: i64, signature_only: bool) -> (Value, i32) {
    let policy = &loaded.policy;
    if signature_only {
        return match check_signature(token, &loaded.ring, policy) {
            Ok(checked) => (
                json!({
                    "verdict": "accept",
                    "checked": "signature",
                    "header": header_json(&checked.header),
                    "key_thumbprint": thumbprint_hex(&checked.key_thumbprint),
                    "claims": claims_json(&checked.claims),
                }),
                EXIT_ACCEPT,
            ),
            Err(denial) => (reject_json(&denial, policy), EXIT_REJECT),
        };
    }
    match verify_token(token, now, &loaded.ring, policy) {
        Ok(verified) => (
            json!({
                "verdict": "accept",
                "checked": "signature and claims",
                "now": now,
                "header": header_json(verified.header()),
                "key_thumbprint": thumbprint_hex(verified.key_thumbprint()),
                "claims": claims_json(verified.claims()),
                // Offline there is no deny-list; the edge would still ask it.
                "revocation": "not checked",
            }),
            EXIT_ACCEPT,
        ),
        Err(denial) => (reject_json(&denial, policy), EXIT_REJECT),
    }
}
