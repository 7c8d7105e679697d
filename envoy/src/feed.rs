//! Polling the origin's revocation feed. The fetcher asks for the page after the head's cursor,
//! reads it with the core's [`edgeauth_core::FeedReader`] (kept in the deny-list head, so
//! whichever VM is fetcher resumes it) and publishes what it revoked to the shared ring
//! ([`crate::deny_list`]).
//!
//! An entry signed by a key this edge does not hold stops the reader there
//! ([`FeedNext::NeedKeys`]): the fetcher claims the shared forced-fetch slot and fetches keys; if
//! the slot is held (requests with made-up `kid`s took it, say), the cursor simply stays and the
//! next poll reads the entry again. Nothing is skipped meanwhile.
//!
//! [`FeedNext::NeedKeys`]: edgeauth_core::FeedNext::NeedKeys

use edgeauth_core::{FeedPage, FeedRead, FeedReader, KeyRing, Policy};

use crate::{
    deny_list::{DenyList, PublishError},
    shared::{Keys, SharedData},
};

/// Largest feed page read.
pub const MAX_FEED_BYTES: usize = 1024 * 1024;

/// Why a feed answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// The body is not a feed page (or the call failed).
    #[error("not a feed page: {0}")]
    NotAPage(String),
    /// This VM holds no usable key set to check entries with.
    #[error("no key set to check the feed with")]
    NoKeys,
    /// It could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// What the fetcher holds to check a page with.
#[derive(Debug, Clone, Copy)]
pub struct Checking<'a> {
    /// The keys to verify entries with.
    pub keys: &'a KeyRing,
    /// When they were fetched: the reader's proof that a key it waits for is not coming.
    pub keys_fetched_at: i64,
    /// The policy (issuers, algorithms, leeway).
    pub policy: &'a Policy,
}

/// Takes a feed answer (`body`, asked for after `asked_after`): reads it with the head's reader
/// and publishes it. `tag` is a fresh random number for the segment.
#[allow(clippy::too_many_arguments)]
pub fn take_page(
    list: &mut DenyList,
    shared: &impl SharedData,
    names: &Keys,
    body: &[u8],
    asked_after: u64,
    checking: Checking<'_>,
    now: i64,
    tag: u64,
) -> Result<FeedRead, FeedError> {
    let page: FeedPage =
        serde_json::from_slice(body).map_err(|e| FeedError::NotAPage(e.to_string()))?;
    let read = |reader: &FeedReader| {
        reader.read(
            &page,
            now,
            checking.keys,
            checking.keys_fetched_at,
            checking.policy,
            usize::MAX,
        )
    };
    let leeway = checking.policy.leeway_seconds();
    Ok(list.publish(shared, names, asked_after, read, leeway, now, tag)?)
}

/// The fetcher's side: asking for pages and taking the answers through the host.
#[cfg(target_family = "wasm")]
mod fetcher {
    use crate::abi::LogLevel;
    use edgeauth_core::FeedNext;

    use super::{take_page, Checking, FeedError, MAX_FEED_BYTES};
    use crate::{
        call_answer::CallAnswer,
        deny_list::PublishError,
        filter::{Call, Root, Vm},
        host::{call_origin, fresh_tag, log, Host},
        keys::call_jwks,
        metrics::{bump, record},
    };

    impl Root {
        /// Asks for the page after the head's cursor.
        pub(crate) fn poll_feed(&mut self, vm: &Vm, now: i64) {
            let route = &vm.settings.revocation_feed;
            let reader = vm.deny_list.reader();
            let path = reader.url(&route.path);
            let tag = self.feed_tag.for_cursor(reader.cursor());
            if let Some(token) = call_origin(route, &path, tag, vm.settings.fetch_timeout_ms) {
                self.calls.insert(
                    token,
                    Call::Feed {
                        after: reader.cursor(),
                    },
                );
            }
            self.last_feed_call = Some(now);
        }

        /// Takes a feed answer asked for after `after`, and asks for more, or for keys, as the
        /// reader says.
        pub(crate) fn on_feed_answer(
            &mut self,
            vm: &mut Vm,
            answer: &CallAnswer,
            after: u64,
            now: i64,
        ) {
            let taken = answer
                .feed_page(after, MAX_FEED_BYTES)
                .map_err(FeedError::NotAPage)
                .and_then(|body| {
                    let keys = vm.usable_keys(now).ok_or(FeedError::NoKeys)?;
                    let checking = Checking {
                        keys: &keys,
                        keys_fetched_at: vm.keys.fetched_at(),
                        policy: &vm.settings.policy,
                    };
                    let tag = fresh_tag(self.me);
                    take_page(
                        &mut vm.deny_list,
                        &Host,
                        &vm.shared,
                        &body,
                        after,
                        checking,
                        now,
                        tag,
                    )
                });
            let read = match taken {
                Ok(read) => read,
                Err(FeedError::Publish(PublishError::Stale)) => {
                    // The head went back (repaired): read again from its cursor at once.
                    self.poll_feed(vm, now);
                    return;
                }
                Err(error) => {
                    bump(vm.metrics.feed_read_failure, 1);
                    log(
                        LogLevel::Warn,
                        serde_json::json!({"event": "feed_read_failed", "error": error.to_string()}),
                    );
                    return;
                }
            };
            bump(vm.metrics.feed_read_success, 1);
            self.feed_tag
                .update(answer, read.next, read.reader.cursor());
            for (seq, reason) in &read.rejected {
                // Not the origin's signature even with fresh keys: skipping it is all an edge
                // can do, and the operator hears of it.
                log(
                    LogLevel::Error,
                    serde_json::json!({"event": "feed_entry_rejected", "seq": seq, "reason": reason.code()}),
                );
            }
            match read.next {
                FeedNext::ReadMore => self.poll_feed(vm, now),
                FeedNext::CaughtUp => {}
                // Signed with a key this edge has not seen yet. The cursor stays before the
                // entry: fetch keys if the shared slot allows, else read it again next poll.
                FeedNext::NeedKeys => {
                    let calling_keys = self.calling(|c| matches!(c, Call::Keys { .. }));
                    if !calling_keys && vm.claim_forced_fetch(now) {
                        if let Some(token) = call_jwks(&vm.settings) {
                            self.calls.insert(token, Call::Keys { started_at: now });
                        }
                    }
                }
            }
        }
    }

