//! The deny-list as Envoy's VMs share it: a fixed ring of segments in shared data and a head that
//! says which are live, so a VM copies only what is new and shared data stays bounded.
//!
//! The fetcher turns each feed read that brings revocations into one segment `n`, written to slot
//! `n % RING_SLOTS` (`…deny_list.slot.<i>`), and then moves the head (`…deny_list.head`: the
//! core's [`FeedReader`], when the feed was last read, and for each live segment its number, a
//! random tag, its latest expiry and the reader's cursor before it) with compare-and-swap. Every
//! VM keeps a [`DenyState`] and, when the head changes, reads the live segments it has not read.
//!
//! - **Bounded.** The keys are fixed (the ring and the head). The head lists at most
//!   [`RING_SLOTS`] segments: when the slot of the next segment still holds a live one, that
//!   segment's live revocations are carried into the new one and it leaves the head, so the live
//!   segments always hold every live revocation, each about once. A segment whose revocations
//!   have all expired leaves the head and its slot is emptied (Envoy never deletes a key).
//! - **No revocation lost to a race.** Two VMs can both publish for a moment (the lease start-up
//!   race, or a lease that moved while a feed call was in flight), and both write the same slot
//!   before one wins the head: the slot may then hold the loser's segment under the winner's
//!   head. A segment carries its `n` and tag, so the mismatch shows. A reader that meets it reads
//!   nothing from that slot and does not vouch for the list until the head is repaired. A
//!   publisher repairs: its head CAS failed, or it found the mismatch reading (it reads the head
//!   again after each write, for the write to a missing key that Envoy does not check). The head
//!   then names what the slot holds, and its cursor goes back to where the lost segment's
//!   revocations started, so they are read again from the durable feed; reading twice changes
//!   nothing.
//! - **Monotonic.** A VM's copy only grows until expiry: a head that starts over (unreadable,
//!   repaired) never makes a VM forget a revocation it holds, and watermarks only rise.
//!
//! Shared data is reached through [`SharedData`], so the ring is tested natively with a map that
//! has Envoy's semantics.

use std::collections::BTreeMap;

use edgeauth_core::{
    DenyState, FeedRead, FeedReader, Revocation, RevocationAnswer, RevocationCheck,
};
use serde::{Deserialize, Serialize};

use crate::shared::{Keys, SharedData};

/// Slots in the ring, and so the most segments the head lists. With the fetcher publishing at
/// most one segment per feed read, 64 keeps a segment's own slot for about a minute before its
/// revocations are carried forward.
pub const RING_SLOTS: u64 = 64;

/// How long a VM keeps an expired revocation before sweeping its copy, in seconds: sweeping on
/// every tick would walk the whole state twice a second for nothing.
const SWEEP_INTERVAL: i64 = 10;

/// How often the fetcher reads every live slot again, not just the ones it has not read: a VM
/// that wrote a slot and stopped before it could look again leaves a mismatch only a full read
/// finds.
const FULL_CHECK_INTERVAL: i64 = 60;

/// Head writes tried per feed read before giving up until the next read.
const ATTEMPTS: usize = 4;

/// A live segment, as the head lists it. Stored as `[n, tag, until, from]`: every VM reads the
/// head on every tick, and field names would double its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64, i64, u64)", into = "(u64, u64, i64, u64)")]
pub struct LiveSegment {
    /// Its number; it lives in slot `n % RING_SLOTS`.
    pub n: u64,
    /// The random tag its writer gave it: two VMs writing segment `n` give different tags.
    pub tag: u64,
    /// The latest moment any of its revocations still holds.
    pub until: i64,
    /// The reader's cursor before its oldest revocation: reading the feed again from here brings
    /// back everything it holds.
    pub from: u64,
}

impl From<(u64, u64, i64, u64)> for LiveSegment {
    fn from((n, tag, until, from): (u64, u64, i64, u64)) -> Self {
        Self {
            n,
            tag,
            until,
            from,
        }
    }
}

impl From<LiveSegment> for (u64, u64, i64, u64) {
    fn from(s: LiveSegment) -> Self {
        (s.n, s.tag, s.until, s.from)
    }
}

/// The shared head of the ring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Where the feed is read from next (cursor, and an entry waiting for keys).
    pub reader: FeedReader,
    /// When the feed was last read successfully (seconds since the epoch); 0 = never.
    pub read_at: i64,
    /// The number of the next segment to write.
    pub next: u64,
    /// The live segments, oldest first.
    pub live: Vec<LiveSegment>,
}

