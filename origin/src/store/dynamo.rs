//! DynamoDB through the official AWS SDK: production, a local dynoxide server, and the embedded
//! default (dynoxide in-process) all take this one code path.
//!
//! Tables (names take a configurable prefix):
//! - `Users`: PK `user_id` (S). GSI `email-index` on `email`. Each account has a guard item
//!   `user_id = EMAIL#<email>` written in the same transaction as the account, because a GSI
//!   cannot enforce uniqueness; guards have no `email` attribute, so the sparse GSI skips them.
//! - `RefreshTokens`: PK `token_hash` (S, base64url SHA-256). GSI `family-index` on `family_id`.
//!   TTL on `expires_at`; TTL deletion runs up to days late, so every read checks it too. An
//!   ended session leaves a tombstone `token_hash = family#<family_id>` (no other attributes but
//!   `expires_at`, so no index holds it, and no token's key, base64url, contains `#`): every
//!   rotation checks in its own transaction that the tombstone is absent.
//! - `RevocationFeed`: PK `stream` (S), SK `seq` (N); TTL on `expires_at`.
//! - `AuditEvents`: PK `user_id` (S), SK `at` (N, milliseconds × 1000 + a tie-breaker); TTL on
//!   `expires_at`, a year after the event.
//! - `SigningKeys`: PK `key_set` (S, always `signing`), SK `generation` (N); the private key
//!   sealed in `sealed` (B). Retired keys are deleted.

use std::{collections::HashMap, time::Duration};

use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_dynamodb::{
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    operation::{
        transact_write_items::TransactWriteItemsError,
        update_item::builders::UpdateItemFluentBuilder,
    },
    types::{
        AttributeDefinition, AttributeValue, BillingMode, ConditionCheck,
        CreateGlobalSecondaryIndexAction, Delete, GlobalSecondaryIndex, GlobalSecondaryIndexUpdate,
        IndexStatus, KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType, Put,
        PutRequest, ScalarAttributeType, TableStatus, TimeToLiveSpecification, TransactWriteItem,
        Update, WriteRequest,
    },
    Client,
};
use base64ct::{Base64UrlUnpadded, Encoding};

use crate::{
    key_encryption::Sealer,
    metrics::{DynamoFailure, METRICS},
};

use super::{
    AuditEvent, AuditLog, Exchange, FeedEntry, LinkPurpose, LinkToken, MakeEntry, RefreshRecord,
    RefreshStore, RevocationFeed, SigningKeyStore, StoreError, StoredKey, Totp, User, UserId,
    UserStore, MAX_APPEND,
};

const EMAIL_INDEX: &str = "email-index";
/// Refresh tokens by owner, for listing a user's sessions.
const USER_INDEX: &str = "user-index";
const FAMILY_INDEX: &str = "family-index";
const GUARD_PREFIX: &str = "EMAIL#";
/// Attempts for a transaction that lost a race with another (TransactionConflict).
const TRANSACTION_ATTEMPTS: usize = 3;
/// Attempts for a refresh-token exchange that lost a race (TransactionConflict): a few, with a
/// short growing backoff, and then 503; never "reuse", which would end a healthy session.
const EXCHANGE_ATTEMPTS: u32 = 4;
/// Key prefix of a family's tombstone in the refresh-token table.
const FAMILY_TOMBSTONE_PREFIX: &str = "family#";
/// How long a tombstone is kept: the longest `refresh_token_ttl_seconds` the configuration
/// accepts, so it outlives every token of its family (none is issued after it, and each expires
/// within that long of its issue). Its own TTL only reclaims the space.
const FAMILY_TOMBSTONE_SECONDS: i64 = 90 * 24 * 3600;
/// How many session checks open an exchange's transaction ([`DynamoStore::session_checks`]).
const SESSION_CHECKS: usize = 2;

/// Table names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    /// Accounts and email guards.
    pub users: String,
    /// Refresh tokens.
    pub refresh: String,
    /// The revocation feed and its sequence counter.
    pub feed: String,
    /// Security events by user.
    pub audit: String,
    /// The signing keys every instance shares, private parts encrypted.
    pub signing_keys: String,
}

impl TableNames {
    /// `<prefix>Users`, `<prefix>RefreshTokens`, `<prefix>RevocationFeed`, `<prefix>AuditEvents`,
    /// `<prefix>SigningKeys`.
    pub fn new(prefix: &str) -> Self {
        Self {
            users: format!("{prefix}Users"),
            refresh: format!("{prefix}RefreshTokens"),
            feed: format!("{prefix}RevocationFeed"),
            audit: format!("{prefix}AuditEvents"),
            signing_keys: format!("{prefix}SigningKeys"),
        }
    }
}

fn https_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Short timeouts and few retries: a dead store must become a 503 in seconds, not hang a request.
fn loader(region: &str) -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .http_client(https_client())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(4))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(2))
}

/// A client for a local endpoint (dynoxide): static placeholder credentials, endpoint override.
pub async fn client_for_endpoint(endpoint_url: &str, region: &str) -> Client {
    let config = loader(region)
        .endpoint_url(endpoint_url)
        .credentials_provider(Credentials::new(
            "local",
            "local",
            None,
            None,
            "edgeauth-local",
        ))
        .load()
        .await;
    observed_client(&config)
}

/// A client for AWS: the standard credential chain, no endpoint override.
pub async fn client_from_env(region: &str) -> Client {
    observed_client(&loader(region).load().await)
}

/// A client whose every call is timed and classified into the metrics.
fn observed_client(config: &aws_config::SdkConfig) -> Client {
    Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(config)
            .interceptor(ObserveCalls)
            .build(),
    )
}

/// When a call started, and its span, kept in the call's config bag; the span closes when the
/// bag is dropped, as the call returns.
#[derive(Debug, Clone)]
struct CallStarted(std::time::Instant, tracing::Span);

impl aws_smithy_types::config_bag::Storable for CallStarted {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

/// Times every DynamoDB call (retries included) and counts failures: throttling by its error
/// code, and a call left without an answer (no response, or a 5xx). Modelled answers such as a
/// failed condition are outcomes, not failures.
#[derive(Debug)]
struct ObserveCalls;

/// The error codes DynamoDB refuses for capacity with.
const THROTTLING_CODES: [&str; 3] = [
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
];

impl aws_sdk_dynamodb::config::Intercept for ObserveCalls {
    fn name(&self) -> &'static str {
        "edgeauth-metrics"
    }

    fn read_before_execution(
        &self,
        _context: &aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef<
            '_,
        >,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        // A child of the request's span: the SDK's future runs inside it. The operation is
        // recorded at the end, when the SDK's metadata is in the bag.
        let span = tracing::info_span!(
            "dynamodb",
            "db.system" = "dynamodb",
            "db.operation" = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        cfg.interceptor_state()
            .store_put(CallStarted(std::time::Instant::now(), span));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let took = cfg
            .load::<CallStarted>()
            .map_or(Duration::ZERO, |started| started.0.elapsed());
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or("unknown", |m| m.name());
        let failure = match context.output_or_error() {
            Some(Err(_)) => {
                let response = context.response();
                let body = response.and_then(|r| r.body().bytes()).unwrap_or_default();
                let throttled = THROTTLING_CODES
                    .iter()
                    .any(|code| body.windows(code.len()).any(|w| w == code.as_bytes()));
                match response.map(|r| r.status().as_u16()) {
                    _ if throttled => Some(DynamoFailure::Throttled),
                    Some(status) if status < 500 => None,
                    _ => Some(DynamoFailure::Unavailable),
                }
            }
            _ => None,
        };
        if let Some(started) = cfg.load::<CallStarted>() {
            started.1.record("db.operation", operation);
            if let Some(failure) = failure {
                started.1.record("error", tracing::field::debug(failure));
            }
        }
        METRICS.dynamodb(operation, took, failure);
        Ok(())
    }
}

fn unavailable<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Unavailable(format!("DynamoDB: {}", DisplayErrorContext(e)))
}

/// A failed condition expression means `on_condition` (the record is gone, or taken); any other
/// error means the store could not answer.
fn condition_failed_as<E, R>(e: SdkError<E, R>, on_condition: StoreError) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if e.as_service_error().and_then(|se| se.code()) == Some("ConditionalCheckFailedException") {
        on_condition
    } else {
        unavailable(e)
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn hash_key(hash: &[u8; 32]) -> String {
    Base64UrlUnpadded::encode_string(hash)
}

type Item = HashMap<String, AttributeValue>;

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Unavailable(format!("stored {what} is malformed"))
}