    impl Vm {
        /// How long since the feed was read, and how many revocations this VM holds.
        pub(crate) fn record_feed_metrics(&self, now: i64) {
            let since = match self.deny_list.read_at() {
                0 => 0,
                at => now.saturating_sub(at),
            };
            record(self.metrics.feed_lag_seconds, since);
            record(
                self.metrics.revoked_tokens,
                i64::try_from(self.deny_list.len()).unwrap_or(i64::MAX),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use edgeauth_core::FeedNext;
    use serde_json::json;

    use super::*;
    use crate::{
        keys::claim_forced_fetch,
        shared::testing::EnvoyMap,
        testing::{entry, policy, ring, NOW},
    };

    /// After a rotation the origin signs entry 2 with a key this edge has not fetched, while
    /// requests with made-up `kid`s hold the forced-fetch slot. The reader stops at entry 2
    /// and keeps it until keys arrive, then applies it; before, the filter moved its cursor past
    /// it and the revocation was lost for the token's life.
    #[test]
    fn an_entry_signed_by_an_unknown_key_waits_for_keys_while_the_refetch_slot_is_held() {
        let (shared, names) = (EnvoyMap::default(), Keys::for_configuration(b"test"));
        let policy = policy();
        let old_keys = ring(&[(1, "current")]);
        let page = json!({
            "entries": [entry(1, "before", 1, "current"), entry(2, "rotated", 2, "next"), entry(3, "after", 2, "next")],
            "next": 3,
        })
        .to_string();
        let mut fetcher = DenyList::default();
        // A request with a made-up `kid` took the slot a moment ago.
        assert!(claim_forced_fetch(
            &shared,
            &names.forced_fetch,
            NOW - 1,
            30
        ));

        for now in [NOW, NOW + 1, NOW + 10] {
            let checking = Checking {
                keys: &old_keys,
                keys_fetched_at: NOW - 100,
                policy: &policy,
            };
            let asked_after = fetcher.reader().cursor();
            let read = take_page(
                &mut fetcher,
                &shared,
                &names,
                page.as_bytes(),
                asked_after,
                checking,
                now,
                7 + now as u64,
            )
            .expect("taken");
            assert_eq!(read.next, FeedNext::NeedKeys);
            assert!(read.rejected.is_empty(), "nothing skipped");
            assert!(
                !claim_forced_fetch(&shared, &names.forced_fetch, now, 30),
                "the slot is held"
            );
            let mut vm = DenyList::default();
            vm.sync(&shared, &names, now);
            assert_eq!(vm.reader().cursor(), 1, "the cursor stays before entry 2");
            assert!(vm.state().token_revoked("before", now));
            assert!(!vm.state().token_revoked("rotated", now));
        }

        // The slot frees, keys fetched after the entry was first seen arrive: applied.
        let now = NOW + 30;
        assert!(claim_forced_fetch(&shared, &names.forced_fetch, now, 30));
        let new_keys = ring(&[(1, "current"), (2, "next")]);
        let checking = Checking {
            keys: &new_keys,
            keys_fetched_at: now,
            policy: &policy,
        };
        let read = take_page(
            &mut fetcher,
            &shared,
            &names,
            page.as_bytes(),
            1,
            checking,
            now + 1,
            99,
        )
        .expect("taken");
        assert_eq!(read.next, FeedNext::CaughtUp);
        let mut vm = DenyList::default();
        vm.sync(&shared, &names, now + 1);
        assert_eq!(vm.reader().cursor(), 3);
        for jti in ["before", "rotated", "after"] {
            assert!(vm.state().token_revoked(jti, now + 1), "{jti}");
        }
    }

    #[test]
    fn a_body_that_is_not_a_page_is_refused() {
        let (shared, names) = (EnvoyMap::default(), Keys::for_configuration(b"test"));
        let policy = policy();
        let keys = ring(&[(1, "current")]);
        let checking = Checking {
            keys: &keys,
            keys_fetched_at: NOW,
            policy: &policy,
        };
        let mut list = DenyList::default();
        let taken = take_page(&mut list, &shared, &names, b"<html>", 0, checking, NOW, 1);
        assert!(matches!(taken, Err(FeedError::NotAPage(_))));
        assert!(
            shared.get(&names.deny_list_head).is_none(),
            "nothing written"
        );
    }
}