impl Head {
    /// As stored.
    pub fn encode(&self) -> Vec<u8> {
        // Integers and vectors of integers always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for anything else, or for a head whose live segments would share a slot (more
    /// than the ring, out of order, or outside the last `RING_SLOTS` numbers).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let head: Self = serde_json::from_slice(bytes).ok()?;
        let oldest_allowed = head.next.saturating_sub(RING_SLOTS);
        let in_ring = head
            .live
            .iter()
            .all(|s| (oldest_allowed..head.next).contains(&s.n));
        let ordered = head.live.windows(2).all(|w| w[0].n < w[1].n);
        (in_ring && ordered).then_some(head)
    }

    /// Makes the head name what the slots hold where they disagree, and moves the reader back
    /// to where each lost segment's revocations started, so they are read again.
    fn repair(&mut self, mismatches: &[Mismatch]) {
        for mismatch in mismatches.iter().rev() {
            let Some(entry) = self.live.get_mut(mismatch.index) else {
                continue;
            };
            self.reader = FeedReader::at(self.reader.cursor().min(entry.from));
            match mismatch.found {
                // The slot holds another writer's segment `n`: real revocations, keep them.
                Some((tag, until)) => {
                    entry.tag = tag;
                    entry.until = until;
                }
                None => {
                    self.live.remove(mismatch.index);
                }
            }
        }
    }
}

/// One segment: what one feed read revoked (plus what was carried forward), each revocation's
/// expiry already including the leeway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Its number.
    pub n: u64,
    /// Its writer's tag.
    pub tag: u64,
    /// The revocations.
    pub revocations: Vec<Revocation>,
}

impl Segment {
    /// As stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for anything else (an emptied slot included).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The latest moment any of its revocations still holds.
    fn until(&self) -> Option<i64> {
        self.revocations.iter().map(Revocation::expires_at).max()
    }
}

/// A live segment of the head whose slot does not hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mismatch {
    /// Its place in the head's list.
    index: usize,
    /// The tag and expiry of the segment with the same number the slot holds instead, if it
    /// holds one that still matters.
    found: Option<(u64, i64)>,
}

/// Why a feed read was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Other VMs kept moving the head (several fetchers for a moment): read again next time.
    #[error("other VMs kept moving the deny-list head")]
    Conflict,
    /// The head's reader went back (repaired) since the page was asked for: the page may lack
    /// entries before it, so ask again from the head's cursor.
    #[error("the deny-list head went back since the page was asked for")]
    Stale,
}

/// One VM's copy of the deny-list.
#[derive(Debug, Default)]
pub struct DenyList {
    state: DenyState,
    /// The segments read into `state`: number → tag.
    read: BTreeMap<u64, u64>,
    /// `read_at` of the last head wholly read (0: never): what this copy can vouch for.
    read_at: i64,
    /// The head's reader as last seen.
    reader: FeedReader,
    /// The head as last wholly read, and its bytes, to skip an unchanged one cheaply.
    head_bytes: Vec<u8>,
    head: Head,
    swept_at: i64,
    /// When the fetcher last read every live slot (`None`: it must, before it publishes).
    checked_at: Option<i64>,
    /// The last segment this VM wrote (number, tag, bytes): reading it back, the bytes are
    /// compared instead of parsed again.
    written: Option<(u64, u64, Vec<u8>)>,
}

impl DenyList {
    /// The answer for a token at `now`. What this copy holds is an answer however old; what it
    /// does not hold is vouched for only if the feed was read within `max_stale` seconds.
    pub fn answer(&self, check: &RevocationCheck, now: i64, max_stale: u32) -> RevocationAnswer {
        self.state.answer(check, now, self.vouches(now, max_stale))
    }

    /// Whether this copy can vouch for what it does not hold at `now`: it holds everything the
    /// head listed when the feed was last read, within `max_stale` seconds.
    pub fn vouches(&self, now: i64, max_stale: u32) -> bool {
        self.read_at != 0 && now.saturating_sub(self.read_at) <= i64::from(max_stale)
    }

    /// What this copy holds.
    pub fn state(&self) -> &DenyState {
        &self.state
    }

    /// When the feed was last read, as far as this copy holds it (0: never).
    pub fn read_at(&self) -> i64 {
        self.read_at
    }

    /// Where to read the feed from next, as the head last said.
    pub fn reader(&self) -> FeedReader {
        self.reader
    }

    /// Revocations held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// This VM has just become the fetcher: it reads every live slot before it publishes, since
    /// the last fetcher may have left a mismatch behind.
    pub fn check_every_slot(&mut self) {
        self.checked_at = None;
    }

    /// Brings this copy up to date with shared data. A slot that does not hold what the head
    /// says is not read, and until it is, this copy does not vouch for the list.
    pub fn sync(&mut self, shared: &impl SharedData, keys: &Keys, now: i64) {
        if let Some((bytes, _)) = shared.get(&keys.deny_list_head) {
            if bytes != self.head_bytes {
                if let Some(head) = Head::decode(&bytes) {
                    if self.absorb(shared, keys, &head, now, false).is_empty() {
                        self.head_bytes = bytes;
                        self.head = head;
                    }
                }
            }
        }
        self.sweep(now);
    }

