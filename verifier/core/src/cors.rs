//! CORS on the edges' own refusals.
//!
//! A page on another origin that calls the API through an edge reads the upstream's answers
//! when the upstream allows its origin; but a refusal the edge makes itself (401, 403, 503)
//! without CORS headers reaches that page as a bare network error, so it cannot tell "log in
//! again" or "refresh" from an outage. With `cors.allowed_origins`, a refusal to a listed origin
//! is readable by its page, credentials included, with `WWW-Authenticate` and `Retry-After`
//! exposed. Preflights are the upstream's to answer (`cors_preflight_bypass`), and so is CORS on
//! the answers it gives.
//!
//! The allow-list follows the origin's `cors.allowed_origins` rules: exact lower-case
//! `scheme://host[:port]` origins, http or https, no path and no wildcard, because the answers
//! allow credentials (the Fetch standard refuses `*` with credentials).

use alloc::{
    borrow::ToOwned,
    format,
    string::{String, ToString},
    vec::Vec,
};

use serde::Deserialize;

use crate::{config::ConfigError, extract::Headers};

/// `cors` as written in the policy.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Exact origins whose pages may read the edge's refusals.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// What a page may read of a refusal besides the CORS-safelisted headers.
const EXPOSE_HEADERS: &str = "www-authenticate, retry-after";

/// Checks each origin as a browser writes it in `Origin`: an http(s) scheme and a host (and
/// port), lower case, nothing else. Returns the list, without repeats.
pub(crate) fn allowed_origins(raw: RawCors) -> Result<Vec<String>, ConfigError> {
    let mut origins: Vec<String> = Vec::with_capacity(raw.allowed_origins.len());
    for origin in raw.allowed_origins {
        let valid = origin.split_once("://").is_some_and(|(scheme, authority)| {
            matches!(scheme, "https" | "http")
                && !authority.is_empty()
                && authority
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:[]".contains(&b))
        });
        if !valid {
            return Err(ConfigError::Invalid {
                field: "cors.allowed_origins".to_owned(),
                problem: format!(
                    "`{origin}` must be an exact lower-case http(s) origin (scheme://host[:port]), without path or wildcard"
                ),
            });
        }
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    Ok(origins)
}

/// The one origin the request names, if every `Origin` value names the same one. Values are
/// split at `,` (no origin contains one): the Worker's runtime joins repeated headers with ", "
/// where Envoy passes them apart, and both must read the same origins.
fn request_origin<H: Headers + ?Sized>(headers: &H) -> Option<String> {
    let mut found: Option<String> = None;
    let mut agreed = true;
    headers.values("origin", &mut |value| {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            match (&found, core::str::from_utf8(part)) {
                (_, Err(_)) => agreed = false,
                (None, Ok(text)) => found = Some(text.to_string()),
                (Some(first), Ok(text)) => agreed &= first == text,
            }
        }
    });
    found.filter(|_| agreed)
}

