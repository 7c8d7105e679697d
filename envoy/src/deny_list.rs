//! The deny-list as Envoy's VMs share it: an append-only log of segments in shared data, so a
//! VM copies only what is new.
//!
//! The fetcher turns each feed read that brings revocations into one segment
//! (`…deny_list.segment.<n>`, never changed once written) and then moves the head
//! (`…deny_list.head`: the feed cursor, when the feed was last read, and which segments are live
//! with the latest expiry in each) with compare-and-swap. Each VM keeps its own copy in memory and,
//! when the head changes, reads the segments it has not seen. A segment whose every revocation
//! has expired is cleared and leaves the head. The work per VM is proportional to the new
//! revocations, not to all the live ones (a single record rewritten on every read made every VM
//! re-parse the whole list every second).
//!
//! Shared data is reached through [`SharedData`], so the log is tested natively with a map
//! standing in for Envoy's.

use std::collections::HashMap;

use edgeauth_core::{DenyListStatus, Revocation, WatermarkStatus};
use serde::{Deserialize, Serialize};

use crate::shared::Keys;

/// Envoy's shared data: a byte map with compare-and-swap, common to the VMs of one `vm_id`.
pub trait SharedData {
    /// The value under `key` and its CAS token, or `None` when there is none (or the host could
    /// not answer).
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)>;
    /// Writes `value` (or clears the key), if `cas` still matches when given; whether it was
    /// written.
    fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool;
}

/// How long a VM keeps an expired revocation before sweeping its copy, in seconds: sweeping on
/// every tick would walk the whole map twice a second for nothing.
const SWEEP_INTERVAL: i64 = 10;

/// The shared head of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Every feed entry up to this sequence number is in the log.
    pub cursor: u64,
    /// When the feed was last read successfully (seconds since the epoch); 0 = never.
    pub read_at: i64,
    /// The oldest live segment.
    pub first: u64,
    /// The next segment to write.
    pub next: u64,
    /// For each live segment, from `first`, the latest time any of its revocations holds.
    pub untils: Vec<i64>,
}

impl Head {
    /// As stored.
    pub fn encode(&self) -> Vec<u8> {
        // Integers and a vector of integers always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for anything else, or for a head whose segment range and expiries disagree.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let head: Self = serde_json::from_slice(bytes).ok()?;
        let live = head.next.checked_sub(head.first)?;
        (usize::try_from(live).ok()? == head.untils.len()).then_some(head)
    }
}

/// One segment: revoked `jti` → until when it must be refused; and revoke-all watermarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The revocations.
    pub revoked: HashMap<String, i64>,
    /// User `sub` → (tokens issued through this time are revoked, until when it matters).
    #[serde(default)]
    pub users: HashMap<String, (i64, i64)>,
}

impl Segment {
    /// As stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Why a publish did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Another VM moved the head first (two fetchers for a moment): read again next time.
    #[error("another VM moved the deny-list head first")]
    Conflict,
    /// Shared data refused a write.
    #[error("shared data refused a deny-list write")]
    Refused,
}

/// One VM's copy of the deny-list.
#[derive(Debug, Default)]
pub struct DenyList {
    revoked: HashMap<String, i64>,
    users: HashMap<String, (i64, i64)>,
    read_at: i64,
    cursor: u64,
    /// The first segment this copy has not read.
    next_segment: u64,
    /// The head as last seen, to skip an unchanged one cheaply.
    head_bytes: Vec<u8>,
    swept_at: i64,
}

impl DenyList {
    /// The answer about `jti` at `now`. A listed `jti` is listed however old the list; otherwise,
    /// a list never read or not read for `max_stale` seconds cannot vouch for a token.
    pub fn status(&self, jti: Option<&str>, now: i64, max_stale: u32) -> DenyListStatus {
        if jti.is_some_and(|jti| self.revoked.get(jti).is_some_and(|until| now < *until)) {
            return DenyListStatus::Listed;
        }
        if self.read_at == 0 || now.saturating_sub(self.read_at) > i64::from(max_stale) {
            return DenyListStatus::Unavailable;
        }
        DenyListStatus::NotListed
    }

