//! The deny-list as the origin uses it: a backend ([`crate::store::deny`]) kept complete from
//! the revocation feed, the durable record in DynamoDB.
//!
//! Redis loses what it holds when it restarts without persistence or is flushed, and a new
//! in-process list starts empty; either way revoked tokens would pass again. So the list is
//! rebuilt from the feed at start, and again whenever it is found incomplete: by a check every
//! [`CHECK_EVERY`], or by any read that finds it so. Until then what it does not hold is
//! answered `Unavailable`, which the policy refuses, never "not listed".

use std::{sync::Arc, time::Duration};

use edgeauth_core::{
    verify_revocation, DenyListStatus, Revocation, RevocationAnswer, RevocationCheck,
    RevocationError, WatermarkStatus,
};

use crate::{
    auth::SelfVerifier,
    key_rotation::SigningKeys,
    store::{DenyList, RevocationFeed, StoreError},
};

/// How often each instance checks that the list is still complete.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Feed entries read a page at a time in a rebuild.
const REBUILD_PAGE: u32 = 1000;

/// The deny-list, its feed, and what reads the feed back into it.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // the store trait objects have no Debug
pub struct DenyListKeeper {
    inner: Arc<Inner>,
}

struct Inner {
    list: Arc<dyn DenyList>,
    feed: Arc<dyn RevocationFeed>,
    /// The origin's own keys and policy: the feed entries are checked as an edge checks them.
    keys: SigningKeys,
    verifier: Arc<SelfVerifier>,
    /// Woken by a read that found the list incomplete.
    wanted: tokio::sync::Notify,
    /// One rebuild at a time in this instance.
    rebuilding: tokio::sync::Mutex<()>,
}

impl DenyListKeeper {
    /// A keeper of `list`, rebuilt from `feed`.
    pub fn new(
        list: Arc<dyn DenyList>,
        feed: Arc<dyn RevocationFeed>,
        keys: SigningKeys,
        verifier: Arc<SelfVerifier>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                list,
                feed,
                keys,
                verifier,
                wanted: tokio::sync::Notify::new(),
                rebuilding: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The leeway of the origin's own verifier: every entry is held this long past its expiry.
    fn leeway(&self) -> i64 {
        self.inner.verifier.policy().leeway_seconds()
    }

    /// Holds a revocation as long as a token it revokes can pass at this origin.
    pub async fn apply(&self, revocation: &Revocation, now: i64) -> Result<(), StoreError> {
        self.inner.list.apply(revocation, self.leeway(), now).await
    }

    /// The answer for a verified token; a list that cannot be read answers `Unavailable`, and
    /// one found incomplete is rebuilt.
    pub async fn answer(&self, check: &RevocationCheck, now: i64) -> RevocationAnswer {
        match self.inner.list.read(check, now).await {
            Ok(read) => {
                if !read.complete {
                    self.inner.wanted.notify_one();
                }
                read.answer
            }
            Err(error) => {
                tracing::warn!(%error, "deny-list unavailable");
                RevocationAnswer {
                    jti: DenyListStatus::Unavailable,
                    session: DenyListStatus::Unavailable,
                    user: WatermarkStatus::Unavailable,
                }
            }
        }
    }

    /// Readiness: the list answers and is complete.
    pub async fn ready(&self) -> Result<(), StoreError> {
        if self.inner.list.complete().await? {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "deny-list: rebuilding from the feed".into(),
            ))
        }
    }

    /// Live entries, for the metrics.
    pub async fn live_entries(&self, now: i64) -> Result<u64, StoreError> {
        self.inner.list.live_entries(now).await
    }

    /// Applies every live feed entry, all pages from the start, then marks the list complete.
    /// `false` if the list lost its contents meanwhile (it stays incomplete: run again).
    pub async fn rebuild(&self, now: i64) -> Result<bool, StoreError> {
        let _one = self.inner.rebuilding.lock().await;
        let keys = self
            .inner
            .keys
            .snapshot()
            .ok_or_else(|| StoreError::Unavailable("signing keys not loaded yet".into()))?;
        let policy = self.inner.verifier.policy();
        let leeway = self.leeway();
        let mark = self.inner.list.rebuild_started().await?;
        let (mut cursor, mut applied) = (0, 0u64);
        loop {
            // The feed leaves out entries past their `exp`; those still within the leeway are
            // wanted, so it is asked as of `leeway` seconds ago.
            let (entries, next) = self
                .inner
                .feed
                .read_after(cursor, REBUILD_PAGE, now - leeway)
                .await?;
            for entry in &entries {
                match verify_revocation(&entry.jws, now, &keys.ring, policy) {
                    Ok(revocation) => {
                        self.inner.list.apply(&revocation, leeway, now).await?;
                        applied += 1;
                    }
                    Err(RevocationError::Expired) => {}
                    // Signed by a key already retired, so every token it revokes (signed with
                    // that key or an older one) is refused as signed by an unknown key anyway.
                    Err(error) => {
                        tracing::warn!(seq = entry.seq, %error, "feed entry not applied");
                    }
                }
            }
            if next <= cursor {
                break;
            }
            cursor = next;
        }
        let complete = self.inner.list.rebuild_finished(&mark).await?;
        if complete {
            tracing::info!(applied, through = cursor, "deny-list rebuilt from the feed");
        } else {
            tracing::warn!("deny-list lost its contents during the rebuild; rebuilding again");
        }
        Ok(complete)
    }

    /// Checks every [`CHECK_EVERY`], and when a read found the list incomplete, and rebuilds it
    /// when it is. Stops once the keeper is dropped.
    pub fn spawn_upkeep(&self) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(keeper) = inner.upgrade().map(|inner| Self { inner }) else {
                    return;
                };
                tokio::select! {
                    () = keeper.inner.wanted.notified() => {}
                    () = tokio::time::sleep(CHECK_EVERY) => {}
                }
                match keeper.inner.list.complete().await {
                    Ok(true) => {}
                    Ok(false) => {
                        if let Err(error) = keeper.rebuild(crate::clock::now()).await {
                            tracing::warn!(%error, "deny-list not rebuilt; retrying");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "deny-list unavailable"),
                }
            }
        });
    }
}
