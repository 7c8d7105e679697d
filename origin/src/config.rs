//! Origin configuration: a JSON file (optional, `EDGEAUTH_CONFIG`) with every field overridable by
//! an `EDGEAUTH_<FIELD>` environment variable, validated once before the server binds.
//! Every field has a documented default (README, "Origin configuration"), so an empty
//! configuration runs the embedded default.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    cors::CorsSettings,
    key_rotation::KeyRotationSettings,
    keys::SigningAlgorithm,
    mail::MailSettings,
    password::Argon2Cost,
    rate_limit::{ClientIpSource, RateLimits},
    server::ServerTimeouts,
    soft_lock::{Captcha, SoftLock},
};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Unknown field, wrong type, or not JSON.
    #[error("configuration is not valid: {0}")]
    Syntax(String),
    /// A value out of bounds; names the field.
    #[error("configuration field `{field}`: {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// Where users and refresh tokens live.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// dynoxide in-process on a file under `data_dir`: the DynamoDB code path on one machine.
    Embedded,
    /// DynamoDB through the official SDK: the standard credential chain, and `dynamodb_endpoint`
    /// only when set (for a local dynoxide server).
    Dynamodb,
}

/// Where one of the origin's Redis roles (the deny-list, the profile cache) lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a primary behind one endpoint): `redis://` or `rediss://`.
    Server(String),
    /// A Redis Cluster (ElastiCache in cluster mode), found from these seed nodes; it has
    /// database 0 only.
    Cluster(Vec<String>),
}

/// The configuration as written. See the README for each field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default = "default_audience")]
    audience: String,
    #[serde(default = "default_access_ttl")]
    access_token_ttl_seconds: u32,
    #[serde(default = "default_refresh_ttl")]
    refresh_token_ttl_seconds: u32,
    #[serde(default = "default_session_max")]
    session_max_seconds: u32,
    #[serde(default = "default_refresh_grace")]
    refresh_grace_seconds: u32,
    #[serde(default = "default_reauthentication_max_age")]
    reauthentication_max_age_seconds: u32,
    #[serde(default = "default_signing_algorithm")]
    signing_algorithm: SigningAlgorithm,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_jwks_max_age")]
    jwks_max_age_seconds: u32,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_storage")]
    storage: Storage,
    #[serde(default)]
    dynamodb_endpoint: Option<String>,
    #[serde(default)]
    redis_denylist_url: Option<String>,
    #[serde(default)]
    redis_denylist_cluster: Vec<String>,
    #[serde(default)]
    redis_cache_url: Option<String>,
    #[serde(default)]
    redis_cache_cluster: Vec<String>,
    #[serde(default = "default_profile_cache_ttl")]
    profile_cache_ttl_seconds: u32,
    #[serde(default = "default_region")]
    dynamodb_region: String,
    #[serde(default = "default_table_prefix")]
    table_prefix: String,
    #[serde(default = "default_feed_partitions")]
    feed_partitions: u8,
    #[serde(default)]
    argon2: Argon2Cost,
    #[serde(default)]
    hashing_concurrency: Option<usize>,
    #[serde(default)]
    hashing_queue: Option<usize>,
    #[serde(default)]
    edge_push_urls: Vec<String>,
    #[serde(default)]
    rate_limits: RateLimits,
    #[serde(default)]
    client_ip: ClientIpSource,
    #[serde(default)]
    soft_lock: SoftLock,
    #[serde(default)]
    second_factor_lock: SoftLock,
    #[serde(default)]
    server_timeouts: ServerTimeouts,
    #[serde(default)]
    captcha: Option<Captcha>,
    #[serde(default = "default_mfa_scopes")]
    mfa_scopes: Vec<String>,
    #[serde(default)]
    signing_keys: KeyRotationSettings,
    #[serde(default)]
    otlp_traces_endpoint: Option<String>,
    #[serde(default)]
    mail: Option<MailSettings>,
    #[serde(default)]
    email_verification: EmailVerification,
    #[serde(default)]
    password_reset: PasswordReset,
    #[serde(default)]
    cors: CorsSettings,
}

/// `password_reset`: the links that set a new password (with `mail`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    /// How long a reset link works (default 30 minutes, 5 minutes to 1 day): a mailbox is read
    /// on more devices than an account is used on, so the link should not outlive the errand.
    #[serde(default = "default_reset_link_ttl")]
    pub link_ttl_seconds: u32,
}

