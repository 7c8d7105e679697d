//! The one policy format every host reads (the CLI, the Worker, the Envoy filter).
//!
//! [`RawPolicy`] is the file shape (serde, unknown fields rejected); [`Policy`] is what the rest
//! of the core accepts, built only through [`Policy::from_json`] / `TryFrom<RawPolicy>`, so
//! nothing downstream re-checks a bound. Every field and default is listed in the README.

use alloc::{
    borrow::ToOwned,
    format,
    string::{String, ToString},
    sync::Arc,
    vec,
    vec::Vec,
};

use serde::Deserialize;

use crate::{
    alg::Algorithm,
    cors::{allowed_origins, RawCors},
    rules::RouteRule,
};

/// Why a policy was refused at load time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not JSON, has an unknown field or a value of the wrong type.
    #[error("policy is not valid: {0}")]
    Syntax(String),
    /// A field parsed but its value breaks a rule; the string names the field.
    #[error("policy field `{field}`: {problem}")]
    Invalid {
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// The largest leeway accepted: beyond a few minutes a skewed clock is a fault to fix, not absorb.
pub const MAX_LEEWAY_SECONDS: u32 = 300;
/// Most entries a verified-token cache may be configured to hold.
pub const MAX_CACHE_ENTRIES: usize = 1_000_000;
/// Largest verified-token cache: a quarter of a Worker isolate's 128 MB, and far inside any Wasm
/// VM's heap, so no accepted policy can make a host run out of memory through its cache.
pub const MAX_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Tokens beyond this size are refused before any decoding; larger limits only widen DoS surface.
pub const MAX_TOKEN_BYTES_LIMIT: usize = 64 * 1024;

/// The policy as written in JSON. See the README for each field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Accepted `iss` values, matched exactly.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; the token's audiences must intersect them.
    pub audiences: Vec<String>,
    /// Accepted `alg` values.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u32,
    /// Longest allowed `exp - iat` (and `exp - now`).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_seconds: u32,
    /// Tokens longer than this are refused before decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Claims that must be present besides `exp`.
    #[serde(default = "default_required_claims")]
    pub required_claims: Vec<String>,
    /// Accepted `typ` header values (compared as media types).
    #[serde(default = "default_token_types")]
    pub token_types: Vec<String>,
    /// Whether a token without `typ` is accepted.
    #[serde(default)]
    pub allow_missing_type: bool,
    /// Where tokens are read from.
    #[serde(default)]
    pub sources: RawSources,
    /// Per-route rules, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteRule>,
    /// Whether CORS preflight requests pass without a token.
    #[serde(default)]
    pub cors_preflight_bypass: bool,
    /// Web apps whose pages may read the edge's refusals (default: none).
    #[serde(default)]
    pub cors: Option<RawCors>,
    /// Identity headers.
    #[serde(default)]
    pub headers: RawHeaders,
    /// Deny-list behaviour.
    #[serde(default)]
    pub revocation: RawRevocation,
    /// Verified-token cache.
    #[serde(default)]
    pub cache: RawCache,
    /// `realm` attribute of `WWW-Authenticate`, if any.
    #[serde(default)]
    pub realm: Option<String>,
    /// `Retry-After` seconds on 503 answers.
    #[serde(default = "default_retry_after")]
    pub retry_after_seconds: u32,
}

/// Token locations, tried in the order listed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSources {
    /// `Authorization: Bearer <token>`.
    #[serde(default = "yes")]
    pub authorization_header: bool,
    /// Name of a cookie carrying the token.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Name of a query parameter carrying the token (RFC 6750 §2.3 discourages it).
    #[serde(default)]
    pub query_parameter: Option<String>,
}

impl Default for RawSources {
    fn default() -> Self {
        Self {
            authorization_header: true,
            cookie: None,
            query_parameter: None,
        }
    }
}

/// Identity headers removed from every request and set from verified claims.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    /// Receives `sub`.
    #[serde(default = "default_user_id_header")]
    pub user_id: String,
    /// Receives the scopes, space-separated.
    #[serde(default = "default_scope_header")]
    pub scope: String,
    /// Further client-supplied headers to remove.
    #[serde(default)]
    pub strip: Vec<String>,
    /// Remove `Authorization` before forwarding.
    #[serde(default)]
    pub strip_authorization: bool,
}

impl Default for RawHeaders {
    fn default() -> Self {
        Self {
            user_id: default_user_id_header(),
            scope: default_scope_header(),
            strip: Vec::new(),
            strip_authorization: false,
        }
    }
}

