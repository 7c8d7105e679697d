//! The plugin configuration: the shared policy JSON plus how to reach the origin through Envoy
//! clusters. Parsed and validated once, in `on_configure`; a bad configuration makes Envoy refuse
//! the plugin (and `envoy --mode validate` fail), never a filter that lets requests through.

use edgeauth_core::{ConfigError, Policy, RawPolicy};
use serde::Deserialize;

/// The plugin configuration as written (JSON in the filter's `configuration` value).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    policy: RawPolicy,
    jwks: RawOriginRoute,
    revocation_feed: RawOriginRoute,
    #[serde(default = "default_keys_max_age")]
    keys_default_max_age_seconds: u32,
    #[serde(default = "default_keys_max_stale")]
    keys_max_stale_seconds: u32,
    #[serde(default = "default_refetch_interval")]
    keys_refetch_interval_seconds: u32,
    #[serde(default = "default_feed_poll")]
    feed_poll_seconds: u32,
    #[serde(default = "default_feed_max_stale")]
    feed_max_stale_seconds: u32,
    #[serde(default = "default_fetch_timeout")]
    fetch_timeout_ms: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOriginRoute {
    cluster: String,
    #[serde(default)]
    authority: Option<String>,
    path: String,
}

fn default_keys_max_age() -> u32 {
    300
}
fn default_keys_max_stale() -> u32 {
    21_600
}
fn default_refetch_interval() -> u32 {
    30
}
fn default_feed_poll() -> u32 {
    1
}
fn default_feed_max_stale() -> u32 {
    300
}
fn default_fetch_timeout() -> u32 {
    3000
}

/// Where on the origin a call goes: an Envoy cluster, the `:authority` to send and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRoute {
    /// A cluster defined in Envoy's configuration (`dispatch_http_call` needs an existing one).
    pub cluster: String,
    /// `:authority` of the call. Default: the cluster name.
    pub authority: String,
    /// Path (with any query) on the origin.
    pub path: String,
}

impl OriginRoute {
    /// The headers of a GET of `path` from the origin, conditional on `if_none_match` if given.
    /// Both builds send `:authority`: Envoy keeps it and HTTP/1's `host` in one header, which
    /// its Wasm `http_call` and its dynamic modules' callouts each require.
    pub fn get_headers<'a>(
        &'a self,
        path: &'a str,
        if_none_match: Option<&'a str>,
    ) -> Vec<(&'static str, &'a [u8])> {
        let mut headers = vec![
            (":method", b"GET".as_slice()),
            (":path", path.as_bytes()),
            (":authority", self.authority.as_bytes()),
            ("accept", b"application/json".as_slice()),
        ];
        if let Some(tag) = if_none_match {
            headers.push(("if-none-match", tag.as_bytes()));
        }
        headers
    }
}