impl Default for PasswordReset {
    fn default() -> Self {
        Self {
            link_ttl_seconds: default_reset_link_ttl(),
        }
    }
}

fn default_reset_link_ttl() -> u32 {
    30 * 60
}

/// `email_verification`: what an account may do before its address is verified. It applies
/// only with `mail`: without mail no address can be verified, and none is asked to be.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailVerification {
    /// Whether an account may log in before its address is verified (default `true`: a user
    /// who has not opened the mail yet can still use the app, and only `verified_scopes` wait
    /// for it; `false` answers such a login 403 `email_not_verified`).
    #[serde(default = "default_login_unverified")]
    pub login_unverified: bool,
    /// Scopes granted only once the address is verified (default none).
    #[serde(default)]
    pub verified_scopes: Vec<String>,
    /// How long a verification link works (default 1 day, 10 minutes to 7 days).
    #[serde(default = "default_verify_link_ttl")]
    pub link_ttl_seconds: u32,
}

impl Default for EmailVerification {
    fn default() -> Self {
        Self {
            login_unverified: default_login_unverified(),
            verified_scopes: Vec::new(),
            link_ttl_seconds: default_verify_link_ttl(),
        }
    }
}

fn default_login_unverified() -> bool {
    true
}
fn default_verify_link_ttl() -> u32 {
    24 * 3600
}

fn default_reauthentication_max_age() -> u32 {
    300
}