    /// The fetcher's part: reads a feed page with the head's reader (`read`, which gets the
    /// reader to start from), appends what it revoked as a new segment (each kept until its
    /// expiry plus `leeway`), drops expired segments, and moves the head, with compare-and-swap.
    /// `asked_after` is the cursor the page was asked for after; `tag` is a fresh random number.
    /// Repairs the head first if it finds a slot that does not hold what the head says.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &mut self,
        shared: &impl SharedData,
        keys: &Keys,
        asked_after: u64,
        read: impl Fn(&FeedReader) -> FeedRead,
        leeway: i64,
        now: i64,
        tag: u64,
    ) -> Result<FeedRead, PublishError> {
        for _ in 0..ATTEMPTS {
            let (bytes, cas) = shared.get(&keys.deny_list_head).unwrap_or_default();
            let head = if bytes == self.head_bytes {
                self.head.clone()
            } else {
                // An unreadable head starts over; this copy keeps what it holds.
                Head::decode(&bytes).unwrap_or_default()
            };
            let every_slot = self
                .checked_at
                .is_none_or(|at| now.saturating_sub(at) >= FULL_CHECK_INTERVAL);
            let mismatches = self.absorb(shared, keys, &head, now, every_slot);
            if !mismatches.is_empty() {
                self.write_repaired(shared, keys, head, &mismatches, cas);
                continue;
            }
            if every_slot {
                self.checked_at = Some(now);
            }
            if asked_after > head.reader.cursor() {
                return Err(PublishError::Stale);
            }
            let feed = read(&head.reader);
            // This VM knows at once, whatever happens to the write.
            for revocation in &feed.revocations {
                self.state.apply(revocation, leeway);
            }
            match self.write_next(shared, keys, &head, cas, &feed, leeway, now, tag) {
                Written::Yes(head, bytes) => {
                    // Read the head again: a write to a key that did not exist yet is not
                    // checked by Envoy, and another VM's may have landed on ours.
                    self.settle(shared, keys, now, Some((&head, &bytes)));
                    self.sweep(now);
                    return Ok(feed);
                }
                Written::Repaired | Written::No => self.checked_at = None,
            }
        }
        Err(PublishError::Conflict)
    }

    /// Writes the head after `head` with `feed` applied; whether it was written.
    #[allow(clippy::too_many_arguments)]
    fn write_next(
        &mut self,
        shared: &impl SharedData,
        keys: &Keys,
        head: &Head,
        cas: Option<u32>,
        feed: &FeedRead,
        leeway: i64,
        now: i64,
        tag: u64,
    ) -> Written {
        let mut next = Head {
            reader: feed.reader,
            read_at: now,
            next: head.next,
            live: head.live.clone(),
        };
        let (expired, live): (Vec<_>, Vec<_>) = next.live.iter().partition(|s| s.until <= now);
        next.live = live;
        let mut segment = DenyState::default();
        for revocation in &feed.revocations {
            segment.apply(revocation, leeway);
        }
        if !segment.is_empty() {
            let n = head.next;
            let slot = keys.deny_list_slot(n % RING_SLOTS);
            let (slot_bytes, slot_cas) = shared.get(&slot).unwrap_or_default();
            let mut from = head.reader.cursor();
            if let Some(index) = next
                .live
                .iter()
                .position(|s| s.n.saturating_add(RING_SLOTS) == n)
            {
                // The ring is full at this slot: carry the oldest segment forward.
                let oldest = next.live[index];
                match Segment::decode(&slot_bytes) {
                    Some(held) if held.n == oldest.n && held.tag == oldest.tag => {
                        for revocation in held.revocations.iter().filter(|r| r.expires_at() > now) {
                            segment.apply(revocation, 0);
                        }
                        from = from.min(oldest.from);
                        next.live.remove(index);
                    }
                    held => {
                        let index = head
                            .live
                            .iter()
                            .position(|s| s.n == oldest.n)
                            .unwrap_or(index);
                        let mismatch = Mismatch {
                            index,
                            found: found_instead(held.as_ref(), oldest.n, now),
                        };
                        self.write_repaired(shared, keys, head.clone(), &[mismatch], cas);
                        return Written::Repaired;
                    }
                }
            }
            let written = Segment {
                n,
                tag,
                revocations: segment.revocations().collect(),
            };
            let until = written.until().unwrap_or(now);
            let bytes = written.encode();
            if !shared.set(&slot, &bytes, slot_cas) {
                return Written::No;
            }
            self.written = Some((n, tag, bytes));
            next.live.push(LiveSegment {
                n,
                tag,
                until,
                from,
            });
            next.next = n.saturating_add(1);
        }
        let bytes = next.encode();
        if !shared.set(&keys.deny_list_head, &bytes, cas) {
            return Written::No;
        }
        for segment in expired {
            clear_slot(shared, keys, segment.n);
        }
        Written::Yes(next, bytes)
    }

    /// Writes `head` repaired; whether it lands or not, the caller reads the head again.
    fn write_repaired(
        &mut self,
        shared: &impl SharedData,
        keys: &Keys,
        mut head: Head,
        mismatches: &[Mismatch],
        cas: Option<u32>,
    ) {
        head.repair(mismatches);
        self.checked_at = None;
        shared.set(&keys.deny_list_head, &head.encode(), cas);
    }

    /// After a write: reads the head again and repairs it while a slot disagrees with it.
    /// `written` is the head just written, as written, so an unchanged one is not parsed again.
    fn settle(
        &mut self,
        shared: &impl SharedData,
        keys: &Keys,
        now: i64,
        mut written: Option<(&Head, &[u8])>,
    ) {
        for _ in 0..ATTEMPTS {
            let Some((bytes, cas)) = shared.get(&keys.deny_list_head) else {
                return;
            };
            let head = match written.take() {
                Some((head, as_written)) if as_written == bytes => head.clone(),
                _ => match Head::decode(&bytes) {
                    Some(head) => head,
                    None => return,
                },
            };
            let mismatches = self.absorb(shared, keys, &head, now, false);
            if mismatches.is_empty() {
                self.head_bytes = bytes;
                self.head = head;
                return;
            }
            self.write_repaired(shared, keys, head, &mismatches, cas);
        }
    }

    /// Reads the live segments `head` lists that this copy has not read (all of them when
    /// `every_slot`). Returns those whose slot holds something else; if there are none, this copy
    /// now holds everything the head does.
    fn absorb(
        &mut self,
        shared: &impl SharedData,
        keys: &Keys,
        head: &Head,
        now: i64,
        every_slot: bool,
    ) -> Vec<Mismatch> {
        let mut mismatches = Vec::new();
        for (index, live) in head.live.iter().enumerate() {
            // Nothing in it matters any more: it leaves the head at the next write.
            if live.until <= now || (!every_slot && self.read.get(&live.n) == Some(&live.tag)) {
                continue;
            }
            let Some((bytes, _)) = shared.get(&keys.deny_list_slot(live.n % RING_SLOTS)) else {
                mismatches.push(Mismatch { index, found: None });
                continue;
            };
            let ours = self.written.as_ref().is_some_and(|(n, tag, written)| {
                (*n, *tag) == (live.n, live.tag) && *written == bytes
            });
            if ours {
                // Its revocations were applied when it was written.
                self.read.insert(live.n, live.tag);
                continue;
            }
            let held = Segment::decode(&bytes);
            match held {
                Some(segment) if segment.n == live.n && segment.tag == live.tag => {
                    for revocation in &segment.revocations {
                        self.state.apply(revocation, 0);
                    }
                    self.read.insert(live.n, live.tag);
                }
                held => mismatches.push(Mismatch {
                    index,
                    found: found_instead(held.as_ref(), live.n, now),
                }),
            }
        }
        self.read
            .retain(|n, tag| head.live.iter().any(|s| s.n == *n && s.tag == *tag));
        self.reader = head.reader;
        if mismatches.is_empty() {
            self.read_at = head.read_at;
        }
        mismatches
    }

    fn sweep(&mut self, now: i64) {
        if now.saturating_sub(self.swept_at) >= SWEEP_INTERVAL {
            self.state.sweep(now);
            self.swept_at = now;
        }
    }
}

