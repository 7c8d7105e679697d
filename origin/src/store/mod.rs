//! Storage traits in domain types. Backends translate to their own wire types (`dynamo.rs` speaks
//! `AttributeValue`); nothing above this module sees them.

use std::fmt;

pub mod deny;
pub mod dynamo;
pub mod profile_cache;
pub mod redis_connection;

/// A user's id: a random UUID, the `sub` of their tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub uuid::Uuid);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Trimmed and case-folded by the caller.
    pub email: String,
    /// argon2id (or imported bcrypt) hash.
    pub password_hash: String,
    /// Scopes granted to the account.
    pub scopes: Vec<String>,
    /// Profile name.
    pub display_name: Option<String>,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// The TOTP second factor, once enrolment has started.
    pub totp: Option<Totp>,
    /// The last revoke-all: sessions (refresh tokens) issued at or before it are refused.
    pub sessions_revoked_at: Option<i64>,
    /// Whether the owner of the address opened a verification link sent to it.
    pub email_verified: bool,
}

/// What a link mailed to a user is for. Each purpose has at most one live link per account: a
/// new one replaces the last, which stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPurpose {
    /// Verifies the account's address.
    VerifyEmail,
    /// Sets a new password.
    ResetPassword,
}

/// A mailed link's token as stored: its SHA-256 only, and when it stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkToken {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// Seconds since the epoch.
    pub expires_at: i64,
}

/// A user's TOTP second factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totp {
    /// The shared secret.
    pub secret: Vec<u8>,
    /// Whether a first code confirmed it (only then does login require it).
    pub confirmed: bool,
    /// The last time step used: a code of this step or an earlier one is a replay.
    pub last_step: u64,
    /// SHA-256 (hex) of each unused recovery code.
    pub recovery_codes: Vec<String>,
}

/// One refresh token, stored by the SHA-256 of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// SHA-256 of the refresh token.
    pub token_hash: [u8; 32],
    /// Owner.
    pub user_id: UserId,
    /// The session: every rotation of one login shares it.
    pub family_id: uuid::Uuid,
    /// Seconds since the epoch; also the DynamoDB TTL attribute.
    pub expires_at: i64,
    /// When it was rotated away, if it was.
    pub consumed_at: Option<i64>,
    /// The token that replaced it.
    pub replaced_by: Option<[u8; 32]>,
    /// Whether the session's login passed a second factor (`amr` `otp`).
    pub mfa: bool,
    /// When this token was issued (seconds); 0 for tokens stored before it was recorded.
    pub issued_at: i64,
    /// When the session's login happened (seconds), carried through every rotation: the start
    /// of its absolute lifetime. 0 for tokens stored before it was recorded.
    pub session_started_at: i64,
}

/// Storage failures, in terms the HTTP layer can answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The email has an account already.
    #[error("email already registered")]
    EmailTaken,
    /// No such record.
    #[error("not found")]
    NotFound,
    /// A condition failed: the record changed concurrently.
    #[error("conflict: the record changed concurrently")]
    Conflict,
    /// Network, throttling or a 5xx: answered with 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Accounts.
