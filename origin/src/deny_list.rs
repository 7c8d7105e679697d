//! The deny-list as the origin uses it: a backend ([`crate::store::deny`]) kept complete from
//! the revocation feed, the durable record in DynamoDB.
//!
//! Redis loses what it holds when it restarts without persistence or is flushed, and a new
//! in-process list starts empty; either way revoked tokens would pass again. So the list is
//! rebuilt from the feed at start, and again whenever it is found incomplete: by a check every
//! [`CHECK_EVERY`], or by any read that finds it so. Until then what it does not hold is
//! answered `Unavailable`, which the policy refuses, never "not listed".
//!
//! A Redis can also lose a few writes and go on, complete in every other way: it answers a write
//! before it replicates it, so a replica promoted when its master fails (or a server restarted
//! from its append-only file) may lack the last entries it acknowledged. The check every
//! [`CHECK_EVERY`] also reads which servers hold the list ([`DenyList::holders`]); when they
//! changed, the feed is applied again from the start. And every instance applies the feed's new
//! entries on each check, so an entry whose write to the list failed (or that an instance of an
//! older version wrote elsewhere) is held everywhere within a check.
//!
//! Until then, each instance also holds in process every entry it applied or read from the feed,
//! and what either copy lists is refused: a write a failover lost is refused by the instance that
//! made it at once, and by the others from their next check, not only once the list is rebuilt.

use std::{sync::Arc, time::Duration};

use edgeauth_core::{
    verify_revocation, DenyListStatus, DenyState, Revocation, RevocationAnswer, RevocationCheck,
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
    /// How far this instance has applied the feed; one rebuild or catch-up at a time.
    applied: tokio::sync::Mutex<Applied>,
    /// What this instance applied or read from the feed, live entries only.
    held_here: std::sync::Mutex<DenyState>,
}

/// What this instance last applied to the list.
#[derive(Default)]
struct Applied {
    /// Every feed entry up to this `seq` has been applied since the last rebuild.
    through: u64,
    /// The list's holders when the last rebuild began (`None`: not read, or nothing to read).
    holders: Option<String>,
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
                applied: tokio::sync::Mutex::new(Applied::default()),
                held_here: std::sync::Mutex::new(DenyState::default()),
            }),
        }
    }

    /// The leeway of the origin's own verifier: every entry is held this long past its expiry.
    fn leeway(&self) -> i64 {
        self.inner.verifier.policy().leeway_seconds()
    }

    /// Holds a revocation as long as a token it revokes can pass at this origin.
    pub async fn apply(&self, revocation: &Revocation, now: i64) -> Result<(), StoreError> {
        self.hold(revocation, self.leeway(), now).await
    }

    /// Holds `revocation` here, then in the shared list.
    async fn hold(&self, revocation: &Revocation, leeway: i64, now: i64) -> Result<(), StoreError> {
        if let Ok(mut here) = self.inner.held_here.lock() {
            here.apply(revocation, leeway);
        }
        self.inner.list.apply(revocation, leeway, now).await
    }

    /// The answer for a verified token: the shared list's, with what this process holds added.
    /// A list that cannot be read answers `Unavailable` (so a revocation held here still
    /// refuses its token, as revoked), and one found incomplete is rebuilt.
    pub async fn answer(&self, check: &RevocationCheck, now: i64) -> RevocationAnswer {
        let shared = match self.inner.list.read(check, now).await {
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
        };
        match self.inner.held_here.lock() {
            Ok(here) => listed_in_either(shared, here.answer(check, now, true)),
            Err(_) => shared,
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
        let mut applied = self.inner.applied.lock().await;
        // Read first: holders that change during the rebuild make the next check rebuild again.
        let holders = match self.inner.list.holders().await {
            Ok(holders) => holders,
            Err(error) => {
                tracing::warn!(%error, "deny-list holders unknown");
                None
            }
        };
        let mark = self.inner.list.rebuild_started().await?;
        let (through, count) = self.apply_after(0, now).await?;
        let complete = self.inner.list.rebuild_finished(&mark).await?;
        if complete {
            *applied = Applied { through, holders };
            tracing::info!(applied = count, through, "deny-list rebuilt from the feed");
        } else {
            tracing::warn!("deny-list lost its contents during the rebuild; rebuilding again");
        }
        Ok(complete)
    }

    /// Applies the feed's entries after the last one this instance applied.
    async fn catch_up(&self, now: i64) -> Result<(), StoreError> {
        let mut applied = self.inner.applied.lock().await;
        let (through, _) = self.apply_after(applied.through, now).await?;
        applied.through = through;
        if let Ok(mut here) = self.inner.held_here.lock() {
            here.sweep(now);
        }
        Ok(())
    }

    /// Applies every live feed entry after `seq`, all pages: the last `seq` read, and how many
    /// entries were applied.
    async fn apply_after(&self, seq: u64, now: i64) -> Result<(u64, u64), StoreError> {
        let keys = self
            .inner
            .keys
            .snapshot()
            .ok_or_else(|| StoreError::Unavailable("signing keys not loaded yet".into()))?;
        let policy = self.inner.verifier.policy();
        let leeway = self.leeway();
        let (mut cursor, mut applied) = (seq, 0u64);
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
                        self.hold(&revocation, leeway, now).await?;
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
                return Ok((cursor, applied));
            }
            cursor = next;
        }
    }

    /// Whether the list's holders changed since the last rebuild began. Holders first known
    /// now (the rebuild could not read them) are taken as they are.
    async fn holders_changed(&self) -> Result<bool, StoreError> {
        let now = self.inner.list.holders().await?;
        let mut applied = self.inner.applied.lock().await;
        if applied.holders.is_none() {
            applied.holders = now;
            return Ok(false);
        }
        Ok(now.is_some() && applied.holders != now)
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
                let now = crate::clock::now();
                let rebuild = match keeper.inner.list.complete().await {
                    Ok(true) => match keeper.holders_changed().await {
                        Ok(true) => {
                            tracing::warn!("deny-list servers changed (a failover or a restart); applying the feed again");
                            true
                        }
                        Ok(false) => false,
                        // Not known now (a master failing over, say): asked again next time.
                        Err(error) => {
                            tracing::warn!(%error, "deny-list holders unknown");
                            false
                        }
                    },
                    Ok(false) => true,
                    Err(error) => {
                        tracing::warn!(%error, "deny-list unavailable");
                        continue;
                    }
                };
                let done = if rebuild {
                    keeper.rebuild(now).await.map(drop)
                } else {
                    keeper.catch_up(now).await
                };
                if let Err(error) = done {
                    tracing::warn!(%error, "deny-list not brought up to date with the feed; retrying");
                }
            }
        });
    }
}

