//! # edgeauth-core
//!
//! The JWT access-token verifier that every edgeauth host runs: the Cloudflare Worker, the
//! Envoy filter and the `edge-verify` CLI. It does no I/O and reads no clock and no RNG: the
//! host passes `now`, the key ring and the deny-list's answers, so every host gives the same
//! verdict for the same token and tests pin time exactly.
//!
//! ## Design choices and the threats they close
//!
//! - **Algorithm confusion** (RFC 8725 §2.1, §3.1). `alg` is parsed by exact name into
//!   [`Algorithm`] and must be in the policy; each ring key is a typed key fixed to the
//!   algorithms it can verify, and a JWK's own `alg` narrows that to one. A symmetric (HS256)
//!   policy cannot list any other algorithm, so a public key can never be used as an HMAC secret.
//!   `none` in any casing is simply an unknown name.
//! - **Key injection.** `jku`, `x5u`, `jwk` and `x5c` are never read: keys come only from the
//!   host's ring, selected by `kid`. Without a `kid` the ring must hold exactly one fitting key.
//! - **Weak keys.** RSA under 2048 bits, small-order Ed25519 points, short HMAC secrets and
//!   published private keys are skipped when the JWKS is loaded. EdDSA refuses what
//!   ed25519-dalek's `verify_strict` refuses (small-order `R`, non-canonical `R` and `s`).
//! - **Parser differentials.** Non-canonical base64url, duplicate header members, `crit` and
//!   `b64: false` are refused, so the bytes this core verifies are the bytes every other
//!   component sees.
//! - **Clock skew.** `exp`, `nbf` and `iat` take a bounded leeway (≤ 300 s); lifetimes are capped.
//! - **Cross-service replay** (RFC 8725 §3.8-§3.9, §3.11). Exact `iss`, intersecting `aud`, and a
//!   `typ` allow-list so other JWTs signed by the same keys are not access tokens.
//! - **Header injection.** `sub`, `jti` and scopes must be visible ASCII before they are
//!   forwarded; client-supplied identity headers are always removed.
//! - **Fail-open.** No key set means 503, not 401 and never allow; an unanswerable deny-list
//!   fails closed unless the policy says otherwise.
//! - **Denial of service.** Size is checked before any decoding; JSON nesting is bounded by
//!   serde_json; the verified-token cache is bounded in entries.
//!
//! ## Flow
//!
//! [`authorize`] takes a [`Request`] and returns a [`Step`]: either a [`Verdict`], or a
//! [`RevocationCheck`] the host answers from its deny-list with [`RevocationCheck::finish`].
//! [`verify_token`] checks a bare token, as the CLI does.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

mod alg;
mod cache;
mod config;
mod cors;
mod deny_state;
mod ed25519;
mod extract;
mod feed_reader;
mod gate;
mod key_cache;
mod key_ring;
mod revocation;
mod rules;
mod token;
mod verdict;
mod verifier;

pub use alg::Algorithm;
pub use cache::{CacheStats, TokenCache};
pub use config::{ConfigError, OnUnavailable, Policy, RawPolicy, RequiredClaim};
pub use cors::RawCors;
pub use deny_state::{Applied, DenyState, Watermark};
pub use extract::Headers;
pub use feed_reader::{FeedNext, FeedRead, FeedReader, WaitingForKeys, FEED_PAGE_LIMIT};
pub use gate::{
    authorize, authorize_deferred, Deferred, DenyListStatus, Request, RevocationAnswer,
    RevocationCheck, SignatureCheck, Step, WatermarkStatus,
};
pub use key_cache::{forced_fetch_claimable, freshness_seconds, KeyCache};
pub use key_ring::{
    thumbprint_hex, JwksError, KeyRing, PublicKey, RingKey, SkipReason, SkippedKey, Thumbprint,
};
pub use revocation::{
    verify_revocation, FeedEntry, FeedPage, Revocation, RevocationError, REVOCATION_TYPE,
};
pub use rules::RouteRule;
pub use token::{Claims, SignatureChecked, TokenHeader, VerifiedToken};
pub use verdict::{Allowed, Denial, DenyReason, HeaderEdit, Verdict};
pub use verifier::{check_signature, validate_claims, verify_token};
