//! Start-up: from a validated [`Config`] to an [`AppState`], with the embedded DynamoDB when
//! nothing else is configured.

use std::{path::Path, sync::Arc};

use anyhow::Context;

use crate::{
    audit::Audit,
    auth::SelfVerifier,
    config::{Config, Storage},
    deny_list::DenyListKeeper,
    edge_push::EdgePush,
    feed_appender::FeedAppender,
    feed_tail::FeedTail,
    key_encryption::{KeyEncryption, LocalKek, Sealer},
    key_rotation::{KeyContext, SigningKeys},
    mail::Mailer,
    password::PasswordHasher,
    rate_limit::{MemoryRateLimiter, RateLimiter, RedisRateLimiter},
    soft_lock::{
        CaptchaVerifier, EmailPseudonyms, FailureCounter, LoginGuard, MemoryFailureCounter,
        RedisFailureCounter, SecondFactorGuard,
    },
    state::AppState,
    store::deny::{MemoryDenyList, RedisDenyList},
    store::dynamo::{client_for_endpoint, client_from_env, create_tables, DynamoStore, TableNames},
    store::profile_cache::{MemoryProfileCache, ProfileCache, RedisProfileCache},
    store::redis_connection::RedisConnection,
    store::DenyList,
};

/// A rate-limit decision waits this long for Redis before the request goes through unlimited.
const RATE_LIMIT_REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

/// File name of the embedded database under `data_dir`.
pub const EMBEDDED_DB_FILE: &str = "dynamodb.sqlite";
/// The key file of earlier versions under `data_dir`, imported into an empty `SigningKeys`
/// table.
pub const LEGACY_KEY_FILE: &str = "signing-keys.json";

/// Starts dynoxide in-process on a loopback port over a file in `data_dir`, returning its
/// endpoint URL. Accounts survive restarts because the file does.
async fn start_embedded_dynamodb(data_dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let path = data_dir.join(EMBEDDED_DB_FILE);
    let db = dynoxide::Database::new(&path.to_string_lossy())
        .map_err(|e| anyhow::anyhow!("cannot open embedded database {}: {e}", path.display()))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot bind the embedded DynamoDB listener")?;
    let addr = listener.local_addr()?;
    tokio::spawn(dynoxide::server::serve_on(listener, db));
    Ok(format!("http://{addr}"))
}

/// Builds the application state. In the embedded mode the tables are created if missing; with
/// real DynamoDB they are created by `origin create-tables` (deployments create tables once,
/// with their own permissions, not on every start).
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    let tables = TableNames::new(&config.table_prefix);
    let client = match (&config.storage, &config.dynamodb_endpoint) {
        (Storage::Embedded, _) => {
            let endpoint = start_embedded_dynamodb(&config.data_dir).await?;
            let client = client_for_endpoint(&endpoint, &config.dynamodb_region).await;
            create_tables(&client, &tables)
                .await
                .context("cannot create the embedded tables")?;
            client
        }
        (Storage::Dynamodb, Some(endpoint)) => {
            client_for_endpoint(endpoint, &config.dynamodb_region).await
        }
        (Storage::Dynamodb, None) => client_from_env(&config.dynamodb_region).await,
    };
    let passwords = PasswordHasher::new(
        config.argon2,
        config.hashing_concurrency,
        config.hashing_queue,
    )?;
    let kek = match &config.signing_keys.encryption {
        Some(KeyEncryption::Local { key }) => key.clone(),
        // Only the embedded mode may leave it unset (checked with the configuration).
        None => LocalKek::load_or_create_embedded(&config.data_dir)?,
    };
    // The signing keys and the TOTP secrets are sealed under the one KEK.
    let store = Arc::new(
        DynamoStore::new(client, &tables, Sealer::local(&kek))
            .with_feed_partitions(config.feed_partitions),
    );
    let verifier = SelfVerifier::new(&config.issuer, &config.audience)?;
    let audit = Audit::new(store.clone());
    let sealer = Sealer::local(&kek);
    let pseudonyms = EmailPseudonyms::new(&kek);
    let keys = SigningKeys::new(
        store.clone(),
        sealer,
        KeyContext {
            settings: config.signing_keys.clone(),
            algorithm: config.signing_algorithm,
            access_ttl_seconds: config.access_token_ttl_seconds,
            verifier_policy: verifier.policy().clone(),
            legacy_key_file: config.data_dir.join(LEGACY_KEY_FILE),
        },
        audit.clone(),
    );
    // An instance that cannot read its keys yet still starts: it answers 503 and is not ready
    // until the background refresh reads them.
    if let Err(error) = keys.refresh(crate::clock::now()).await {
        tracing::warn!(%error, "signing keys not read at start; retrying every second");
    }
    keys.spawn_refresh();
    let verifier = Arc::new(verifier);
    let deny_list: Arc<dyn DenyList> = match &config.redis_denylist {
        Some(target) => {
            let redis = RedisDenyList::new(target)?;
            redis.check_no_eviction().await?;
            Arc::new(redis)
        }
        None => Arc::new(MemoryDenyList::default()),
    };
    let deny_list = DenyListKeeper::new(deny_list, store.clone(), keys.clone(), verifier.clone());
    // As with the keys: an instance that cannot rebuild yet starts, answers 503 to tokens and is
    // not ready until the upkeep has rebuilt the list.
    if let Err(error) = deny_list.rebuild(crate::clock::now()).await {
        tracing::warn!(%error, "deny-list not rebuilt from the feed at start; retrying");
    }
    deny_list.spawn_upkeep();
    spawn_deny_list_count(deny_list.clone());
    let feed_tail = FeedTail::default();
    feed_tail.spawn_refresh(store.clone());
    // Rate limits are security state every instance must share, like the deny-list: they live
    // in the same Redis, or in-process when the deny-list is.
    let rate_limiter: Arc<dyn RateLimiter> = match &config.redis_denylist {
        Some(target) => Arc::new(RedisRateLimiter::new(
            RedisConnection::new(target, RATE_LIMIT_REDIS_TIMEOUT, "rate_limit")?,
            &config.table_prefix,
        )),
        None => Arc::new(MemoryRateLimiter::default()),
    };
    let failures: Arc<dyn FailureCounter> = match &config.redis_denylist {
        Some(target) => Arc::new(RedisFailureCounter::new(
            RedisConnection::new(target, RATE_LIMIT_REDIS_TIMEOUT, "soft_lock")?,
            &config.table_prefix,
        )),
        None => Arc::new(MemoryFailureCounter::default()),
    };
    let captcha = match &config.captcha {
        Some(captcha) => Some(CaptchaVerifier::new(captcha).context("captcha")?),
        None => None,
    };
    let second_factor_guard = SecondFactorGuard::new(failures.clone(), config.second_factor_lock);
    let login_guard = LoginGuard::new(failures, captcha, config.soft_lock);
    let profile_cache: Arc<dyn ProfileCache> = match &config.redis_cache {
        Some(target) => Arc::new(RedisProfileCache::new(target)?),
        None => Arc::new(MemoryProfileCache::default()),
    };
    let edge_push = EdgePush::new(&config.edge_push_urls)?;
    let mailer = match &config.mail {
        Some(settings) => Mailer::start(settings)?,
        None => Mailer::disabled(),
    };
    Ok(AppState {
        mailer,
        audit,
        login_guard,
        second_factor_guard,
        pseudonyms,
        rate_limiter,
        edge_push,
        feed: store.clone(),
        feed_tail,
        feed_appender: FeedAppender::spawn(store.clone()),
        deny_list,
        profile_cache,
        verifier,
        config: Arc::new(config),
        keys,
        users: store.clone(),
        refresh: store,
        passwords,
    })
}

