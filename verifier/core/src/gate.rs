//! The whole request decision: path normalisation, route rule, token extraction, verification (through
//! the cache), scopes and MFA, then a question to the host's deny-list.
//!
//! Deny-lists live behind I/O (Workers KV, Envoy shared data, Redis), so [`authorize`] does not
//! call one: it returns [`Step::CheckRevocation`] and the host answers with
//! [`RevocationCheck::finish`], the way rustls hands its caller what it wants next.

use alloc::{string::String, sync::Arc, vec::Vec};

use crate::{
    alg::Algorithm,
    cache::TokenCache,
    config::{length_bit, OnUnavailable, Policy},
    extract::{extract_token, is_cors_preflight, Headers},
    key_ring::{KeyRing, PublicKey, Thumbprint},
    rules::{is_rule_method, match_route, normalise_path, RoutePath, RouteRule, MFA_AMR_VALUES},
    token::VerifiedToken,
    verdict::{Allowed, Denial, DenyReason, Verdict},
    verifier::{prepare_signature, revalidate, validate_claims, Expected, Prepared},
};

/// What the host knows of an incoming request.
#[derive(Debug)]
pub struct Request<'a, H: ?Sized> {
    /// HTTP method as received; one with lower-case letters is refused (`invalid_request`).
    pub method: &'a str,
    /// Path as received, with any query string.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a H,
}

/// What the core needs next.
#[derive(Debug)]
pub enum Step {
    /// The answer is known.
    Done(Verdict),
    /// The token is valid for the route; ask the deny-list, then call [`RevocationCheck::finish`].
    CheckRevocation(RevocationCheck),
}

/// The deny-list's answer about a `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyListStatus {
    /// The `jti` is revoked.
    Listed,
    /// Not on the list (or the token has no `jti`).
    NotListed,
    /// The deny-list could not be read.
    Unavailable,
}

/// The deny-list's answer about the user's revoke-all watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkStatus {
    /// No watermark for this user.
    None,
    /// Every token issued at or before this time (seconds) is revoked.
    RevokedThrough(i64),
    /// The deny-list could not be read.
    Unavailable,
}

/// The three answers a host gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationAnswer {
    /// About the token's `jti`.
    pub jti: DenyListStatus,
    /// About its session (`sid`): a logout or a session ended revokes every token of it.
    pub session: DenyListStatus,
    /// About its `sub`.
    pub user: WatermarkStatus,
}

impl RevocationAnswer {
    /// Nothing revoked: what an empty deny-list says.
    pub const CLEAR: Self = Self {
        jti: DenyListStatus::NotListed,
        session: DenyListStatus::NotListed,
        user: WatermarkStatus::None,
    };
}

/// A valid token waiting for the deny-list.
#[derive(Debug)]
pub struct RevocationCheck {
    token: VerifiedToken,
    remove_headers: Vec<Arc<str>>,
}

impl RevocationCheck {
    /// The token's `jti`, to look up.
    pub fn jti(&self) -> Option<&str> {
        self.token.claims().jti.as_deref()
    }

    /// The token's session (`sid`), to look up.
    pub fn session(&self) -> Option<&str> {
        self.token.claims().sid.as_deref()
    }

    /// The token's `sub`, whose watermark to look up.
    pub fn subject(&self) -> Option<&str> {
        self.token.claims().sub.as_deref()
    }

    /// The verified token.
    pub fn token(&self) -> &VerifiedToken {
        &self.token
    }

    /// Turns the deny-list's answer into the verdict. A definite revocation wins over an
    /// unavailable half; an unavailable answer follows `revocation.on_unavailable`.
    pub fn finish(self, answer: RevocationAnswer, policy: &Policy) -> Verdict {
        let claims = self.token.claims();
        if answer.jti == DenyListStatus::Listed || answer.session == DenyListStatus::Listed {
            return Verdict::Deny(DenyReason::TokenRevoked.into());
        }
        if let WatermarkStatus::RevokedThrough(watermark) = answer.user {
            // No `iat` means the token cannot prove it came after the watermark.
            if claims.iat.is_none_or(|iat| iat <= watermark) {
                return Verdict::Deny(DenyReason::UserTokensRevoked.into());
            }
        }
        let unavailable = answer.jti == DenyListStatus::Unavailable
            || answer.session == DenyListStatus::Unavailable
            || answer.user == WatermarkStatus::Unavailable;
        if unavailable && policy.on_revocation_unavailable == OnUnavailable::Deny {
            return Verdict::Deny(DenyReason::RevocationUnavailable.into());
        }
        Verdict::Allow(Allowed {
            token: Some(self.token),
            remove_headers: self.remove_headers,
        })
    }
}

