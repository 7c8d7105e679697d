//! Reading the origin's revocation feed: which page to ask for, which entries to believe, and
//! where to resume. The host fetches pages and stores what [`FeedReader::read`] hands back; the
//! rules live here once, for every host.
//!
//! - **The cursor never passes an entry that was not applied.** [`FeedReader::read`] does not
//!   change the reader: it returns the reader to adopt *after* the host has stored the page's
//!   revocations, so a failed write reads the same entries again.
//! - **An entry signed by a key the edge does not hold yet is never skipped on that account.**
//!   After a rotation the origin may sign entries with a key the edge has not fetched. Reading
//!   stops at such an entry ([`FeedNext::NeedKeys`]) and keeps the cursor before it until the
//!   host holds keys fetched *after* the entry was first seen. Only if those keys still lack it
//!   is the entry skipped (it is not the origin's). A host that cannot refetch now (its refetch
//!   slot is taken, by requests with made-up `kid`s for instance) simply reads again later;
//!   nothing is lost meanwhile.
//! - **A short page means caught up**: fewer entries than asked for, so the host waits for its
//!   next poll; a full page is followed by the next one at once.
//! - Entries at or before the cursor are ignored, so re-reading is harmless, and the cursor
//!   never moves back because of what a page says.

use alloc::{format, string::String, vec::Vec};

use crate::{
    config::Policy,
    key_ring::KeyRing,
    revocation::{verify_revocation, FeedPage, Revocation, RevocationError},
    verdict::DenyReason,
};

/// Entries asked for per page.
pub const FEED_PAGE_LIMIT: usize = 100;

/// Where a reader stopped for keys: the entry and when it was first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WaitingForKeys {
    /// The entry's `seq`.
    pub seq: u64,
    /// When it was first met with an unknown key (seconds since the epoch).
    pub since: i64,
}

/// A reader's position in the feed. Serialisable, so a host keeps it where it keeps the
/// deny-list (Workers KV, Envoy shared data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeedReader {
    /// Every entry up to this `seq` has been applied (or is of no use).
    cursor: u64,
    /// The entry the reader is stopped at, waiting for keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    waiting: Option<WaitingForKeys>,
}

/// What to do after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedNext {
    /// The page was full (or cut by the host's budget): read the next one now.
    ReadMore,
    /// A short page: caught up until the next poll.
    CaughtUp,
    /// Stopped at an entry signed by a key the edge does not hold: fetch keys when allowed,
    /// then read again from the cursor.
    NeedKeys,
}

/// One page read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRead {
    /// Checked revocations to store, in feed order; expired ones are left out.
    pub revocations: Vec<Revocation>,
    /// Entries skipped because they are not the origin's, with why (for the operator's log).
    pub rejected: Vec<(u64, DenyReason)>,
    /// The reader to keep once `revocations` are stored.
    pub reader: FeedReader,
    /// What to do next.
    pub next: FeedNext,
}

impl FeedReader {
    /// A reader that has applied everything up to `cursor`.
    pub fn at(cursor: u64) -> Self {
        Self {
            cursor,
            waiting: None,
        }
    }

    /// Every entry up to this `seq` has been applied.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The entry the reader is stopped at for keys, if any.
    pub fn waiting(&self) -> Option<WaitingForKeys> {
        self.waiting
    }

    /// The query of the next page: `after=<cursor>&limit=<FEED_PAGE_LIMIT>`.
    pub fn query(&self) -> String {
        format!("after={}&limit={FEED_PAGE_LIMIT}", self.cursor)
    }

    /// The feed's URL (or path) with [`Self::query`] appended.
    pub fn url(&self, feed: &str) -> String {
        let separator = if feed.contains('?') { '&' } else { '?' };
        format!("{feed}{separator}{}", self.query())
    }

    /// Reads one page at `now` with `keys` (fetched at `keys_fetched_at`), taking at most
    /// `budget` revocations (a host with a per-invocation write limit stops there and reads on
    /// next time). Changes nothing: store [`FeedRead::revocations`], then keep
    /// [`FeedRead::reader`].
    pub fn read(
        &self,
        page: &FeedPage,
        now: i64,
        keys: &KeyRing,
        keys_fetched_at: i64,
        policy: &Policy,
        budget: usize,
    ) -> FeedRead {
        let mut next_reader = *self;
        let mut revocations = Vec::new();
        let mut rejected = Vec::new();
        for entry in &page.entries {
            if entry.seq <= next_reader.cursor {
                continue;
            }
            if revocations.len() >= budget {
                return FeedRead {
                    revocations,
                    rejected,
                    reader: next_reader,
                    next: FeedNext::ReadMore,
                };
            }
            match verify_revocation(&entry.jws, now, keys, policy) {
                Ok(revocation) => revocations.push(revocation),
                Err(RevocationError::Expired) => {}
                Err(RevocationError::Invalid(denial))
                    if denial.reason == DenyReason::UnknownKey =>
                {
                    let seen = next_reader.waiting.filter(|w| w.seq == entry.seq);
                    match seen {
                        // Keys fetched since it was first seen still lack its key: not the
                        // origin's.
                        Some(w) if keys_fetched_at > w.since => {
                            rejected.push((entry.seq, denial.reason))
                        }
                        _ => {
                            next_reader.waiting = Some(seen.unwrap_or(WaitingForKeys {
                                seq: entry.seq,
                                since: now,
                            }));
                            return FeedRead {
                                revocations,
                                rejected,
                                reader: next_reader,
                                next: FeedNext::NeedKeys,
                            };
                        }
                    }
                }
                // Not the origin's signature, type or issuer with keys it holds: skipping is all
                // an edge can do, and the host logs it.
                Err(RevocationError::Invalid(denial)) => rejected.push((entry.seq, denial.reason)),
            }
            next_reader.cursor = entry.seq;
            next_reader.waiting = None;
        }
        // Past every entry given: the origin's `next` also covers the expired entries it left
        // out.
        next_reader.cursor = next_reader.cursor.max(page.next);
        let next = if page.entries.len() >= FEED_PAGE_LIMIT {
            FeedNext::ReadMore
        } else {
            FeedNext::CaughtUp
        };
        FeedRead {
            revocations,
            rejected,
            reader: next_reader,
            next,
        }
    }
}
