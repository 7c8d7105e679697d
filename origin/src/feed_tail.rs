//! The revocation feed's live entries, held by each instance and refreshed from the store on a
//! short interval, so that `GET /v1/revocations` costs no store read however many edges poll.
//!
//! The store's feed is gap-free and its entries become visible in order: reading what follows
//! the last `seq` seen, again and again, gives every entry once, in order. So the tail is always
//! a prefix of the feed: it holds every live entry up to its `head`, and answers any cursor at
//! or past its `floor` exactly as the store would, minus what was appended since the last
//! refresh (an edge gets that on its next poll, as it would from a store read a moment earlier).

use std::{
    collections::VecDeque,
    sync::{Arc, RwLock, Weak},
    time::{Duration, Instant},
};

use crate::store::{FeedEntry, RevocationFeed, StoreError};

/// How often the tail asks the store for what follows it: one read whatever the pollers.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// A tail not refreshed for this long is not served from: the store is asked (and answers, or
/// fails as it would without a tail). An instance that cannot reach the store must not tell
/// edges "nothing new" from an old copy.
const STALE_AFTER: Duration = Duration::from_secs(3);
/// The most entries held (about 600 bytes each). Past it the oldest go, and cursors before them
/// are answered from the store.
const MAX_ENTRIES: usize = 200_000;
/// Entries read from the store a page at a time.
const PAGE: u32 = 1000;

/// One page of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailPage {
    /// Entries after the cursor, in order, none expired.
    pub entries: Vec<FeedEntry>,
    /// The cursor to ask with next.
    pub next: u64,
    /// The last `seq` the tail holds: the page's version, for `ETag`.
    pub head: u64,
}

#[derive(Debug, Default)]
struct Held {
    /// Live entries, by `seq`.
    entries: VecDeque<FeedEntry>,
    /// Every entry up to here has been read.
    head: u64,
    /// Entries at or before this `seq` may have been dropped (the size cap).
    floor: u64,
    /// When the store last answered; `None` until the tail was first read whole.
    refreshed: Option<Instant>,
}

/// The feed's live entries in this instance.
#[derive(Clone, Debug)]
pub struct FeedTail {
    held: Arc<RwLock<Held>>,
}

impl Default for FeedTail {
    fn default() -> Self {
        Self::new()
    }
}

impl FeedTail {
    /// An empty tail, not served from until [`Self::spawn_refresh`] has read the feed.
    pub fn new() -> Self {
        Self {
            held: Arc::new(RwLock::new(Held::default())),
        }
    }

    /// Up to `limit` live entries after `after`, as the store would answer at `now`; `None`
    /// when the tail cannot answer (not read yet, stale, or `after` before what it holds).
    pub fn page(&self, after: u64, limit: u32, now: i64) -> Option<TailPage> {
        let held = self.held.read().ok()?;
        let fresh = held.refreshed.is_some_and(|at| at.elapsed() < STALE_AFTER);
        if !fresh || after < held.floor {
            return None;
        }
        let start = held.entries.partition_point(|e| e.seq <= after);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut entries = Vec::new();
        let mut next = after.max(held.head);
        for entry in held.entries.range(start..) {
            if entries.len() == limit {
                // A full page ends at its last entry; the rest come on the next poll.
                next = entries.last().map_or(after, |e: &FeedEntry| e.seq);
                break;
            }
            if entry.expires_at > now {
                entries.push(entry.clone());
            }
        }
        Some(TailPage {
            entries,
            next,
            head: held.head,
        })
    }

    /// Adds an entry this instance just appended, when it directly follows the head (the
    /// appender's own edges then see it at once); otherwise the next refresh reads it.
    pub fn appended(&self, entry: &FeedEntry) {
        if let Ok(mut held) = self.held.write() {
            if held.refreshed.is_some() && entry.seq == held.head + 1 {
                held.head = entry.seq;
                held.entries.push_back(entry.clone());
            }
        }
    }