/// Headers removed from every forwarded request: client-supplied identity is never trusted.
/// Only the names `headers` carries are listed, in the policy's order: the policy names every
/// `-`/`_` spelling of each identity header, and each removal is a call into the host.
fn removals<H: Headers + ?Sized>(policy: &Policy, headers: &H) -> Vec<Arc<str>> {
    let names = &policy.strip_headers;
    // One pass over the request's names where the host can list them, most skipped on their
    // length; else (or beyond 64 spellings, one bit each) one lookup per spelling.
    let mut carried = 0u64;
    let listed = names.len() <= 64
        && headers.each_name(&mut |name| {
            if policy.strip_lengths & length_bit(name.len()) == 0 {
                return;
            }
            for (i, strip) in names.iter().enumerate() {
                if strip.as_bytes().eq_ignore_ascii_case(name) {
                    carried |= 1 << i;
                }
            }
        });
    names
        .iter()
        .enumerate()
        .filter(|(i, name)| {
            if listed {
                carried & (1 << i) != 0
            } else {
                headers.carries(name)
            }
        })
        .map(|(_, name)| name.clone())
        .collect()
}

/// Forwarded with no identity: client-supplied identity headers are still removed.
fn pass_without_token<H: Headers + ?Sized>(policy: &Policy, headers: &H) -> Step {
    Step::Done(Verdict::Allow(Allowed {
        token: None,
        remove_headers: removals(policy, headers),
    }))
}

fn deny(reason: DenyReason) -> Step {
    Step::Done(Verdict::Deny(reason.into()))
}

/// Decides a request at `now` (seconds since the epoch). `keys` is `None` until the host has
/// loaded a key set, which answers 503 rather than blaming the token.
pub fn authorize<H: Headers + ?Sized>(
    request: &Request<'_, H>,
    now: i64,
    keys: Option<&KeyRing>,
    policy: &Policy,
    cache: &mut TokenCache,
) -> Step {
    match authorize_deferred(request, now, keys, policy, cache) {
        Deferred::Decided(step) => step,
        Deferred::VerifySignature(check) => {
            let valid = keys.is_some_and(|keys| check.prepared.verify_here(keys));
            check.finish(valid, now, policy, cache)
        }
    }
}

/// [`authorize`]'s answer when the host verifies signatures itself.
#[derive(Debug)]
pub enum Deferred {
    /// Decided without a signature check (a public route, a refusal, a cache hit).
    Decided(Step),
    /// Every check but the signature passed: verify it, then call [`SignatureCheck::finish`].
    VerifySignature(SignatureCheck),
}

/// A token waiting for the host to verify its signature with its own crypto (WebCrypto in the
/// Worker, where native code beats Wasm). Everything before the signature has been checked, and
/// everything after it (claims, scopes, the deny-list step) runs in [`SignatureCheck::finish`],
/// so the verdict is the one [`authorize`] gives; only the signature primitive differs.
#[derive(Debug)]
pub struct SignatureCheck {
    prepared: Prepared,
    route: Option<usize>,
    /// The token text, when the verification is to be cached.
    cached_as: Option<String>,
    /// The headers to remove from the request, once the token is valid ([`removals`]).
    remove_headers: Vec<Arc<str>>,
}

impl SignatureCheck {
    /// The token's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.prepared.alg
    }

    /// Thumbprint of the key that must verify it (a stable cache key for an imported key).
    pub fn key_thumbprint(&self) -> &Thumbprint {
        &self.prepared.key_thumbprint
    }

    /// That key's public material, read from `keys` when the host needs it (once per key, to
    /// import it); `None` for HMAC, which only the core verifies ([`SignatureCheck::verify_here`]),
    /// or when `keys` no longer holds the key.
    pub fn public_key(&self, keys: &KeyRing) -> Option<PublicKey> {
        self.prepared.ring_key(keys).and_then(|k| k.public_key())
    }

    /// The bytes the signature covers (`header.payload` as received).
    pub fn signing_input(&self) -> &[u8] {
        self.prepared.signing_input()
    }

    /// The signature, decoded: raw `r || s` for ES256, as WebCrypto expects.
    pub fn signature(&self) -> &[u8] {
        &self.prepared.signature
    }

    /// Verifies with the core's own implementation, when the host's crypto cannot.
    pub fn verify_here(&self, keys: &KeyRing) -> bool {
        self.prepared.verify_here(keys)
    }

    /// Continues the decision once the host knows whether the signature is `valid`.
    pub fn finish(self, valid: bool, now: i64, policy: &Policy, cache: &mut TokenCache) -> Step {
        let verified = self
            .prepared
            .complete(valid)
            .and_then(|checked| validate_claims(checked, now, policy));
        let token = match verified {
            Ok(token) => token,
            Err(denial) => return Step::Done(Verdict::Deny(denial)),
        };
        if let Some(text) = &self.cached_as {
            cache.insert(text, token.clone());
        }
        let route = self.route.and_then(|i| policy.routes.get(i));
        after_verification(token, route, self.remove_headers)
    }
}