#[async_trait::async_trait]
pub trait UserStore: Send + Sync {
    /// Creates an account, with its first verification link when given; the email is unique
    /// atomically.
    async fn create_user(
        &self,
        user: &User,
        verification: Option<&LinkToken>,
    ) -> Result<(), StoreError>;
    /// Makes `link` the account's only live link for `purpose`; `NotFound` without an account.
    async fn set_link(
        &self,
        id: UserId,
        purpose: LinkPurpose,
        link: &LinkToken,
    ) -> Result<(), StoreError>;
    /// Marks the address verified if `hash` is the account's live verification link at `now`,
    /// and ends the link, in one conditional write: `true` once; `false` for a wrong, expired,
    /// used or replaced link, or no account.
    async fn verify_email(&self, id: UserId, hash: &[u8; 32], now: i64)
        -> Result<bool, StoreError>;
    /// If `hash` is the account's live reset link at `now`: replaces the password hash and
    /// records a revoke-all at `now` (as [`Self::revoke_sessions`]) in one conditional write, and
    /// returns the epoch stored. The link stays live until [`Self::end_link`], so that a reset
    /// whose revocation could not be published can be retried with it. `None` for a wrong,
    /// expired or replaced link, or no account.
    async fn reset_password(
        &self,
        id: UserId,
        hash: &[u8; 32],
        now: i64,
        password_hash: &str,
    ) -> Result<Option<i64>, StoreError>;
    /// Ends the account's link of `purpose` if it is still the one with `hash`.
    async fn end_link(
        &self,
        id: UserId,
        purpose: LinkPurpose,
        hash: &[u8; 32],
    ) -> Result<(), StoreError>;
    /// Finds an account by email.
    async fn find_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// Reads an account.
    async fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Replaces the password hash.
    async fn update_password_hash(&self, id: UserId, hash: &str) -> Result<(), StoreError>;
    /// Sets or clears the profile name.
    async fn update_display_name(&self, id: UserId, name: Option<&str>) -> Result<(), StoreError>;
    /// A cheap readiness check.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Records a revoke-all at `at`: every session issued at or before it ends, and every
    /// session whose last rotation committed before this returns (even in a later second).
    /// Returns the epoch stored: `at`, or the clock if that is later.
    async fn revoke_sessions(&self, id: UserId, at: i64) -> Result<i64, StoreError>;
    /// Replaces the account's scopes (an operator's action).
    async fn set_scopes(&self, id: UserId, scopes: &[String]) -> Result<(), StoreError>;
    /// Stores a new, unconfirmed TOTP secret; `Conflict` if a confirmed one exists.
    async fn start_totp(&self, id: UserId, secret: &[u8]) -> Result<(), StoreError>;
    /// Confirms the pending secret with the step of its first code and stores the recovery-code
    /// hashes; `false` if there is no pending secret.
    async fn confirm_totp(
        &self,
        id: UserId,
        step: u64,
        recovery_codes: &[String],
    ) -> Result<bool, StoreError>;
    /// Records `step` as used if it is later than the last one; `false` for a replay.
    async fn use_totp_step(&self, id: UserId, step: u64) -> Result<bool, StoreError>;
    /// Removes a recovery code's hash if it is there; `false` if it was not (used or wrong).
    async fn use_recovery_code(&self, id: UserId, hash: &str) -> Result<bool, StoreError>;
    /// Replaces every recovery code of a confirmed factor; `false` if there is none.
    async fn replace_recovery_codes(
        &self,
        id: UserId,
        recovery_codes: &[String],
    ) -> Result<bool, StoreError>;
    /// Removes the TOTP factor, confirmed or pending, with its recovery codes. Removing none is
    /// no error.
    async fn remove_totp(&self, id: UserId) -> Result<(), StoreError>;
    /// Deletes the account and its email's guard in one transaction, so the address can register
    /// again; with them go everything the account's item held (password hash, TOTP secret,
    /// recovery codes, live links). Deleting an account that is gone already is no error.
    async fn delete_user(&self, user: &User) -> Result<(), StoreError>;
}

/// Refresh tokens.
#[async_trait::async_trait]
pub trait RefreshStore: Send + Sync {
    /// Stores a new token.
    async fn insert(&self, record: &RefreshRecord) -> Result<(), StoreError>;
    /// Reads a token that has not expired at `now` (TTL deletion runs late).
    async fn get(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<RefreshRecord>, StoreError>;
    /// Consumes `old` and stores `new` (its successor) in one transaction, which commits only
    /// if the session has not ended: neither [`Self::revoke_family`] nor a revoke-all
    /// ([`UserStore::revoke_sessions`]) at or after `old.issued_at` came first. `Spent` if `old`
    /// was consumed, expired at `now` or gone. A transaction that lost a race with another on
    /// the same items is tried again; if it keeps losing, `Unavailable`.
    async fn rotate(
        &self,
        old: &RefreshRecord,
        new: &RefreshRecord,
        now: i64,
    ) -> Result<Exchange, StoreError>;
    /// The two-tab case: `old` was consumed after `consumed_after` and has not used its grace
    /// yet. Marks the grace used, under the same session checks as [`Self::rotate`]; no token is
    /// stored, so a session never forks. `Spent` if the grace is over or used.
    async fn use_grace(
        &self,
        old: &RefreshRecord,
        consumed_after: i64,
    ) -> Result<Exchange, StoreError>;
    /// The user's live sessions: for each, its newest unconsumed, unexpired token; ended
    /// sessions ([`Self::revoke_family`]) are left out even while tokens of theirs remain.
    async fn sessions(&self, user: UserId, now: i64) -> Result<Vec<RefreshRecord>, StoreError>;
    /// Ends a session: once this returns, no token of it is exchanged again, whatever rotation
    /// is in flight. Then deletes its tokens, best effort; returns how many.
    async fn revoke_family(&self, family_id: uuid::Uuid) -> Result<u32, StoreError>;
    /// Ends every session the user has, had or left tokens of, as [`Self::revoke_family`] ends
    /// one, deleting their tokens: for an account's deletion. Returns how many tokens went.
    async fn revoke_user(&self, user: UserId) -> Result<u32, StoreError>;
}

/// How an exchange of a refresh token ([`RefreshStore::rotate`], [`RefreshStore::use_grace`])
/// came out, when the store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Committed.
    Done,
    /// The presented token was consumed already, expired or gone, or its grace is over or used:
    /// a replay, unless the session has ended.
    Spent,
    /// The session has ended (logout, session revoked, reuse detected, revoke-all, account
    /// gone): refused, and not a replay to report.
    SessionEnded,
}

