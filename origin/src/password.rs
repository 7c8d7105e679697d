//! Password hashing: argon2id for new hashes, bcrypt accepted for accounts imported from the
//! previous Node.js system and upgraded on the next successful login.
//!
//! Hashing is deliberately slow, so it runs on a fixed pool of `hashing_concurrency` threads of its
//! own: a login flood queues here instead of occupying the async workers that refresh traffic
//! needs. Dedicated threads rather than tokio's `spawn_blocking`: a hash that lands on whichever
//! blocking thread is free measured about 25% slower than one on a thread that hashes all day
//! (argon2's 19 MiB working set stays with the thread; see `scripts/bench origin`).
//!
//! The queue is bounded (`hashing_queue`): past it a login answers 503 with `Retry-After` at
//! once, instead of waiting behind a flood it cannot outlast. A login takes its place in the
//! queue before it reads any store ([`PasswordHasher::reserve`]), so the refused part of a flood
//! costs no DynamoDB or Redis reads either. A job whose caller has gone (the
//! client disconnected, the request timed out) is dropped unhashed when a thread reaches it, so
//! a flood of abandoned logins costs no hashing.
//!
//! A refused password takes as long as the slowest check seen (capped at
//! [`MAX_FAILURE_FLOOR`]): a legacy bcrypt account costs bcrypt, an argon2 account or an
//! unknown email argon2, and without the floor the difference would tell an attacker which
//! emails belong to old accounts. The wait is a timer, not hashing, so it costs no CPU.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use argon2::{
    password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString},
    Algorithm, Argon2, Params, Version,
};
use rand_core::OsRng;
use tokio::sync::oneshot;

use crate::metrics::METRICS;

/// argon2id cost. Defaults are OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Why hashing failed. Never the caller's fault; the HTTP layer answers 500 or 503.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The argon2 parameters are out of range.
    #[error("invalid argon2 parameters: {0}")]
    Parameters(String),
    /// Hashing itself failed.
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// The hashing thread was lost (a panic in argon2 or bcrypt, or shutdown).
    #[error("password hashing task failed")]
    Task,
    /// The queue is full: the caller answers 503 and the client retries.
    #[error("password hashing is at capacity ({0} waiting)")]
    Busy(usize),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Wrong password, or a hash in no format we know.
    Mismatch,
    /// Right password, and the stored hash is current.
    Match,
    /// Right password; store this new argon2id hash in place of the old one.
    MatchRehashed(String),
}

/// The longest a refused password is held to match the slowest check: past this a check was
/// an outlier (a stalled machine), not a hash cost worth copying.
pub const MAX_FAILURE_FLOOR: Duration = Duration::from_secs(1);

/// The bcrypt cost of the previous system's hashes (Node's bcrypt default), checked once at
/// start so the floor holds before the first legacy login.
const LEGACY_BCRYPT_COST: u32 = 10;

/// Raises the floor to `took` (capped) and returns the floor now.
fn raise(floor: &AtomicU64, took: Duration) -> Duration {
    let micros = u64::try_from(took.min(MAX_FAILURE_FLOOR).as_micros()).unwrap_or(u64::MAX);
    let before = floor.fetch_max(micros, Ordering::AcqRel);
    Duration::from_micros(before.max(micros))
}

/// Work for a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

/// Hashes and verifies passwords on its own bounded pool of threads. The threads end when the
/// last clone of the hasher is dropped.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    cost: Argon2Cost,
    jobs: mpsc::Sender<Job>,
    /// Places taken: logins that will hash, and jobs sent and not yet taken by a thread.
    waiting: Arc<AtomicUsize>,
    /// Most jobs that may wait.
    queue_limit: usize,
    /// The slowest password check seen, in microseconds: how long every refusal takes.
    failure_floor_micros: Arc<AtomicU64>,
    /// A hash of a random password with the current cost: verifying an unknown email against it
    /// costs what a real verification costs, so timing does not reveal which emails exist.
    dummy_hash: Arc<String>,
}