/// The CORS headers of a refusal to the request with these headers: for a listed `Origin`, that
/// origin with credentials allowed and `WWW-Authenticate` and `Retry-After` exposed; for any
/// other origin, none, or two `Origin` values that disagree, nothing. `Vary: Origin` whenever the
/// list is not empty, so no cache serves one origin's answer to another.
pub(crate) fn refusal_headers<H: Headers + ?Sized>(
    allowed: &[String],
    request_headers: &H,
) -> Vec<(&'static str, String)> {
    if allowed.is_empty() {
        return Vec::new();
    }
    let mut headers = Vec::with_capacity(4);
    if let Some(origin) = request_origin(request_headers).filter(|o| allowed.contains(o)) {
        headers.push(("access-control-allow-origin", origin));
        headers.push(("access-control-allow-credentials", "true".to_string()));
        headers.push(("access-control-expose-headers", EXPOSE_HEADERS.to_string()));
    }
    headers.push(("vary", "origin".to_string()));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use alloc::vec;

    const APP: &str = "https://app.example.com";

    fn policy(cors: &str) -> Result<Policy, ConfigError> {
        Policy::from_json(&format!(
            r#"{{"issuers":["i"],"audiences":["a"],"cors":{cors}}}"#
        ))
    }

    fn listed() -> Vec<String> {
        vec![APP.to_string(), "http://127.0.0.1:8080".to_string()]
    }

    #[test]
    fn exact_lower_case_http_origins_load() {
        let p = policy(
            r#"{"allowed_origins":["https://app.example.com","http://127.0.0.1:8080","http://[::1]:3000","https://app.example.com"]}"#,
        )
        .expect("valid");
        assert_eq!(
            p.cors_allowed_origins(),
            [
                "https://app.example.com",
                "http://127.0.0.1:8080",
                "http://[::1]:3000"
            ]
        );
        assert!(policy("{}")
            .expect("valid")
            .cors_allowed_origins()
            .is_empty());
        let none = Policy::from_json(r#"{"issuers":["i"],"audiences":["a"]}"#).expect("valid");
        assert!(none.cors_allowed_origins().is_empty());
    }

    #[test]
    fn anything_but_an_exact_origin_is_a_policy_error() {
        for bad in [
            "*",
            "https://*.example.com",
            "https://App.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://app.example.com",
            "app.example.com",
            "https://",
            "null",
            "https://app.example.com?x",
            "https://user@app.example.com",
        ] {
            let err = policy(&format!(r#"{{"allowed_origins":["{bad}"]}}"#)).expect_err(bad);
            assert!(
                matches!(&err, ConfigError::Invalid { field, .. } if field == "cors.allowed_origins"),
                "{bad}: {err:?}"
            );
        }
        assert!(matches!(
            policy(r#"{"allowed_origin":["https://app.example.com"]}"#),
            Err(ConfigError::Syntax(_))
        ));
    }

    #[test]
    fn a_listed_origin_may_read_the_refusal_with_credentials() {
        let h = vec![("origin", APP)];
        assert_eq!(
            refusal_headers(&listed(), &h),
            vec![
                ("access-control-allow-origin", APP.to_string()),
                ("access-control-allow-credentials", "true".to_string()),
                (
                    "access-control-expose-headers",
                    "www-authenticate, retry-after".to_string()
                ),
                ("vary", "origin".to_string()),
            ]
        );
    }

    #[test]
    fn other_origins_or_none_get_only_vary() {
        let vary = vec![("vary", "origin".to_string())];
        for origin in [
            "https://evil.example.com",
            "https://app.example.com:443",
            "HTTPS://APP.EXAMPLE.COM",
            "null",
            "",
        ] {
            let h = vec![("origin", origin)];
            assert_eq!(refusal_headers(&listed(), &h), vary, "{origin}");
        }
        let none: Vec<(&str, &str)> = vec![];
        assert_eq!(refusal_headers(&listed(), &none), vary);
        let binary: Vec<(&str, &[u8])> = vec![("origin", b"https://app.example.com\xff")];
        assert_eq!(refusal_headers(&listed(), &binary), vary);
    }

    #[test]
    fn two_origins_that_disagree_get_nothing_however_the_host_joins_them() {
        let vary = vec![("vary", "origin".to_string())];
        // Envoy: one value per header.
        let apart = vec![("origin", APP), ("Origin", "https://evil.example.com")];
        assert_eq!(refusal_headers(&listed(), &apart), vary);
        // The Worker's runtime: repeated headers joined with ", ".
        let joined = vec![(
            "origin",
            "https://app.example.com, https://evil.example.com",
        )];
        assert_eq!(refusal_headers(&listed(), &joined), vary);
        // The same origin twice reads the same either way.
        let twice_apart = vec![("origin", APP), ("origin", APP)];
        let twice_joined = vec![("origin", "https://app.example.com, https://app.example.com")];
        for h in [twice_apart, twice_joined] {
            assert_eq!(
                refusal_headers(&listed(), &h)[0],
                ("access-control-allow-origin", APP.to_string())
            );
        }
    }

    #[test]
    fn without_a_list_a_refusal_has_no_cors_header_at_all() {
        let h = vec![("origin", APP)];
        assert!(refusal_headers(&[], &h).is_empty());
    }
}