/// One signed entry of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Position in the feed: 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// The entry as a compact JWS signed by the origin.
    pub jws: String,
    /// When what it revokes expires; the entry is of no use after that.
    pub expires_at: i64,
}

/// Builds the signed entry for a sequence number (the JWS carries its own `seq`).
pub type MakeEntry<'a> = dyn Fn(u64) -> Result<String, StoreError> + Send + Sync + 'a;

/// The most entries one [`RevocationFeed::append_many`] takes: with the counter, the 100 items
/// of one DynamoDB transaction.
pub const MAX_APPEND: usize = 99;

/// The ordered, cursor-readable revocation feed the edges read.
#[async_trait::async_trait]
pub trait RevocationFeed: Send + Sync {
    /// Appends an entry at the next sequence number and returns it. Durable when it returns.
    async fn append(&self, make: &MakeEntry<'_>, expires_at: i64) -> Result<FeedEntry, StoreError> {
        let mut entries = self.append_many(&[(make, expires_at)]).await?;
        entries
            .pop()
            .ok_or_else(|| StoreError::Unavailable("revocation feed: nothing appended".into()))
    }
    /// Appends entries at the next [`MAX_APPEND`] or fewer sequence numbers, in order, all or
    /// none, and returns them. Durable when it returns.
    async fn append_many(
        &self,
        entries: &[(&MakeEntry<'_>, i64)],
    ) -> Result<Vec<FeedEntry>, StoreError>;
    /// Up to `limit` entries after `cursor`, in order, leaving out those expired at `now`;
    /// also the cursor to ask with next (the last sequence number read).
    async fn read_after(
        &self,
        cursor: u64,
        limit: u32,
        now: i64,
    ) -> Result<(Vec<FeedEntry>, u64), StoreError>;
}

/// One security event: what happened, to whom, from where, in which request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEvent {
    /// The account's id, or `email:<sha256 of the email>` when no account has the email.
    pub user_id: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// `register`, `register_address_taken` (under the email's pseudonym),
    /// `email_verification_sent`, `email_verified`, `login_unverified_email`,
    /// `password_reset_requested`, `password_reset`, `password_changed`,
    /// `password_change_failed`,
    /// `login`, `login_failed`, `soft_locked`, `captcha_solved`, `captcha_failed`,
    /// `mfa_enrolment_started`, `mfa_enabled`, `mfa_failed`, `recovery_code_used`,
    /// `mfa_disabled`, `recovery_codes_replaced`, `reauthentication_failed`,
    /// `account_deletion_failed`, `account_deleted` (without the client's address),
    /// `refresh_reuse`, `logout`, `session_revoked`, `revoke_all`; under `system:signing-keys`:
    /// `signing_key_created`, `signing_key_imported`, `signing_key_rotated`,
    /// `signing_key_retired`.
    pub event: String,
    /// The client's address from the trusted source, if known.
    pub client_ip: Option<String>,
    /// The request's id (`x-request-id`).
    pub request_id: Option<String>,
}

/// The security events, queryable per user.
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync {
    /// Stores a batch of events (at most 25, DynamoDB's batch size).
    async fn record(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// A user's newest events first, at most `limit`.
    async fn for_user(&self, user_id: &str, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;
    /// Cuts the client address of every event of `user_id` to its network
    /// ([`crate::audit::network_of`]): what is kept of a deleted account. Returns how many
    /// events changed.
    async fn pseudonymise(&self, user_id: &str) -> Result<u32, StoreError>;
}

/// A signing key as stored: its schedule in the clear, its private JWK sealed
/// ([`crate::key_encryption`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// 1, 2, 3, …: the key's place in the rotation.
    pub generation: u64,
    /// Its `kid` (the public key's thumbprint).
    pub kid: String,
    /// Its JWS `alg`.
    pub alg: String,
    /// When it starts signing.
    pub signs_from: i64,
    /// When it was made.
    pub created_at: i64,
    /// How `sealed` was encrypted, e.g. `local-aes256gcm`.
    pub scheme: String,
    /// The private JWK, encrypted.
    pub sealed: Vec<u8>,
}

/// The signing keys every instance shares.
#[async_trait::async_trait]
pub trait SigningKeyStore: Send + Sync {
    /// Every stored key, by generation, read consistently.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Stores a key under a generation no key has; `Conflict` if another instance took it.
    async fn add_signing_key(&self, key: &StoredKey) -> Result<(), StoreError>;
    /// Deletes a retired key; `false` if it was gone already (another instance deleted it).
    async fn delete_signing_key(&self, generation: u64) -> Result<bool, StoreError>;
}

/// What the deny-list holds for one token, read in one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyListRead {
    /// The answer for the core: what is held is `Listed` (or a watermark); what is not held is
    /// `NotListed` only when the list is `complete`, `Unavailable` otherwise.
    pub answer: edgeauth_core::RevocationAnswer,
    /// Whether the list holds everything the feed holds: it was rebuilt from the feed since it
    /// last lost its contents (a Redis restart without persistence, a flush, a new process).
    pub complete: bool,
}

/// Revoked access tokens (by `jti`), sessions (by `sid`) and users (a revoke-all watermark),
/// each held as long as a token it revokes can still pass: its expiry plus the verifier's leeway
/// ([`edgeauth_core::Revocation::holds_until`]). A copy of the feed, which is the durable record:
/// it can be rebuilt from the feed whenever it lost its contents.
#[async_trait::async_trait]
pub trait DenyList: Send + Sync {
    /// Holds `revocation` until `revocation.holds_until(leeway)`. Never shortens a hold and
    /// never lowers a watermark, so applying an older entry again (a rebuild, a retry) is
    /// harmless.
    async fn apply(
        &self,
        revocation: &edgeauth_core::Revocation,
        leeway: i64,
        now: i64,
    ) -> Result<(), StoreError>;
    /// What is held at `now` for the token's `jti`, `sid` and `sub`.
    async fn read(
        &self,
        check: &edgeauth_core::RevocationCheck,
        now: i64,
    ) -> Result<DenyListRead, StoreError>;
    /// Whether the list is complete (see [`DenyListRead::complete`]); also the readiness check.
    async fn complete(&self) -> Result<bool, StoreError>;
    /// Marks the start of a rebuild from the feed; the mark goes to [`Self::rebuild_finished`].
    async fn rebuild_started(&self) -> Result<String, StoreError>;
    /// Records that the rebuild begun with `mark` applied the whole feed. `false` (the list
    /// stays incomplete) if the list lost its contents while it ran: what it had applied before
    /// is gone, and it must run again.
    async fn rebuild_finished(&self, mark: &str) -> Result<bool, StoreError>;
    /// Live entries (tokens, sessions and users), for the metrics.
    async fn live_entries(&self, now: i64) -> Result<u64, StoreError>;
    /// What identifies the servers holding the list now. It changes when one is restarted or
    /// replaced (a Redis failover), which may have lost writes it had acknowledged: Redis
    /// replicates after it answers. `None` where no acknowledged write can be lost.
    async fn holders(&self) -> Result<Option<String>, StoreError>;
}

/// Locks an in-process store's state. A poisoned lock (a panic while it was held) makes the store
/// `Unavailable`, like a backend that stopped answering: `what` names it in the error.
pub fn lock<'a, T>(
    mutex: &'a std::sync::Mutex<T>,
    what: &str,
) -> Result<std::sync::MutexGuard<'a, T>, StoreError> {
    mutex
        .lock()
        .map_err(|_| StoreError::Unavailable(format!("{what} lock poisoned")))
}