fn parse_uuid(text: Option<&str>, what: &str) -> Result<uuid::Uuid, StoreError> {
    text.and_then(|t| uuid::Uuid::parse_str(t).ok())
        .ok_or_else(|| corrupt(what))
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    Base64UrlUnpadded::decode_vec(text).ok()?.try_into().ok()
}

/// What a sealed TOTP secret is bound to: its purpose and its owner, so a ciphertext copied to
/// another account, or into a signing key's place, does not open.
fn totp_aad(id: UserId) -> Vec<u8> {
    format!("edgeauth totp secret\0{id}").into_bytes()
}

/// The stored form of a TOTP secret: sealed under the key-encryption key, base64url.
fn sealed_totp(sealer: &Sealer, id: UserId, secret: &[u8]) -> Result<AttributeValue, StoreError> {
    let sealed = sealer
        .seal(&totp_aad(id), secret)
        .map_err(|e| StoreError::Unavailable(format!("TOTP secret not sealed: {e}")))?;
    Ok(s(Base64UrlUnpadded::encode_string(&sealed)))
}

fn user_item(user: &User, sealer: &Sealer) -> Result<Item, StoreError> {
    let mut item = Item::from([
        ("user_id".into(), s(user.id.to_string())),
        ("email".into(), s(&user.email)),
        ("password_hash".into(), s(&user.password_hash)),
        (
            "scopes".into(),
            AttributeValue::L(user.scopes.iter().map(s).collect()),
        ),
        ("created_at".into(), n(user.created_at)),
    ]);
    if let Some(name) = &user.display_name {
        item.insert("display_name".into(), s(name));
    }
    if let Some(at) = user.sessions_revoked_at {
        item.insert("sessions_revoked_at".into(), n(at));
    }
    if user.email_verified {
        item.insert("email_verified".into(), AttributeValue::Bool(true));
    }
    if let Some(totp) = &user.totp {
        item.insert(
            "totp_sealed".into(),
            sealed_totp(sealer, user.id, &totp.secret)?,
        );
        item.insert(
            "totp_confirmed".into(),
            AttributeValue::Bool(totp.confirmed),
        );
        item.insert(
            "totp_last_step".into(),
            n(i64::try_from(totp.last_step).unwrap_or(i64::MAX)),
        );
        item.insert(
            "recovery_codes".into(),
            AttributeValue::L(totp.recovery_codes.iter().map(s).collect()),
        );
    }
    Ok(item)
}

/// The TOTP factor of a user item. A secret stored before sealing (`totp_secret`, plain) is
/// still read; one that will not open (another KEK, or altered) makes the account unreadable
/// rather than its factor silently absent.
fn totp_from(item: &Item, sealer: &Sealer, id: UserId) -> Result<Option<Totp>, StoreError> {
    let secret = if let Some(sealed) = get_s(item, "totp_sealed") {
        let sealed =
            Base64UrlUnpadded::decode_vec(sealed).map_err(|_| corrupt("sealed TOTP secret"))?;
        sealer
            .open(&totp_aad(id), &sealed)
            .map_err(|e| StoreError::Unavailable(format!("TOTP secret: {e}")))?
    } else {
        match get_s(item, "totp_secret").map(Base64UrlUnpadded::decode_vec) {
            Some(Ok(secret)) => secret,
            _ => return Ok(None),
        }
    };
    let recovery_codes = match item.get("recovery_codes") {
        Some(AttributeValue::L(list)) => {
            list.iter().filter_map(|v| v.as_s().ok().cloned()).collect()
        }
        _ => Vec::new(),
    };
    Ok(Some(Totp {
        secret,
        confirmed: matches!(item.get("totp_confirmed"), Some(AttributeValue::Bool(true))),
        last_step: get_n(item, "totp_last_step")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        recovery_codes,
    }))
}

fn user_from(item: &Item, sealer: &Sealer) -> Result<User, StoreError> {
    let id = UserId(parse_uuid(get_s(item, "user_id"), "user id")?);
    let scopes = match item.get("scopes") {
        Some(AttributeValue::L(list)) => {
            list.iter().filter_map(|v| v.as_s().ok().cloned()).collect()
        }
        _ => Vec::new(),
    };
    Ok(User {
        id,
        email: get_s(item, "email")
            .ok_or_else(|| corrupt("email"))?
            .to_owned(),
        password_hash: get_s(item, "password_hash")
            .ok_or_else(|| corrupt("password hash"))?
            .to_owned(),
        scopes,
        display_name: get_s(item, "display_name").map(str::to_owned),
        created_at: get_n(item, "created_at").unwrap_or(0),
        totp: totp_from(item, sealer, id)?,
        sessions_revoked_at: get_n(item, "sessions_revoked_at"),
        email_verified: matches!(item.get("email_verified"), Some(AttributeValue::Bool(true))),
    })
}

fn refresh_item(record: &RefreshRecord) -> Item {
    let mut item = Item::from([
        ("token_hash".into(), s(hash_key(&record.token_hash))),
        ("user_id".into(), s(record.user_id.to_string())),
        ("family_id".into(), s(record.family_id.to_string())),
        ("expires_at".into(), n(record.expires_at)),
    ]);
    if let Some(at) = record.consumed_at {
        item.insert("consumed_at".into(), n(at));
    }
    if let Some(next) = &record.replaced_by {
        item.insert("replaced_by".into(), s(hash_key(next)));
    }
    if record.mfa {
        item.insert("mfa".into(), AttributeValue::Bool(true));
    }
    item.insert("issued_at".into(), n(record.issued_at));
    item.insert("session_started_at".into(), n(record.session_started_at));
    item
}

fn refresh_from(item: &Item) -> Result<RefreshRecord, StoreError> {
    Ok(RefreshRecord {
        token_hash: get_s(item, "token_hash")
            .and_then(parse_hash)
            .ok_or_else(|| corrupt("token hash"))?,
        user_id: UserId(parse_uuid(get_s(item, "user_id"), "user id")?),
        family_id: parse_uuid(get_s(item, "family_id"), "family id")?,
        expires_at: get_n(item, "expires_at").ok_or_else(|| corrupt("expiry"))?,
        consumed_at: get_n(item, "consumed_at"),
        replaced_by: get_s(item, "replaced_by").and_then(parse_hash),
        mfa: matches!(item.get("mfa"), Some(AttributeValue::Bool(true))),
        issued_at: get_n(item, "issued_at").unwrap_or(0),
        session_started_at: get_n(item, "session_started_at").unwrap_or(0),
    })
}

/// Why a transaction was cancelled, per item, as DynamoDB reports it.
fn cancellation_codes<R>(e: &SdkError<TransactWriteItemsError, R>) -> Option<Vec<String>> {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => Some(
            c.cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None").to_owned())
                .collect(),
        ),
        _ => None,
    }
}

/// Why an exchange's transaction was cancelled, from its reasons: items `0..SESSION_CHECKS` are
/// the session checks. `None` when no reason is a failed condition or a race (the store failed).
fn exchange_cancelled(codes: &[String]) -> Option<Cancelled> {
    let failed = |code: &String| code == "ConditionalCheckFailed";
    if codes.iter().take(SESSION_CHECKS).any(failed) {
        // Whatever else failed: an ended session is never reported as a replay.
        Some(Cancelled::Refused(Exchange::SessionEnded))
    } else if codes.iter().any(|c| c == "TransactionConflict") {
        // Another transaction held one of the items; its outcome decides ours on the next try.
        Some(Cancelled::Raced)
    } else if codes.iter().any(failed) {
        Some(Cancelled::Refused(Exchange::Spent))
    } else {
        None
    }
}

/// A cancelled exchange: an answer, or a race to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancelled {
    Refused(Exchange),
    Raced,
}

fn tombstone_key(family_id: uuid::Uuid) -> String {
    format!("{FAMILY_TOMBSTONE_PREFIX}{family_id}")
}

/// Both stores over one client.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    tables: TableNames,
    /// Seals TOTP secrets (the signing keys' KEK).
    sealer: std::sync::Arc<Sealer>,
    /// Partition keys the feed's entries are spread over ([`feed_stream`]).
    feed_partitions: u8,
}

