//! Per-route requirements, first match wins (like Envoy jwt_authn's `rules`).
//!
//! A rule must hold for every path an upstream could read from the request, and an edge cannot
//! know which upstream it fronts: Tomcat and Spring drop `;` path parameters, IIS and
//! case-insensitive file systems fold case. So the two kinds of rule match differently. A rule
//! that asks for something (a token, scopes, MFA) matches the *folded* path: `;` parameters
//! removed from each segment, ASCII case ignored, so `/ADMIN;x=1/users` meets `/admin/`. A
//! public rule, which waives the token, matches only the normal path as written, case and
//! parameters included, so `/Health` or `/health;x` is not waved through by a `/health` rule.

use alloc::{borrow::Cow, string::String, vec::Vec};

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
        if pattern.contains(';') {
            return Err("`path`/`prefix` must not contain `;` (path parameters are not matched)");
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

    fn matches(&self, method: &str, path: &RoutePath<'_>) -> bool {
        let path_ok = if self.public {
            match (&self.path, &self.prefix) {
                (Some(exact), _) => path.normal == exact,
                (_, Some(prefix)) => path.normal.starts_with(prefix.as_str()),
                _ => false,
            }
        } else {
            let folded = path.folded.as_bytes();
            match (&self.path, &self.prefix) {
                (Some(exact), _) => folded.eq_ignore_ascii_case(exact.as_bytes()),
                (_, Some(prefix)) => folded
                    .get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())),
                _ => false,
            }
        };
        path_ok && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }
}

/// The two readings of a request path that rules match (see the module comment).
#[derive(Debug)]
pub(crate) struct RoutePath<'a> {
    /// From [`normalise_path`].
    pub normal: &'a str,
    /// `normal` with each segment's `;` parameters removed and empty segments merged.
    pub folded: String,
}

impl<'a> RoutePath<'a> {
    pub(crate) fn new(normal: &'a str) -> Self {
        let mut folded = String::with_capacity(normal.len());
        for segment in normal.split('/').skip(1) {
            let segment = segment.split(';').next().unwrap_or_default();
            if !folded.ends_with('/') {
                folded.push('/');
            }
            folded.push_str(segment);
        }
        if folded.is_empty() {
            folded.push('/');
        }
        Self { normal, folded }
    }
}

/// The first rule matching `method` and `path` (without query), if any. No match means
/// "a valid token, no particular scope".
pub(crate) fn match_route<'r>(
    rules: &'r [RouteRule],
    method: &str,
    path: &RoutePath<'_>,
) -> Option<&'r RouteRule> {
    rules.iter().find(|r| r.matches(method, path))
}

/// An HTTP method as the rules name them: a token (RFC 9110 §9.1) without lower-case letters.
/// Methods are case-sensitive and Envoy passes `:method` as received, so `post` would miss every
/// `POST` rule; it is refused rather than folded, since the upstream may not read it as `POST`.
pub(crate) fn is_rule_method(method: &str) -> bool {
    !method.is_empty()
        && method
            .bytes()
            .all(|b| is_tchar(b) && !b.is_ascii_lowercase())
}

/// A `tchar` (RFC 9110 §5.6.2): what method and header names are made of.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
pub(crate) fn normalise_path(path: &str) -> Option<Cow<'_, str>> {
    // One pass over the bytes, on every request: most paths have nothing to decode or merge.
    let mut plain = true;
    let mut rewrite = false;
    let mut previous = 0u8;
    for &b in path.as_bytes() {
        plain &= is_plain_path_byte(b);
        rewrite |= b == b'%' || (b == b'/' && previous == b'/');
        previous = b;
    }
    let normal = if rewrite {
        Cow::Owned(decode_and_merge(path)?)
    } else if plain {
        // Nothing to decode or merge: the path is its own normal form, and is not copied.
        Cow::Borrowed(path)
    } else {
        return None;
    };
    if !normal.starts_with('/') || has_dot_segment(normal.as_bytes()) {
        return None;
    }
    Some(normal)
}

/// Whether a segment is `.` or `..`, also before path parameters: `..;x` is `..` to an upstream
/// that drops them (the Tomcat `/public/..;/admin`).
fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|segment| {
        let name = segment.split(|&b| b == b';').next().unwrap_or_default();
        name == b"." || name == b".."
    })
}

/// Visible ASCII other than `\`.
fn is_plain_path_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && b != b'\\'
}

