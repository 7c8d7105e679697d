//! Credential stuffing against one account: after `soft_lock.failures` failed logins for an
//! email within `soft_lock.window_seconds`, further logins for it need a solved CAPTCHA
//! (Cloudflare Turnstile's siteverify, or any service answering the same way).
//!
//! A soft lock, not a hard one: the owner can always log in by solving the CAPTCHA, so an
//! attacker cannot lock a user out. Failures are counted per email whether or not an account
//! has it, so the answers never tell an attacker which emails are registered. Counts live in
//! the deny-list's Redis (shared by every instance), keyed by a keyed hash of the email (no
//! address in Redis, and none recoverable from a list of addresses), or in-process in the embedded mode. Without a `captcha` configuration there is
//! nothing to unlock with, so there is no soft lock either; the per-client rate limits remain.
//!
//! Attempts are counted *before* the password is checked, so a concurrent burst of guesses cannot
//! all pass a count read before any of them is recorded; a successful login clears the count.
//! A counter that cannot answer refuses the login (503): brute-force protection fails closed.
//!
//! The second factor has its own guard ([`SecondFactorGuard`]), CAPTCHA or not: a six-digit
//! code falls to a million guesses, and only the per-client rate limit stood in the way (an IPv6
//! client gets a budget per /64, so an attacker with a /48 has 65,536 of them).

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::{body::Bytes, header, Method, Request, Uri};
use serde::Deserialize;

use crate::{
    clock,
    error::ApiError,
    outbound::{self, OutboundClient},
    rate_limit::sweep_when_large,
    store::{redis_connection::RedisConnection, StoreError},
};

/// When an email counts as under attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftLock {
    /// Failed logins that trigger the lock (default 5).
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Within this many seconds of the first (default 900).
    #[serde(default = "default_window")]
    pub window_seconds: u32,
}

fn default_failures() -> u32 {
    5
}
fn default_window() -> u32 {
    900
}

impl Default for SoftLock {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            window_seconds: default_window(),
        }
    }
}

impl SoftLock {
    /// Between 1 and 100 failures, within a minute to a day.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.failures) {
            return Err("failures must be between 1 and 100".into());
        }
        if !(60..=86_400).contains(&self.window_seconds) {
            return Err("window_seconds must be between 60 and 86400".into());
        }
        Ok(())
    }
}

/// The CAPTCHA service: Turnstile's siteverify by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Captcha {
    /// Where tokens are verified.
    #[serde(default = "default_verify_url")]
    pub verify_url: String,
    /// The site's secret key.
    pub secret: String,
}

fn default_verify_url() -> String {
    "https://challenges.cloudflare.com/turnstile/v0/siteverify".into()
}

impl Captcha {
    /// An http(s) URL and a secret.
    pub fn validate(&self) -> Result<(), String> {
        let uri: Option<Uri> = self.verify_url.parse().ok();
        if !uri.is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https"))) {
            return Err("verify_url must be an http(s) URL".into());
        }
        if self.secret.is_empty() {
            return Err("secret must not be empty".into());
        }
        Ok(())
    }
}

/// Failed logins per email.
#[async_trait::async_trait]
pub trait FailureCounter: Send + Sync {
    /// Failures within the current window.
    async fn failures(&self, account: &str) -> Result<u32, StoreError>;
    /// Counts one more; the window starts with the first.
    async fn record(&self, account: &str, window_seconds: u32) -> Result<u32, StoreError>;
    /// A successful login clears the count.
    async fn clear(&self, account: &str) -> Result<(), StoreError>;
}

/// Email hash → (failures, end of the window in seconds), and the size of the next sweep.
type Counts = (HashMap<String, (u32, i64)>, usize);

/// One instance's counter (the embedded mode).
#[derive(Debug, Default)]
pub struct MemoryFailureCounter {
    counts: Mutex<Counts>,
}

impl MemoryFailureCounter {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Counts>, StoreError> {
        crate::store::lock(&self.counts, "failure counter")
    }
}