fn default_mfa_scopes() -> Vec<String> {
    vec!["admin".into()]
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_audience() -> String {
    "api".into()
}
fn default_access_ttl() -> u32 {
    15 * 60
}
fn default_refresh_ttl() -> u32 {
    30 * 24 * 3600
}
fn default_profile_cache_ttl() -> u32 {
    3600
}
fn default_session_max() -> u32 {
    30 * 24 * 3600
}
fn default_refresh_grace() -> u32 {
    10
}
fn default_signing_algorithm() -> SigningAlgorithm {
    SigningAlgorithm::EdDsa
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_jwks_max_age() -> u32 {
    300
}
fn default_max_body() -> usize {
    16 * 1024
}
fn default_storage() -> Storage {
    Storage::Embedded
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_table_prefix() -> String {
    "edgeauth-".into()
}
fn default_feed_partitions() -> u8 {
    1
}
/// Most partition keys the feed may be spread over: each read queries every one of them.
pub(crate) const MAX_FEED_PARTITIONS: u8 = 16;

/// A Redis role's target from its `_url` field or its `_cluster` field, never both.
fn redis_target(
    (url_field, url): (&'static str, Option<String>),
    (cluster_field, seeds): (&'static str, Vec<String>),
) -> Result<Option<RedisTarget>, ConfigError> {
    let invalid = |field, problem: String| ConfigError::Invalid { field, problem };
    let is_redis = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    match (url, seeds.is_empty()) {
        (Some(_), false) => Err(invalid(
            url_field,
            format!(
                "and `{cluster_field}` exclude each other: one server, or a cluster's seed nodes"
            ),
        )),
        (Some(url), true) if !is_redis(&url) => Err(invalid(
            url_field,
            "must be a redis:// or rediss:// URL".to_owned(),
        )),
        (Some(url), true) => Ok(Some(RedisTarget::Server(url))),
        (None, true) => Ok(None),
        (None, false) => {
            for seed in &seeds {
                if !is_redis(seed) {
                    return Err(invalid(
                        cluster_field,
                        format!("`{seed}` must be a redis:// or rediss:// URL"),
                    ));
                }
                // A cluster has database 0 only: a seed naming another would be ignored.
                let database = seed
                    .split_once("://")
                    .and_then(|(_, rest)| rest.split_once('/'))
                    .map_or("", |(_, path)| path.split(['?', '#']).next().unwrap_or(""));
                if !(database.is_empty() || database == "0") {
                    return Err(invalid(
                        cluster_field,
                        format!("`{seed}` names database {database}: a Redis Cluster has database 0 only"),
                    ));
                }
            }
            Ok(Some(RedisTarget::Cluster(seeds)))
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub listen: SocketAddr,
    /// `iss` of every token; defaults to `http://<listen>`.
    pub issuer: String,
    /// `aud` of every access token.
    pub audience: String,
    /// Access-token lifetime.
    pub access_token_ttl_seconds: u32,
    /// Refresh-token lifetime.
    pub refresh_token_ttl_seconds: u32,
    /// Longest a session lives from its login, however often it is refreshed (default 30 days).
    pub session_max_seconds: u32,
    /// How long after a rotation the old refresh token may be exchanged once more (two tabs).
    pub refresh_grace_seconds: u32,
    /// How long after its login a session may delete the account, change the password or manage
    /// the second factor without giving the password again (default 5 minutes; 0: always ask).
    pub reauthentication_max_age_seconds: u32,
    /// Algorithm of newly generated signing keys.
    pub signing_algorithm: SigningAlgorithm,
    /// Rotation schedule and encryption of the signing keys.
    pub signing_keys: KeyRotationSettings,
    /// OTLP/HTTP traces endpoint (`…/v1/traces`); `None`: no traces.
    pub otlp_traces_endpoint: Option<String>,
    /// Embedded database and key-encryption key.
    pub data_dir: PathBuf,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age_seconds: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Storage backend.
    pub storage: Storage,
    /// DynamoDB endpoint override (local dynoxide server); `None` means AWS.
    pub dynamodb_endpoint: Option<String>,
    /// DynamoDB region.
    pub dynamodb_region: String,
    /// Redis for the access-token deny-list, the rate limits and the soft locks
    /// (`maxmemory-policy noeviction`), from `redis_denylist_url` or `redis_denylist_cluster`;
    /// `None` keeps them in-process, for the embedded mode's one instance only.
    pub redis_denylist: Option<RedisTarget>,
    /// Redis for the profile cache (a separate connection), from `redis_cache_url` or
    /// `redis_cache_cluster`; `None` keeps it in-process.
    pub redis_cache: Option<RedisTarget>,
    /// How long a cached profile lives.
    pub profile_cache_ttl_seconds: u32,
    /// Prefix of every table name.
    pub table_prefix: String,
    /// Partition keys the revocation feed's entries are spread over (default 1; at most 16):
    /// DynamoDB takes about 1,000 write units a second per partition, so one key caps appends
    /// near 500 a second. The feed's counter records the most any instance has written with,
    /// and every instance writes and reads with at least that many: a raise takes effect
    /// fleet-wide with the first append through an instance configured higher.
    pub feed_partitions: u8,
    /// argon2id cost.
    pub argon2: Argon2Cost,
    /// Hashes running at once; defaults to the number of cores less one (at least one).
    pub hashing_concurrency: usize,
    /// Hashes that may wait for a thread; past it login and register answer 503 (default 16 per
    /// hashing thread: about a third of a second of waiting at the default cost).
    pub hashing_queue: usize,
    /// Edge endpoints each revocation is pushed to (checked by `EdgePush::new`).
    pub edge_push_urls: Vec<String>,
    /// Per-client budgets of login, register and refresh.
    pub rate_limits: RateLimits,
    /// Where a request's client address comes from.
    pub client_ip: ClientIpSource,
    /// When failed logins soft-lock an email.
    pub soft_lock: SoftLock,
    /// When one-time codes lock an account's TOTP factor (with or without a CAPTCHA service).
    pub second_factor_lock: SoftLock,
    /// How long a client may take to send a request and the origin to answer it.
    pub server_timeouts: ServerTimeouts,
    /// The CAPTCHA service that unlocks it; none: no soft lock.
    pub captcha: Option<Captcha>,
    /// Scopes granted only in sessions that passed a second factor.
    pub mfa_scopes: Vec<String>,
    /// The SMTP server; `None`: no mail, and no email verification.
    pub mail: Option<MailSettings>,
    /// What an account may do before its address is verified (with `mail`).
    pub email_verification: EmailVerification,
    /// The links that set a new password (with `mail`).
    pub password_reset: PasswordReset,
    /// The web apps allowed to call the origin from a browser, and to spend the refresh cookie.
    pub cors: CorsSettings,
}

/// The fields, for the `EDGEAUTH_<FIELD>` overrides.
const FIELDS: [&str; 39] = [
    "reauthentication_max_age_seconds",
    "cors",
    "password_reset",
    "mail",
    "email_verification",
    "otlp_traces_endpoint",
    "signing_keys",
    "edge_push_urls",
    "mfa_scopes",
    "soft_lock",
    "second_factor_lock",
    "server_timeouts",
    "captcha",
    "rate_limits",
    "client_ip",
    "redis_cache_url",
    "redis_cache_cluster",
    "profile_cache_ttl_seconds",
    "redis_denylist_url",
    "redis_denylist_cluster",
    "listen",
    "refresh_grace_seconds",
    "issuer",
    "audience",
    "access_token_ttl_seconds",
    "refresh_token_ttl_seconds",
    "session_max_seconds",
    "signing_algorithm",
    "data_dir",
    "jwks_max_age_seconds",
    "max_body_bytes",
    "storage",
    "dynamodb_endpoint",
    "dynamodb_region",
    "table_prefix",
    "feed_partitions",
    "argon2",
    "hashing_concurrency",
    "hashing_queue",
];

impl Config {
    /// Reads `EDGEAUTH_CONFIG` (if set) and the `EDGEAUTH_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let file = match std::env::var("EDGEAUTH_CONFIG") {
            Ok(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read { path, source })?,
            ),
            Err(_) => None,
        };
        Self::from_sources(file.as_deref(), |name| std::env::var(name).ok())
    }

    /// Builds the configuration from file text and an environment lookup. A variable's value
    /// is read as JSON when it parses (numbers, objects), else as a string.
    pub fn from_sources(
        file: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut merged = match file {
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(ConfigError::Syntax(
                        "the file must hold a JSON object".into(),
                    ))
                }
                Err(e) => return Err(ConfigError::Syntax(e.to_string())),
            },
            None => Map::new(),
        };
        for field in FIELDS {
            if let Some(value) = env(&format!("EDGEAUTH_{}", field.to_ascii_uppercase())) {
                let parsed = match serde_json::from_str::<Value>(&value) {
                    Ok(
                        v
                        @ (Value::Number(_) | Value::Object(_) | Value::Bool(_) | Value::Array(_)),
                    ) => v,
                    _ => Value::String(value),
                };
                merged.insert(field.to_owned(), parsed);
            }
        }
        let raw: RawConfig = serde_json::from_value(Value::Object(merged))
            .map_err(|e| ConfigError::Syntax(e.to_string()))?;
        // The Lambda runtime sets it (see main.rs): many short-lived instances at once.
        let lambda = env("AWS_LAMBDA_RUNTIME_API").is_some();
        Self::validate(raw, lambda)
    }

    fn validate(raw: RawConfig, lambda: bool) -> Result<Self, ConfigError> {
        let invalid = |field, problem: &str| ConfigError::Invalid {
            field,
            problem: problem.to_owned(),
        };
        if !(60..=3600).contains(&raw.access_token_ttl_seconds) {
            return Err(invalid(
                "access_token_ttl_seconds",
                "must be between 60 and 3600",
            ));
        }
        if !(3600..=90 * 24 * 3600).contains(&raw.refresh_token_ttl_seconds) {
            return Err(invalid(
                "refresh_token_ttl_seconds",
                "must be between 1 hour and 90 days",
            ));
        }
        if !(3600..=365 * 24 * 3600).contains(&raw.session_max_seconds) {
            return Err(invalid(
                "session_max_seconds",
                "must be between 1 hour and 365 days",
            ));
        }
        if raw.refresh_grace_seconds > 60 {
            return Err(invalid("refresh_grace_seconds", "must be at most 60"));
        }
        if raw.reauthentication_max_age_seconds > 3600 {
            return Err(invalid(
                "reauthentication_max_age_seconds",
                "must be at most 3600",
            ));
        }
        if raw.audience.is_empty() {
            return Err(invalid("audience", "must not be empty"));
        }
        if !(1024..=1024 * 1024).contains(&raw.max_body_bytes) {
            return Err(invalid("max_body_bytes", "must be between 1 KiB and 1 MiB"));
        }
        let owasp = Argon2Cost::default();
        if raw.argon2.memory_kib < owasp.memory_kib || raw.argon2.iterations < owasp.iterations {
            return Err(invalid(
                "argon2",
                "must be at least OWASP's argon2id minimum (19456 KiB, 2 passes)",
            ));
        }
        if raw.table_prefix.is_empty()
            || !raw
                .table_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "table_prefix",
                "must be letters, digits, `-`, `_` or `.`",
            ));
        }
        if !(1..=MAX_FEED_PARTITIONS).contains(&raw.feed_partitions) {
            return Err(invalid(
                "feed_partitions",
                &format!("must be 1 to {MAX_FEED_PARTITIONS}"),
            ));
        }
        let redis_denylist = redis_target(
            ("redis_denylist_url", raw.redis_denylist_url),
            ("redis_denylist_cluster", raw.redis_denylist_cluster),
        )?;
        let redis_cache = redis_target(
            ("redis_cache_url", raw.redis_cache_url),
            ("redis_cache_cluster", raw.redis_cache_cluster),
        )?;
        if !(1..=86_400).contains(&raw.profile_cache_ttl_seconds) {
            return Err(invalid(
                "profile_cache_ttl_seconds",
                "must be between 1 s and 1 day",
            ));
        }
        raw.rate_limits
            .validate()
            .map_err(|problem| invalid("rate_limits", &problem))?;
        raw.soft_lock
            .validate()
            .map_err(|problem| invalid("soft_lock", &problem))?;
        raw.second_factor_lock
            .validate()
            .map_err(|problem| invalid("second_factor_lock", &problem))?;
        raw.server_timeouts
            .validate()
            .map_err(|problem| invalid("server_timeouts", &problem))?;
        if let Some(captcha) = &raw.captcha {
            captcha
                .validate()
                .map_err(|problem| invalid("captcha", &problem))?;
        }
        if raw.client_ip == (ClientIpSource::XForwardedFor { trusted_proxies: 0 }) {
            return Err(invalid(
                "client_ip",
                "x_forwarded_for needs at least one trusted proxy (the one that appends the client)",
            ));
        }
        if raw
            .otlp_traces_endpoint
            .as_ref()
            .is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(invalid(
                "otlp_traces_endpoint",
                "must be an http(s) URL, e.g. http://localhost:4318/v1/traces",
            ));
        }
        raw.cors
            .validate()
            .map_err(|problem| invalid("cors", &problem))?;
        if let Some(mail) = &raw.mail {
            mail.validate()
                .map_err(|problem| invalid("mail", &problem))?;
        }
        if raw.mail.is_none() && raw.email_verification != EmailVerification::default() {
            return Err(invalid(
                "email_verification",
                "needs `mail`: without it no address can be verified",
            ));
        }
        if raw.mail.is_none() && raw.password_reset != PasswordReset::default() {
            return Err(invalid(
                "password_reset",
                "needs `mail`: the links go by mail",
            ));
        }
        if !(300..=24 * 3600).contains(&raw.password_reset.link_ttl_seconds) {
            return Err(invalid(
                "password_reset",
                "link_ttl_seconds must be between 5 minutes and 1 day",
            ));
        }
        if !(600..=7 * 24 * 3600).contains(&raw.email_verification.link_ttl_seconds) {
            return Err(invalid(
                "email_verification",
                "link_ttl_seconds must be between 10 minutes and 7 days",
            ));
        }
        raw.signing_keys
            .validate(raw.jwks_max_age_seconds, raw.access_token_ttl_seconds)
            .map_err(|problem| invalid("signing_keys", &problem))?;
        if raw.storage == Storage::Dynamodb && raw.signing_keys.encryption.is_none() {
            return Err(invalid(
                "signing_keys",
                "needs `encryption` with storage `dynamodb`: every instance must hold the same key-encryption key",
            ));
        }
        // Several instances must share one deny-list: each one's in-process list would hold only
        // the logouts it served, and the others would honour every other revoked token.
        if (raw.storage == Storage::Dynamodb || lambda) && redis_denylist.is_none() {
            return Err(invalid(
                "redis_denylist_url",
                "(or `redis_denylist_cluster`) is required with storage `dynamodb` and on Lambda: every instance must share one deny-list",
            ));
        }
        if raw.storage == Storage::Embedded && raw.dynamodb_endpoint.is_some() {
            return Err(invalid(
                "dynamodb_endpoint",
                "is only for storage `dynamodb`",
            ));
        }
        let issuer = raw
            .issuer
            .unwrap_or_else(|| format!("http://{}", raw.listen));
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(invalid("issuer", "must be an http(s) URL"));
        }
        // Hashing leaves one core to the request threads: under a login flood at 10x the hashing
        // capacity, two hashing threads on two cores took refresh p99 to 69 ms even under
        // SCHED_IDLE, one thread kept it at 16 ms, and the flood logged in only 16% fewer
        // (`scripts/bench origin`, same day, same machine).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hashing_concurrency = raw
            .hashing_concurrency
            .unwrap_or(cores.saturating_sub(1))
            .max(1);
        Ok(Self {
            listen: raw.listen,
            issuer,
            audience: raw.audience,
            access_token_ttl_seconds: raw.access_token_ttl_seconds,
            refresh_token_ttl_seconds: raw.refresh_token_ttl_seconds,
            session_max_seconds: raw.session_max_seconds,
            refresh_grace_seconds: raw.refresh_grace_seconds,
            reauthentication_max_age_seconds: raw.reauthentication_max_age_seconds,
            signing_algorithm: raw.signing_algorithm,
            signing_keys: raw.signing_keys,
            otlp_traces_endpoint: raw.otlp_traces_endpoint,
            data_dir: raw.data_dir,
            jwks_max_age_seconds: raw.jwks_max_age_seconds,
            max_body_bytes: raw.max_body_bytes,
            storage: raw.storage,
            dynamodb_endpoint: raw.dynamodb_endpoint,
            dynamodb_region: raw.dynamodb_region,
            redis_denylist,
            redis_cache,
            profile_cache_ttl_seconds: raw.profile_cache_ttl_seconds,
            table_prefix: raw.table_prefix,
            feed_partitions: raw.feed_partitions,
            argon2: raw.argon2,
            hashing_concurrency,
            hashing_queue: raw.hashing_queue.unwrap_or(16 * hashing_concurrency).max(1),
            edge_push_urls: raw.edge_push_urls,
            rate_limits: raw.rate_limits,
            client_ip: raw.client_ip,
            soft_lock: raw.soft_lock,
            second_factor_lock: raw.second_factor_lock,
            server_timeouts: raw.server_timeouts,
            captcha: raw.captcha,
            mfa_scopes: raw.mfa_scopes,
            mail: raw.mail,
            email_verification: raw.email_verification,
            password_reset: raw.password_reset,
            cors: raw.cors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Config::from_sources(file, |k| env.get(k).cloned())
    }

    #[test]
    fn nothing_configured_is_the_embedded_default() {
        let c = build(None, &[]).expect("defaults");
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.issuer, "http://127.0.0.1:8080");
        assert_eq!(c.audience, "api");
        assert_eq!(c.access_token_ttl_seconds, 900);
        assert_eq!(c.refresh_token_ttl_seconds, 30 * 24 * 3600);
        assert_eq!(c.session_max_seconds, 30 * 24 * 3600);
        assert_eq!(c.signing_algorithm, SigningAlgorithm::EdDsa);
        assert_eq!(c.storage, Storage::Embedded);
        assert_eq!(c.argon2, Argon2Cost::default());
        assert_eq!(c.table_prefix, "edgeauth-");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = build(
            Some(r#"{"audience":"from-file","access_token_ttl_seconds":600}"#),
            &[
                ("EDGEAUTH_AUDIENCE", "from-env"),
                ("EDGEAUTH_SIGNING_ALGORITHM", "ES256"),
                ("EDGEAUTH_LISTEN", "0.0.0.0:9000"),
            ],
        )
        .expect("valid");
        assert_eq!(c.audience, "from-env");
        assert_eq!(c.access_token_ttl_seconds, 600);
        assert_eq!(c.signing_algorithm, SigningAlgorithm::Es256);
        assert_eq!(c.listen.port(), 9000);
    }

    #[test]
    fn bad_values_name_their_field() {
        let field = |r: Result<Config, ConfigError>| match r {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        assert_eq!(
            field(build(None, &[("EDGEAUTH_ACCESS_TOKEN_TTL_SECONDS", "5")])),
            "access_token_ttl_seconds"
        );
        assert_eq!(
            field(build(
                Some(r#"{"argon2":{"memory_kib":1024,"iterations":1,"parallelism":1}}"#),
                &[]
            )),
            "argon2"
        );
        assert_eq!(
            field(build(None, &[("EDGEAUTH_TABLE_PREFIX", "bad prefix")])),
            "table_prefix"
        );
        for partitions in ["0", "17"] {
            assert_eq!(
                field(build(None, &[("EDGEAUTH_FEED_PARTITIONS", partitions)])),
                "feed_partitions"
            );
        }
        assert_eq!(
            field(build(
                None,
                &[(
                    "EDGEAUTH_RATE_LIMITS",
                    r#"{"login":{"count":0,"per_seconds":60}}"#
                )]
            )),
            "rate_limits"
        );
        assert_eq!(
            field(build(
                None,
                &[(
                    "EDGEAUTH_CLIENT_IP",
                    r#"{"source":"x_forwarded_for","trusted_proxies":0}"#
                )]
            )),
            "client_ip"
        );
        assert_eq!(
            field(build(
                None,
                &[("EDGEAUTH_DYNAMODB_ENDPOINT", "http://127.0.0.1:8000")]
            )),
            "dynamodb_endpoint"
        );
        // Shared storage, or Lambda's many instances, need one shared deny-list.
        let shared = [
            ("EDGEAUTH_STORAGE", "dynamodb"),
            (
                "EDGEAUTH_SIGNING_KEYS",
                r#"{"encryption":{"backend":"local","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}}"#,
            ),
        ];
        assert_eq!(field(build(None, &shared)), "redis_denylist_url");
        assert_eq!(
            field(build(None, &[("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")])),
            "redis_denylist_url"
        );
        let with_redis = [
            shared.as_slice(),
            &[("EDGEAUTH_REDIS_DENYLIST_URL", "redis://r:6379")],
        ]
        .concat();
        assert!(build(None, &with_redis).is_ok());
        // A cluster is given by its seed nodes, and is a shared deny-list too.
        let seeds = r#"["redis://a:7000","rediss://b:7001/0"]"#;
        let with_cluster = [
            shared.as_slice(),
            &[("EDGEAUTH_REDIS_DENYLIST_CLUSTER", seeds)],
        ]
        .concat();
        let config = build(None, &with_cluster).expect("a cluster");
        assert_eq!(
            config.redis_denylist,
            Some(RedisTarget::Cluster(vec![
                "redis://a:7000".into(),
                "rediss://b:7001/0".into()
            ]))
        );
        assert_eq!(config.redis_cache, None);
        let both = [
            ("EDGEAUTH_REDIS_CACHE_URL", "redis://r:6379"),
            ("EDGEAUTH_REDIS_CACHE_CLUSTER", seeds),
        ];
        assert_eq!(field(build(None, &both)), "redis_cache_url");
        // A cluster has database 0 only: a seed naming another is a mistake, not ignored.
        for bad in [r#"["redis://a:7000/1"]"#, r#"["http://a:7000"]"#] {
            assert_eq!(
                field(build(None, &[("EDGEAUTH_REDIS_CACHE_CLUSTER", bad)])),
                "redis_cache_cluster",
                "{bad}"
            );
        }
        // What only mail can do is refused without it; a plain-text server must be local.
        assert_eq!(
            field(build(
                None,
                &[(
                    "EDGEAUTH_EMAIL_VERIFICATION",
                    r#"{"login_unverified":false}"#
                )]
            )),
            "email_verification"
        );
        assert_eq!(
            field(build(
                None,
                &[("EDGEAUTH_PASSWORD_RESET", r#"{"link_ttl_seconds":600}"#)]
            )),
            "password_reset"
        );
        let mail = r#"{"smtp_host":"smtp.example.com","tls":"none","from":"a@example.com","link_base_url":"https://app.example.com"}"#;
        assert_eq!(field(build(None, &[("EDGEAUTH_MAIL", mail)])), "mail");
        let local = mail.replace("smtp.example.com", "127.0.0.1");
        let c = build(
            None,
            &[
                ("EDGEAUTH_MAIL", local.as_str()),
                (
                    "EDGEAUTH_EMAIL_VERIFICATION",
                    r#"{"login_unverified":false}"#,
                ),
            ],
        )
        .expect("mail on loopback");
        assert!(!c.email_verification.login_unverified);
        assert_eq!(c.password_reset.link_ttl_seconds, 1800);
        assert!(
            matches!(build(Some(r#"{"audiense":"x"}"#), &[]), Err(ConfigError::Syntax(m)) if m.contains("audiense"))
        );
        assert!(matches!(
            build(None, &[("EDGEAUTH_SIGNING_ALGORITHM", "HS256")]),
            Err(ConfigError::Syntax(_))
        ));
    }
}