impl DynamoStore {
    /// What every exchange of `old` checks in its own transaction, so that ending a session
    /// cannot be outrun by a rotation in flight: the family has no tombstone, and the account
    /// exists with no revoke-all at or after `old` was issued.
    fn session_checks(&self, old: &RefreshRecord) -> Result<Vec<TransactWriteItem>, StoreError> {
        let family = ConditionCheck::builder()
            .table_name(&self.tables.refresh)
            .key("token_hash", s(tombstone_key(old.family_id)))
            .condition_expression("attribute_not_exists(token_hash)")
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let account = ConditionCheck::builder()
            .table_name(&self.tables.users)
            .key("user_id", s(old.user_id.to_string()))
            .condition_expression(
                "attribute_exists(user_id) AND (attribute_not_exists(sessions_revoked_at) OR sessions_revoked_at < :issued)",
            )
            .expression_attribute_values(":issued", n(old.issued_at))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let checks = vec![
            TransactWriteItem::builder().condition_check(family).build(),
            TransactWriteItem::builder()
                .condition_check(account)
                .build(),
        ];
        debug_assert_eq!(checks.len(), SESSION_CHECKS);
        Ok(checks)
    }

    /// Commits `writes` to `old` (and its successor) after the session checks, in one
    /// transaction; a race with another transaction is tried again after a short backoff.
    async fn exchange(
        &self,
        old: &RefreshRecord,
        writes: impl IntoIterator<Item = TransactWriteItem>,
    ) -> Result<Exchange, StoreError> {
        let mut items = self.session_checks(old)?;
        items.extend(writes);
        for attempt in 0..EXCHANGE_ATTEMPTS {
            if attempt > 0 {
                pause_before_retry(attempt).await;
            }
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let Err(e) = result else {
                return Ok(Exchange::Done);
            };
            match cancellation_codes(&e)
                .as_deref()
                .and_then(exchange_cancelled)
            {
                Some(Cancelled::Refused(outcome)) => return Ok(outcome),
                Some(Cancelled::Raced) => {}
                None => return Err(unavailable(e)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "refresh-token exchange lost {EXCHANGE_ATTEMPTS} races with other transactions"
        )))
    }

    /// Commits `update` and every one of `puts` in one transaction. A failed condition or a race
    /// with another transaction on the same items is `Conflict`; callers decide whether to retry.
    async fn update_and_put_all(&self, update: Update, puts: Vec<Put>) -> Result<(), StoreError> {
        let mut transaction = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build());
        for put in puts {
            transaction = transaction.transact_items(TransactWriteItem::builder().put(put).build());
        }
        let result = transaction.send().await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match cancellation_codes(&e) {
                Some(codes)
                    if codes
                        .iter()
                        .any(|c| c == "ConditionalCheckFailed" || c == "TransactionConflict") =>
                {
                    Err(StoreError::Conflict)
                }
                _ => Err(unavailable(e)),
            },
        }
    }

    /// Stores over `client`, in the tables named by `tables`, sealing secrets with `sealer`.
    pub fn new(client: Client, tables: &TableNames, sealer: Sealer) -> Self {
        Self {
            client,
            tables: tables.clone(),
            sealer: std::sync::Arc::new(sealer),
            feed_partitions: 1,
        }
    }

    /// Spreads the feed's entries over `partitions` partition keys (the configuration's
    /// `feed_partitions`; 1, the default, is one key, as before there were partitions).
    #[must_use]
    pub fn with_feed_partitions(mut self, partitions: u8) -> Self {
        self.feed_partitions = partitions.max(1);
        self
    }

    /// The feed counter: every entry up to its `last` has committed, each under a key of a
    /// layout of at most its `partitions` keys.
    async fn feed_counter(&self) -> Result<FeedCounter, StoreError> {
        let counter = self
            .client
            .get_item()
            .table_name(&self.tables.feed)
            .key("stream", s(COUNTER_STREAM))
            .key("seq", n(0))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        let item = counter.item();
        let partitions = match item.and_then(|i| get_n(i, "partitions")) {
            // Written before the count was recorded: one key.
            None => 1,
            Some(n) => u8::try_from(n)
                .ok()
                .filter(|k| (1..=crate::config::MAX_FEED_PARTITIONS).contains(k))
                .ok_or_else(|| corrupt("feed partitions"))?,
        };
        Ok(FeedCounter {
            last: item.and_then(|i| get_n(i, "last")).unwrap_or(0),
            partitions: partitions.max(self.feed_partitions),
        })
    }

    /// An update of account `id`'s item, for the caller to give its expressions.
    fn update_user(&self, id: UserId) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.tables.users)
            .key("user_id", s(id.to_string()))
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.users)
            .key("user_id", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.item()
            .map(|item| user_from(item, &self.sealer))
            .transpose()
    }
}

/// The user item's attributes holding the live link of `purpose`: its hash and its expiry.
fn link_attributes(purpose: LinkPurpose) -> (&'static str, &'static str) {
    match purpose {
        LinkPurpose::VerifyEmail => ("verify_link_hash", "verify_link_expires_at"),
        LinkPurpose::ResetPassword => ("reset_link_hash", "reset_link_expires_at"),
    }
}

/// A users-table key no item ever has (user ids are UUIDs, guards start with their prefix).
const ABSENT_USER: &str = "absent#";