/// [`authorize`] up to the signature, which is left to the host unless a cache hit makes it
/// unnecessary. Hosts with fast native crypto use this; the others use [`authorize`].
pub fn authorize_deferred<H: Headers + ?Sized>(
    request: &Request<'_, H>,
    now: i64,
    keys: Option<&KeyRing>,
    policy: &Policy,
    cache: &mut TokenCache,
) -> Deferred {
    let decided = |step| Deferred::Decided(step);
    if !is_rule_method(request.method) {
        return decided(deny(DenyReason::InvalidRequest));
    }
    // A byte search: `str::split` sets up a general pattern searcher on every request.
    let raw_path = match request.path.bytes().position(|b| b == b'?') {
        Some(query) => &request.path[..query],
        None => request.path,
    };
    let Some(path_only) = normalise_path(raw_path) else {
        return decided(deny(DenyReason::InvalidRequest));
    };
    if policy.cors_preflight_bypass && is_cors_preflight(request.method, request.headers) {
        return decided(pass_without_token(policy, request.headers));
    }
    let route = if policy.routes.is_empty() {
        None
    } else {
        match_route(&policy.routes, request.method, &RoutePath::new(&path_only))
    };
    if route.is_some_and(|r| r.public) {
        return decided(pass_without_token(policy, request.headers));
    }
    let token_text = match extract_token(policy, request.path, request.headers) {
        Ok(Some(t)) => t,
        Ok(None) => return decided(deny(DenyReason::TokenMissing)),
        Err(reason) => return decided(deny(reason)),
    };
    let Some(keys) = keys else {
        return decided(deny(DenyReason::KeysUnavailable));
    };
    // Oversized tokens are refused before they are even looked up.
    let use_cache = token_text.len() <= policy.max_token_bytes && cache.is_enabled();
    if use_cache {
        if let Some(hit) = cache.get(&token_text, keys, now, policy.leeway) {
            // The hit saves the signature; every policy rule still runs against today's policy.
            if let Some(verdict) = revalidate(hit, now, keys, policy) {
                return decided(match verdict {
                    Ok(token) => {
                        after_verification(token, route, removals(policy, request.headers))
                    }
                    Err(denial) => Step::Done(Verdict::Deny(denial)),
                });
            }
        }
    }
    let prepared = match prepare_signature(&token_text, keys, policy, Expected::AccessToken) {
        Ok(prepared) => prepared,
        Err(denial) => return decided(Step::Done(Verdict::Deny(denial))),
    };
    Deferred::VerifySignature(SignatureCheck {
        prepared,
        route: route.and_then(|r| policy.routes.iter().position(|x| core::ptr::eq(x, r))),
        cached_as: use_cache.then_some(token_text),
        remove_headers: removals(policy, request.headers),
    })
}

/// What follows a valid token: the route's scopes and MFA, then the deny-list question.
fn after_verification(
    token: VerifiedToken,
    route: Option<&RouteRule>,
    remove_headers: Vec<Arc<str>>,
) -> Step {
    if let Some(route) = route {
        let scopes = &token.claims().scope;
        if !route.scopes.iter().all(|s| scopes.contains(s)) {
            return Step::Done(Verdict::Deny(Denial {
                reason: DenyReason::InsufficientScope,
                required_scope: Some(route.scopes.join(" ")),
                claim: None,
            }));
        }
        if route.mfa
            && !token
                .claims()
                .amr
                .iter()
                .any(|a| MFA_AMR_VALUES.contains(&a.as_str()))
        {
            return deny(DenyReason::MfaRequired);
        }
    }
    Step::CheckRevocation(RevocationCheck {
        token,
        remove_headers,
    })
}