/// How often the deny-list's live entries are counted for the metrics.
const DENY_LIST_COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Counts the deny-list's live entries into the metrics every [`DENY_LIST_COUNT_EVERY`].
fn spawn_deny_list_count(deny_list: DenyListKeeper) {
    tokio::spawn(async move {
        loop {
            match deny_list.live_entries(crate::clock::now()).await {
                Ok(count) => crate::metrics::METRICS
                    .deny_list_entries(i64::try_from(count).unwrap_or(i64::MAX)),
                Err(error) => tracing::warn!(%error, "deny-list entries not counted"),
            }
            tokio::time::sleep(DENY_LIST_COUNT_EVERY).await;
        }
    });
}

/// `origin keys rotate`: adds a next key, published now and signing after the propagation
/// window; running instances pick it up on their next refresh. Prints the key as JSON. In the
/// embedded mode, with the server stopped (it holds the database file); the server rotates on
/// schedule by itself.
pub async fn rotate_keys_command(config: Config) -> anyhow::Result<()> {
    let state = build_state(config).await?;
    let added = state.keys.rotate(crate::clock::now()).await?;
    println!(
        "{}",
        serde_json::json!({"generation": added.generation, "kid": added.kid, "signs_from": added.signs_from})
    );
    Ok(())
}

/// `origin keys list`: every key with its state, one JSON object a line.
pub async fn list_keys_command(config: Config) -> anyhow::Result<()> {
    let state = build_state(config).await?;
    for key in state.keys.list(crate::clock::now()).await? {
        println!("{}", serde_json::to_string(&key)?);
    }
    Ok(())
}

/// `origin set-scopes <email> <scope>...`: replaces an account's scopes (an operator grants
/// `admin` this way; the scopes in `mfa_scopes` reach a token only after a second factor).
/// In the embedded mode, with the server stopped (it holds the database file).
pub async fn set_scopes_command(
    config: Config,
    email: &str,
    scopes: &[String],
) -> anyhow::Result<()> {
    let email = crate::api::accounts::normalise_email(email).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = build_state(config).await?;
    let user = state
        .users
        .find_by_email(&email)
        .await?
        .with_context(|| format!("no account has the email {email}"))?;
    state.users.set_scopes(user.id, scopes).await?;
    // The running instances' shared cache (Redis) would serve the old scopes for its TTL.
    state
        .profile_cache
        .invalidate(user.id)
        .await
        .context("scopes are set, but the profile cache still holds the old ones")?;
    println!("{} {}", user.id, scopes.join(" "));
    Ok(())
}

/// `origin create-tables`: idempotent.
pub async fn create_tables_command(config: &Config) -> anyhow::Result<()> {
    let tables = TableNames::new(&config.table_prefix);
    let client = match &config.dynamodb_endpoint {
        Some(endpoint) => client_for_endpoint(endpoint, &config.dynamodb_region).await,
        None => client_from_env(&config.dynamodb_region).await,
    };
    create_tables(&client, &tables).await?;
    Ok(())
}