fn argon2(cost: Argon2Cost) -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
        .map_err(|e| PasswordError::Parameters(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(cost: Argon2Cost, password: &[u8]) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2(cost)?
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

fn is_bcrypt(stored: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|p| stored.starts_with(p))
}

/// Whether an argon2 hash was made with other parameters than `cost` (or another variant).
fn is_outdated(hash: &PasswordHash<'_>, cost: Argon2Cost) -> bool {
    let param = |name: &str| hash.params.get_decimal(name);
    hash.algorithm.as_str() != "argon2id"
        || param("m") != Some(cost.memory_kib)
        || param("t") != Some(cost.iterations)
        || param("p") != Some(cost.parallelism)
}

/// [`check_blocking`], and how long the check itself took (a rehash excluded).
fn verify_blocking(
    cost: Argon2Cost,
    password: &[u8],
    stored: &str,
) -> Result<(Verification, Duration), PasswordError> {
    let started = Instant::now();
    let verdict = check_blocking(password, stored, cost);
    let took = started.elapsed();
    let verification = match verdict {
        Check::Mismatch => Verification::Mismatch,
        Check::Match => Verification::Match,
        Check::Rehash => Verification::MatchRehashed(hash_blocking(cost, password)?),
    };
    Ok((verification, took))
}

/// What a stored hash says of a password, before any rehash.
enum Check {
    Mismatch,
    Match,
    Rehash,
}

fn check_blocking(password: &[u8], stored: &str, cost: Argon2Cost) -> Check {
    if is_bcrypt(stored) {
        // Node's bcrypt library writes $2a$/$2b$; a malformed one is a mismatch, not an error.
        return match bcrypt::verify(password, stored) {
            Ok(true) => Check::Rehash,
            Ok(false) | Err(_) => Check::Mismatch,
        };
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Check::Mismatch;
    };
    // Verify with the parameters the hash records, whatever the current cost.
    if Argon2::default()
        .verify_password(password, &parsed)
        .is_err()
    {
        return Check::Mismatch;
    }
    if is_outdated(&parsed, cost) {
        Check::Rehash
    } else {
        Check::Match
    }
}

/// Runs the calling thread (a hashing thread) under Linux's SCHED_IDLE policy, so that it gets
/// only the CPU that nothing else wants. A hash is 40 ms of CPU that a login waits for anyway; a
/// refresh or `/v1/me` is a millisecond that must not wait behind it. Nice 19 was not enough: a
/// woken request thread still waited for a hashing thread's time slice at every hop, and a login
/// flood took refresh p99 from 28 ms to 671 ms (`scripts/bench origin`). A SCHED_IDLE thread is
/// preempted at once by any other thread that wakes, and a core running only hashes counts as
/// idle when the kernel places a woken thread. The request threads keep their policy. A flood
/// therefore fills the hashing queue (answered 503) rather than slowing every endpoint; when the
/// cores are busy with other work, logins wait in the queue. If the policy cannot be set, hashing
/// goes on at normal priority and says so.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadSchedulePolicy,
        };
        if let Err(error) = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        ) {
            tracing::warn!(?error, "a hashing thread keeps normal priority");
        }
    }
}