#[async_trait::async_trait]
impl FailureCounter for MemoryFailureCounter {
    async fn failures(&self, account: &str) -> Result<u32, StoreError> {
        let now = clock::now();
        Ok(self
            .lock()?
            .0
            .get(account)
            .filter(|(_, until)| now < *until)
            .map_or(0, |(count, _)| *count))
    }

    async fn record(&self, account: &str, window_seconds: u32) -> Result<u32, StoreError> {
        let now = clock::now();
        let mut guard = self.lock()?;
        let (counts, sweep_at) = &mut *guard;
        sweep_when_large(counts, sweep_at, |_, (_, until)| now < *until);
        let window_end = now + i64::from(window_seconds);
        let entry = counts.entry(account.to_owned()).or_insert((0, window_end));
        if entry.1 <= now {
            // The last window is over: this failure starts a new one.
            *entry = (0, window_end);
        }
        entry.0 += 1;
        Ok(entry.0)
    }

    async fn clear(&self, account: &str) -> Result<(), StoreError> {
        self.lock()?.0.remove(account);
        Ok(())
    }
}

/// The counter in Redis: `INCR`, with the window set by the first failure (`EXPIRE NX`).
#[derive(Debug, Clone)]
pub struct RedisFailureCounter {
    redis: RedisConnection,
    key_prefix: String,
}

impl RedisFailureCounter {
    /// Keys `edgeauth:fail:<namespace><pseudonym of the email>`; the namespace is the table
    /// prefix.
    pub fn new(redis: RedisConnection, namespace: &str) -> Self {
        Self {
            redis,
            key_prefix: format!("edgeauth:fail:{namespace}"),
        }
    }

    fn key(&self, account: &str) -> String {
        format!("{}{account}", self.key_prefix)
    }
}

#[async_trait::async_trait]
impl FailureCounter for RedisFailureCounter {
    async fn failures(&self, account: &str) -> Result<u32, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(account));
        let count: Option<u32> = self.redis.run(&cmd).await?;
        Ok(count.unwrap_or(0))
    }

    async fn record(&self, account: &str, window_seconds: u32) -> Result<u32, StoreError> {
        let key = self.key(account);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(window_seconds)
            .arg("NX")
            .ignore();
        let (count,): (u32,) = self.redis.run_pipeline(&pipe).await?;
        Ok(count)
    }

    async fn clear(&self, account: &str) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(account));
        self.redis.run::<()>(&cmd).await
    }
}

/// Pseudonyms of emails, for the soft lock's counters and the audit subject of an email no
/// account has: HMAC-SHA256 under a key derived from the key-encryption key. A plain hash could
/// be reversed by hashing a list of addresses; without the key, these cannot.
#[derive(Clone)]
pub struct EmailPseudonyms(ring::hmac::Key);

impl std::fmt::Debug for EmailPseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmailPseudonyms(<key>)")
    }
}

impl EmailPseudonyms {
    /// Under `kek`, which every instance shares, so they agree on each pseudonym.
    pub fn new(kek: &crate::key_encryption::LocalKek) -> Self {
        Self(kek.hmac_key(b"email pseudonym"))
    }