    /// Reads what follows the head, all pages, at `now`.
    async fn refresh(&self, feed: &dyn RevocationFeed, now: i64) -> Result<(), StoreError> {
        let mut cursor = self.held.read().map(|h| h.head).unwrap_or_default();
        let mut read = Vec::new();
        loop {
            let (entries, next) = feed.read_after(cursor, PAGE, now).await?;
            read.extend(entries);
            if next <= cursor {
                break;
            }
            cursor = next;
        }
        let mut held = self
            .held
            .write()
            .map_err(|_| StoreError::Unavailable("feed tail lock poisoned".into()))?;
        // `appended` may have moved the head meanwhile; what it added is not added twice.
        let head = held.head;
        held.entries
            .extend(read.into_iter().filter(|e| e.seq > head));
        held.head = held.head.max(cursor);
        held.entries.retain(|e| e.expires_at > now);
        while held.entries.len() > MAX_ENTRIES {
            if let Some(dropped) = held.entries.pop_front() {
                held.floor = dropped.seq;
            }
        }
        held.refreshed = Some(Instant::now());
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`] until the tail is dropped.
    pub fn spawn_refresh(&self, feed: Arc<dyn RevocationFeed>) {
        let tail: Weak<RwLock<Held>> = Arc::downgrade(&self.held);
        tokio::spawn(async move {
            loop {
                let Some(held) = tail.upgrade() else {
                    return;
                };
                let tail = FeedTail { held };
                if let Err(error) = tail.refresh(feed.as_ref(), crate::clock::now()).await {
                    tracing::warn!(%error, "feed tail not refreshed");
                }
                drop(tail);
                tokio::time::sleep(REFRESH_EVERY).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, expires_at: i64) -> FeedEntry {
        FeedEntry {
            seq,
            jws: format!("jws-{seq}"),
            expires_at,
        }
    }

    fn tail(entries: &[FeedEntry], head: u64, floor: u64) -> FeedTail {
        let tail = FeedTail::new();
        {
            let mut held = tail.held.write().expect("lock");
            held.entries = entries.iter().cloned().collect();
            held.head = head;
            held.floor = floor;
            held.refreshed = Some(Instant::now());
        }
        tail
    }

    #[test]
    fn a_tail_never_read_or_gone_stale_does_not_answer() {
        assert_eq!(FeedTail::new().page(0, 100, 0), None);
        let stale = tail(&[], 5, 0);
        stale.held.write().expect("lock").refreshed =
            Instant::now().checked_sub(STALE_AFTER + Duration::from_millis(1));
        assert_eq!(stale.page(0, 100, 0), None);
    }

    #[test]
    fn pages_answer_as_the_store_does() {
        // 2 expired; 4 and 5 dropped by earlier sweeps; head 7.
        let t = tail(
            &[
                entry(1, 100),
                entry(2, 10),
                entry(3, 100),
                entry(6, 100),
                entry(7, 100),
            ],
            7,
            0,
        );
        let seqs = |p: &TailPage| p.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
        let all = t.page(0, 100, 50).expect("page");
        assert_eq!((seqs(&all), all.next, all.head), (vec![1, 3, 6, 7], 7, 7));
        // A full page ends at its last entry.
        let first = t.page(0, 2, 50).expect("page");
        assert_eq!((seqs(&first), first.next), (vec![1, 3], 3));
        let rest = t.page(first.next, 2, 50).expect("page");
        assert_eq!((seqs(&rest), rest.next), (vec![6, 7], 7));
        // Nothing after the head: the cursor stays, never moves back.
        let none = t.page(7, 100, 50).expect("page");
        assert_eq!((seqs(&none), none.next), (vec![], 7));
        let ahead = t.page(9, 100, 50).expect("page");
        assert_eq!(ahead.next, 9, "a cursor from a fresher instance is kept");
    }

    #[test]
    fn a_cursor_before_the_floor_is_left_to_the_store() {
        let t = tail(&[entry(11, 100)], 11, 10);
        assert_eq!(t.page(9, 100, 0), None);
        assert!(t.page(10, 100, 0).is_some());
    }

    /// A feed of `live` entries 1..=n that counts its reads.
    struct CountingFeed {
        entries: Vec<FeedEntry>,
        reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl RevocationFeed for CountingFeed {
        async fn append_many(
            &self,
            _entries: &[(&crate::store::MakeEntry<'_>, i64)],
        ) -> Result<Vec<FeedEntry>, StoreError> {
            unreachable!("read only")
        }

        async fn read_after(
            &self,
            cursor: u64,
            limit: u32,
            now: i64,
        ) -> Result<(Vec<FeedEntry>, u64), StoreError> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let page: Vec<_> = self
                .entries
                .iter()
                .filter(|e| e.seq > cursor)
                .take(limit as usize)
                .cloned()
                .collect();
            let next = page.last().map_or(cursor, |e| e.seq);
            Ok((
                page.into_iter().filter(|e| e.expires_at > now).collect(),
                next,
            ))
        }
    }

    #[tokio::test]
    async fn polls_read_the_tail_not_the_store() {
        let feed = CountingFeed {
            entries: (1..=2500)
                .map(|seq| entry(seq, if seq % 10 == 0 { 5 } else { 100 }))
                .collect(),
            reads: std::sync::atomic::AtomicUsize::new(0),
        };
        let t = FeedTail::new();
        t.refresh(&feed, 50).await.expect("read");
        // Three pages of 1000 and the empty read that ends them.
        assert_eq!(feed.reads.load(std::sync::atomic::Ordering::Relaxed), 4);
        let mut cursor = 0;
        let mut seen = 0;
        for _ in 0..10_000 {
            let page = t.page(cursor, 100, 50).expect("page");
            seen += page.entries.len();
            cursor = page.next;
        }
        assert_eq!((seen, cursor), (2250, 2500), "every live entry, once");
        assert_eq!(
            feed.reads.load(std::sync::atomic::Ordering::Relaxed),
            4,
            "no more reads"
        );
    }

    #[test]
    fn an_entry_appended_here_is_served_at_once_only_in_order() {
        let t = tail(&[entry(1, 100)], 1, 0);
        t.appended(&entry(3, 100));
        assert_eq!(t.page(1, 100, 0).expect("page").next, 1, "2 not read yet");
        t.appended(&entry(2, 100));
        assert_eq!(t.page(1, 100, 0).expect("page").next, 2);
    }
}
