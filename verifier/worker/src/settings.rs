//! The Worker's configuration: `wrangler.toml` vars, read and validated once per isolate.
//! An invalid configuration answers every request with a JSON 500 (fail closed), never a pass.

use edgeauth_core::{ConfigError, Policy};

/// Every setting, with its default. Durations are seconds.
#[derive(Debug)]
pub struct Settings {
    /// `POLICY`: the verification policy (README, "Policy"). Required.
    pub policy: Policy,
    /// `JWKS_URL`: the origin's key set. Required.
    pub jwks_url: String,
    /// `UPSTREAM_URL`: where allowed requests go (scheme, host, optional path prefix). Required.
    pub upstream_url: String,
    /// `FEED_URL`: the origin's revocation feed, pulled by the Cron Trigger. Required.
    pub feed_url: String,
    /// `KEYS_DEFAULT_MAX_AGE`: key freshness when the JWKS answer has no `max-age`. Default 300.
    pub keys_default_max_age: u32,
    /// `KEYS_MAX_STALE`: how long past freshness the last good keys keep serving while the JWKS
    /// cannot be fetched. Default 21600 (6 hours).
    pub keys_max_stale: u32,
    /// `KEYS_REFETCH_INTERVAL`: the least time between two fetches not due to expiry (an
    /// unknown `kid`, a failed fetch). Default 30.
    pub keys_refetch_interval: u32,
    /// `DENY_CACHE_SECONDS`: how long an isolate trusts a KV answer about a `jti`. Default 5,
    /// at most 60.
    pub deny_cache_seconds: u32,
    /// `FETCH_TIMEOUT_MS`: deadline for a JWKS or feed fetch. Default 3000.
    pub fetch_timeout_ms: u32,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A required var is missing.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A var is out of bounds or not a number.
    #[error("{name}: {problem}")]
    Invalid {
        /// The var.
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// `POLICY` does not parse or validate.
    #[error("POLICY: {0}")]
    Policy(#[from] ConfigError),
}

fn url(name: &'static str, value: Option<String>) -> Result<String, SettingsError> {
    let value = value.ok_or(SettingsError::Missing(name))?;
    let scheme_ok = value.starts_with("https://") || value.starts_with("http://");
    let host = value.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    if !scheme_ok || host.is_empty() || host.starts_with('/') {
        return Err(SettingsError::Invalid {
            name,
            problem: format!("`{value}` is not an http(s) URL"),
        });
    }
    Ok(value)
}

fn seconds(
    name: &'static str,
    value: Option<String>,
    default: u32,
    bounds: std::ops::RangeInclusive<u32>,
) -> Result<u32, SettingsError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if bounds.contains(&n) => Ok(n),
        _ => Err(SettingsError::Invalid {
            name,
            problem: format!(
                "`{text}` must be a whole number from {} to {}",
                bounds.start(),
                bounds.end()
            ),
        }),
    }
}

impl Settings {
    /// Reads every setting through `var` (the Worker's `env.var`, or a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let policy_text = var("POLICY").ok_or(SettingsError::Missing("POLICY"))?;
        Ok(Self {
            policy: Policy::from_json(&policy_text)?,
            jwks_url: url("JWKS_URL", var("JWKS_URL"))?,
            upstream_url: url("UPSTREAM_URL", var("UPSTREAM_URL"))?
                .trim_end_matches('/')
                .to_string(),
            feed_url: url("FEED_URL", var("FEED_URL"))?,
            keys_default_max_age: seconds(
                "KEYS_DEFAULT_MAX_AGE",
                var("KEYS_DEFAULT_MAX_AGE"),
                300,
                0..=86_400,
            )?,
            keys_max_stale: seconds("KEYS_MAX_STALE", var("KEYS_MAX_STALE"), 21_600, 0..=604_800)?,
            keys_refetch_interval: seconds(
                "KEYS_REFETCH_INTERVAL",
                var("KEYS_REFETCH_INTERVAL"),
                30,
                1..=3600,
            )?,
            deny_cache_seconds: seconds(
                "DENY_CACHE_SECONDS",
                var("DENY_CACHE_SECONDS"),
                5,
                0..=60,
            )?,
            fetch_timeout_ms: seconds(
                "FETCH_TIMEOUT_MS",
                var("FETCH_TIMEOUT_MS"),
                3000,
                100..=30_000,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{"issuers":["https://auth.example"],"audiences":["api"]}"#;

    fn settings(extra: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let mut vars = vec![
            ("POLICY", POLICY),
            ("JWKS_URL", "https://auth.example/.well-known/jwks.json"),
            ("UPSTREAM_URL", "https://api.internal/"),
            ("FEED_URL", "https://auth.example/v1/revocations"),
        ];
        vars.extend_from_slice(extra);
        Settings::from_vars(|name| {
            vars.iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        })
    }

    #[test]
    fn defaults_apply_when_only_the_required_vars_are_set() {
        let s = settings(&[]).expect("valid");
        assert_eq!(s.upstream_url, "https://api.internal");
        assert_eq!(
            (
                s.keys_default_max_age,
                s.keys_max_stale,
                s.keys_refetch_interval,
                s.deny_cache_seconds,
                s.fetch_timeout_ms
            ),
            (300, 21_600, 30, 5, 3000)
        );
    }

    #[test]
    fn bad_values_name_their_var() {
        for (name, value) in [
            ("JWKS_URL", "ftp://x"),
            ("UPSTREAM_URL", "http://"),
            ("DENY_CACHE_SECONDS", "61"),
            ("KEYS_REFETCH_INTERVAL", "0"),
            ("FETCH_TIMEOUT_MS", "soon"),
            ("POLICY", "{}"),
        ] {
            let error = settings(&[(name, value)]).expect_err(name).to_string();
            assert!(error.starts_with(name), "{error}");
        }
        let missing = Settings::from_vars(|_| None).expect_err("nothing set");
        assert_eq!(missing.to_string(), "POLICY is not set");
    }
}