#[async_trait::async_trait]
impl UserStore for DynamoStore {
    async fn create_user(
        &self,
        user: &User,
        verification: Option<&LinkToken>,
    ) -> Result<(), StoreError> {
        let mut item = user_item(user, &self.sealer)?;
        if let Some(link) = verification {
            let (hash, expires) = link_attributes(LinkPurpose::VerifyEmail);
            item.insert(hash.into(), s(hash_key(&link.hash)));
            item.insert(expires.into(), n(link.expires_at));
        }
        let put_user = Put::builder()
            .table_name(&self.tables.users)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(user_id)")
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let put_guard = Put::builder()
            .table_name(&self.tables.users)
            .item("user_id", s(format!("{GUARD_PREFIX}{}", user.email)))
            .item("owner", s(user.id.to_string()))
            .condition_expression("attribute_not_exists(user_id)")
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        for _ in 0..TRANSACTION_ATTEMPTS {
            let result = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put_user.clone()).build())
                .transact_items(TransactWriteItem::builder().put(put_guard.clone()).build())
                .send()
                .await;
            let Err(e) = result else { return Ok(()) };
            match cancellation_codes(&e).as_deref() {
                Some([_, guard]) if guard == "ConditionalCheckFailed" => {
                    return Err(StoreError::EmailTaken)
                }
                Some(codes) if codes.iter().any(|c| c == "ConditionalCheckFailed") => {
                    return Err(StoreError::Conflict)
                }
                // Another transaction on the same guard was in flight: try again, and the
                // condition then says who won.
                Some(codes) if codes.iter().any(|c| c == "TransactionConflict") => continue,
                _ => return Err(unavailable(e)),
            }
        }
        Err(StoreError::Conflict)
    }

    async fn find_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        // The guard item, read consistently (a login right after registration finds the
        // account), then the account: two consistent reads whether or not the email has one.
        // An unknown email reads a key no item has in the account's place, so the store's
        // round trips do not tell which emails are registered. (The email index, eventually
        // consistent, would answer a known email in one call and an unknown in two.)
        let guard = self
            .client
            .get_item()
            .table_name(&self.tables.users)
            .key("user_id", s(format!("{GUARD_PREFIX}{email}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        match guard.item().and_then(|g| get_s(g, "owner")) {
            Some(owner) => self.user_by_id(owner).await,
            None => self.user_by_id(ABSENT_USER).await.map(|_| None),
        }
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.user_by_id(&id.to_string()).await
    }

    async fn set_link(
        &self,
        id: UserId,
        purpose: LinkPurpose,
        link: &LinkToken,
    ) -> Result<(), StoreError> {
        let (hash, expires) = link_attributes(purpose);
        self.update_user(id)
            .condition_expression("attribute_exists(user_id)")
            .update_expression(format!("SET {hash} = :h, {expires} = :e"))
            .expression_attribute_values(":h", s(hash_key(&link.hash)))
            .expression_attribute_values(":e", n(link.expires_at))
            .send()
            .await
            .map_err(|e| condition_failed_as(e, StoreError::NotFound))?;
        Ok(())
    }

    async fn verify_email(
        &self,
        id: UserId,
        hash: &[u8; 32],
        now: i64,
    ) -> Result<bool, StoreError> {
        let (hash_name, expires) = link_attributes(LinkPurpose::VerifyEmail);
        // The comparison is DynamoDB's, in the same write that ends the link: two requests with
        // one link cannot both pass.
        let result = self
            .update_user(id)
            .condition_expression(format!("{hash_name} = :h AND {expires} > :now"))
            .update_expression(format!(
                "SET email_verified = :yes REMOVE {hash_name}, {expires}"
            ))
            .expression_attribute_values(":h", s(hash_key(hash)))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .send()
            .await;
        conditional(result)
    }

    async fn reset_password(
        &self,
        id: UserId,
        hash: &[u8; 32],
        now: i64,
        password_hash: &str,
    ) -> Result<Option<i64>, StoreError> {
        let (hash_name, expires) = link_attributes(LinkPurpose::ResetPassword);
        // As in `revoke_sessions`: a rotation that commits before this write ends too.
        let at = now.max(crate::clock::now());
        let result = self
            .update_user(id)
            .condition_expression(format!("{hash_name} = :h AND {expires} > :now"))
            .update_expression("SET password_hash = :p, sessions_revoked_at = :at")
            .expression_attribute_values(":h", s(hash_key(hash)))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":p", s(password_hash))
            .expression_attribute_values(":at", n(at))
            .send()
            .await;
        Ok(conditional(result)?.then_some(at))
    }

    async fn end_link(
        &self,
        id: UserId,
        purpose: LinkPurpose,
        hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        let (hash_name, expires) = link_attributes(purpose);
        let result = self
            .update_user(id)
            .condition_expression(format!("{hash_name} = :h"))
            .update_expression(format!("REMOVE {hash_name}, {expires}"))
            .expression_attribute_values(":h", s(hash_key(hash)))
            .send()
            .await;
        // Gone or replaced already: nothing of this link is left to end.
        conditional(result).map(drop)
    }

    async fn update_password_hash(&self, id: UserId, hash: &str) -> Result<(), StoreError> {
        self.update_user(id)
            .update_expression("SET password_hash = :h")
            .condition_expression("attribute_exists(user_id)")
            .expression_attribute_values(":h", s(hash))
            .send()
            .await
            .map_err(|e| condition_failed_as(e, StoreError::NotFound))?;
        Ok(())
    }

    async fn update_display_name(&self, id: UserId, name: Option<&str>) -> Result<(), StoreError> {
        let request = self
            .update_user(id)
            .condition_expression("attribute_exists(user_id)");
        let request = match name {
            Some(name) => request
                .update_expression("SET display_name = :n")
                .expression_attribute_values(":n", s(name)),
            None => request.update_expression("REMOVE display_name"),
        };
        request
            .send()
            .await
            .map_err(|e| condition_failed_as(e, StoreError::NotFound))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .describe_table()
            .table_name(&self.tables.users)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn revoke_sessions(&self, id: UserId, at: i64) -> Result<i64, StoreError> {
        // Rotations stamp their tokens with the clock as they commit: one that commits before
        // this write, even in a second after `at`, must be ended by it too. So the epoch is the
        // clock now if that is later than `at`.
        let at = at.max(crate::clock::now());
        self.update_user(id)
            .condition_expression("attribute_exists(user_id)")
            .update_expression("SET sessions_revoked_at = :at")
            .expression_attribute_values(":at", n(at))
            .send()
            .await
            .map_err(|e| condition_failed_as(e, StoreError::NotFound))?;
        Ok(at)
    }

    async fn set_scopes(&self, id: UserId, scopes: &[String]) -> Result<(), StoreError> {
        self.update_user(id)
            .condition_expression("attribute_exists(user_id)")
            .update_expression("SET scopes = :s")
            .expression_attribute_values(":s", AttributeValue::L(scopes.iter().map(s).collect()))
            .send()
            .await
            .map_err(|e| condition_failed_as(e, StoreError::NotFound))?;
        Ok(())
    }

    async fn start_totp(&self, id: UserId, secret: &[u8]) -> Result<(), StoreError> {
        // A confirmed factor is never replaced this way: a stolen access token must not be able
        // to swap the owner's authenticator for the thief's.
        self.update_user(id)
            .condition_expression(
                "attribute_exists(user_id) AND (attribute_not_exists(totp_confirmed) OR totp_confirmed = :no)",
            )
            .update_expression(
                "SET totp_sealed = :secret, totp_confirmed = :no, totp_last_step = :zero, recovery_codes = :none REMOVE totp_secret",
            )
            .expression_attribute_values(":secret", sealed_totp(&self.sealer, id, secret)?)
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":none", AttributeValue::L(Vec::new()))
            .send()
            .await
            .map_err(|e| condition_failed_as(e, StoreError::Conflict))?;
        Ok(())
    }

    async fn confirm_totp(
        &self,
        id: UserId,
        step: u64,
        recovery_codes: &[String],
    ) -> Result<bool, StoreError> {
        let result = self
            .update_user(id)
            .condition_expression("totp_confirmed = :no")
            .update_expression(
                "SET totp_confirmed = :yes, totp_last_step = :step, recovery_codes = :codes",
            )
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":step", n(i64::try_from(step).unwrap_or(i64::MAX)))
            .expression_attribute_values(
                ":codes",
                AttributeValue::L(recovery_codes.iter().map(s).collect()),
            )
            .send()
            .await;
        conditional(result)
    }

    async fn use_totp_step(&self, id: UserId, step: u64) -> Result<bool, StoreError> {
        let result = self
            .update_user(id)
            .condition_expression("totp_confirmed = :yes AND totp_last_step < :step")
            .update_expression("SET totp_last_step = :step")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":step", n(i64::try_from(step).unwrap_or(i64::MAX)))
            .send()
            .await;
        conditional(result)
    }

    async fn use_recovery_code(&self, id: UserId, hash: &str) -> Result<bool, StoreError> {
        let Some(user) = self.get_user(id).await? else {
            return Ok(false);
        };
        let Some(index) = user
            .totp
            .as_ref()
            .and_then(|t| t.recovery_codes.iter().position(|c| c == hash))
        else {
            return Ok(false);
        };
        // Removed by position, on condition it is still this code there: two logins racing
        // with one code cannot both use it.
        let path = format!("recovery_codes[{index}]");
        let result = self
            .update_user(id)
            .condition_expression(format!("{path} = :code"))
            .update_expression(format!("REMOVE {path}"))
            .expression_attribute_values(":code", s(hash))
            .send()
            .await;
        conditional(result)
    }

    async fn replace_recovery_codes(
        &self,
        id: UserId,
        recovery_codes: &[String],
    ) -> Result<bool, StoreError> {
        let result = self
            .update_user(id)
            .condition_expression("totp_confirmed = :yes")
            .update_expression("SET recovery_codes = :codes")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(
                ":codes",
                AttributeValue::L(recovery_codes.iter().map(s).collect()),
            )
            .send()
            .await;
        conditional(result)
    }

    async fn remove_totp(&self, id: UserId) -> Result<(), StoreError> {
        let result = self
            .update_user(id)
            .condition_expression("attribute_exists(user_id)")
            .update_expression(
                "REMOVE totp_sealed, totp_secret, totp_confirmed, totp_last_step, recovery_codes",
            )
            .send()
            .await;
        conditional(result).map(drop)
    }

    async fn delete_user(&self, user: &User) -> Result<(), StoreError> {
        let delete_user = Delete::builder()
            .table_name(&self.tables.users)
            .key("user_id", s(user.id.to_string()))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // Only the guard this account holds: an address is never freed from under another.
        let delete_guard = Delete::builder()
            .table_name(&self.tables.users)
            .key("user_id", s(format!("{GUARD_PREFIX}{}", user.email)))
            .condition_expression("attribute_not_exists(#owner) OR #owner = :id")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":id", s(user.id.to_string()))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        for _ in 0..TRANSACTION_ATTEMPTS {
            let result = self
                .client
                .transact_write_items()
                .transact_items(
                    TransactWriteItem::builder()
                        .delete(delete_user.clone())
                        .build(),
                )
                .transact_items(
                    TransactWriteItem::builder()
                        .delete(delete_guard.clone())
                        .build(),
                )
                .send()
                .await;
            let Err(e) = result else { return Ok(()) };
            match cancellation_codes(&e).as_deref() {
                Some(codes) if codes.iter().any(|c| c == "TransactionConflict") => continue,
                // Another account holds the address: this one's guard went already.
                Some([_, guard]) if guard == "ConditionalCheckFailed" => {
                    self.client
                        .delete_item()
                        .table_name(&self.tables.users)
                        .key("user_id", s(user.id.to_string()))
                        .send()
                        .await
                        .map_err(unavailable)?;
                    return Ok(());
                }
                _ => return Err(unavailable(e)),
            }
        }
        Err(StoreError::Unavailable(
            "account deletion lost its races with other transactions".into(),
        ))
    }
}