/// Every setting, validated. Durations are seconds unless named otherwise.
#[derive(Debug)]
pub struct Settings {
    /// `policy`: the verification policy, the same JSON the Worker and the CLI read. Required.
    pub policy: Policy,
    /// `jwks`: the origin's key set (`{"cluster", "authority"?, "path"}`). Required.
    pub jwks: OriginRoute,
    /// `revocation_feed`: the origin's revocation feed, polled from the last cursor. Required.
    pub revocation_feed: OriginRoute,
    /// `keys_default_max_age_seconds`: key freshness when the JWKS answer has no `max-age`.
    /// Default 300.
    pub keys_default_max_age: u32,
    /// `keys_max_stale_seconds`: how long past freshness the last good keys keep serving while
    /// the JWKS cannot be fetched. Default 21600 (6 hours), as the Worker.
    pub keys_max_stale: u32,
    /// `keys_refetch_interval_seconds`: the least time between two fetches not due to expiry (an
    /// unknown `kid`, a failed fetch), across all of Envoy's VMs. Default 30.
    pub keys_refetch_interval: u32,
    /// `feed_poll_seconds`: how often the revocation feed is read. Default 1; the revocation
    /// bound is this plus the half-second tick and the call (README, "Revocation bound").
    pub feed_poll: u32,
    /// `feed_max_stale_seconds`: past this long without a successful feed read, the deny-list
    /// counts as unavailable and the policy's `revocation.on_unavailable` decides. Default 300.
    pub feed_max_stale: u32,
    /// `fetch_timeout_ms`: deadline for a JWKS or feed call. Default 3000.
    pub fetch_timeout_ms: u32,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not JSON of the expected shape.
    #[error("plugin configuration: {0}")]
    Syntax(String),
    /// A field is out of bounds.
    #[error("{name}: {problem}")]
    Invalid {
        /// The field.
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The policy does not validate.
    #[error("policy: {0}")]
    Policy(#[from] ConfigError),
}

fn bounded(
    name: &'static str,
    value: u32,
    bounds: std::ops::RangeInclusive<u32>,
) -> Result<u32, SettingsError> {
    if bounds.contains(&value) {
        return Ok(value);
    }
    Err(SettingsError::Invalid {
        name,
        problem: format!("{value} is outside {} to {}", bounds.start(), bounds.end()),
    })
}

fn route(name: &'static str, raw: RawOriginRoute) -> Result<OriginRoute, SettingsError> {
    let invalid = |problem: &str| SettingsError::Invalid {
        name,
        problem: problem.to_string(),
    };
    if raw.cluster.is_empty() {
        return Err(invalid("`cluster` is empty"));
    }
    if !raw.path.starts_with('/') {
        return Err(invalid("`path` must start with /"));
    }
    let authority = raw.authority.unwrap_or_else(|| raw.cluster.clone());
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if authority.is_empty() || !printable(&authority) || !printable(&raw.path) {
        return Err(invalid("`authority` and `path` must be visible ASCII"));
    }
    Ok(OriginRoute {
        cluster: raw.cluster,
        authority,
        path: raw.path,
    })
}

impl Settings {
    /// Parses and validates the plugin configuration.
    pub fn from_json(text: &[u8]) -> Result<Self, SettingsError> {
        let raw: RawSettings =
            serde_json::from_slice(text).map_err(|e| SettingsError::Syntax(e.to_string()))?;
        Ok(Self {
            policy: Policy::try_from(raw.policy)?,
            jwks: route("jwks", raw.jwks)?,
            revocation_feed: route("revocation_feed", raw.revocation_feed)?,
            keys_default_max_age: bounded(
                "keys_default_max_age_seconds",
                raw.keys_default_max_age_seconds,
                0..=86_400,
            )?,
            keys_max_stale: bounded(
                "keys_max_stale_seconds",
                raw.keys_max_stale_seconds,
                0..=604_800,
            )?,
            keys_refetch_interval: bounded(
                "keys_refetch_interval_seconds",
                raw.keys_refetch_interval_seconds,
                1..=3600,
            )?,
            feed_poll: bounded("feed_poll_seconds", raw.feed_poll_seconds, 1..=3600)?,
            feed_max_stale: bounded(
                "feed_max_stale_seconds",
                raw.feed_max_stale_seconds,
                10..=604_800,
            )?,
            fetch_timeout_ms: bounded("fetch_timeout_ms", raw.fetch_timeout_ms, 100..=30_000)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> String {
        format!(
            r#"{{"policy":{{"issuers":["https://auth.example"],"audiences":["api"]}},
            "jwks":{{"cluster":"origin","path":"/.well-known/jwks.json"}},
            "revocation_feed":{{"cluster":"origin","authority":"auth.example","path":"/v1/revocations"}}{extra}}}"#
        )
    }

    #[test]
    fn defaults_apply_when_only_the_required_fields_are_set() {
        let s = Settings::from_json(config("").as_bytes()).expect("valid");
        assert_eq!(s.jwks.authority, "origin", "the cluster name by default");
        assert_eq!(s.revocation_feed.authority, "auth.example");
        assert_eq!(
            (
                s.keys_default_max_age,
                s.keys_max_stale,
                s.keys_refetch_interval,
                s.feed_poll,
                s.feed_max_stale,
                s.fetch_timeout_ms
            ),
            (300, 21_600, 30, 1, 300, 3000)
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        for (extra, name) in [
            (r#","feed_poll_seconds":0"#, "feed_poll_seconds"),
            (
                r#","keys_refetch_interval_seconds":0"#,
                "keys_refetch_interval_seconds",
            ),
            (r#","fetch_timeout_ms":50"#, "fetch_timeout_ms"),
            (r#","feed_max_stale_seconds":1"#, "feed_max_stale_seconds"),
        ] {
            let error = Settings::from_json(config(extra).as_bytes())
                .expect_err(name)
                .to_string();
            assert!(error.starts_with(name), "{error}");
        }
        let error = Settings::from_json(config(r#","jwks_url":"x""#).as_bytes())
            .expect_err("unknown field");
        assert!(error.to_string().contains("unknown field"), "{error}");
        let no_slash = config("").replace("\"/v1/revocations\"", "\"v1\"");
        let error = Settings::from_json(no_slash.as_bytes()).expect_err("relative path");
        assert!(error.to_string().starts_with("revocation_feed"), "{error}");
        let bad_policy = config("").replace(r#""audiences":["api"]"#, r#""audiences":[]"#);
        let error = Settings::from_json(bad_policy.as_bytes()).expect_err("empty audiences");
        assert!(error.to_string().starts_with("policy"), "{error}");
    }
}