/// The shared list's answer, with what the in-process copy lists added: a revocation either
/// holds is in force; otherwise the shared list's answer stands (its "unavailable" included).
fn listed_in_either(shared: RevocationAnswer, here: RevocationAnswer) -> RevocationAnswer {
    let listed = |shared: DenyListStatus, here: DenyListStatus| {
        if here == DenyListStatus::Listed {
            here
        } else {
            shared
        }
    };
    let user = match (shared.user, here.user) {
        (WatermarkStatus::RevokedThrough(a), WatermarkStatus::RevokedThrough(b)) => {
            WatermarkStatus::RevokedThrough(a.max(b))
        }
        (_, here @ WatermarkStatus::RevokedThrough(_)) => here,
        (shared, _) => shared,
    };
    RevocationAnswer {
        jti: listed(shared.jti, here.jti),
        session: listed(shared.session, here.session),
        user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_either_copy_lists_is_in_force() {
        use DenyListStatus::{Listed, NotListed, Unavailable};
        let answer = |jti, session, user| RevocationAnswer { jti, session, user };
        let clear = answer(NotListed, NotListed, WatermarkStatus::None);
        // The shared list lost an entry the process holds.
        let here = answer(NotListed, Listed, WatermarkStatus::RevokedThrough(10));
        assert_eq!(
            listed_in_either(clear, here),
            answer(NotListed, Listed, WatermarkStatus::RevokedThrough(10))
        );
        // The later watermark wins; the shared list's "unavailable" is never turned into "clear".
        let shared = answer(Unavailable, Listed, WatermarkStatus::RevokedThrough(20));
        assert_eq!(listed_in_either(shared, here), shared);
        let shared = answer(Unavailable, Unavailable, WatermarkStatus::Unavailable);
        assert_eq!(
            listed_in_either(shared, clear),
            shared,
            "what the process does not hold is not vouched for"
        );
    }
}
