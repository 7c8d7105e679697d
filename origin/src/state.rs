//! What every handler may use. It imports no handler, so the API's modules and the services
//! they call each depend on it without a circle.

use std::sync::Arc;

use crate::{
    audit::Audit,
    auth::SelfVerifier,
    config::Config,
    deny_list::DenyListKeeper,
    edge_push::EdgePush,
    feed_appender::FeedAppender,
    feed_tail::FeedTail,
    key_rotation::SigningKeys,
    mail::Mailer,
    password::PasswordHasher,
    rate_limit::RateLimiter,
    soft_lock::{EmailPseudonyms, LoginGuard, SecondFactorGuard},
    store::{profile_cache::ProfileCache, RefreshStore, RevocationFeed, UserStore},
};

/// What every handler may use. Stores are trait objects so one router serves every backend.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // the store trait objects have no Debug
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Signing keys, reread from the table in the background.
    pub keys: SigningKeys,
    /// Users.
    pub users: Arc<dyn UserStore>,
    /// Refresh tokens.
    pub refresh: Arc<dyn RefreshStore>,
    /// Password hashing on a bounded pool.
    pub passwords: PasswordHasher,
    /// Revoked access tokens, sessions and users, kept complete from the feed.
    pub deny_list: DenyListKeeper,
    /// The signed revocation feed.
    pub feed: Arc<dyn RevocationFeed>,
    /// Its live entries, read by `GET /v1/revocations`.
    pub feed_tail: FeedTail,
    /// This instance's appends to it, committed together.
    pub feed_appender: FeedAppender,
    /// Profiles, cache-aside in front of DynamoDB.
    pub profile_cache: Arc<dyn ProfileCache>,
    /// Verifies callers' access tokens with the edges' core.
    pub verifier: Arc<SelfVerifier>,
    /// Sends each revocation to the edges at once.
    pub edge_push: EdgePush,
    /// Per-client budgets of the credential endpoints.
    pub rate_limiter: Arc<dyn RateLimiter>,
    /// Soft lock of emails under attack.
    pub login_guard: LoginGuard,
    /// Second-factor guessing per account.
    pub second_factor_guard: SecondFactorGuard,
    /// Keyed pseudonyms of emails (soft-lock counters, audit subjects of unknown emails).
    pub pseudonyms: EmailPseudonyms,
    /// Security events.
    pub audit: Audit,
    /// Outgoing mail, from a background queue.
    pub mailer: Mailer,
}