    /// The user's revoke-all watermark at `now`, with the same staleness rule as [`Self::status`].
    pub fn watermark(&self, subject: Option<&str>, now: i64, max_stale: u32) -> WatermarkStatus {
        let listed = subject
            .and_then(|s| self.users.get(s))
            .filter(|(_, until)| now < *until);
        if let Some((through, _)) = listed {
            return WatermarkStatus::RevokedThrough(*through);
        }
        if self.read_at == 0 || now.saturating_sub(self.read_at) > i64::from(max_stale) {
            return WatermarkStatus::Unavailable;
        }
        WatermarkStatus::None
    }

    /// When the feed was last read (0: never).
    pub fn read_at(&self) -> i64 {
        self.read_at
    }

    /// The feed cursor to read from next.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Revocations held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    fn merge(&mut self, segment: Segment) {
        for (jti, until) in segment.revoked {
            let entry = self.revoked.entry(jti).or_insert(until);
            *entry = (*entry).max(until);
        }
        for (subject, (through, until)) in segment.users {
            let entry = self.users.entry(subject).or_insert((through, until));
            *entry = (entry.0.max(through), entry.1.max(until));
        }
    }

    fn sweep(&mut self, now: i64) {
        if now.saturating_sub(self.swept_at) >= SWEEP_INTERVAL {
            self.revoked.retain(|_, until| now < *until);
            self.users.retain(|_, (_, until)| now < *until);
            self.swept_at = now;
        }
    }

    /// Reads the segments `head` names that this copy has not.
    fn catch_up(&mut self, shared: &impl SharedData, keys: &Keys, head: &Head) {
        if head.next < self.next_segment {
            // The log started over (shared data lost): so does this copy.
            *self = Self::default();
        }
        for n in self.next_segment.max(head.first)..head.next {
            let segment = shared
                .get(&keys.deny_list_segment(n))
                .and_then(|(bytes, _)| Segment::decode(&bytes));
            if let Some(segment) = segment {
                self.merge(segment);
            }
        }
        self.next_segment = head.next;
        self.read_at = head.read_at;
        self.cursor = head.cursor;
    }

    /// Brings this copy up to date with shared data.
    pub fn sync(&mut self, shared: &impl SharedData, keys: &Keys, now: i64) {
        if let Some((bytes, _)) = shared.get(&keys.deny_list_head) {
            if bytes != self.head_bytes {
                if let Some(head) = Head::decode(&bytes) {
                    self.catch_up(shared, keys, &head);
                    self.head_bytes = bytes;
                }
            }
        }
        self.sweep(now);
    }

    /// The fetcher's part: appends what one feed read revoked as a new segment (each kept until
    /// its expiry plus `leeway`), clears segments that have wholly expired, and moves the head to
    /// `cursor` and `now`, with compare-and-swap.
    pub fn publish(
        &mut self,
        shared: &impl SharedData,
        keys: &Keys,
        revocations: Vec<Revocation>,
        leeway: i64,
        cursor: u64,
        now: i64,
    ) -> Result<(), PublishError> {
        let (bytes, cas) = shared.get(&keys.deny_list_head).unwrap_or_default();
        let mut head = Head::decode(&bytes).unwrap_or_default();
        self.catch_up(shared, keys, &head);
        let mut segment = Segment::default();
        for revocation in revocations {
            let until = revocation.expires_at().saturating_add(leeway);
            match revocation {
                Revocation::Token { jti, .. } => {
                    segment.revoked.insert(jti, until);
                }
                Revocation::User {
                    subject,
                    revoked_through,
                    ..
                } => {
                    let entry = segment
                        .users
                        .entry(subject)
                        .or_insert((revoked_through, until));
                    *entry = (entry.0.max(revoked_through), entry.1.max(until));
                }
            }
        }
        let latest = segment
            .revoked
            .values()
            .chain(segment.users.values().map(|(_, until)| until))
            .max()
            .copied();
        if let Some(until) = latest {
            let key = keys.deny_list_segment(head.next);
            if !shared.set(&key, Some(&segment.encode()), None) {
                return Err(PublishError::Refused);
            }
            head.untils.push(until);
            head.next += 1;
        }
        while head.untils.first().is_some_and(|until| *until <= now) {
            // Best effort: a segment left behind holds only expired revocations.
            shared.set(&keys.deny_list_segment(head.first), None, None);
            head.untils.remove(0);
            head.first += 1;
        }
        head.cursor = head.cursor.max(cursor);
        head.read_at = now;
        let encoded = head.encode();
        if !shared.set(&keys.deny_list_head, Some(&encoded), cas) {
            return Err(PublishError::Conflict);
        }
        self.merge(segment);
        self.catch_up(shared, keys, &head);
        self.head_bytes = encoded;
        self.sweep(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Envoy's shared data as a map with CAS counters.
    #[derive(Default)]
    struct Map(RefCell<HashMap<String, (Vec<u8>, u32)>>);

    impl SharedData for Map {
        fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
            self.0
                .borrow()
                .get(key)
                .map(|(value, cas)| (value.clone(), Some(*cas)))
        }

        fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
            let mut map = self.0.borrow_mut();
            let current = map.get(key).map(|(_, c)| *c);
            if cas.is_some() && cas != current {
                return false;
            }
            let next = current.unwrap_or(0) + 1;
            map.insert(key.to_string(), (value.unwrap_or_default().to_vec(), next));
            true
        }
    }

    impl Map {
        fn bytes_read_by(&self, keys: &[String]) -> usize {
            let map = self.0.borrow();
            keys.iter()
                .filter_map(|k| map.get(k))
                .map(|(v, _)| v.len())
                .sum()
        }
    }

    fn keys() -> Keys {
        Keys::for_configuration(b"test")
    }

    fn revoked(jtis: &[&str], until: i64) -> Vec<Revocation> {
        jtis.iter()
            .map(|j| Revocation::Token {
                jti: (*j).to_string(),
                expires_at: until,
            })
            .collect()
    }

    #[test]
    fn what_the_fetcher_publishes_every_vm_sees() {
        let (shared, keys) = (Map::default(), keys());
        let mut fetcher = DenyList::default();
        let mut other = DenyList::default();
        other.sync(&shared, &keys, 1000);
        assert_eq!(
            other.status(Some("a"), 1000, 300),
            DenyListStatus::Unavailable
        );

        fetcher
            .publish(&shared, &keys, revoked(&["a", "b"], 1900), 0, 2, 1000)
            .expect("published");
        assert_eq!(fetcher.status(Some("a"), 1000, 300), DenyListStatus::Listed);
        other.sync(&shared, &keys, 1001);
        assert_eq!(other.status(Some("b"), 1001, 300), DenyListStatus::Listed);
        assert_eq!(
            other.status(Some("c"), 1001, 300),
            DenyListStatus::NotListed
        );
        assert_eq!((other.cursor(), other.read_at()), (2, 1000));

        // A read with nothing new moves the head only; a VM that joins late sees everything.
        fetcher
            .publish(&shared, &keys, Vec::new(), 0, 2, 1005)
            .expect("published");
        fetcher
            .publish(&shared, &keys, revoked(&["c"], 1950), 0, 3, 1010)
            .expect("published");
        let mut late = DenyList::default();
        late.sync(&shared, &keys, 1011);
        for jti in ["a", "b", "c"] {
            assert_eq!(
                late.status(Some(jti), 1011, 300),
                DenyListStatus::Listed,
                "{jti}"
            );
        }
        assert_eq!((late.cursor(), late.read_at(), late.len()), (3, 1010, 3));
    }

    #[test]
    fn a_vm_reads_only_the_segments_it_has_not_seen() {
        let (shared, keys) = (Map::default(), keys());
        let mut fetcher = DenyList::default();
        let many: Vec<String> = (0..1000).map(|i| format!("jti-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        fetcher
            .publish(&shared, &keys, revoked(&many, 1900), 0, 1000, 1000)
            .expect("published");
        let mut other = DenyList::default();
        other.sync(&shared, &keys, 1000);
        fetcher
            .publish(&shared, &keys, revoked(&["new"], 1900), 0, 1001, 1001)
            .expect("published");
        // The new segment is a few bytes; the first one, already read, is not read again.
        let head = Head::decode(&shared.get(&keys.deny_list_head).expect("head").0).expect("head");
        assert_eq!((head.first, head.next), (0, 2));
        assert!(shared.bytes_read_by(&[keys.deny_list_segment(1)]) < 100);
        other.sync(&shared, &keys, 1001);
        assert_eq!(other.status(Some("new"), 1001, 300), DenyListStatus::Listed);
        assert_eq!(other.len(), 1001);
    }

    #[test]
    fn expired_segments_are_cleared_and_expired_entries_swept() {
        let (shared, keys) = (Map::default(), keys());
        let mut fetcher = DenyList::default();
        fetcher
            .publish(&shared, &keys, revoked(&["old"], 1100), 0, 1, 1000)
            .expect("published");
        fetcher
            .publish(&shared, &keys, revoked(&["young"], 2000), 0, 2, 1050)
            .expect("published");
        fetcher
            .publish(&shared, &keys, Vec::new(), 0, 2, 1100)
            .expect("published");
        let head = Head::decode(&shared.get(&keys.deny_list_head).expect("head").0).expect("head");
        assert_eq!((head.first, head.next, head.untils), (1, 2, vec![2000]));
        assert_eq!(
            shared.bytes_read_by(&[keys.deny_list_segment(0)]),
            0,
            "cleared"
        );
        assert_eq!(
            fetcher.status(Some("old"), 1100, 300),
            DenyListStatus::NotListed
        );
        assert_eq!(fetcher.len(), 1, "the copy was swept");
        // A VM that starts now never reads the cleared segment.
        let mut late = DenyList::default();
        late.sync(&shared, &keys, 1101);
        assert_eq!(late.len(), 1);
    }

    #[test]
    fn a_second_fetcher_cannot_lose_the_first_ones_head() {
        let (shared, keys) = (Map::default(), keys());
        let mut first = DenyList::default();
        first
            .publish(&shared, &keys, revoked(&["a"], 1900), 0, 1, 1000)
            .expect("published");
        // A head moved between another fetcher's read and write is refused, not overwritten.
        let (bytes, cas) = shared.get(&keys.deny_list_head).expect("head");
        first
            .publish(&shared, &keys, revoked(&["b"], 1900), 0, 2, 1001)
            .expect("published");
        assert!(!shared.set(&keys.deny_list_head, Some(&bytes), cas));
        let mut vm = DenyList::default();
        vm.sync(&shared, &keys, 1002);
        assert_eq!(vm.status(Some("b"), 1002, 300), DenyListStatus::Listed);
    }

    #[test]
    fn the_list_answers_listed_not_listed_or_unavailable() {
        let mut list = DenyList::default();
        let segment = |until: i64| Segment {
            revoked: HashMap::from([("revoked".to_string(), until)]),
            ..Segment::default()
        };
        list.merge(segment(1600));
        list.merge(segment(1500));
        assert_eq!(list.revoked["revoked"], 1600, "the later expiry wins");
        assert_eq!(
            list.status(Some("other"), 1000, 300),
            DenyListStatus::Unavailable
        );
        assert_eq!(
            list.status(Some("revoked"), 1000, 300),
            DenyListStatus::Listed
        );
        list.read_at = 1000;
        assert_eq!(
            list.status(Some("other"), 1300, 300),
            DenyListStatus::NotListed
        );
        assert_eq!(list.status(None, 1300, 300), DenyListStatus::NotListed);
        assert_eq!(
            list.status(Some("other"), 1301, 300),
            DenyListStatus::Unavailable
        );
        assert_eq!(
            list.status(Some("revoked"), 1599, 300),
            DenyListStatus::Listed
        );
    }

    #[test]
    fn a_revoke_all_reaches_every_vm_as_a_watermark() {
        let (shared, keys) = (Map::default(), keys());
        let mut fetcher = DenyList::default();
        let user = vec![Revocation::User {
            subject: "u".into(),
            revoked_through: 1000,
            expires_at: 1900,
        }];
        fetcher
            .publish(&shared, &keys, user, 30, 1, 1000)
            .expect("published");
        let mut vm = DenyList::default();
        vm.sync(&shared, &keys, 1001);
        assert_eq!(
            vm.watermark(Some("u"), 1001, 300),
            WatermarkStatus::RevokedThrough(1000)
        );
        assert_eq!(vm.watermark(Some("v"), 1001, 300), WatermarkStatus::None);
        // Until the last token it revokes has expired, leeway included, even from a stale list.
        assert_eq!(
            vm.watermark(Some("u"), 1929, 300),
            WatermarkStatus::RevokedThrough(1000)
        );
        assert_eq!(vm.users["u"], (1000, 1930));
    }

    #[test]
    fn heads_that_disagree_with_themselves_are_refused() {
        let head = Head {
            cursor: 3,
            read_at: 1000,
            first: 2,
            next: 4,
            untils: vec![1, 2],
        };
        assert_eq!(Head::decode(&head.encode()), Some(head.clone()));
        let short = Head {
            untils: vec![1],
            ..head.clone()
        };
        assert_eq!(Head::decode(&short.encode()), None);
        let backwards = Head { first: 5, ..head };
        assert_eq!(Head::decode(&backwards.encode()), None);
    }
}
