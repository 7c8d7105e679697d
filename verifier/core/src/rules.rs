//! Per-route requirements, first match wins (like Envoy jwt_authn's `rules`).

use alloc::{string::String, vec::Vec};

use serde::Deserialize;

/// One rule of the policy's `routes` list.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Exact path to match (query string excluded).
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix to match, as a plain string prefix (write `/admin/` to stop at a segment).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Methods this rule applies to; empty means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// No token needed; identity headers are still removed.
    #[serde(default)]
    pub public: bool,
    /// Scopes the token must all carry.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The token's `amr` must show a second factor (`mfa` or `otp`, RFC 8176).
    #[serde(default)]
    pub mfa: bool,
}

/// `amr` values (RFC 8176 §2) that show a second factor was used.
pub const MFA_AMR_VALUES: [&str; 2] = ["mfa", "otp"];

impl RouteRule {
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        let pattern = match (&self.path, &self.prefix) {
            (Some(p), None) | (None, Some(p)) => p,
            _ => return Err("exactly one of `path` and `prefix` is required"),
        };
        if !pattern.starts_with('/') {
            return Err("`path`/`prefix` must start with `/`");
        }
        if pattern.contains('?') {
            return Err("`path`/`prefix` must not contain a query string");
        }
        // Requests are matched in normal form, so a pattern in any other form could never match.
        if normalise_path(pattern).as_deref() != Some(pattern.as_str()) {
            return Err("`path`/`prefix` must be in normal form (no `//`, dot segments, or escaped unreserved characters)");
        }
        if self.public && (self.mfa || !self.scopes.is_empty()) {
            return Err("a public route cannot require scopes or MFA");
        }
        if self
            .methods
            .iter()
            .any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err("methods must be upper-case HTTP method names");
        }
        if self.scopes.iter().any(|s| {
            s.is_empty()
                || s.bytes()
                    .any(|b| !(0x21..0x7f).contains(&b) || b == b'"' || b == b'\\')
        }) {
            return Err("scopes must be RFC 6749 scope tokens");
        }
        Ok(())
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        let path_ok = match (&self.path, &self.prefix) {
            (Some(exact), _) => path == exact,
            (_, Some(prefix)) => path.starts_with(prefix.as_str()),
            _ => false,
        };
        path_ok && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }
}

/// The first rule matching `method` and `path` (without query), if any. No match means
/// "a valid token, no particular scope".
pub(crate) fn match_route<'r>(
    rules: &'r [RouteRule],
    method: &str,
    path: &str,
) -> Option<&'r RouteRule> {
    rules.iter().find(|r| r.matches(method, path))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The path that route rules are matched against, or `None` for a path that must be refused.
///
/// A rule is only as good as the agreement between this path and the one the upstream routes
/// on. Upstreams commonly decode `%61` to `a`, merge `//`, and resolve `..`, so `/%61dmin/x`,
/// `//admin/x` and `/public/../admin/x` would otherwise dodge an `/admin/` rule. So:
/// percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2) and repeated slashes
/// merged before matching; dot segments, encoded `/` or `\`, raw `\`, malformed escapes and
/// bytes outside visible ASCII are refused, because no single reading of them is safe.
pub(crate) fn normalise_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let c = if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let decoded = hi << 4 | lo;
            i += 3;
            if decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded) {
                decoded as char
            } else if decoded == b'/' || decoded == b'\\' {
                return None;
            } else {
                // Reserved or non-ASCII: keep the escape as it is, upper-cased for matching.
                out.push('%');
                out.push(bytes[i - 2].to_ascii_uppercase() as char);
                out.push(bytes[i - 1].to_ascii_uppercase() as char);
                continue;
            }
        } else {
            i += 1;
            if !(0x21..0x7f).contains(&b) || b == b'\\' {
                return None;
            }
            b as char
        };
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    if !out.starts_with('/') || out.split('/').any(|seg| seg == "." || seg == "..") {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::{string::ToString, vec};

    fn rule(prefix: &str, methods: &[&str]) -> RouteRule {
        RouteRule {
            path: None,
            prefix: Some(prefix.to_string()),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            public: false,
            scopes: vec![],
            mfa: false,
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            rule("/admin/", &["POST"]),
            rule("/admin/", &[]),
            rule("/", &[]),
        ];
        assert_eq!(match_route(&rules, "POST", "/admin/x"), Some(&rules[0]));
        assert_eq!(match_route(&rules, "GET", "/admin/x"), Some(&rules[1]));
        assert_eq!(match_route(&rules, "GET", "/other"), Some(&rules[2]));
        assert_eq!(match_route(&rules[..2], "GET", "/other"), None);
    }

    #[test]
    fn exact_path_does_not_match_longer_paths() {
        let mut r = rule("/", &[]);
        r.prefix = None;
        r.path = Some("/health".into());
        assert!(r.matches("GET", "/health"));
        assert!(!r.matches("GET", "/healthz"));
    }

    #[test]
    fn paths_that_could_route_elsewhere_are_refused() {
        for p in [
            "/public/../admin",
            "/public/%2e%2E/admin",
            "/public%2f..%2fadmin",
            "/public%2Fadmin",
            "/a/./b",
            "/public\\..\\admin",
            "/a%5cb",
            "/..",
            "/a%zz",
            "/a%4",
            "/caf\u{e9}",
            "/a b",
            "a/b",
            "",
        ] {
            assert_eq!(normalise_path(p), None, "{p}");
        }
    }

    #[test]
    fn paths_are_normalised_the_way_upstreams_read_them() {
        for (raw, normal) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/file.txt", "/file.txt"),
            ("/a/...", "/a/..."),
            ("/v1.2/x", "/v1.2/x"),
            ("/%61dmin/users", "/admin/users"),
            ("//admin///users", "/admin/users"),
            ("/%7euser", "/~user"),
            ("/a%3fb", "/a%3Fb"),
        ] {
            assert_eq!(normalise_path(raw).as_deref(), Some(normal), "{raw}");
        }
    }

    #[test]
    fn invalid_rules_are_refused() {
        let mut r = rule("/x", &[]);
        r.path = Some("/x".into());
        assert!(r.validate().is_err(), "path and prefix together");
        let mut r = rule("x", &[]);
        assert!(r.validate().is_err(), "no leading slash");
        r = rule("/%61dmin/", &[]);
        assert!(r.validate().is_err(), "pattern not in normal form");
        r = rule("/x", &["get"]);
        assert!(r.validate().is_err(), "lower-case method");
        r = rule("/x", &[]);
        r.public = true;
        r.scopes = vec!["a".into()];
        assert!(r.validate().is_err(), "public with scopes");
    }
}
