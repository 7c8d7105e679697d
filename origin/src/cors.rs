//! Browsers: which web apps may call the origin from their pages (CORS), and which may spend the
//! refresh cookie (CSRF).
//!
//! The refresh cookie is `SameSite=Strict`, but a sibling subdomain (`evil.example.com` beside
//! `app.example.com`) is the same site, so its pages' requests carry the cookie too. A
//! cookie-authenticated refresh is therefore taken only from a page on the allow-list (its
//! `Origin`) or with `X-Requested-With` set, which no page can send without a CORS preflight
//! that only the allow-list passes. A refusal changes nothing: the cookie's token is not
//! rotated.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Deserialize;

/// The header a script sets to show a request comes from a page that passed CORS.
pub const REQUESTED_WITH: &str = "x-requested-with";

/// `cors`: the web apps allowed to call the origin from a browser.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Exact origins (`https://app.example.com`, a port if not the default), no wildcard: the
    /// answers carry credentials. Default none: no CORS headers at all.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// How long a browser may keep a preflight's answer (default 600 s, at most 1 day).
    #[serde(default = "default_max_age")]
    pub max_age_seconds: u32,
}

fn default_max_age() -> u32 {
    600
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age_seconds: default_max_age(),
        }
    }
}

impl CorsSettings {
    /// Each origin is an http(s) scheme and host (and port), as a browser writes it in `Origin`.
    pub fn validate(&self) -> Result<(), String> {
        for origin in &self.allowed_origins {
            let Some((scheme, authority)) = origin.split_once("://") else {
                return Err(format!(
                    "{origin:?} is not an origin (scheme://host[:port])"
                ));
            };
            let host_chars = |c: char| c.is_ascii_alphanumeric() || "-.:[]".contains(c);
            if !matches!(scheme, "https" | "http")
                || authority.is_empty()
                || !authority.chars().all(host_chars)
                || authority.chars().any(|c| c.is_ascii_uppercase())
            {
                return Err(format!(
                    "{origin:?} must be an exact lower-case http(s) origin, without path or wildcard"
                ));
            }
        }
        if self.max_age_seconds > 86_400 {
            return Err("max_age_seconds must be at most 86400".into());
        }
        Ok(())
    }

    /// Whether `origin` (an `Origin` header) is on the allow-list.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.allowed_origins
            .iter()
            .any(|allowed| allowed.as_bytes() == origin.as_bytes())
    }

    /// Whether a request that presents the refresh cookie may spend it: it comes from a page on
    /// the allow-list, or it carries `X-Requested-With`.
    pub fn cookie_may_be_spent(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(REQUESTED_WITH)
            || headers
                .get(header::ORIGIN)
                .is_some_and(|origin| self.allows(origin))
    }
}

/// What a preflight may ask for: the API's methods, and the headers its clients send.
const ALLOW_METHODS: &str = "GET, POST, PATCH, DELETE";
const ALLOW_HEADERS: &str = "authorization, content-type, x-request-id, x-requested-with";
/// What a page may read of an answer besides the CORS-safelisted headers.
const EXPOSE_HEADERS: &str = "x-request-id, retry-after, www-authenticate";

/// Middleware (only with a non-empty allow-list): answers preflights, and marks the answers to
/// an allowed origin readable by its page, with credentials. A request from any other origin,
/// preflight or not, gets no CORS header at all, so its page can read nothing; a preflight from
/// it is answered 403. Every answer varies by `Origin`, so no cache serves one origin's answer
/// to another.
pub async fn cors(
    State(settings): State<Arc<CorsSettings>>,
    request: Request,
    next: Next,
) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .filter(|origin| settings.allows(origin))
        .cloned();
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = match (preflight, &origin) {
        (false, _) => next.run(request).await,
        (true, None) => StatusCode::FORBIDDEN.into_response(),
        (true, Some(_)) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(settings.max_age_seconds),
            );
            response
        }
    };
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if !preflight {
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origins: &[&str]) -> CorsSettings {
        CorsSettings {
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            ..CorsSettings::default()
        }
    }

    #[test]
    fn only_exact_origins_are_accepted() {
        assert_eq!(
            settings(&["https://app.example.com", "http://localhost:5173"]).validate(),
            Ok(())
        );
        for bad in [
            "*",
            "https://*.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "app.example.com",
            "https://App.example.com",
            "null",
            "ftp://app.example.com",
        ] {
            assert!(settings(&[bad]).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cookie_is_spent_only_from_the_allow_list_or_with_the_header() {
        let cors = settings(&["https://app.example.com"]);
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            headers
        };
        assert!(cors.cookie_may_be_spent(&with(&[("origin", "https://app.example.com")])));
        assert!(cors.cookie_may_be_spent(&with(&[(REQUESTED_WITH, "fetch")])));
        assert!(!cors.cookie_may_be_spent(&with(&[("origin", "https://evil.example.com")])));
        assert!(!cors.cookie_may_be_spent(&with(&[("origin", "https://app.example.com.evil")])));
        assert!(!cors.cookie_may_be_spent(&with(&[])));
    }
}
