//! The Cron Trigger's pull of the origin's revocation feed, which repairs any lost or deferred
//! push. The rules (cursor, which entries to believe, an entry signed by a key not held yet) are
//! the core's [`FeedReader`]; this module fetches pages, stores what the reader hands back, keeps
//! the reader in KV, and stays within Workers' per-invocation KV operation limit.

use edgeauth_core::{FeedNext, FeedPage, FeedReader};
use serde_json::json;
use worker::{console_error, Env, Method, Request, RequestInit};

use crate::{
    deny_list::{self, MAX_KV_OPERATIONS_PER_REVOCATION},
    fetch_with_deadline,
    keys::{current_keys, may_force},
    log, now_seconds, with_isolate,
};

/// KV key of the feed reader the Cron Trigger resumes from: [`FeedReader`] as JSON (a plain
/// number is the cursor as written before, still read).
const CURSOR_KEY: &str = "feed:cursor";
/// KV operations (gets and puts) one run may make. Workers allow 1,000 per invocation; the
/// margin is for what is not counted here.
pub const KV_OPERATIONS_PER_RUN: u32 = 900;
/// Pages fetched per run at most (each is a subrequest, as are key fetches).
const FEED_PAGES_PER_RUN: u32 = 20;

/// The stored cursor is neither form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the stored feed cursor `{0}` is unreadable")]
pub struct CursorUnreadable(String);

/// The reader stored at [`CURSOR_KEY`]; nothing stored is the feed's start.
pub fn parse_cursor(text: Option<&str>) -> Result<FeedReader, CursorUnreadable> {
    let Some(text) = text.map(str::trim) else {
        return Ok(FeedReader::default());
    };
    if let Ok(reader) = serde_json::from_str::<FeedReader>(text) {
        return Ok(reader);
    }
    text.parse()
        .map(FeedReader::at)
        .map_err(|_| CursorUnreadable(text.chars().take(64).collect()))
}

/// The KV operations a run has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBudget {
    left: u32,
}

impl KvBudget {
    /// A run's budget of `operations`.
    pub fn new(operations: u32) -> Self {
        Self { left: operations }
    }

    /// `operations` were made.
    pub fn spend(&mut self, operations: u32) {
        self.left = self.left.saturating_sub(operations);
    }

