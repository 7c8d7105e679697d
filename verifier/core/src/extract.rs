//! Where a token is read from, in the policy's order: `Authorization: Bearer`, a cookie, a
//! query parameter (RFC 6750 §2.1-§2.3). Hosts expose request headers through [`Headers`].

use alloc::string::{String, ToString};

use crate::{config::Policy, verdict::DenyReason};

/// Read access to request headers. Names are asked in lowercase; implementations compare
/// case-insensitively and pass every value of a repeated header, as raw bytes.
pub trait Headers {
    /// Calls `each` once per value of header `name`.
    fn values(&self, name: &str, each: &mut dyn FnMut(&[u8]));

    /// Whether the request carries header `name`, with any value.
    fn carries(&self, name: &str) -> bool {
        let mut found = false;
        self.values(name, &mut |_| found = true);
        found
    }

    /// Calls `each` with the name of every header line the request carries and returns true,
    /// where the host holds them all at hand; returns false without calling it where it does not
    /// (the default: the Worker's runtime is asked one name at a time, so there the identity
    /// headers are looked up with [`Headers::carries`]).
    fn each_name(&self, each: &mut dyn FnMut(&[u8])) -> bool {
        let _ = each;
        false
    }
}

// Names as text or as bytes: the Envoy builds hand the core the pairs where Envoy left them.
impl<K: AsRef<[u8]>, V: AsRef<[u8]>> Headers for [(K, V)] {
    fn values(&self, name: &str, each: &mut dyn FnMut(&[u8])) {
        for (k, v) in self {
            if k.as_ref().eq_ignore_ascii_case(name.as_bytes()) {
                each(v.as_ref());
            }
        }
    }

    // Asked once per identity header on every request: a plain search, not a callback per value.
    fn carries(&self, name: &str) -> bool {
        self.iter()
            .any(|(k, _)| k.as_ref().eq_ignore_ascii_case(name.as_bytes()))
    }