/// Unreserved escapes decoded, other escapes upper-cased, repeated slashes merged.
fn decode_and_merge(path: &str) -> Option<String> {
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
            if !is_plain_path_byte(b) {
                return None;
            }
            b as char
        };
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
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
        let at = |p| RoutePath::new(p);
        assert_eq!(
            match_route(&rules, "POST", &at("/admin/x")),
            Some(&rules[0])
        );
        assert_eq!(match_route(&rules, "GET", &at("/admin/x")), Some(&rules[1]));
        assert_eq!(match_route(&rules, "GET", &at("/other")), Some(&rules[2]));
        assert_eq!(match_route(&rules[..2], "GET", &at("/other")), None);
    }

    #[test]
    fn exact_path_does_not_match_longer_paths() {
        let mut r = rule("/", &[]);
        r.prefix = None;
        r.path = Some("/health".into());
        assert!(r.matches("GET", &RoutePath::new("/health")));
        assert!(!r.matches("GET", &RoutePath::new("/healthz")));
    }

    #[test]
    fn protected_rules_match_every_reading_an_upstream_may_take() {
        let admin = rule("/admin/", &[]);
        for p in [
            "/admin/x",
            "/ADMIN/x",
            "/Admin/x",
            "/admin;jsessionid=1/x",
            "/ADMIN;x/y",
            "/;x/admin/x",
            "/admin;/x",
        ] {
            assert!(admin.matches("GET", &RoutePath::new(p)), "{p}");
        }
        let mut exact = rule("/", &[]);
        exact.prefix = None;
        exact.path = Some("/orders".into());
        for p in ["/orders", "/ORDERS", "/orders;v=2"] {
            assert!(exact.matches("GET", &RoutePath::new(p)), "{p}");
        }
        assert!(!exact.matches("GET", &RoutePath::new("/orders/1")));
    }

    #[test]
    fn public_rules_match_only_the_path_as_written() {
        let mut public = rule("/", &[]);
        public.prefix = None;
        public.path = Some("/health".into());
        public.public = true;
        assert!(public.matches("GET", &RoutePath::new("/health")));
        for p in ["/Health", "/HEALTH", "/health;x=1"] {
            assert!(!public.matches("GET", &RoutePath::new(p)), "{p}");
        }
        let mut docs = rule("/docs/", &[]);
        docs.public = true;
        assert!(docs.matches("GET", &RoutePath::new("/docs/a;b")));
        assert!(!docs.matches("GET", &RoutePath::new("/DOCS/a")));
    }

    #[test]
    fn methods_must_be_upper_case_tokens() {
        for m in ["GET", "POST", "M-SEARCH", "PROPFIND"] {
            assert!(is_rule_method(m), "{m}");
        }
        for m in ["get", "Post", "", "GET ", "GE\tT", "G\u{e9}T"] {
            assert!(!is_rule_method(m), "{m}");
        }
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
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/a/.;x/b",
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

    /// The normalisation as first written, three scans and `str` searches, kept as the oracle
    /// for the one-pass version.
    fn normalise_path_as_first_written(path: &str) -> Option<String> {
        let normal = if path.contains('%') || path.contains("//") {
            decode_and_merge(path)?
        } else if path.bytes().all(is_plain_path_byte) {
            path.to_string()
        } else {
            return None;
        };
        let is_dot_segment = |seg: &str| matches!(seg.split(';').next(), Some(".") | Some(".."));
        if !normal.starts_with('/') || normal.split('/').any(is_dot_segment) {
            return None;
        }
        Some(normal)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn one_pass_normalisation_agrees_with_the_first(
            // Mostly paths' own bytes, so that slashes, dots and escapes meet often.
            path in "/?([/.;%a5F]{1,3}|[\\\\ \u{e9}]){0,6}",
        ) {
            proptest::prop_assert_eq!(
                normalise_path(&path).map(Cow::into_owned),
                normalise_path_as_first_written(&path)
            );
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
        r = rule("/x;y", &[]);
        assert!(r.validate().is_err(), "path parameter in the pattern");
        r = rule("/x", &["get"]);
        assert!(r.validate().is_err(), "lower-case method");
        r = rule("/x", &[]);
        r.public = true;
        r.scopes = vec!["a".into()];
        assert!(r.validate().is_err(), "public with scopes");
    }
}