/// What a publish attempt did.
enum Written {
    /// Written: the head as written, and its bytes.
    Yes(Head, Vec<u8>),
    /// A slot disagreed with the head; the head was repaired instead.
    Repaired,
    /// Another VM wrote first.
    No,
}

/// The tag and expiry of `held` if it is another writer's segment `n` that still matters.
fn found_instead(held: Option<&Segment>, n: u64, now: i64) -> Option<(u64, i64)> {
    let held = held.filter(|s| s.n == n)?;
    let until = held.until().filter(|until| *until > now)?;
    Some((held.tag, until))
}

/// Empties the slot of expired segment `n`, unless another segment has taken it since.
fn clear_slot(shared: &impl SharedData, keys: &Keys, n: u64) {
    let slot = keys.deny_list_slot(n % RING_SLOTS);
    if let Some((bytes, cas)) = shared.get(&slot) {
        if Segment::decode(&bytes).is_some_and(|s| s.n == n) {
            // Best effort: a slot left full holds only expired revocations, and is overwritten
            // when its turn comes.
            shared.set(&slot, &[], cas);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::VecDeque};

    use edgeauth_core::{FeedNext, FEED_PAGE_LIMIT};

    use super::*;
    use crate::shared::testing::EnvoyMap;

    const LEEWAY: i64 = 30;

    fn keys() -> Keys {
        Keys::for_configuration(b"test")
    }

    fn token(jti: &str, expires_at: i64) -> Revocation {
        Revocation::Token {
            jti: jti.into(),
            expires_at,
        }
    }

    /// The origin's feed: revocations by `seq`, read as the core's reader would (entries after
    /// the cursor, a page at a time), up to what had been written when the page was asked for.
    #[derive(Default)]
    struct Feed(Vec<Revocation>);

    impl Feed {
        fn add(&mut self, revocation: Revocation) -> u64 {
            self.0.push(revocation);
            self.latest()
        }

        fn latest(&self) -> u64 {
            self.0.len() as u64
        }

        /// The page after `reader`'s cursor as it stood when entry `upto` was the last one.
        fn page(&self, reader: &FeedReader, upto: u64) -> FeedRead {
            let after = reader.cursor();
            let seqs: Vec<u64> = (after + 1..=upto).take(FEED_PAGE_LIMIT).collect();
            FeedRead {
                revocations: seqs
                    .iter()
                    .map(|s| self.0[(*s - 1) as usize].clone())
                    .collect(),
                rejected: Vec::new(),
                reader: FeedReader::at(seqs.last().copied().unwrap_or(after)),
                next: if seqs.len() >= FEED_PAGE_LIMIT {
                    FeedNext::ReadMore
                } else {
                    FeedNext::CaughtUp
                },
            }
        }
    }

    /// Reads the feed up to `upto` with `list`'s view of the head, and publishes it.
    fn poll(
        list: &mut DenyList,
        shared: &impl SharedData,
        feed: &Feed,
        upto: u64,
        now: i64,
        tag: u64,
    ) -> Result<FeedRead, PublishError> {
        list.sync(shared, &keys(), now);
        let asked_after = list.reader().cursor();
        list.publish(
            shared,
            &keys(),
            asked_after,
            |reader| feed.page(reader, upto),
            LEEWAY,
            now,
            tag,
        )
    }

    fn head(shared: &EnvoyMap) -> Head {
        Head::decode(&shared.get(&keys().deny_list_head).expect("a head").0).expect("a head")
    }

    /// Another VM's steps, to run just before the first write to a key.
    type Steps<'a> = Box<dyn FnOnce() + 'a>;

    /// Shared data that runs `then` just before the first write to `key`: another VM's steps,
    /// interleaved by hand between two of this VM's.
    struct Interleaved<'a> {
        map: &'a EnvoyMap,
        before: RefCell<Option<(String, Steps<'a>)>>,
    }

    impl SharedData for Interleaved<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
            self.map.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let due = self
                .before
                .borrow()
                .as_ref()
                .is_some_and(|(at, _)| at == key);
            if due {
                if let Some((_, then)) = self.before.borrow_mut().take() {
                    then();
                }
            }
            self.map.set(key, value, cas)
        }
    }

    #[test]
    fn what_the_fetcher_publishes_every_vm_sees() {
        let (shared, mut feed) = (EnvoyMap::default(), Feed::default());
        let mut fetcher = DenyList::default();
        let mut other = DenyList::default();
        other.sync(&shared, &keys(), 1000);
        assert!(!other.vouches(1000, 300), "never read");

        feed.add(token("a", 1900));
        let upto = feed.add(token("b", 1900));
        poll(&mut fetcher, &shared, &feed, upto, 1000, 1).expect("published");
        assert!(fetcher.state().token_revoked("a", 1000));
        other.sync(&shared, &keys(), 1001);
        assert!(other.state().token_revoked("b", 1001));
        assert!(!other.state().token_revoked("c", 1001));
        assert!(other.vouches(1001, 300));
        assert_eq!((other.reader().cursor(), other.read_at()), (2, 1000));

        // A read with nothing new moves the head only; a VM that joins late sees everything.
        poll(&mut fetcher, &shared, &feed, upto, 1005, 2).expect("published");
        let upto = feed.add(token("c", 1950));
        poll(&mut fetcher, &shared, &feed, upto, 1010, 3).expect("published");
        let mut late = DenyList::default();
        late.sync(&shared, &keys(), 1011);
        for jti in ["a", "b", "c"] {
            assert!(late.state().token_revoked(jti, 1011), "{jti}");
        }
        assert_eq!(
            (late.reader().cursor(), late.read_at(), late.len()),
            (3, 1010, 3)
        );
    }

    #[test]
    fn a_vm_reads_only_the_segments_it_has_not_seen() {
        let (shared, mut feed) = (EnvoyMap::default(), Feed::default());
        let mut fetcher = DenyList::default();
        let mut upto = 0;
        for i in 0..100 {
            upto = feed.add(token(&format!("jti-{i}"), 1900));
        }
        poll(&mut fetcher, &shared, &feed, upto, 1000, 1).expect("published");
        let mut other = DenyList::default();
        other.sync(&shared, &keys(), 1000);
        let upto = feed.add(token("new", 1900));
        poll(&mut fetcher, &shared, &feed, upto, 1001, 2).expect("published");
        let head = head(&shared);
        assert_eq!(
            (head.next, head.live.iter().map(|s| s.n).collect::<Vec<_>>()),
            (2, vec![0, 1])
        );
        // The new segment is a few bytes; the first one, already read, is not read again.
        assert!(shared.value_bytes(&keys().deny_list_slot(1)) < 150);
        other.sync(&shared, &keys(), 1001);
        assert!(other.state().token_revoked("new", 1001));
        assert_eq!(other.len(), 101);
    }

    #[test]
    fn expired_segments_leave_the_head_and_their_slots_are_emptied() {
        let (shared, mut feed) = (EnvoyMap::default(), Feed::default());
        let mut fetcher = DenyList::default();
        let upto = feed.add(token("old", 1100));
        poll(&mut fetcher, &shared, &feed, upto, 1000, 1).expect("published");
        let upto = feed.add(token("young", 2000));
        poll(&mut fetcher, &shared, &feed, upto, 1050, 2).expect("published");
        poll(&mut fetcher, &shared, &feed, upto, 1130, 3).expect("published");
        let head = head(&shared);
        assert_eq!(
            head.live.iter().map(|s| (s.n, s.until)).collect::<Vec<_>>(),
            vec![(1, 2000 + LEEWAY)]
        );
        // Envoy keeps the key; its bytes are gone.
        assert!(shared.get(&keys().deny_list_slot(0)).is_some());
        assert_eq!(shared.value_bytes(&keys().deny_list_slot(0)), 0);
        assert!(!fetcher.state().token_revoked("old", 1130));
        assert_eq!(fetcher.len(), 1, "the copy was swept");
        let mut late = DenyList::default();
        late.sync(&shared, &keys(), 1131);
        assert_eq!(late.len(), 1);
    }

    /// Two VMs publish segment 1 at once: B, which read the feed later (entries 2 to 4), wins
    /// the head; A, whose older page has entry 2 only, writes the slot last. Without the tag the
    /// slot's bytes (A's) stood under B's head and cursor, and entries 3 and 4 were lost for
    /// good.
    #[test]
    fn two_vms_publishing_the_same_segment_lose_nothing() {
        let (map, mut feed) = (EnvoyMap::default(), Feed::default());
        let (mut a, mut b) = (DenyList::default(), DenyList::default());
        let upto = feed.add(token("x1", 1900));
        poll(&mut a, &map, &feed, upto, 1000, 0xa0).expect("published");
        let a_upto = feed.add(token("a2", 1900));
        feed.add(token("b3", 1900));
        let b_upto = feed.add(token("b4", 1900));
        b.sync(&map, &keys(), 1001);
        a.sync(&map, &keys(), 1001);

        let b_cell = RefCell::new(&mut b);
        let shared = Interleaved {
            map: &map,
            // Slot 1 has never been written: Envoy takes A's write whatever its CAS token.
            before: RefCell::new(Some((
                keys().deny_list_slot(1),
                Box::new(|| {
                    let mut b = b_cell.borrow_mut();
                    poll(&mut b, &map, &feed, b_upto, 1001, 0xb1).expect("B publishes");
                }),
            ))),
        };
        let asked_after = a.reader().cursor();
        let read = a.publish(
            &shared,
            &keys(),
            asked_after,
            |reader| feed.page(reader, a_upto),
            LEEWAY,
            1001,
            0xa1,
        );
        assert!(read.is_ok(), "A published after repairing: {read:?}");
        drop(shared);
        let b = b_cell.into_inner();

        // The head now names what the slots hold, and its cursor went back to read again.
        let mut c = DenyList::default();
        c.sync(&map, &keys(), 1002);
        assert!(c.vouches(1002, 300), "no slot disagrees with the head");
        assert!(
            c.reader().cursor() < b_upto,
            "entries 3 and 4 are read again"
        );

        // The next poll, by either VM, reads them from the durable feed.
        poll(b, &map, &feed, b_upto, 1002, 0xb2).expect("published");
        for vm in [&mut a, b, &mut c] {
            vm.sync(&map, &keys(), 1003);
            for jti in ["x1", "a2", "b3", "b4"] {
                assert!(vm.state().token_revoked(jti, 1003), "{jti}");
            }
            assert!(vm.vouches(1003, 300));
        }
        let late = {
            let mut late = DenyList::default();
            late.sync(&map, &keys(), 1003);
            late
        };
        for jti in ["x1", "a2", "b3", "b4"] {
            assert!(late.state().token_revoked(jti, 1003), "{jti}");
        }
    }

    #[test]
    fn a_reader_does_not_vouch_past_a_slot_that_is_not_what_the_head_says() {
        let (shared, mut feed) = (EnvoyMap::default(), Feed::default());
        let mut fetcher = DenyList::default();
        let upto = feed.add(token("a", 1900));
        poll(&mut fetcher, &shared, &feed, upto, 1000, 1).expect("published");
        // Another writer's segment 0 lands after the head was written.
        let other = Segment {
            n: 0,
            tag: 99,
            revocations: vec![token("z", 1900)],
        };
        assert!(shared.set(&keys().deny_list_slot(0), &other.encode(), None));
        let mut reader = DenyList::default();
        reader.sync(&shared, &keys(), 1001);
        assert!(
            !reader.vouches(1001, 300),
            "it waits for the head to be repaired"
        );
        assert!(!reader.state().token_revoked("a", 1001));

        // No writer of ours looked again after that write: the fetcher finds it at its next
        // full read of the slots and repairs. The head takes the slot's tag, the cursor goes
        // back, and "a" is read again from the feed.
        let later = 1000 + FULL_CHECK_INTERVAL;
        let repaired = poll(&mut fetcher, &shared, &feed, upto, later, 2);
        assert_eq!(
            repaired,
            Err(PublishError::Stale),
            "the page was asked for too far on"
        );
        poll(&mut fetcher, &shared, &feed, upto, later, 3).expect("published");
        reader.sync(&shared, &keys(), later);
        assert!(reader.vouches(later, 300));
        assert!(reader.state().token_revoked("a", later));
        assert!(reader.state().token_revoked("z", later));
    }

    #[test]
    fn a_page_asked_for_after_a_cursor_the_head_went_back_from_is_asked_again() {
        let (shared, mut feed) = (EnvoyMap::default(), Feed::default());
        let mut fetcher = DenyList::default();
        let upto = feed.add(token("a", 1900));
        poll(&mut fetcher, &shared, &feed, upto, 1000, 1).expect("published");
        let mut head = head(&shared);
        head.reader = FeedReader::at(0);
        assert!(shared.set(&keys().deny_list_head, &head.encode(), None));
        let stale = fetcher.publish(
            &shared,
            &keys(),
            1,
            |reader| feed.page(reader, upto),
            LEEWAY,
            1001,
            2,
        );
        assert_eq!(stale, Err(PublishError::Stale));
    }

    #[test]
    fn a_revoke_all_watermark_is_never_lowered_by_an_older_entry() {
        let (shared, mut feed) = (EnvoyMap::default(), Feed::default());
        let user = |through: i64, exp: i64| Revocation::User {
            subject: "u".into(),
            revoked_through: through,
            expires_at: exp,
        };
        let mut fetcher = DenyList::default();
        let upto = feed.add(user(2000, 2900));
        poll(&mut fetcher, &shared, &feed, upto, 2000, 1).expect("published");
        // An older revoke-all, replayed into the feed later (a later segment).
        let upto = feed.add(user(1000, 1900));
        poll(&mut fetcher, &shared, &feed, upto, 2001, 2).expect("published");
        let mut vm = DenyList::default();
        vm.sync(&shared, &keys(), 2002);
        for list in [&fetcher, &vm] {
            let watermark = list.state().watermark("u", 2002).expect("a watermark");
            assert_eq!(
                (watermark.revoked_through, watermark.until),
                (2000, 2900 + LEEWAY)
            );
        }
    }

    #[test]
    fn a_head_that_starts_over_does_not_make_a_vm_forget() {
        let (shared, mut feed) = (EnvoyMap::default(), Feed::default());
        let mut fetcher = DenyList::default();
        let upto = feed.add(token("a", 1900));
        poll(&mut fetcher, &shared, &feed, upto, 1000, 1).expect("published");
        let mut vm = DenyList::default();
        vm.sync(&shared, &keys(), 1000);
        assert!(shared.set(&keys().deny_list_head, &Head::default().encode(), None));
        vm.sync(&shared, &keys(), 1001);
        assert!(vm.state().token_revoked("a", 1001));
    }

    #[test]
    fn the_ring_carries_the_oldest_segment_forward_when_full() {
        let (shared, mut feed) = (EnvoyMap::default(), Feed::default());
        let mut fetcher = DenyList::default();
        let reads = RING_SLOTS * 3;
        for i in 0..reads {
            let upto = feed.add(token(&format!("j{i}"), 5000));
            let now = 1000 + i as i64;
            poll(&mut fetcher, &shared, &feed, upto, now, 100 + i).expect("published");
        }
        let head = head(&shared);
        assert_eq!(head.live.len() as u64, RING_SLOTS, "capped at the ring");
        assert_eq!(
            shared.key_count() as u64,
            RING_SLOTS + 1,
            "the ring and the head"
        );
        let mut late = DenyList::default();
        late.sync(&shared, &keys(), 2000);
        assert!(late.vouches(2000, 3000));
        assert_eq!(late.len() as u64, reads, "every live revocation, each once");
    }

    #[test]
    fn heads_whose_segments_would_share_a_slot_are_refused() {
        let live = |n: u64| LiveSegment {
            n,
            tag: 1,
            until: 2000,
            from: 0,
        };
        let head = Head {
            reader: FeedReader::at(3),
            read_at: 1000,
            next: 70,
            live: vec![live(6), live(69)],
        };
        assert_eq!(Head::decode(&head.encode()), Some(head.clone()));
        let too_old = Head {
            live: vec![live(5), live(69)],
            ..head.clone()
        };
        assert_eq!(Head::decode(&too_old.encode()), None);
        let unordered = Head {
            live: vec![live(69), live(6)],
            ..head.clone()
        };
        assert_eq!(Head::decode(&unordered.encode()), None);
        let ahead = Head {
            live: vec![live(70)],
            ..head
        };
        assert_eq!(Head::decode(&ahead.encode()), None);
    }

    /// A day of one-second polls: two 15-minute token revocations a second, a session ended
    /// every two minutes, a revoke-all every five. Shared data keeps a fixed set of keys and
    /// bytes in proportion to what is live.
    #[test]
    fn a_day_of_revocations_keeps_shared_data_bounded() {
        const START: i64 = 1_800_000_000;
        const DAY: i64 = 86_400;
        let (shared, mut feed) = (EnvoyMap::default(), Feed::default());
        let (mut fetcher, mut reader) = (DenyList::default(), DenyList::default());
        // What is live, as stored: (until, bytes), oldest first.
        let mut live: VecDeque<(i64, usize)> = VecDeque::new();
        let mut live_bytes = 0usize;
        let (mut max_keys, mut max_total, mut max_head, mut max_live) = (0, 0, 0, 0);
        let mut worst_ratio = 0f64;
        let mut tag = 0x9e37_79b9_7f4a_7c15u64;
        for second in 0..DAY {
            let now = START + second;
            let mut new = vec![
                token(&format!("{second:08}-a-0123456789abcdef"), now + 900),
                token(&format!("{second:08}-b-0123456789abcdef"), now + 900),
            ];
            if second % 120 == 0 {
                new.push(Revocation::Session {
                    sid: format!("session-{second:08}"),
                    expires_at: now + 900,
                });
            }
            if second % 300 == 0 {
                new.push(Revocation::User {
                    subject: format!("user-{}", second % 7),
                    revoked_through: now,
                    expires_at: now + 900,
                });
            }
            let mut upto = 0;
            for revocation in new {
                let bytes = serde_json::to_vec(&revocation).expect("serialises").len();
                live.push_back((revocation.holds_until(LEEWAY), bytes));
                live_bytes += bytes;
                upto = feed.add(revocation);
            }
            while live.front().is_some_and(|(until, _)| *until <= now) {
                let (_, bytes) = live.pop_front().expect("front");
                live_bytes -= bytes;
            }
            tag = tag.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            poll(&mut fetcher, &shared, &feed, upto, now, tag).expect("published");
            reader.sync(&shared, &keys(), now);

            let total = shared.total_bytes();
            max_keys = max_keys.max(shared.key_count());
            max_total = max_total.max(total);
            max_head = max_head.max(shared.value_bytes(&keys().deny_list_head));
            max_live = max_live.max(live_bytes);
            // Past the first token lifetime, when what is live has settled.
            if second > 1000 {
                worst_ratio = worst_ratio.max(total as f64 / live_bytes as f64);
            }
            assert!(
                total <= 2 * live_bytes + 16 * 1024,
                "at {second} s: {total} bytes stored for {live_bytes} live"
            );
        }
        eprintln!(
            "a day ({DAY} polls, {} revocations): keys at most {max_keys}, total bytes at most \
             {max_total} (live revocations at most {max_live} bytes; worst total/live after the \
             first 1000 s {worst_ratio:.2}), head at most {max_head} bytes",
            feed.latest()
        );
        assert!(max_keys as u64 <= RING_SLOTS + 5);
        assert!(reader.vouches(START + DAY - 1, 300));
        let last = START + DAY - 1;
        assert!(reader
            .state()
            .token_revoked(&format!("{:08}-a-0123456789abcdef", DAY - 1), last));
        assert!(reader
            .state()
            .token_revoked(&format!("{:08}-b-0123456789abcdef", DAY - 901), last));
        assert_eq!(reader.len(), fetcher.len());
    }
}