/// An update whose condition decides: `true` when applied, `false` when the condition failed.
fn conditional<E, R>(result: Result<impl Sized, SdkError<E, R>>) -> Result<bool, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) => match condition_failed_as(e, StoreError::Conflict) {
            StoreError::Conflict => Ok(false),
            other => Err(other),
        },
    }
}

#[async_trait::async_trait]
impl RefreshStore for DynamoStore {
    async fn insert(&self, record: &RefreshRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.tables.refresh)
            .set_item(Some(refresh_item(record)))
            .condition_expression("attribute_not_exists(token_hash)")
            .send()
            .await
            .map_err(|e| condition_failed_as(e, StoreError::Conflict))?;
        Ok(())
    }

    async fn get(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.refresh)
            .key("token_hash", s(hash_key(token_hash)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        match out.item().map(refresh_from).transpose()? {
            Some(record) if record.expires_at > now => Ok(Some(record)),
            _ => Ok(None),
        }
    }

    async fn rotate(
        &self,
        old: &RefreshRecord,
        new: &RefreshRecord,
        now: i64,
    ) -> Result<Exchange, StoreError> {
        let consume = Update::builder()
            .table_name(&self.tables.refresh)
            .key("token_hash", s(hash_key(&old.token_hash)))
            .update_expression("SET consumed_at = :now, replaced_by = :next")
            .condition_expression(
                "attribute_exists(token_hash) AND attribute_not_exists(consumed_at) AND expires_at > :now",
            )
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":next", s(hash_key(&new.token_hash)))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let store_new = Put::builder()
            .table_name(&self.tables.refresh)
            .set_item(Some(refresh_item(new)))
            .condition_expression("attribute_not_exists(token_hash)")
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.exchange(
            old,
            [
                TransactWriteItem::builder().update(consume).build(),
                TransactWriteItem::builder().put(store_new).build(),
            ],
        )
        .await
    }

    async fn use_grace(
        &self,
        old: &RefreshRecord,
        consumed_after: i64,
    ) -> Result<Exchange, StoreError> {
        let claim = Update::builder()
            .table_name(&self.tables.refresh)
            .key("token_hash", s(hash_key(&old.token_hash)))
            .update_expression("SET grace_used = :yes")
            .condition_expression("consumed_at > :after AND attribute_not_exists(grace_used)")
            .expression_attribute_values(":after", n(consumed_after))
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.exchange(old, [TransactWriteItem::builder().update(claim).build()])
            .await
    }

    async fn sessions(&self, user: UserId, now: i64) -> Result<Vec<RefreshRecord>, StoreError> {
        let mut newest: HashMap<uuid::Uuid, RefreshRecord> = HashMap::new();
        for item in self
            .refresh_by(USER_INDEX, "user_id", user.to_string())
            .await?
        {
            let record = refresh_from(&item)?;
            if record.consumed_at.is_some() || record.expires_at <= now {
                continue;
            }
            match newest.get(&record.family_id) {
                Some(known) if known.issued_at >= record.issued_at => {}
                _ => {
                    newest.insert(record.family_id, record);
                }
            }
        }
        // An ended session's tokens are deleted best effort: its tombstone says it ended.
        let families: Vec<uuid::Uuid> = newest.keys().copied().collect();
        for family in self.ended(&families).await? {
            newest.remove(&family);
        }
        let mut sessions: Vec<RefreshRecord> = newest.into_values().collect();
        sessions.sort_by_key(|r| std::cmp::Reverse(r.issued_at));
        Ok(sessions)
    }

    async fn revoke_family(&self, family_id: uuid::Uuid) -> Result<u32, StoreError> {
        // The tombstone is what ends the session: every exchange checks it in its own
        // transaction. The family index is eventually consistent and a rotation may commit
        // between reading it and deleting, so the deletions below only reclaim space. The clock
        // is read here (the signature takes no `now`) only for the tombstone's lifetime.
        self.client
            .put_item()
            .table_name(&self.tables.refresh)
            .item("token_hash", s(tombstone_key(family_id)))
            .item(
                "expires_at",
                n(crate::clock::now() + FAMILY_TOMBSTONE_SECONDS),
            )
            .send()
            .await
            .map_err(unavailable)?;
        let items = match self
            .refresh_by(FAMILY_INDEX, "family_id", family_id.to_string())
            .await
        {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(%family_id, error = %e, "ended session's tokens not listed for deletion");
                return Ok(0);
            }
        };
        let mut deleted = 0u32;
        for hash in items.iter().filter_map(|item| get_s(item, "token_hash")) {
            match self
                .client
                .delete_item()
                .table_name(&self.tables.refresh)
                .key("token_hash", s(hash))
                .send()
                .await
            {
                Ok(_) => deleted += 1,
                Err(e) => {
                    tracing::warn!(%family_id, error = %unavailable(e), "ended session's token not deleted");
                }
            }
        }
        Ok(deleted)
    }

    async fn revoke_user(&self, user: UserId) -> Result<u32, StoreError> {
        // Ended sessions included: their tokens are deleted only best effort.
        let mut families: Vec<uuid::Uuid> = Vec::new();
        for item in self
            .refresh_by(USER_INDEX, "user_id", user.to_string())
            .await?
        {
            let family = refresh_from(&item)?.family_id;
            if !families.contains(&family) {
                families.push(family);
            }
        }
        let mut deleted = 0;
        for family in families {
            deleted += self.revoke_family(family).await?;
        }
        Ok(deleted)
    }
}

impl DynamoStore {
    /// Which of `families` have a tombstone (read consistently, 100 keys a request, DynamoDB's
    /// batch size).
    async fn ended(&self, families: &[uuid::Uuid]) -> Result<Vec<uuid::Uuid>, StoreError> {
        let mut ended = Vec::new();
        for chunk in families.chunks(100) {
            let keys = chunk
                .iter()
                .map(|family| Item::from([("token_hash".to_owned(), s(tombstone_key(*family)))]))
                .collect();
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?,
            );
            // What DynamoDB leaves unprocessed (throttling) is asked once more, then reported.
            for _ in 0..2 {
                let Some(request) = pending.take() else { break };
                let answer = self
                    .client
                    .batch_get_item()
                    .request_items(&self.tables.refresh, request)
                    .send()
                    .await
                    .map_err(unavailable)?;
                let found = answer
                    .responses()
                    .and_then(|r| r.get(&self.tables.refresh))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                ended.extend(found.iter().filter_map(|item| {
                    get_s(item, "token_hash")?
                        .strip_prefix(FAMILY_TOMBSTONE_PREFIX)
                        .and_then(|id| uuid::Uuid::parse_str(id).ok())
                }));
                pending = answer
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.tables.refresh))
                    .filter(|k| !k.keys().is_empty())
                    .cloned();
            }
            if pending.is_some() {
                return Err(StoreError::Unavailable(
                    "session tombstones left unprocessed".into(),
                ));
            }
        }
        Ok(ended)
    }

    /// Every refresh-token item whose `attribute` is `value`, through the GSI `index`, all pages.
    async fn refresh_by(
        &self,
        index: &str,
        attribute: &str,
        value: String,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.tables.refresh)
                .index_name(index)
                .key_condition_expression("#k = :v")
                .expression_attribute_names("#k", attribute)
                .expression_attribute_values(":v", s(value.clone()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

fn string_attribute(name: &str) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

fn index(
    name: &str,
    attribute: &str,
    projection: ProjectionType,
) -> Result<GlobalSecondaryIndex, StoreError> {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(attribute, KeyType::Hash)?)
        .projection(Projection::builder().projection_type(projection).build())
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

async fn create_table(
    client: &Client,
    name: &str,
    pk: &str,
    sort_key: Option<&str>,
    gsi: Option<(GlobalSecondaryIndex, &str)>,
) -> Result<(), StoreError> {
    let mut request = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key(pk, KeyType::Hash)?)
        .attribute_definitions(string_attribute(pk)?);
    if let Some(sk) = sort_key {
        let number = AttributeDefinition::builder()
            .attribute_name(sk)
            .attribute_type(ScalarAttributeType::N)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        request = request
            .key_schema(key(sk, KeyType::Range)?)
            .attribute_definitions(number);
    }
    if let Some((index, attribute)) = gsi {
        request = request
            .attribute_definitions(string_attribute(attribute)?)
            .global_secondary_indexes(index);
    }
    match request.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_resource_in_use_exception()) => {}
        Err(e) => return Err(unavailable(e)),
    }
    // Real DynamoDB creates tables asynchronously; wait until it can take writes.
    for _ in 0..120 {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(unavailable)?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(StoreError::Unavailable(format!(
        "table {name} did not become active"
    )))
}