/// What to do when the deny-list cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Refuse with 503: a revoked token must never pass because a store is down.
    #[default]
    Deny,
    /// Let the token through; availability over revocation.
    Allow,
}

/// Deny-list settings.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    /// Behaviour when the host's deny-list gives no answer.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

/// Verified-token cache settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Most entries held; 0 turns the cache off.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// Most heap bytes the entries may hold (estimated per entry); 0 turns the cache off.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: usize,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
            max_bytes: default_cache_bytes(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_algorithms() -> Vec<String> {
    ["EdDSA", "ES256", "RS256", "PS256"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}
fn default_leeway() -> u32 {
    30
}
fn default_max_lifetime() -> u32 {
    3600
}
fn default_max_token_bytes() -> usize {
    8 * 1024
}
fn default_required_claims() -> Vec<String> {
    vec!["sub".to_owned(), "jti".to_owned()]
}
/// RFC 9068 §4: an access token says so (`at+jwt`), which is all the origin issues. A plain
/// `JWT` or no `typ` is what ID tokens and other signed objects carry, so they stay out unless a
/// policy widens the list.
fn default_token_types() -> Vec<String> {
    vec!["at+jwt".to_owned()]
}
fn default_user_id_header() -> String {
    "x-user-id".to_owned()
}
fn default_scope_header() -> String {
    "x-user-scope".to_owned()
}
fn default_cache_entries() -> usize {
    10_000
}
/// 10,000 tokens of about 1 KB with their claims; each host VM (an isolate, an Envoy worker
/// thread) holds its own cache.
fn default_cache_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_retry_after() -> u32 {
    5
}

/// A claim that [`Policy`] can require besides `exp`, which is always required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredClaim {
    /// `sub`
    Sub,
    /// `jti`
    Jti,
    /// `iat`
    Iat,
    /// `nbf`
    Nbf,
    /// `iss` (always checked against `issuers`, so effectively always required)
    Iss,
    /// `aud` (always checked against `audiences`, so effectively always required)
    Aud,
    /// `scope`
    Scope,
}

impl RequiredClaim {
    /// Each claim with its name in the token: the one table both directions read.
    const NAMES: [(Self, &'static str); 7] = [
        (Self::Sub, "sub"),
        (Self::Jti, "jti"),
        (Self::Iat, "iat"),
        (Self::Nbf, "nbf"),
        (Self::Iss, "iss"),
        (Self::Aud, "aud"),
        (Self::Scope, "scope"),
    ];

    fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(c, _)| *c)
    }

    /// The claim's name in the token.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("", |(_, n)| n)
    }
}

/// A validated policy. Built only from [`RawPolicy`], so every invariant below holds.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) leeway: i64,
    pub(crate) max_lifetime: i64,
    pub(crate) max_token_bytes: usize,
    pub(crate) required_claims: Vec<RequiredClaim>,
    /// Normalised media types (lowercase, without `application/`).
    pub(crate) token_types: Vec<String>,
    pub(crate) allow_missing_type: bool,
    pub(crate) authorization_header: bool,
    pub(crate) cookie: Option<String>,
    pub(crate) query_parameter: Option<String>,
    pub(crate) routes: Vec<RouteRule>,
    pub(crate) cors_preflight_bypass: bool,
    /// Exact origins whose pages may read refusals; empty: refusals carry no CORS header.
    pub(crate) cors_allowed_origins: Vec<String>,
    pub(crate) user_id_header: String,
    pub(crate) scope_header: String,
    /// Lowercase names removed from every request: identity headers first, then the rest, then
    /// every `-`/`_` alias of each, then `authorization` if `headers.strip_authorization`.
    pub(crate) strip_headers: Vec<Arc<str>>,
    /// The lengths of `strip_headers`, a bit each ([`length_bit`]): most of a request's header
    /// names are told apart from all of them by their length alone.
    pub(crate) strip_lengths: u64,
    pub(crate) on_revocation_unavailable: OnUnavailable,
    pub(crate) cache_entries: usize,
    pub(crate) cache_bytes: usize,
    pub(crate) realm: Option<String>,
    pub(crate) retry_after_seconds: u32,
}