impl PasswordHasher {
    /// A hasher running `concurrency` hashes at once (default: the cores less one); up to
    /// `queue_limit` more wait in order.
    pub fn new(
        cost: Argon2Cost,
        concurrency: usize,
        queue_limit: usize,
    ) -> Result<Self, PasswordError> {
        argon2(cost)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..concurrency.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    yield_to_requests();
                    loop {
                        // The lock is held only while waiting for the next job, never while
                        // hashing.
                        let next = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match next {
                            // A panic fails that one call (its answer channel drops) and keeps
                            // the thread, so the pool never shrinks.
                            Ok(job) => {
                                drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)))
                            }
                            Err(mpsc::RecvError) => return,
                        }
                    }
                })
                .map_err(|e| {
                    PasswordError::Hashing(format!("cannot start a hashing thread: {e}"))
                })?;
        }
        let dummy = uuid::Uuid::new_v4().to_string();
        let hasher = Self {
            cost,
            jobs,
            waiting: Arc::new(AtomicUsize::new(0)),
            queue_limit,
            failure_floor_micros: Arc::new(AtomicU64::new(0)),
            dummy_hash: Arc::new(hash_blocking(cost, dummy.as_bytes())?),
        };
        hasher.seed_failure_floor();
        Ok(hasher)
    }

    /// Checks a legacy bcrypt hash once, in the background, so the floor covers bcrypt accounts
    /// before the first of them logs in.
    fn seed_failure_floor(&self) {
        let floor = self.failure_floor_micros.clone();
        let _ = self.jobs.send(Box::new(move || {
            let Ok(legacy) = bcrypt::hash("edgeauth failure floor", LEGACY_BCRYPT_COST) else {
                return;
            };
            let started = Instant::now();
            let _ = bcrypt::verify("another password", &legacy);
            raise(&floor, started.elapsed());
        }));
    }

    /// How long a refused password is held, at least (the slowest check seen).
    pub fn failure_floor(&self) -> Duration {
        Duration::from_micros(self.failure_floor_micros.load(Ordering::Acquire))
    }

    /// Takes a place in the hashing queue, or answers [`PasswordError::Busy`] at once. A login
    /// takes it before it reads any store, so a flood past the queue costs a counter, not the
    /// DynamoDB and Redis reads that would starve refresh traffic of the same cores.
    pub fn reserve(&self) -> Result<HashingSlot, PasswordError> {
        // Counted first, so a burst cannot all pass a read of the depth.
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        if waiting >= self.queue_limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PasswordError::Busy(waiting));
        }
        Ok(HashingSlot {
            hasher: self.clone(),
            held: true,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        self.reserve()?.run(work).await
    }

    /// A new argon2id hash (PHC string).
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let cost = self.cost;
        self.run(move || hash_blocking(cost, password.as_bytes()))
            .await
    }

    /// Checks `password` against `stored`, which may be argon2 or bcrypt. A mismatch is
    /// answered no sooner than the slowest check seen, whatever this hash cost.
    pub async fn verify(
        &self,
        password: String,
        stored: String,
    ) -> Result<Verification, PasswordError> {
        self.reserve()?.verify(password, stored).await
    }
}

/// A place in the hashing queue, held from the start of a login until its check is queued.
/// Dropped unused (the login stopped early), it frees the place.
#[derive(Debug)]
pub struct HashingSlot {
    hasher: PasswordHasher,
    /// Until the job is sent, this slot holds its count in `waiting`; then the job does.
    held: bool,
}