    fn each_name(&self, each: &mut dyn FnMut(&[u8])) -> bool {
        for (k, _) in self {
            each(k.as_ref());
        }
        true
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> Headers for alloc::vec::Vec<(K, V)> {
    fn values(&self, name: &str, each: &mut dyn FnMut(&[u8])) {
        self.as_slice().values(name, each);
    }

    fn carries(&self, name: &str) -> bool {
        self.as_slice().carries(name)
    }

    fn each_name(&self, each: &mut dyn FnMut(&[u8])) -> bool {
        self.as_slice().each_name(each)
    }
}

/// What `read` makes of the one value of header `name`, or `Ok(None)` without one. Two values
/// make the request ambiguous: refused rather than guessed at. `read` sees the value where the
/// host holds it, so only what it keeps is copied.
fn read_single<H: Headers + ?Sized, T>(
    headers: &H,
    name: &str,
    read: impl Fn(&[u8]) -> Result<Option<T>, DenyReason>,
) -> Result<Option<T>, DenyReason> {
    let mut found = None;
    let mut count = 0usize;
    headers.values(name, &mut |v| {
        count += 1;
        if count == 1 {
            found = Some(read(v));
        }
    });
    if count > 1 {
        return Err(DenyReason::InvalidRequest);
    }
    found.transpose().map(Option::flatten)
}

/// Whether a credential header's value is visible ASCII and tabs only; anything else is hostile.
fn is_text(value: &[u8]) -> bool {
    // Folded without an early exit so that the compiler checks many bytes at a time: a token
    // is hundreds of them, and a refusal need not be fast.
    value.iter().fold(true, |ok, &b| {
        ok & ((0x20..0x7f).contains(&b) | (b == b'\t'))
    })
}

fn text(value: &[u8]) -> Result<String, DenyReason> {
    if is_text(value) {
        // Checked ASCII above, so this conversion cannot fail.
        core::str::from_utf8(value)
            .map(ToString::to_string)
            .map_err(|_| DenyReason::InvalidRequest)
    } else {
        Err(DenyReason::InvalidRequest)
    }
}

/// Reads `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235 §2.1).
/// Another scheme (Basic, say) is not a bearer token: the next source is tried.
fn from_authorization<H: Headers + ?Sized>(headers: &H) -> Result<Option<String>, DenyReason> {
    read_single(headers, "authorization", bearer_token)
}

/// The token of one `Authorization` value, copied out of it; `None` for another scheme.
fn bearer_token(value: &[u8]) -> Result<Option<String>, DenyReason> {
    if !is_text(value) {
        return Err(DenyReason::InvalidRequest);
    }
    // Scanned as bytes: a token is hundreds of them, on every request.
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !blank(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    let scheme_end = value[start..end]
        .iter()
        .position(blank)
        .map_or(end, |i| start + i);
    if !value[start..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let token_start = value[scheme_end..end]
        .iter()
        .position(|b| !blank(b))
        .map_or(end, |i| scheme_end + i);
    let token = &value[token_start..end];
    // `is_text` left only visible ASCII, spaces and tabs, so a blank is any byte up to a space:
    // one comparison per byte, folded as there so that it is checked many bytes at a time.
    if token.is_empty() || !token.iter().fold(true, |ok, &b| ok & (b > b' ')) {
        return Err(DenyReason::InvalidRequest);
    }
    // Visible ASCII (checked above), so this conversion cannot fail.
    core::str::from_utf8(token)
        .map(|token| Some(token.to_string()))
        .map_err(|_| DenyReason::InvalidRequest)
}

/// The named cookie, from every `Cookie` value. Pairs are split at `;` and also at `,`: a
/// cookie value cannot hold either (RFC 6265 §4.1.1), and the Worker's runtime joins repeated
/// `Cookie` headers with ", " where Envoy passes them apart, so both hosts must read the same
/// pairs. A name given twice is refused like two `Authorization` headers: which one a server
/// reads (first, last) differs, and a sibling domain can plant a second one.
fn from_cookie<H: Headers + ?Sized>(headers: &H, name: &str) -> Result<Option<String>, DenyReason> {
    let mut found: Option<String> = None;
    let mut result: Result<(), DenyReason> = Ok(());
    headers.values("cookie", &mut |v| {
        if result.is_err() {
            return;
        }
        let line = match text(v) {
            Ok(line) => line,
            Err(e) => {
                result = Err(e);
                return;
            }
        };
        for pair in line.split([';', ',']) {
            let Some((k, val)) = pair.split_once('=') else {
                continue;
            };
            if k.trim() != name {
                continue;
            }
            if found.is_some() {
                result = Err(DenyReason::InvalidRequest);
                return;
            }
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(val);
            found = Some(val.to_string());
        }
    });
    result.map(|()| found)
}

fn from_query(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// Finds the token in the request, in the configured order.
pub(crate) fn extract_token<H: Headers + ?Sized>(
    policy: &Policy,
    path: &str,
    headers: &H,
) -> Result<Option<String>, DenyReason> {
    if policy.authorization_header {
        if let Some(token) = from_authorization(headers)? {
            return Ok(Some(token));
        }
    }
    if let Some(name) = &policy.cookie {
        if let Some(token) = from_cookie(headers, name)? {
            return Ok(Some(token));
        }
    }
    if let Some(name) = &policy.query_parameter {
        if let Some(token) = from_query(path, name) {
            return Ok(Some(token));
        }
    }
    Ok(None)
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`. Browsers send
/// these without credentials, so requiring a token would break every cross-origin call.
pub(crate) fn is_cors_preflight<H: Headers + ?Sized>(method: &str, headers: &H) -> bool {
    if method != "OPTIONS" {
        return false;
    }
    headers.carries("origin") && headers.carries("access-control-request-method")
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::{vec, vec::Vec};

    fn policy(extra: &str) -> Policy {
        Policy::from_json(&alloc::format!(
            r#"{{"issuers":["i"],"audiences":["a"]{extra}}}"#
        ))
        .expect("valid")
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let p = policy("");
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let value = alloc::format!("{scheme} abc.def.ghi");
            let h = vec![("Authorization", value.as_str())];
            assert_eq!(extract_token(&p, "/", &h), Ok(Some("abc.def.ghi".into())));
        }
    }

    #[test]
    fn blanks_around_the_scheme_and_token_are_spaces_or_tabs() {
        let p = policy("");
        for value in ["Bearer a.b.c", " \tBearer \t a.b.c\t ", "Bearer\ta.b.c"] {
            let h = vec![("authorization", value)];
            assert_eq!(
                extract_token(&p, "/", &h),
                Ok(Some("a.b.c".into())),
                "{value:?}"
            );
        }
        for value in ["Bearer a.b\tc", "Bearer", " Bearer \t ", "Bearer a.b.c x"] {
            let h = vec![("authorization", value)];
            let got = extract_token(&p, "/", &h);
            assert_eq!(got, Err(DenyReason::InvalidRequest), "{value:?}");
        }
        // A scheme that only starts like "Bearer" is another scheme.
        let h = vec![("authorization", "Bearerx a.b.c")];
        assert_eq!(extract_token(&p, "/", &h), Ok(None));
    }

    #[test]
    fn other_schemes_are_not_tokens() {
        let p = policy("");
        let h = vec![("authorization", "Basic dXNlcjpwYXNz")];
        assert_eq!(extract_token(&p, "/", &h), Ok(None));
    }

    #[test]
    fn ambiguous_or_binary_authorization_is_invalid_request() {
        let p = policy("");
        let two = vec![
            ("authorization", "Bearer a.b.c"),
            ("Authorization", "Bearer d.e.f"),
        ];
        assert_eq!(
            extract_token(&p, "/", &two),
            Err(DenyReason::InvalidRequest)
        );
        let binary: Vec<(&str, &[u8])> = vec![("authorization", b"Bearer a.b\xff.c")];
        assert_eq!(
            extract_token(&p, "/", &binary),
            Err(DenyReason::InvalidRequest)
        );
        let empty = vec![("authorization", "Bearer ")];
        assert_eq!(
            extract_token(&p, "/", &empty),
            Err(DenyReason::InvalidRequest)
        );
        let spaced = vec![("authorization", "Bearer a.b.c d")];
        assert_eq!(
            extract_token(&p, "/", &spaced),
            Err(DenyReason::InvalidRequest)
        );
    }

    #[test]
    fn sources_are_tried_in_order() {
        let p = policy(r#","sources":{"cookie":"at","query_parameter":"access_token"}"#);
        let both = vec![
            ("authorization", "Bearer from.header.x"),
            ("cookie", "a=1; at=from.cookie.x"),
        ];
        assert_eq!(
            extract_token(&p, "/?access_token=q.q.q", &both),
            Ok(Some("from.header.x".into()))
        );
        let cookie_only = vec![("cookie", "a=1; at=\"from.cookie.x\"")];
        assert_eq!(
            extract_token(&p, "/?access_token=q.q.q", &cookie_only),
            Ok(Some("from.cookie.x".into()))
        );
        let none: Vec<(&str, &str)> = vec![];
        assert_eq!(
            extract_token(&p, "/x?y=1&access_token=q.q.q", &none),
            Ok(Some("q.q.q".into()))
        );
        assert_eq!(extract_token(&p, "/x?y=1", &none), Ok(None));
    }

    #[test]
    fn a_token_cookie_given_twice_is_ambiguous_however_the_host_joins_it() {
        let p = policy(r#","sources":{"cookie":"at"}"#);
        // Envoy: one value per `Cookie` header.
        let apart = vec![("cookie", "at=a.b.c"), ("cookie", "x=1; at=d.e.f")];
        assert_eq!(
            extract_token(&p, "/", &apart),
            Err(DenyReason::InvalidRequest)
        );
        // The Worker's runtime: repeated headers joined with ", ".
        let joined = vec![("cookie", "at=a.b.c, x=1; at=d.e.f")];
        assert_eq!(
            extract_token(&p, "/", &joined),
            Err(DenyReason::InvalidRequest)
        );
        let in_one = vec![("cookie", "at=a.b.c; at=d.e.f")];
        assert_eq!(
            extract_token(&p, "/", &in_one),
            Err(DenyReason::InvalidRequest)
        );
        // One token cookie among others reads the same either way.
        let other_apart = vec![("cookie", "x=1"), ("cookie", "at=a.b.c")];
        let other_joined = vec![("cookie", "x=1, at=a.b.c")];
        for h in [other_apart, other_joined] {
            assert_eq!(extract_token(&p, "/", &h), Ok(Some("a.b.c".into())));
        }
    }

    #[test]
    fn query_parameter_is_off_by_default() {
        let p = policy("");
        let none: Vec<(&str, &str)> = vec![];
        assert_eq!(extract_token(&p, "/?access_token=q.q.q", &none), Ok(None));
    }

    #[test]
    fn preflight_needs_all_three_signals() {
        let h = vec![
            ("origin", "https://app"),
            ("access-control-request-method", "POST"),
        ];
        assert!(is_cors_preflight("OPTIONS", &h));
        assert!(!is_cors_preflight("GET", &h));
        assert!(!is_cors_preflight("OPTIONS", &h[..1]));
    }
}
