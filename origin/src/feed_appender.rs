//! This instance's appends to the revocation feed, committed together.
//!
//! Every append takes the feed's next numbers with a conditional bump of one counter: appends
//! made at the same moment race for it, the losers read it again and retry, and past a few
//! attempts the request answers 503. One instance's logouts therefore go through one task, which
//! takes every append waiting when it is free and commits them in one transaction (up to
//! [`MAX_APPEND`]): they no longer race each other, and a busy moment makes bigger transactions,
//! not more of them. Instances still race each other, one transaction each at a time.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{FeedEntry, MakeEntry, RevocationFeed, StoreError, MAX_APPEND};

/// Builds an entry for a sequence number; owned, as it waits for the appending task.
pub type OwnedMakeEntry = Box<MakeEntry<'static>>;

/// Appends waiting for the task. Past this, callers wait to hand theirs over.
const QUEUE: usize = 4096;

struct Waiting {
    make: OwnedMakeEntry,
    expires_at: i64,
    done: oneshot::Sender<Result<FeedEntry, StoreError>>,
}

/// The queue to this instance's appending task.
#[derive(Clone, Debug)]
pub struct FeedAppender {
    queue: mpsc::Sender<Waiting>,
}

impl FeedAppender {
    /// Starts the task appending to `feed`; it ends once every handle is dropped.
    pub fn spawn(feed: Arc<dyn RevocationFeed>) -> Self {
        let (queue, mut waiting) = mpsc::channel::<Waiting>(QUEUE);
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_APPEND {
                    match waiting.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let entries: Vec<(&MakeEntry<'_>, i64)> = batch
                    .iter()
                    .map(|w| (w.make.as_ref(), w.expires_at))
                    .collect();
                match feed.append_many(&entries).await {
                    Ok(appended) => {
                        for (waiting, entry) in batch.into_iter().zip(appended) {
                            // A caller that went away leaves its entry appended, as before.
                            let _ = waiting.done.send(Ok(entry));
                        }
                    }
                    Err(error) => {
                        let error = error.to_string();
                        for waiting in batch {
                            let _ = waiting
                                .done
                                .send(Err(StoreError::Unavailable(error.clone())));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Appends an entry at the feed's next number, with whatever else this instance is
    /// appending; durable when it returns.
    pub async fn append(
        &self,
        make: OwnedMakeEntry,
        expires_at: i64,
    ) -> Result<FeedEntry, StoreError> {
        let (done, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("revocation feed: the appending task stopped".into());
        self.queue
            .send(Waiting {
                make,
                expires_at,
                done,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A feed in memory that records the size of each append.
    #[derive(Default)]
    struct Recording {
        entries: Mutex<Vec<FeedEntry>>,
        batches: Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl RevocationFeed for Recording {
        async fn append_many(
            &self,
            entries: &[(&MakeEntry<'_>, i64)],
        ) -> Result<Vec<FeedEntry>, StoreError> {
            // Long enough for the other callers to queue behind the first.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut held = self.entries.lock().expect("lock");
            self.batches.lock().expect("lock").push(entries.len());
            let mut made = Vec::new();
            for (make, expires_at) in entries {
                let seq = held.len() as u64 + 1;
                let entry = FeedEntry {
                    seq,
                    jws: make(seq)?,
                    expires_at: *expires_at,
                };
                held.push(entry.clone());
                made.push(entry);
            }
            Ok(made)
        }

        async fn read_after(
            &self,
            _cursor: u64,
            _limit: u32,
            _now: i64,
        ) -> Result<(Vec<FeedEntry>, u64), StoreError> {
            unreachable!("append only")
        }
    }

    #[tokio::test]
    async fn appends_made_together_commit_together_each_with_its_own_number() {
        let feed = Arc::new(Recording::default());
        let appender = FeedAppender::spawn(feed.clone());
        let appends: Vec<_> = (0..250)
            .map(|i| {
                let appender = appender.clone();
                tokio::spawn(async move {
                    let make: OwnedMakeEntry = Box::new(move |seq| Ok(format!("{i}@{seq}")));
                    appender.append(make, i).await
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for append in appends {
            let entry = append.await.expect("task").expect("appended");
            // Each caller gets the entry its own closure made, under the number it was given.
            let (i, seq) = entry.jws.split_once('@').expect("made by the caller");
            assert_eq!(seq, entry.seq.to_string());
            assert_eq!(i, entry.expires_at.to_string());
            seqs.push(entry.seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=250).collect::<Vec<u64>>());
        let batches = feed.batches.lock().expect("lock").clone();
        assert!(batches.iter().all(|&n| n <= MAX_APPEND), "{batches:?}");
        assert!(
            batches.len() <= 5,
            "250 appends at once in a few transactions: {batches:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_append_in_it() {
        struct Down;
        #[async_trait::async_trait]
        impl RevocationFeed for Down {
            async fn append_many(
                &self,
                _entries: &[(&MakeEntry<'_>, i64)],
            ) -> Result<Vec<FeedEntry>, StoreError> {
                Err(StoreError::Unavailable("down".into()))
            }
            async fn read_after(
                &self,
                _cursor: u64,
                _limit: u32,
                _now: i64,
            ) -> Result<(Vec<FeedEntry>, u64), StoreError> {
                unreachable!("append only")
            }
        }
        let appender = FeedAppender::spawn(Arc::new(Down));
        let make: OwnedMakeEntry = Box::new(|seq| Ok(seq.to_string()));
        assert!(matches!(
            appender.append(make, 0).await,
            Err(StoreError::Unavailable(e)) if e.contains("down")
        ));
    }
}