impl Policy {
    /// Parses and validates a JSON policy.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let raw: RawPolicy =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        Self::try_from(raw)
    }

    /// Accepted algorithms.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Whether the policy is a symmetric (HS256) one.
    pub fn is_symmetric(&self) -> bool {
        self.algorithms.iter().any(|a| a.is_symmetric())
    }

    /// Clock-skew allowance in seconds.
    pub fn leeway_seconds(&self) -> i64 {
        self.leeway
    }

    /// Most verified tokens the cache should hold.
    pub fn cache_entries(&self) -> usize {
        self.cache_entries
    }

    /// Most heap bytes the verified-token cache may hold.
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Largest accepted token in bytes.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// The origins whose pages may read the edge's refusals (`cors.allowed_origins`).
    pub fn cors_allowed_origins(&self) -> &[String] {
        &self.cors_allowed_origins
    }

    /// Seconds a client should wait after a 503.
    pub fn retry_after_seconds(&self) -> u32 {
        self.retry_after_seconds
    }
}

/// Normalises a `typ` value as RFC 7515 §4.1.9 asks: media types compare case-insensitively,
/// and `application/` may be omitted.
pub(crate) fn normalise_media_type(value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    match lower.strip_prefix(APPLICATION) {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

/// A header name's length as one bit of a `u64`; every length from 63 on shares the last.
pub(crate) fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// Whether `typ` names the media type `normalised` (as [`normalise_media_type`] gives it),
/// compared the same way without making a string: it runs on every request, cache hits too.
pub(crate) fn media_type_is(typ: &str, normalised: &str) -> bool {
    let essence = match typ.get(..APPLICATION.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(APPLICATION) => &typ[APPLICATION.len()..],
        _ => typ,
    };
    essence.eq_ignore_ascii_case(normalised)
}

const APPLICATION: &str = "application/";

/// Header names travel in lowercase in both hosts (Envoy lowercases them; HTTP/2 requires it).
fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    let valid = !name.is_empty() && name.bytes().all(crate::rules::is_tchar);
    if !valid {
        return Err(invalid(
            field,
            format!("`{name}` is not a valid header name"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') || lower == "host" {
        return Err(invalid(
            field,
            format!("`{name}` cannot be an identity header"),
        ));
    }
    Ok(lower)
}

/// Most `-` or `_` in a stripped header name: each one doubles the aliases removed per request.
pub const MAX_HEADER_NAME_SEPARATORS: usize = 5;

/// Each name, then every spelling of it with `-` and `_` swapped at any position. CGI and WSGI
/// upstreams (and frameworks built on them) read `x_user_id` and `x-user_id` as `X-User-Id`, so
/// a spoofed alias left in place would reach them as the identity header.
fn with_separator_aliases(names: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let mut all = names.clone();
    for name in &names {
        let positions: Vec<usize> = name
            .bytes()
            .enumerate()
            .filter(|(_, b)| *b == b'-' || *b == b'_')
            .map(|(i, _)| i)
            .collect();
        if positions.len() > MAX_HEADER_NAME_SEPARATORS {
            return Err(invalid(
                "headers",
                format!(
                    "`{name}` has more than {MAX_HEADER_NAME_SEPARATORS} `-` or `_` (each alias is removed from every request)"
                ),
            ));
        }
        for pattern in 0u32..(1 << positions.len()) {
            let mut alias = name.clone().into_bytes();
            for (bit, &at) in positions.iter().enumerate() {
                alias[at] = if pattern & (1 << bit) == 0 {
                    b'-'
                } else {
                    b'_'
                };
            }
            // Only `-` and `_` were written into ASCII text, so it stays UTF-8.
            let alias = String::from_utf8(alias).unwrap_or_default();
            if !alias.is_empty() && !all.contains(&alias) {
                all.push(alias);
            }
        }
    }
    Ok(all)
}

fn non_empty_unique(field: &str, values: &[String]) -> Result<(), ConfigError> {
    if values.is_empty() {
        return Err(invalid(field, "must list at least one value"));
    }
    if values.iter().any(|v| v.is_empty()) {
        return Err(invalid(field, "values must not be empty strings"));
    }
    Ok(())
}

fn parameter_name(field: &str, name: &Option<String>) -> Result<(), ConfigError> {
    if let Some(name) = name {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(invalid(field, format!("`{name}` is not a valid name")));
        }
    }
    Ok(())
}

impl TryFrom<RawPolicy> for Policy {
    type Error = ConfigError;

    fn try_from(raw: RawPolicy) -> Result<Self, ConfigError> {
        non_empty_unique("issuers", &raw.issuers)?;
        non_empty_unique("audiences", &raw.audiences)?;

        let mut algorithms = Vec::new();
        for name in &raw.algorithms {
            let alg = Algorithm::from_name(name).ok_or_else(|| {
                invalid(
                    "algorithms",
                    format!("`{name}` is not supported (EdDSA, ES256, RS256, PS256, HS256)"),
                )
            })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        if algorithms.is_empty() {
            return Err(invalid("algorithms", "must list at least one algorithm"));
        }
        // RFC 8725 §2.1/§3.1: an HMAC secret beside public keys is how "sign with the public
        // key as an HMAC secret" attacks start. A policy is either symmetric or asymmetric.
        if algorithms.iter().any(|a| a.is_symmetric()) && algorithms.len() > 1 {
            return Err(invalid(
                "algorithms",
                "HS256 must be the only algorithm when it is enabled",
            ));
        }

        if raw.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(invalid(
                "leeway_seconds",
                format!("must be at most {MAX_LEEWAY_SECONDS}"),
            ));
        }
        if raw.max_lifetime_seconds == 0 {
            return Err(invalid("max_lifetime_seconds", "must be positive"));
        }
        if !(512..=MAX_TOKEN_BYTES_LIMIT).contains(&raw.max_token_bytes) {
            return Err(invalid(
                "max_token_bytes",
                format!("must be between 512 and {MAX_TOKEN_BYTES_LIMIT}"),
            ));
        }

        let mut required_claims = Vec::new();
        for name in &raw.required_claims {
            if name == "exp" {
                continue; // always required
            }
            let claim = RequiredClaim::parse(name).ok_or_else(|| {
                invalid(
                    "required_claims",
                    format!("`{name}` is not one of sub, jti, iat, nbf, iss, aud, scope, exp"),
                )
            })?;
            if !required_claims.contains(&claim) {
                required_claims.push(claim);
            }
        }

        let token_types: Vec<String> = raw
            .token_types
            .iter()
            .map(|t| normalise_media_type(t))
            .collect();
        if token_types.iter().any(|t| t.is_empty()) {
            return Err(invalid("token_types", "values must not be empty"));
        }
        if token_types.is_empty() && !raw.allow_missing_type {
            return Err(invalid(
                "token_types",
                "with allow_missing_type false, at least one type must be listed",
            ));
        }

        let sources = raw.sources;
        parameter_name("sources.cookie", &sources.cookie)?;
        parameter_name("sources.query_parameter", &sources.query_parameter)?;
        if !sources.authorization_header
            && sources.cookie.is_none()
            && sources.query_parameter.is_none()
        {
            return Err(invalid("sources", "at least one token source must be on"));
        }

        for (i, route) in raw.routes.iter().enumerate() {
            route
                .validate()
                .map_err(|problem| invalid(&format!("routes[{i}]"), problem))?;
        }

        let user_id_header = header_name("headers.user_id", &raw.headers.user_id)?;
        let scope_header = header_name("headers.scope", &raw.headers.scope)?;
        if user_id_header == scope_header {
            return Err(invalid("headers.scope", "must differ from headers.user_id"));
        }
        let mut strip_headers = vec![user_id_header.clone(), scope_header.clone()];
        for name in &raw.headers.strip {
            let name = header_name("headers.strip", name)?;
            if name == "authorization" {
                return Err(invalid(
                    "headers.strip",
                    "use headers.strip_authorization to remove Authorization",
                ));
            }
            if !strip_headers.contains(&name) {
                strip_headers.push(name);
            }
        }
        let mut strip_headers = with_separator_aliases(strip_headers)?;
        if raw.headers.strip_authorization {
            strip_headers.push("authorization".into());
        }

        if let Some(realm) = &raw.realm {
            if realm
                .bytes()
                .any(|b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\')
            {
                return Err(invalid(
                    "realm",
                    "must be printable ASCII without quotes or backslashes",
                ));
            }
        }
        if raw.cache.max_entries > MAX_CACHE_ENTRIES {
            return Err(invalid(
                "cache.max_entries",
                format!("must be at most {MAX_CACHE_ENTRIES}"),
            ));
        }
        if raw.cache.max_bytes > MAX_CACHE_BYTES {
            return Err(invalid(
                "cache.max_bytes",
                format!("must be at most {MAX_CACHE_BYTES} (a Worker isolate has 128 MB in all)"),
            ));
        }
        if raw.retry_after_seconds == 0 || raw.retry_after_seconds > 3600 {
            return Err(invalid("retry_after_seconds", "must be between 1 and 3600"));
        }

        let cors_allowed_origins = allowed_origins(raw.cors.unwrap_or_default())?;

        Ok(Self {
            issuers: raw.issuers,
            audiences: raw.audiences,
            algorithms,
            leeway: i64::from(raw.leeway_seconds),
            max_lifetime: i64::from(raw.max_lifetime_seconds),
            max_token_bytes: raw.max_token_bytes,
            required_claims,
            token_types,
            allow_missing_type: raw.allow_missing_type,
            authorization_header: sources.authorization_header,
            cookie: sources.cookie,
            query_parameter: sources.query_parameter,
            routes: raw.routes,
            cors_preflight_bypass: raw.cors_preflight_bypass,
            cors_allowed_origins,
            user_id_header,
            scope_header,
            strip_lengths: strip_headers
                .iter()
                .fold(0, |lengths, name| lengths | length_bit(name.len())),
            strip_headers: strip_headers.into_iter().map(Arc::from).collect(),
            on_revocation_unavailable: raw.revocation.on_unavailable,
            cache_entries: raw.cache.max_entries,
            cache_bytes: raw.cache.max_bytes,
            realm: raw.realm,
            retry_after_seconds: raw.retry_after_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"issuers":["https://auth.example"],"audiences":["api"]}"#;

    #[test]
    fn minimal_policy_gets_documented_defaults() {
        let p = Policy::from_json(MINIMAL).expect("valid");
        assert_eq!(
            p.algorithms,
            vec![
                Algorithm::EdDsa,
                Algorithm::Es256,
                Algorithm::Rs256,
                Algorithm::Ps256
            ]
        );
        assert_eq!(p.leeway, 30);
        assert_eq!(p.max_lifetime, 3600);
        assert_eq!(p.max_token_bytes, 8192);
        assert_eq!(
            p.required_claims,
            vec![RequiredClaim::Sub, RequiredClaim::Jti]
        );
        assert_eq!(p.token_types, vec!["at+jwt"]);
        assert!(!p.allow_missing_type);
        assert!(p.authorization_header);
        assert_eq!(p.cookie, None);
        assert_eq!(p.query_parameter, None);
        assert!(!p.cors_preflight_bypass);
        assert!(p.cors_allowed_origins.is_empty());
        // Authorization is forwarded unless `headers.strip_authorization` says otherwise.
        assert_eq!(
            p.strip_headers.iter().map(|n| &**n).collect::<Vec<_>>(),
            vec![
                "x-user-id",
                "x-user-scope",
                "x_user-id",
                "x-user_id",
                "x_user_id",
                "x_user-scope",
                "x-user_scope",
                "x_user_scope"
            ]
        );
        assert_eq!(p.on_revocation_unavailable, OnUnavailable::Deny);
        assert_eq!(p.cache_entries, 10_000);
        assert_eq!(p.cache_bytes, 16 * 1024 * 1024);
        assert_eq!(p.retry_after_seconds, 5);
    }

    fn error_for(json: &str) -> ConfigError {
        Policy::from_json(json).expect_err("should be refused")
    }

    fn field_of(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { field, .. } => field,
            ConfigError::Syntax(s) => panic!("expected a field error, got syntax: {s}"),
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = error_for(r#"{"issuers":["a"],"audiences":["b"],"leway_seconds":5}"#);
        assert!(matches!(err, ConfigError::Syntax(ref s) if s.contains("leway_seconds")));
    }

    #[test]
    fn empty_issuers_or_audiences_are_refused() {
        assert_eq!(
            field_of(error_for(r#"{"issuers":[],"audiences":["b"]}"#)),
            "issuers"
        );
        assert_eq!(
            field_of(error_for(r#"{"issuers":["a"],"audiences":[]}"#)),
            "audiences"
        );
        assert_eq!(
            field_of(error_for(r#"{"issuers":[""],"audiences":["b"]}"#)),
            "issuers"
        );
    }

    #[test]
    fn none_and_unknown_algorithms_are_refused() {
        for alg in ["none", "None", "HS512", "es256"] {
            let json = format!(r#"{{"issuers":["a"],"audiences":["b"],"algorithms":["{alg}"]}}"#);
            assert_eq!(field_of(error_for(&json)), "algorithms", "{alg}");
        }
    }

    #[test]
    fn symmetric_never_mixes_with_asymmetric() {
        let err =
            error_for(r#"{"issuers":["a"],"audiences":["b"],"algorithms":["HS256","EdDSA"]}"#);
        assert_eq!(field_of(err), "algorithms");
        let p = Policy::from_json(r#"{"issuers":["a"],"audiences":["b"],"algorithms":["HS256"]}"#)
            .expect("HS256 alone is allowed when asked for");
        assert!(p.is_symmetric());
    }

    #[test]
    fn bounds_are_enforced() {
        assert_eq!(
            field_of(error_for(
                r#"{"issuers":["a"],"audiences":["b"],"leeway_seconds":301}"#
            )),
            "leeway_seconds"
        );
        assert_eq!(
            field_of(error_for(
                r#"{"issuers":["a"],"audiences":["b"],"max_token_bytes":100}"#
            )),
            "max_token_bytes"
        );
        assert_eq!(
            field_of(error_for(
                r#"{"issuers":["a"],"audiences":["b"],"max_lifetime_seconds":0}"#
            )),
            "max_lifetime_seconds"
        );
        assert_eq!(
            field_of(error_for(
                r#"{"issuers":["a"],"audiences":["b"],"cache":{"max_entries":1000001}}"#
            )),
            "cache.max_entries"
        );
        assert_eq!(
            field_of(error_for(
                r#"{"issuers":["a"],"audiences":["b"],"cache":{"max_bytes":33554433}}"#
            )),
            "cache.max_bytes"
        );
        assert!(matches!(
            error_for(r#"{"issuers":["a"],"audiences":["b"],"leeway_seconds":-1}"#),
            ConfigError::Syntax(_)
        ));
    }

    #[test]
    fn header_names_are_validated_and_lowercased() {
        let p = Policy::from_json(
            r#"{"issuers":["a"],"audiences":["b"],"headers":{"user_id":"X-Sub","strip":["X-Email"]}}"#,
        )
        .expect("valid");
        assert_eq!(
            p.strip_headers.iter().map(|n| &**n).collect::<Vec<_>>(),
            vec![
                "x-sub",
                "x-user-scope",
                "x-email",
                "x_sub",
                "x_user-scope",
                "x-user_scope",
                "x_user_scope",
                "x_email"
            ]
        );
        assert_eq!(
            field_of(error_for(
                r#"{"issuers":["a"],"audiences":["b"],"headers":{"strip":["a-b-c-d-e-f-g"]}}"#
            )),
            "headers"
        );
        assert_eq!(
            field_of(error_for(
                r#"{"issuers":["a"],"audiences":["b"],"headers":{"user_id":"bad header"}}"#
            )),
            "headers.user_id"
        );
        assert_eq!(
            field_of(error_for(
                r#"{"issuers":["a"],"audiences":["b"],"headers":{"strip":[":path"]}}"#
            )),
            "headers.strip"
        );
    }

    #[test]
    fn unknown_required_claim_is_refused_and_exp_is_implicit() {
        assert_eq!(
            field_of(error_for(
                r#"{"issuers":["a"],"audiences":["b"],"required_claims":["email"]}"#
            )),
            "required_claims"
        );
        let p = Policy::from_json(
            r#"{"issuers":["a"],"audiences":["b"],"required_claims":["exp","iat"]}"#,
        )
        .expect("valid");
        assert_eq!(p.required_claims, vec![RequiredClaim::Iat]);
    }

    #[test]
    fn at_least_one_source_is_required() {
        let err = error_for(
            r#"{"issuers":["a"],"audiences":["b"],"sources":{"authorization_header":false}}"#,
        );
        assert_eq!(field_of(err), "sources");
    }

    #[test]
    fn typ_values_are_normalised_media_types() {
        assert_eq!(normalise_media_type("application/AT+JWT"), "at+jwt");
        assert_eq!(normalise_media_type("JWT"), "jwt");
    }

    #[test]
    fn a_typ_matches_a_normalised_media_type_as_normalising_it_would() {
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+Jwt",
            "application/",
            "applicationat+jwt",
            "application/application/at+jwt",
            "jwt",
            "at+jw",
            "at+jwt ",
            "applicatioñ/at+jwt",
            "",
        ] {
            for normalised in ["at+jwt", "jwt", "application/at+jwt", "applicationat+jwt"] {
                assert_eq!(
                    media_type_is(typ, normalised),
                    normalise_media_type(typ) == normalised,
                    "{typ} against {normalised}"
                );
            }
        }
    }
}