    /// The pseudonym of a normalised email, as hex.
    pub fn of(&self, email: &str) -> String {
        ring::hmac::sign(&self.0, email.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// How long siteverify may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks CAPTCHA tokens with the configured service.
#[derive(Debug, Clone)]
pub struct CaptchaVerifier {
    uri: Uri,
    secret: String,
    client: OutboundClient,
}

impl CaptchaVerifier {
    /// A verifier for `captcha` (already validated).
    pub fn new(captcha: &Captcha) -> Result<Self, outbound::OutboundError> {
        Ok(Self {
            uri: captcha
                .verify_url
                .parse()
                .map_err(|_| outbound::OutboundError::InvalidUrl(captcha.verify_url.clone()))?,
            secret: captcha.secret.clone(),
            client: outbound::client()?,
        })
    }

    /// Whether `token` is a solved challenge, for the client at `remote_ip` if known.
    /// Turnstile's siteverify takes JSON and answers `{"success": bool, ...}`.
    pub async fn verify(&self, token: &str, remote_ip: Option<IpAddr>) -> Result<bool, ApiError> {
        #[derive(Deserialize)]
        struct Answer {
            success: bool,
        }
        let mut body = serde_json::json!({"secret": self.secret, "response": token});
        if let Some(ip) = remote_ip {
            body["remoteip"] = serde_json::json!(ip.to_string());
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let unavailable = |why: String| ApiError::Unavailable(format!("CAPTCHA service: {why}"));
        let response = tokio::time::timeout(VERIFY_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unavailable("timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("answered {}", response.status())));
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .to_bytes();
        let answer: Answer =
            serde_json::from_slice(&bytes).map_err(|e| unavailable(e.to_string()))?;
        Ok(answer.success)
    }
}

/// Counts one attempt under `key` before it is checked, and says how far past
/// `settings.failures` it is: 0 within the limit, 1 for the first attempt past it. A counter
/// that cannot answer refuses the attempt (503): brute-force protection fails closed.
async fn count_attempt(
    counter: &dyn FailureCounter,
    key: &str,
    settings: SoftLock,
    what: &str,
) -> Result<u32, ApiError> {
    let attempts = counter
        .record(key, settings.window_seconds)
        .await
        .map_err(|error| {
            tracing::warn!(event = "failure_counter_unavailable", %error);
            ApiError::Unavailable(format!("{what} failure counter: {error}"))
        })?;
    Ok(attempts.saturating_sub(settings.failures))
}

/// The login's soft lock: the counter, the CAPTCHA service, the thresholds.
#[derive(Clone)]
pub struct LoginGuard {
    counter: std::sync::Arc<dyn FailureCounter>,
    captcha: Option<CaptchaVerifier>,
    settings: SoftLock,
}

impl std::fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard")
            .field("captcha", &self.captcha)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl LoginGuard {
    /// A guard; without a CAPTCHA service it never locks.
    pub fn new(
        counter: std::sync::Arc<dyn FailureCounter>,
        captcha: Option<CaptchaVerifier>,
        settings: SoftLock,
    ) -> Self {
        Self {
            counter,
            captcha,
            settings,
        }
    }

    /// Before the password is checked: counts this attempt, and an email past its failures
    /// needs a solved CAPTCHA. `audit` hears `soft_locked` (the first attempt past the limit),
    /// `captcha_solved` and `captcha_failed`.
    pub async fn admit(
        &self,
        account: &str,
        captcha_token: Option<&str>,
        remote_ip: Option<IpAddr>,
        audit: &(dyn Fn(&'static str) + Sync),
    ) -> Result<(), ApiError> {
        let Some(captcha) = &self.captcha else {
            return Ok(());
        };
        let past = count_attempt(&*self.counter, account, self.settings, "login").await?;
        if past == 0 {
            return Ok(());
        }
        if past == 1 {
            audit("soft_locked");
        }
        let Some(token) = captcha_token.filter(|t| !t.is_empty() && t.len() <= 2048) else {
            tracing::info!(event = "soft_lock", "CAPTCHA required");
            return Err(ApiError::CaptchaRequired);
        };
        if captcha.verify(token, remote_ip).await? {
            audit("captcha_solved");
            Ok(())
        } else {
            audit("captcha_failed");
            Err(ApiError::CaptchaRequired)
        }
    }

    /// After a successful login.
    pub async fn succeeded(&self, account: &str) {
        if self.captcha.is_none() {
            return;
        }
        if let Err(error) = self.counter.clear(account).await {
            tracing::warn!(event = "failure_counter_unavailable", %error);
        }
    }
}

/// Second-factor guessing, per account: after `failures` codes within `window_seconds` that did
/// not end in a login, the TOTP factor is refused (`mfa_locked`, 429) until the window ends. The
/// password login is not locked: recovery codes (ten of 50 bits each, beyond guessing) still let
/// the owner in.
#[derive(Clone)]
pub struct SecondFactorGuard {
    counter: std::sync::Arc<dyn FailureCounter>,
    settings: SoftLock,
}

impl std::fmt::Debug for SecondFactorGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecondFactorGuard")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SecondFactorGuard {
    /// A guard counting in `counter` (keys of its own beside the login's).
    pub fn new(counter: std::sync::Arc<dyn FailureCounter>, settings: SoftLock) -> Self {
        Self { counter, settings }
    }

    fn key(user_id: &str) -> String {
        format!("mfa:{user_id}")
    }

    /// Before a code is checked: counts it, and refuses past the limit. `audit` hears
    /// `mfa_locked` on the first code refused. A counter that cannot answer refuses (503).
    pub async fn attempt(
        &self,
        user_id: &str,
        audit: &(dyn Fn(&'static str) + Sync),
    ) -> Result<(), ApiError> {
        let past = count_attempt(
            &*self.counter,
            &Self::key(user_id),
            self.settings,
            "second-factor",
        )
        .await?;
        if past == 0 {
            return Ok(());
        }
        if past == 1 {
            tracing::warn!(event = "mfa_locked", %user_id);
            audit("mfa_locked");
        }
        Err(ApiError::MfaLocked {
            retry_after_seconds: u64::from(self.settings.window_seconds),
        })
    }

    /// After a login the factor passed: the count starts again.
    pub async fn passed(&self, user_id: &str) {
        if let Err(error) = self.counter.clear(&Self::key(user_id)).await {
            tracing::warn!(event = "failure_counter_unavailable", %error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_counter_counts_within_the_window_and_clears() {
        let counter = MemoryFailureCounter::default();
        assert_eq!(counter.failures("a").await.ok(), Some(0));
        assert_eq!(counter.record("a", 60).await.ok(), Some(1));
        assert_eq!(counter.record("a", 60).await.ok(), Some(2));
        assert_eq!(counter.failures("b").await.ok(), Some(0));
        counter.clear("a").await.expect("cleared");
        assert_eq!(counter.failures("a").await.ok(), Some(0));
        // A window that has ended counts nothing.
        counter
            .lock()
            .expect("lock")
            .0
            .insert("c".into(), (9, clock::now() - 1));
        assert_eq!(counter.failures("c").await.ok(), Some(0));
        assert_eq!(counter.record("c", 60).await.ok(), Some(1));
    }

    #[test]
    fn settings_are_bounded_and_keys_hide_the_email() {
        assert!(SoftLock::default().validate().is_ok());
        assert!(SoftLock {
            failures: 0,
            window_seconds: 900
        }
        .validate()
        .is_err());
        let captcha = Captcha {
            verify_url: default_verify_url(),
            secret: "s".into(),
        };
        assert!(captcha.validate().is_ok());
        assert!(Captcha {
            verify_url: "ftp://x".into(),
            ..captcha.clone()
        }
        .validate()
        .is_err());
        let kek = crate::key_encryption::LocalKek::generate().expect("kek");
        let pseudonyms = EmailPseudonyms::new(&kek);
        let key = pseudonyms.of("alice@example.com");
        assert_eq!(key.len(), 64);
        assert!(!key.contains("alice"));
        // Not the plain hash anyone could compute from a list of addresses...
        use sha2::{Digest as _, Sha256};
        let plain: String = Sha256::digest(b"alice@example.com")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(key, plain);
        // ...the same for every instance holding the KEK, another under another KEK.
        assert_eq!(EmailPseudonyms::new(&kek).of("alice@example.com"), key);
        let other = crate::key_encryption::LocalKek::generate().expect("kek");
        assert_ne!(EmailPseudonyms::new(&other).of("alice@example.com"), key);
    }
}