impl Drop for HashingSlot {
    fn drop(&mut self) {
        if self.held {
            self.hasher.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl HashingSlot {
    async fn run<T: Send + 'static>(
        mut self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let (done, result) = oneshot::channel::<Result<T, PasswordError>>();
        // Waiting from here until a thread takes it: the queue depth in the metrics.
        METRICS.hash_queue(1);
        let depth = self.hasher.waiting.clone();
        let sent = self.hasher.jobs.send(Box::new(move || {
            depth.fetch_sub(1, Ordering::AcqRel);
            METRICS.hash_queue(-1);
            // Its caller has gone: nobody would read the answer, so nothing is hashed.
            if done.is_closed() {
                tracing::debug!(event = "hash_abandoned", "caller gone; not hashed");
                return;
            }
            let _ = done.send(work());
        }));
        if sent.is_err() {
            METRICS.hash_queue(-1);
            return Err(PasswordError::Task);
        }
        self.held = false;
        result.await.map_err(|_| PasswordError::Task)?
    }

    /// [`PasswordHasher::verify`] in this place.
    pub async fn verify(
        self,
        password: String,
        stored: String,
    ) -> Result<Verification, PasswordError> {
        let (cost, floor) = (self.hasher.cost, self.hasher.failure_floor_micros.clone());
        let (verification, took) = self
            .run(move || verify_blocking(cost, password.as_bytes(), &stored))
            .await?;
        let floor = raise(&floor, took);
        if verification == Verification::Mismatch {
            tokio::time::sleep(floor.saturating_sub(took)).await;
        }
        Ok(verification)
    }

    /// Spends what a real verification spends, for an email with no account. Always a mismatch.
    pub async fn verify_unknown(self, password: String) -> Result<Verification, PasswordError> {
        let stored = (*self.hasher.dummy_hash).clone();
        self.verify(password, stored)
            .await
            .map(|_| Verification::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small cost so tests are quick; the production default is checked separately.
    fn hasher() -> PasswordHasher {
        let cost = Argon2Cost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        PasswordHasher::new(cost, 2, 64).expect("hasher")
    }

    #[test]
    fn default_cost_is_at_least_owasp_minimum() {
        let c = Argon2Cost::default();
        assert!(c.memory_kib >= 19 * 1024 && c.iterations >= 2 && c.parallelism >= 1);
    }

    #[tokio::test]
    async fn argon2id_round_trip() {
        let h = hasher();
        let stored = h
            .hash("correct horse battery staple".into())
            .await
            .expect("hash");
        assert!(
            stored.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
            "{stored}"
        );
        assert_eq!(
            h.verify("correct horse battery staple".into(), stored.clone())
                .await
                .expect("verify"),
            Verification::Match
        );
        assert_eq!(
            h.verify("wrong".into(), stored).await.expect("verify"),
            Verification::Mismatch
        );
    }

    /// The scheduling policy (`/proc/.../stat` field 41) of each of this process's threads named
    /// `argon2-*`, and of the caller.
    #[cfg(target_os = "linux")]
    fn policies() -> (Vec<u32>, u32) {
        fn policy_of(stat: &str) -> u32 {
            // Fields are counted from the state (field 3), after the parenthesised name.
            let after_name = &stat[stat.rfind(')').expect("a stat line") + 2..];
            after_name
                .split(' ')
                .nth(41 - 3)
                .and_then(|n| n.parse().ok())
                .expect("a policy")
        }
        let mut hashing = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").expect("/proc") {
            let task = task.expect("a task").path();
            let (Ok(name), Ok(stat)) = (
                std::fs::read_to_string(task.join("comm")),
                std::fs::read_to_string(task.join("stat")),
            ) else {
                continue; // ended meanwhile
            };
            if name.starts_with("argon2-") {
                hashing.push(policy_of(&stat));
            }
        }
        let own = std::fs::read_to_string("/proc/thread-self/stat").expect("own stat");
        (hashing, policy_of(&own))
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_yield_to_every_other_thread_and_request_threads_do_not() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        let h = hasher();
        h.hash("a password".into()).await.expect("hash");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (hashing, caller) = policies();
            assert_eq!(caller, SCHED_OTHER, "the caller's policy changed");
            assert!(!hashing.is_empty(), "no hashing thread");
            if hashing.iter().all(|&policy| policy == SCHED_IDLE) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hashing threads' policies: {hashing:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn bcrypt_from_the_old_system_verifies_and_is_upgraded() {
        let h = hasher();
        let legacy = bcrypt::hash("hunter2hunter2", 4).expect("bcrypt");
        match h
            .verify("hunter2hunter2".into(), legacy.clone())
            .await
            .expect("verify")
        {
            Verification::MatchRehashed(new) => {
                assert!(new.starts_with("$argon2id$"), "{new}");
                assert_eq!(
                    h.verify("hunter2hunter2".into(), new)
                        .await
                        .expect("verify"),
                    Verification::Match
                );
            }
            other => panic!("expected a rehash, got {other:?}"),
        }
        assert_eq!(
            h.verify("nope".into(), legacy).await.expect("verify"),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn hashes_with_old_parameters_are_upgraded() {
        let old = hasher();
        let stored = old.hash("passphrase one".into()).await.expect("hash");
        let stronger = PasswordHasher::new(
            Argon2Cost {
                memory_kib: 2048,
                iterations: 2,
                parallelism: 1,
            },
            1,
            64,
        )
        .expect("hasher");
        assert!(matches!(
            stronger.verify("passphrase one".into(), stored).await.expect("verify"),
            Verification::MatchRehashed(ref h) if h.contains("m=2048,t=2,p=1")
        ));
    }

    #[tokio::test]
    async fn garbage_hashes_are_mismatches_not_errors() {
        let h = hasher();
        for stored in ["", "plaintext", "$2b$04$short", "$argon2id$v=19$broken"] {
            assert_eq!(
                h.verify("x".into(), stored.into()).await.expect("verify"),
                Verification::Mismatch,
                "{stored}"
            );
        }
        assert_eq!(
            h.reserve()
                .expect("a place")
                .verify_unknown("x".into())
                .await
                .expect("verify"),
            Verification::Mismatch
        );
    }

    /// One thread, held by a job until `release` is dropped... or sent.
    fn held(hasher: &PasswordHasher) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let hasher = hasher.clone();
        let running = tokio::spawn(async move {
            let _ = hasher
                .run(move || {
                    let _ = wait.recv();
                    Ok(())
                })
                .await;
        });
        (release, running)
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once_and_abandoned_jobs_are_not_run() {
        let cost = Argon2Cost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let hasher = PasswordHasher::new(cost, 1, 2).expect("hasher");
        let (release, running) = held(&hasher);
        // The thread has taken the holding job once the depth is back to 0.
        while hasher.waiting.load(Ordering::Acquire) != 0 {
            tokio::task::yield_now().await;
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let (hasher, ran) = (hasher.clone(), ran.clone());
                tokio::spawn(async move {
                    hasher
                        .run(move || {
                            ran.fetch_add(1, Ordering::AcqRel);
                            Ok(())
                        })
                        .await
                })
            })
            .collect();
        while hasher.waiting.load(Ordering::Acquire) != 2 {
            tokio::task::yield_now().await;
        }
        // Two wait: the next is refused without waiting.
        assert!(matches!(
            hasher.run(|| Ok(())).await,
            Err(PasswordError::Busy(2))
        ));
        // Both waiting callers go away (clients disconnected) before a thread reaches them.
        for job in &queued {
            job.abort();
        }
        for job in queued {
            let _ = job.await;
        }
        release.send(()).expect("released");
        running.await.expect("joined");
        // The queue drained without running them, and takes work again.
        assert!(hasher.hash("a passphrase".into()).await.is_ok());
        assert_eq!(ran.load(Ordering::Acquire), 0, "abandoned jobs were hashed");
    }

    #[tokio::test]
    async fn a_login_holds_its_place_from_before_its_reads_and_gives_it_back_if_it_stops() {
        let hasher = PasswordHasher::new(
            Argon2Cost {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            1,
            2,
        )
        .expect("hasher");
        // Two logins are reading their stores: nothing is queued yet, and the queue is full.
        let first = hasher.reserve().expect("a place");
        let second = hasher.reserve().expect("a place");
        assert!(matches!(hasher.reserve(), Err(PasswordError::Busy(2))));
        assert!(matches!(
            hasher.hash("a passphrase".into()).await,
            Err(PasswordError::Busy(2))
        ));
        // One stops early (a locked account, say): its place is free again.
        drop(first);
        let third = hasher.reserve().expect("the freed place");
        // The freed place is taken again, so a hash without one is still refused.
        assert!(matches!(
            hasher.hash("right".into()).await,
            Err(PasswordError::Busy(2))
        ));
        // A held place runs its check and leaves nothing held behind it.
        assert_eq!(
            second.verify_unknown("x".into()).await.expect("verify"),
            Verification::Mismatch
        );
        drop(third);
        assert_eq!(hasher.waiting.load(Ordering::Acquire), 0);
        assert!(hasher.hash("a passphrase".into()).await.is_ok());
    }

    #[tokio::test]
    async fn a_refused_password_takes_as_long_as_the_slowest_check() {
        let hasher = hasher();
        // Once the start-up bcrypt check has run, the floor is a bcrypt check's time.
        let legacy = bcrypt::hash("the old password", 6).expect("bcrypt");
        assert_eq!(
            hasher
                .verify("a wrong guess".into(), legacy)
                .await
                .expect("verify"),
            Verification::Mismatch
        );
        let floor = hasher.failure_floor();
        assert!(floor > Duration::ZERO);
        // An argon2 account and an unknown email are refused no sooner than that.
        let current = hasher.hash("the new password".into()).await.expect("hash");
        let started = Instant::now();
        let refused = hasher.verify("a wrong guess".into(), current.clone()).await;
        assert_eq!(refused.expect("verify"), Verification::Mismatch);
        assert!(
            started.elapsed() >= floor,
            "an argon2 account refused before the floor"
        );
        let started = Instant::now();
        let refused = hasher
            .reserve()
            .expect("a place")
            .verify_unknown("a wrong guess".into())
            .await;
        assert_eq!(refused.expect("verify"), Verification::Mismatch);
        assert!(
            started.elapsed() >= floor,
            "an unknown email refused before the floor"
        );
        // A right password is not held.
        assert_eq!(
            hasher
                .verify("the new password".into(), current)
                .await
                .expect("verify"),
            Verification::Match
        );
    }
}