    /// How many revocations the next page may store: each costs at most
    /// [`MAX_KV_OPERATIONS_PER_REVOCATION`], and the page's cursor write one more.
    pub fn revocations_for_page(&self) -> usize {
        (self.left.saturating_sub(1) / MAX_KV_OPERATIONS_PER_REVOCATION) as usize
    }
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Stopped {
    CaughtUp,
    /// At an entry signed by a key not held yet, with no forced key fetch allowed now: the
    /// cursor stays before it, and a later run reads it again.
    WaitingForKeys,
    /// The KV or page budget is spent: the next run goes on from the cursor.
    Budget,
}

/// Reads the origin's feed from the stored cursor and stores every revocation in it, saving the
/// cursor after each stored page, so a failed run repeats only its last page and a backlog
/// drains over successive runs.
pub async fn pull(env: &Env) -> Result<serde_json::Value, String> {
    let settings = with_isolate(env, |i| i.settings.clone())?;
    let kv = deny_list::kv(env)?;
    let mut budget = KvBudget::new(KV_OPERATIONS_PER_RUN);
    let stored_cursor = kv.get(CURSOR_KEY).text().await.map_err(|e| e.to_string())?;
    budget.spend(1);
    // Re-reading from the start is harmless (every write only raises), so an unreadable cursor
    // costs a longer run, never a revocation.
    let mut reader = parse_cursor(stored_cursor.as_deref()).unwrap_or_else(|error| {
        console_error!(
            "{}",
            json!({"event": "feed_cursor_unreadable", "error": error.to_string()})
        );
        FeedReader::default()
    });
    let (mut stored, mut rejected) = (0u32, 0u32);
    let mut stopped = Stopped::Budget;
    'pages: for _ in 0..FEED_PAGES_PER_RUN {
        if budget.revocations_for_page() == 0 {
            break;
        }
        let now = now_seconds();
        let mut keys = current_keys(env, &settings, now, false)
            .await
            .ok_or("no key set to check the feed with")?;
        let mut init = RequestInit::new();
        init.with_method(Method::Get);
        let request = Request::new_with_init(&reader.url(&settings.feed_url), &init)
            .map_err(|e| e.to_string())?;
        let mut response = fetch_with_deadline(request, &settings).await?;
        if response.status_code() != 200 {
            return Err(format!("the feed answered {}", response.status_code()));
        }
        let page: FeedPage = response.json().await.map_err(|e| e.to_string())?;
        loop {
            let keys_fetched_at = with_isolate(env, |i| i.keys.fetched_at());
            let read = reader.read(
                &page,
                now,
                &keys,
                keys_fetched_at,
                &settings.policy,
                budget.revocations_for_page(),
            );
            for revocation in &read.revocations {
                let written = deny_list::store(env, &settings, revocation, now).await?;
                budget.spend(written.kv_operations);
                stored += 1;
            }
            for (seq, reason) in &read.rejected {
                // Not the origin's even with keys fetched after it was first seen: skipping it
                // is all an edge can do, and it is logged for the operator.
                rejected += 1;
                console_error!(
                    "{}",
                    json!({"event": "feed_entry_rejected", "seq": seq, "reason": reason.code()})
                );
            }
            if read.reader != reader {
                let text = serde_json::to_string(&read.reader).map_err(|e| e.to_string())?;
                kv.put(CURSOR_KEY, text)
                    .map_err(|e| e.to_string())?
                    .execute()
                    .await
                    .map_err(|e| e.to_string())?;
                budget.spend(1);
                reader = read.reader;
            }
            match read.next {
                FeedNext::ReadMore => continue 'pages,
                FeedNext::CaughtUp => {
                    stopped = Stopped::CaughtUp;
                    break 'pages;
                }
                FeedNext::NeedKeys => {
                    let waiting = reader.waiting().map(|w| w.seq);
                    if !may_force(env, &settings, now) || budget.revocations_for_page() == 0 {
                        log(json!({"event": "feed_waiting_for_keys", "seq": waiting}));
                        stopped = Stopped::WaitingForKeys;
                        break 'pages;
                    }
                    // At most once a run: the forced fetch takes the slot until the interval
                    // passes, so a key still missing stops the run on the next read.
                    keys = current_keys(env, &settings, now, true)
                        .await
                        .ok_or("no key set to check the feed with")?;
                }
            }
        }
    }
    Ok(json!({
        "event": "feed_pull",
        "stored": stored,
        "rejected": rejected,
        "cursor": reader.cursor(),
        "stopped": stopped,
        "kv_operations": KV_OPERATIONS_PER_RUN - budget.left,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_record_is_the_readers_json_or_a_legacy_number() {
        assert_eq!(parse_cursor(None), Ok(FeedReader::default()));
        assert_eq!(parse_cursor(Some("42")), Ok(FeedReader::at(42)));
        let reader = FeedReader::at(7);
        let text = serde_json::to_string(&reader).expect("serialisable");
        assert_eq!(parse_cursor(Some(&text)), Ok(reader));
        let waiting = r#"{"cursor":7,"waiting":{"seq":8,"since":1000}}"#;
        let parsed = parse_cursor(Some(waiting)).expect("a waiting reader");
        assert_eq!(
            (parsed.cursor(), parsed.waiting().map(|w| (w.seq, w.since))),
            (7, Some((8, 1000)))
        );
        assert!(parse_cursor(Some("-1")).is_err());
        assert!(parse_cursor(Some(r#"{"seq":3}"#)).is_err());
    }

    #[test]
    fn a_run_never_plans_past_its_kv_budget() {
        let mut budget = KvBudget::new(KV_OPERATIONS_PER_RUN);
        budget.spend(1); // the cursor read
        let mut operations = 1;
        let mut pages = 0;
        while budget.revocations_for_page() > 0 {
            // A page of nothing but watermarks, each a read and a write, then its cursor write.
            let taken = budget.revocations_for_page().min(100) as u32;
            let spent = taken * MAX_KV_OPERATIONS_PER_REVOCATION + 1;
            budget.spend(spent);
            operations += spent;
            pages += 1;
        }
        assert!(operations <= KV_OPERATIONS_PER_RUN, "{operations}");
        assert!(operations < 1000);
        // Most of the budget is used: a backlog drains at ~450 watermarks a run.
        assert!(operations > KV_OPERATIONS_PER_RUN - 3, "{operations}");
        assert_eq!(pages, 5);
        assert_eq!(KvBudget::new(2).revocations_for_page(), 0);
        assert_eq!(KvBudget::new(3).revocations_for_page(), 1);
    }
}