/// Adds the GSI `index` on `attribute` (all attributes projected) to `table` unless it has it, and
/// waits until it can be queried.
async fn ensure_index(
    client: &Client,
    table: &str,
    index: &str,
    attribute: &str,
) -> Result<(), StoreError> {
    let has_index = |out: &aws_sdk_dynamodb::operation::describe_table::DescribeTableOutput| {
        out.table()
            .map(|t| t.global_secondary_indexes())
            .unwrap_or_default()
            .iter()
            .find(|i| i.index_name() == Some(index))
            .map(|i| i.index_status() == Some(&IndexStatus::Active))
    };
    for attempt in 0..120 {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(unavailable)?;
        match has_index(&out) {
            Some(true) => return Ok(()),
            Some(false) => {}
            None if attempt == 0 => {
                let create = CreateGlobalSecondaryIndexAction::builder()
                    .index_name(index)
                    .key_schema(key(attribute, KeyType::Hash)?)
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                client
                    .update_table()
                    .table_name(table)
                    .attribute_definitions(string_attribute(attribute)?)
                    .global_secondary_index_updates(
                        GlobalSecondaryIndexUpdate::builder().create(create).build(),
                    )
                    .send()
                    .await
                    .map_err(unavailable)?;
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(StoreError::Unavailable(format!(
        "index {index} on {table} did not become active"
    )))
}

/// Turns on TTL on `expires_at`; running again is fine.
async fn enable_ttl(client: &Client, table: &str) -> Result<(), StoreError> {
    let ttl = TimeToLiveSpecification::builder()
        .attribute_name("expires_at")
        .enabled(true)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    match client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(ttl)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Running again: DynamoDB says TTL "is already enabled" as a ValidationException.
        Err(e)
            if e.as_service_error()
                .and_then(|se| se.message())
                .is_some_and(|m| m.contains("already enabled")) =>
        {
            Ok(())
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Creates the tables if missing (on-demand billing) and turns on TTL. Safe to run again.
pub async fn create_tables(client: &Client, tables: &TableNames) -> Result<(), StoreError> {
    let email_index = index(EMAIL_INDEX, "email", ProjectionType::All)?;
    create_table(
        client,
        &tables.users,
        "user_id",
        None,
        Some((email_index, "email")),
    )
    .await?;
    let family_index = index(FAMILY_INDEX, "family_id", ProjectionType::KeysOnly)?;
    create_table(
        client,
        &tables.refresh,
        "token_hash",
        None,
        Some((family_index, "family_id")),
    )
    .await?;
    // Added to tables made before it existed, too.
    ensure_index(client, &tables.refresh, USER_INDEX, "user_id").await?;
    create_table(client, &tables.feed, "stream", Some("seq"), None).await?;
    create_table(client, &tables.audit, "user_id", Some("at"), None).await?;
    create_table(
        client,
        &tables.signing_keys,
        "key_set",
        Some("generation"),
        None,
    )
    .await?;
    enable_ttl(client, &tables.refresh).await?;
    enable_ttl(client, &tables.feed).await?;
    enable_ttl(client, &tables.audit).await
}

/// How long security events are kept (DynamoDB TTL): a year.
const AUDIT_RETENTION_SECONDS: i64 = 365 * 24 * 3600;

/// Events under `user_id`, sorted by `at` = milliseconds × 1000 plus a random tie-breaker, so two
/// events of one user in the same millisecond are both kept.
#[async_trait::async_trait]
impl AuditLog for DynamoStore {
    async fn record(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut requests = Vec::with_capacity(events.len());
        for event in events {
            let tie = i64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 1000);
            let mut item: Item = HashMap::from([
                ("user_id".to_owned(), s(event.user_id.clone())),
                (
                    "at".to_owned(),
                    n(event.at_ms.saturating_mul(1000).saturating_add(tie)),
                ),
                ("event".to_owned(), s(event.event.clone())),
                (
                    "expires_at".to_owned(),
                    n(event.at_ms / 1000 + AUDIT_RETENTION_SECONDS),
                ),
            ]);
            if let Some(ip) = &event.client_ip {
                item.insert("client_ip".to_owned(), s(ip.clone()));
            }
            if let Some(id) = &event.request_id {
                item.insert("request_id".to_owned(), s(id.clone()));
            }
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        self.write_audit_batch(requests).await
    }

    async fn for_user(&self, user_id: &str, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let items = self.audit_items(user_id, Some(limit)).await?;
        items
            .iter()
            .map(|item| {
                Ok(AuditEvent {
                    user_id: user_id.to_owned(),
                    at_ms: get_n(item, "at").ok_or_else(|| corrupt("audit event"))? / 1000,
                    event: get_s(item, "event")
                        .ok_or_else(|| corrupt("audit event"))?
                        .to_owned(),
                    client_ip: get_s(item, "client_ip").map(str::to_owned),
                    request_id: get_s(item, "request_id").map(str::to_owned),
                })
            })
            .collect()
    }

    async fn pseudonymise(&self, user_id: &str) -> Result<u32, StoreError> {
        let mut changed = Vec::new();
        for mut item in self.audit_items(user_id, None).await? {
            let Some(ip) = get_s(&item, "client_ip") else {
                continue;
            };
            let network = crate::audit::network_of(ip);
            if network != ip {
                item.insert("client_ip".to_owned(), s(network));
                changed.push(item);
            }
        }
        // Rewritten whole, so a retry after a failure part-way finds the rest to do.
        for batch in changed.chunks(25) {
            let requests = batch
                .iter()
                .map(|item| {
                    PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map(|put| WriteRequest::builder().put_request(put).build())
                        .map_err(|e| StoreError::Unavailable(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.write_audit_batch(requests).await?;
        }
        Ok(u32::try_from(changed.len()).unwrap_or(u32::MAX))
    }
}

impl DynamoStore {
    /// Writes up to 25 audit items in one `BatchWriteItem`. What DynamoDB leaves unprocessed
    /// (throttling) is sent once more, then reported.
    async fn write_audit_batch(&self, requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        let mut pending = requests;
        for _ in 0..2 {
            if pending.is_empty() {
                return Ok(());
            }
            let answer = self
                .client
                .batch_write_item()
                .request_items(&self.tables.audit, pending)
                .send()
                .await
                .map_err(unavailable)?;
            pending = answer
                .unprocessed_items()
                .and_then(|items| items.get(&self.tables.audit))
                .cloned()
                .unwrap_or_default();
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "{} audit events left unprocessed",
                pending.len()
            )))
        }
    }

    /// The audit items of `user_id`, newest first: at most `limit`, or all of them, page by page.
    async fn audit_items(
        &self,
        user_id: &str,
        limit: Option<u32>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let wanted =
                limit.map(|l| l.saturating_sub(u32::try_from(items.len()).unwrap_or(u32::MAX)));
            if wanted == Some(0) {
                return Ok(items);
            }
            let out = self
                .client
                .query()
                .table_name(&self.tables.audit)
                .key_condition_expression("user_id = :u")
                .expression_attribute_values(":u", s(user_id))
                .scan_index_forward(false)
                .set_limit(wanted.map(|w| i32::try_from(w).unwrap_or(i32::MAX)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }
}

/// The pause before attempt `attempt` (1, 2, …) of a transaction that lost a race: up to 10, 20,
/// 40 … 160 ms, at least half of it, the rest at random, so that two racers (two tabs, two
/// instances) that lost together do not meet again.
async fn pause_before_retry(attempt: u32) {
    let most = 10u64 << (attempt - 1).min(4);
    let jitter = u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng)) % (most / 2 + 1);
    tokio::time::sleep(Duration::from_millis(most / 2 + jitter)).await;
}

const FEED_STREAM: &str = "revocations";
const COUNTER_STREAM: &str = "counter";

/// What the feed's counter item says, with this instance's `feed_partitions`.
struct FeedCounter {
    /// The last number taken: every entry up to it has committed.
    last: i64,
    /// The keys to write and read under: the most any instance has written with (recorded in the
    /// counter with each commit, so it never falls), or this instance's own count if higher. An
    /// instance still configured with fewer keys while the fleet is raised to more, or lowered
    /// again, writes and reads every key the feed may hold an entry under.
    partitions: u8,
}

/// The partition key of entry `seq` when the feed is spread over `partitions` keys: `revocations`
/// when `seq % partitions` is 0 (so one partition is the layout from before partitions), else
/// `revocations#<seq % partitions>`. DynamoDB takes about 1,000 write units a second per
/// partition and a transactional put costs 2: one key caps appends near 500 a second.
fn feed_stream(seq: u64, partitions: u8) -> String {
    match seq % u64::from(partitions.max(1)) {
        0 => FEED_STREAM.to_string(),
        rest => format!("{FEED_STREAM}#{rest}"),
    }
}

/// One partition's entries after `after` (up to `through`, if given), at most `limit`, with
/// whether it may hold more.
async fn read_feed_partition(
    client: Client,
    table: String,
    stream: String,
    (after, through): (i64, Option<i64>),
    limit: u32,
) -> Result<(Vec<FeedEntry>, bool), StoreError> {
    let query = client
        .query()
        .table_name(table)
        .expression_attribute_names("#stream", "stream")
        .expression_attribute_names("#seq", "seq")
        .expression_attribute_values(":stream", s(stream))
        .consistent_read(true)
        .limit(i32::try_from(limit).unwrap_or(i32::MAX));
    let query = match through {
        None => query
            .key_condition_expression("#stream = :stream AND #seq > :after")
            .expression_attribute_values(":after", n(after)),
        // BETWEEN is inclusive: `after` itself was read before.
        Some(through) => query
            .key_condition_expression("#stream = :stream AND #seq BETWEEN :first AND :through")
            .expression_attribute_values(":first", n(after.saturating_add(1)))
            .expression_attribute_values(":through", n(through)),
    };
    let out = query.send().await.map_err(unavailable)?;
    let entries = out
        .items()
        .iter()
        .map(|item| {
            let seq = get_n(item, "seq")
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| corrupt("feed seq"))?;
            let jws = get_s(item, "jws").ok_or_else(|| corrupt("feed entry"))?;
            Ok(FeedEntry {
                seq,
                jws: jws.to_owned(),
                expires_at: get_n(item, "expires_at").unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok((entries, out.last_evaluated_key().is_some()))
}

/// A page of the feed from what each partition gave ([`read_feed_partition`]): the live entries
/// after `cursor`, in order, at most `limit` examined, and the cursor to resume from.
///
/// Every entry up to `committed` has committed. A partition that may hold more bounds what is
/// known: its next entries may have smaller numbers than another partition's last, so nothing
/// past its last entry is examined. Expired entries (TTL deletion runs late) move the cursor but
/// are not served.
fn merge_feed_partitions(
    partitions: Vec<(Vec<FeedEntry>, bool)>,
    cursor: u64,
    committed: u64,
    limit: u32,
    now: i64,
) -> (Vec<FeedEntry>, u64) {
    let known = partitions
        .iter()
        .filter(|(_, more)| *more)
        .map(|(entries, _)| entries.last().map_or(cursor, |e| e.seq))
        .fold(committed, u64::min);
    let mut examined: Vec<FeedEntry> = partitions
        .into_iter()
        .flat_map(|(entries, _)| entries)
        .filter(|e| e.seq > cursor && e.seq <= known)
        .collect();
    examined.sort_unstable_by_key(|e| e.seq);
    let mut next = known.max(cursor);
    if let Ok(limit) = usize::try_from(limit) {
        if examined.len() > limit {
            examined.truncate(limit);
            next = examined.last().map_or(cursor, |e| e.seq);
        }
    }
    let live = examined
        .into_iter()
        .filter(|e| e.expires_at > now)
        .collect();
    (live, next)
}

/// Attempts to append when other instances append at the same moment: about a second of pauses.
const APPEND_ATTEMPTS: u32 = 10;

/// The feed: entries under `stream = revocations` (or spread over `feed_partitions` keys,
/// [`feed_stream`]), sorted by `seq`; the counter is the item `stream = counter, seq = 0` with
/// attribute `last`. Entries and the counter bump commit in one transaction conditioned on the
/// counter's previous value, so entries become visible strictly in `seq` order: a reader at
/// cursor N never misses an entry written later with a smaller number. A reader reads the
/// counter first and each key up to it ([`merge_feed_partitions`]); the counter records how
/// many keys the entries may be under ([`FeedCounter`]), so instances configured with different
/// counts during a rollout all read every entry.
#[async_trait::async_trait]
impl RevocationFeed for DynamoStore {
    async fn append_many(
        &self,
        entries: &[(&MakeEntry<'_>, i64)],
    ) -> Result<Vec<FeedEntry>, StoreError> {
        if entries.is_empty() || entries.len() > MAX_APPEND {
            return Err(StoreError::Unavailable(format!(
                "revocation feed: {} entries in one append (1 to {MAX_APPEND})",
                entries.len()
            )));
        }
        let count = i64::try_from(entries.len()).map_err(|_| corrupt("feed batch"))?;
        for attempt in 0..APPEND_ATTEMPTS {
            if attempt > 0 {
                pause_before_retry(attempt).await;
            }
            let FeedCounter { last, partitions } = self.feed_counter().await?;
            let first = u64::try_from(last + 1).map_err(|_| corrupt("feed counter"))?;
            let bump = Update::builder()
                .table_name(&self.tables.feed)
                .key("stream", s(COUNTER_STREAM))
                .key("seq", n(0))
                .update_expression("SET #last = :next, #partitions = :partitions")
                .expression_attribute_names("#last", "last")
                .expression_attribute_names("#partitions", "partitions")
                .expression_attribute_values(":next", n(last + count))
                .expression_attribute_values(":partitions", n(i64::from(partitions)));
            let bump = if last == 0 {
                bump.condition_expression("attribute_not_exists(#last)")
            } else {
                bump.condition_expression("#last = :last")
                    .expression_attribute_values(":last", n(last))
            }
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let mut made = Vec::with_capacity(entries.len());
            let mut puts = Vec::with_capacity(entries.len());
            for (seq, (make, expires_at)) in (first..).zip(entries) {
                // The number is inside the signed entry: made again on every attempt.
                let jws = make(seq)?;
                puts.push(
                    Put::builder()
                        .table_name(&self.tables.feed)
                        .item("stream", s(feed_stream(seq, partitions)))
                        .item(
                            "seq",
                            n(i64::try_from(seq).map_err(|_| corrupt("feed seq"))?),
                        )
                        .item("jws", s(&jws))
                        .item("expires_at", n(*expires_at))
                        .condition_expression("attribute_not_exists(seq)")
                        .build()
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                );
                made.push(FeedEntry {
                    seq,
                    jws,
                    expires_at: *expires_at,
                });
            }
            match self.update_and_put_all(bump, puts).await {
                Ok(()) => return Ok(made),
                // Another instance took these numbers: read the counter again.
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e),
            }
        }
        // Contention, not a fault: the caller answers 503 and the client retries.
        Err(StoreError::Unavailable(format!(
            "revocation feed: {APPEND_ATTEMPTS} appends in a row lost the race for the next number"
        )))
    }

    async fn read_after(
        &self,
        cursor: u64,
        limit: u32,
        now: i64,
    ) -> Result<(Vec<FeedEntry>, u64), StoreError> {
        let after = i64::try_from(cursor).map_err(|_| StoreError::NotFound)?;
        let table = self.tables.feed.clone();
        // The counter first: an entry commits with its counter bump (one transaction, which a
        // consistent GetItem is serialised with), so every entry up to this value is visible to
        // the queries that follow, and an entry committed meanwhile is past it. It also says
        // which keys the entries up to it may be under.
        let FeedCounter {
            last: committed,
            partitions,
        } = self.feed_counter().await?;
        if committed <= after {
            return Ok((Vec::new(), cursor));
        }
        let mut reads = tokio::task::JoinSet::new();
        for partition in 0..partitions {
            reads.spawn(read_feed_partition(
                self.client.clone(),
                table.clone(),
                feed_stream(u64::from(partition), partitions),
                (after, Some(committed)),
                limit,
            ));
        }
        let mut read = Vec::with_capacity(usize::from(partitions));
        while let Some(partition) = reads.join_next().await {
            read.push(partition.map_err(|e| StoreError::Unavailable(e.to_string()))??);
        }
        let committed = u64::try_from(committed).map_err(|_| corrupt("feed counter"))?;
        Ok(merge_feed_partitions(read, cursor, committed, limit, now))
    }
}

/// The one partition of the signing-keys table: the keys are few and always read together.
const SIGNING_KEY_SET: &str = "signing";

fn stored_key(item: &Item) -> Result<StoredKey, StoreError> {
    let text = |name: &str| {
        get_s(item, name)
            .map(str::to_owned)
            .ok_or_else(|| corrupt("signing key"))
    };
    let number = |name: &str| get_n(item, name).ok_or_else(|| corrupt("signing key"));
    Ok(StoredKey {
        generation: u64::try_from(number("generation")?).map_err(|_| corrupt("signing key"))?,
        kid: text("kid")?,
        alg: text("alg")?,
        signs_from: number("signs_from")?,
        created_at: number("created_at")?,
        scheme: text("scheme")?,
        sealed: item
            .get("sealed")
            .and_then(|v| v.as_b().ok())
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| corrupt("signing key"))?,
    })
}

#[async_trait::async_trait]
impl SigningKeyStore for DynamoStore {
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.tables.signing_keys)
                .key_condition_expression("key_set = :set")
                .expression_attribute_values(":set", s(SIGNING_KEY_SET))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            for item in page.items() {
                keys.push(stored_key(item)?);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(keys);
            }
        }
    }

    async fn add_signing_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        let generation = i64::try_from(key.generation).map_err(|_| corrupt("signing key"))?;
        self.client
            .put_item()
            .table_name(&self.tables.signing_keys)
            .item("key_set", s(SIGNING_KEY_SET))
            .item("generation", n(generation))
            .item("kid", s(&key.kid))
            .item("alg", s(&key.alg))
            .item("signs_from", n(key.signs_from))
            .item("created_at", n(key.created_at))
            .item("scheme", s(&key.scheme))
            .item(
                "sealed",
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(key.sealed.clone())),
            )
            .condition_expression("attribute_not_exists(generation)")
            .send()
            .await
            .map_err(|e| condition_failed_as(e, StoreError::Conflict))?;
        Ok(())
    }

    async fn delete_signing_key(&self, generation: u64) -> Result<bool, StoreError> {
        let generation = i64::try_from(generation).map_err(|_| corrupt("signing key"))?;
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.tables.signing_keys)
            .key("key_set", s(SIGNING_KEY_SET))
            .key("generation", n(generation))
            .condition_expression("attribute_exists(generation)")
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(true),
            Err(e) => match condition_failed_as(e, StoreError::NotFound) {
                StoreError::NotFound => Ok(false),
                other => Err(other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(seqs: &[u64], expires_at: i64) -> Vec<FeedEntry> {
        seqs.iter()
            .map(|&seq| FeedEntry {
                seq,
                jws: format!("entry-{seq}"),
                expires_at,
            })
            .collect()
    }

    fn seqs(page: &[FeedEntry]) -> Vec<u64> {
        page.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn entries_are_placed_on_one_key_or_spread_by_number() {
        assert_eq!(feed_stream(7, 1), "revocations");
        assert_eq!(feed_stream(8, 4), "revocations");
        assert_eq!(feed_stream(7, 4), "revocations#3");
        let keys: std::collections::BTreeSet<String> =
            (1..=40).map(|seq| feed_stream(seq, 4)).collect();
        assert_eq!(keys.len(), 4);
    }

    /// A partition whose page was full may hold entries below another partition's last: a page
    /// that served past its last entry would move the reader's cursor over them for good.
    #[test]
    fn a_merged_page_stops_at_the_last_entry_of_a_partition_that_has_more() {
        let even = (entries(&[2, 4, 6], 100), true);
        let odd = (entries(&[1, 3, 5, 7, 9, 11], 100), false);
        let (page, next) = merge_feed_partitions(vec![odd, even], 0, 11, 100, 50);
        assert_eq!((seqs(&page), next), (vec![1, 2, 3, 4, 5, 6], 6));
        // Read on from there, the even partition's next page comes with the rest.
        let even = (entries(&[8, 10], 100), false);
        let odd = (entries(&[7, 9, 11], 100), false);
        let (page, next) = merge_feed_partitions(vec![even, odd], 6, 11, 100, 50);
        assert_eq!((seqs(&page), next), (vec![7, 8, 9, 10, 11], 11));
    }

    #[test]
    fn a_merged_page_holds_at_most_the_limit_in_order() {
        let a = (entries(&[4, 1], 100), false);
        let b = (entries(&[3, 2, 5], 100), false);
        let (page, next) = merge_feed_partitions(vec![a, b], 0, 5, 3, 50);
        assert_eq!((seqs(&page), next), (vec![1, 2, 3], 3));
    }

    /// TTL deletion runs late and removes entries: numbers with no entry up to the counter, or
    /// entries expired, are passed over by the cursor but never served.
    #[test]
    fn expired_and_deleted_entries_move_the_cursor_and_are_not_served() {
        let live = (entries(&[6], 100), false);
        let expired = (entries(&[3, 5], 40), false);
        let (page, next) = merge_feed_partitions(vec![live, expired], 2, 9, 100, 50);
        assert_eq!((seqs(&page), next), (vec![6], 9));
        // Nothing after the cursor: it stays, never moves back.
        let (page, next) = merge_feed_partitions(vec![(Vec::new(), false)], 12, 12, 100, 50);
        assert_eq!((page.len(), next), (0, 12));
    }

    fn codes(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn an_ended_session_is_never_reported_as_a_replay() {
        let ended = Some(Cancelled::Refused(Exchange::SessionEnded));
        // Tombstone, revoke-all: whatever the token's own condition says.
        for reasons in [
            ["ConditionalCheckFailed", "None", "None", "None"],
            [
                "None",
                "ConditionalCheckFailed",
                "ConditionalCheckFailed",
                "None",
            ],
            [
                "ConditionalCheckFailed",
                "None",
                "TransactionConflict",
                "None",
            ],
        ] {
            assert_eq!(exchange_cancelled(&codes(&reasons)), ended, "{reasons:?}");
        }
        assert_eq!(
            exchange_cancelled(&codes(&["None", "None", "ConditionalCheckFailed", "None"])),
            Some(Cancelled::Refused(Exchange::Spent))
        );
    }

    #[test]
    fn a_lost_race_is_tried_again_not_taken_for_reuse() {
        for reasons in [
            &["None", "None", "TransactionConflict", "None"][..],
            &["TransactionConflict", "None", "None"][..],
            // The token's condition may be judged before the other transaction commits: only
            // the next try tells whether it was consumed.
            &[
                "None",
                "None",
                "ConditionalCheckFailed",
                "TransactionConflict",
            ][..],
        ] {
            assert_eq!(
                exchange_cancelled(&codes(reasons)),
                Some(Cancelled::Raced),
                "{reasons:?}"
            );
        }
        // Anything else is the store failing: 503, not an answer.
        assert_eq!(
            exchange_cancelled(&codes(&["None", "None", "ThrottlingError"])),
            None
        );
        assert_eq!(exchange_cancelled(&[]), None);
    }

    #[test]
    fn a_tombstone_outlives_every_refresh_token_the_configuration_allows() {
        let config = |ttl: i64| {
            let env = HashMap::from([
                ("EDGEAUTH_ISSUER", "https://auth.example.test".to_owned()),
                ("EDGEAUTH_AUDIENCE", "api.example.test".to_owned()),
                ("EDGEAUTH_REFRESH_TOKEN_TTL_SECONDS", ttl.to_string()),
            ]);
            crate::config::Config::from_sources(None, |k| env.get(k).cloned())
        };
        assert!(config(FAMILY_TOMBSTONE_SECONDS).is_ok());
        assert!(config(FAMILY_TOMBSTONE_SECONDS + 1).is_err());
    }
}
