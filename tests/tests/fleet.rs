//! The fleet test: three origin instances on one dynoxide behind the relay, their deny-list on a
//! Redis Cluster (three masters, three replicas), and three edges in front of the sample API: the
//! Worker, Envoy with the Wasm filter and Envoy with the native module. Simulated users sign up,
//! log in, call the API through every edge, refresh and log out, while one origin instance is
//! killed and started again and a Redis master is killed so that its replica takes over.
//!
//! Afterwards: every logged-out token was refused by every edge within that edge's revocation
//! bound, and is refused by every origin instance; every account logs in; every session kept
//! open still refreshes; and no request failed outside the two fault windows. The edges never
//! fail at all: they touch neither Redis nor, per request, the origins.
//!
//! Clients reach the origins through a balancer of the test's own, taking the instances in turn
//! and trying the next one when a connection is refused (nothing was sent: any load balancer
//! does this), as clients behind an ALB would. A request that fails inside a fault window is
//! retried by its client after a pause; outside the windows a failure fails the test.
//!
//! With `EDGEAUTH_FLEET_REPORT` set (`scripts/bench fleet`), the test writes what it counted
//! there as Markdown.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use edgeauth_e2e::{origin_counter, DenyListRedis, Edge, Stack, StackOptions};
use serde_json::{json, Value};

/// Simulated users, each running one session after another.
const USERS: usize = 6;
/// How long the users keep going.
const LOAD: Duration = Duration::from_secs(40);
/// When (from the start of the load) an origin instance is killed; it is started again at once.
const ORIGIN_CRASH_AT: Duration = Duration::from_secs(10);
/// When a Redis master is killed.
const MASTER_KILL_AT: Duration = Duration::from_secs(24);
/// How long after a fault has healed (the instance ready again, the replica promoted) failures
/// still count as the fault's: an origin's Redis client finds the new master on its next
/// MOVED answer or refresh, and its deny-list keeper checks the masters every 2 s.
const HEAL_GRACE: Duration = Duration::from_secs(8);
/// A client's pause before it tries a failed request again.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How long a client keeps trying a failed request.
const GIVE_UP_AFTER: Duration = Duration::from_secs(20);
const PASSWORD: &str = "correct horse battery staple";

/// One answer (or none: status 0) from the origins, and when it came.
#[derive(Debug, Clone)]
struct Outcome {
    at: Duration,
    what: &'static str,
    status: u16,
    expected: &'static [u16],
}

/// A logged-out session's tokens and when the logout was answered.
#[derive(Debug, Clone)]
struct LoggedOut {
    tokens: Vec<String>,
    /// Whether the logout needed more than one attempt (a fault window ate the first).
    retried: bool,
    /// Per edge: how long after the logout the edge first refused the session's newest token,
    /// or `None` if it never did within the time the check waited.
    refused_after: Vec<Option<Duration>>,
}

/// What a user leaves behind for the checks at the end.
#[derive(Debug, Default)]
struct UserRecord {
    email: String,
    /// The refresh token of the session this user never logs out.
    kept_refresh: String,
    logged_out: Vec<LoggedOut>,
}

/// The users' view of the stack: URLs only, so the test can restart parts of it meanwhile.
struct Fleet {
    origins: Vec<String>,
    turn: AtomicUsize,
    /// The edges, each with its revocation bound.
    edges: Vec<(&'static str, String, Duration)>,
    client: reqwest::Client,
    started: Instant,
    outcomes: Mutex<Vec<Outcome>>,
    /// Calls through each edge: (edge, status) → count.
    edge_calls: Mutex<BTreeMap<(&'static str, u16), usize>>,
    next_address: AtomicUsize,
}

/// An answer from the origins: status (0: none) and body.
struct Answer {
    status: u16,
    json: Value,
}

impl Fleet {
    /// A client address of its own for each login: the origins count their per-client limits
    /// on `X-Forwarded-For` here, as behind a load balancer.
    fn new_address(&self) -> String {
        let n = self.next_address.fetch_add(1, Ordering::Relaxed);
        format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
    }

    /// `method path` at the next origin instance, skipping any that refuses the connection.
    async fn call_once(
        &self,
        method: reqwest::Method,
        path: &str,
        address: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let first = self.turn.fetch_add(1, Ordering::Relaxed);
        for k in 0..self.origins.len() {
            let origin = &self.origins[(first + k) % self.origins.len()];
            let mut request = self
                .client
                .request(method.clone(), format!("{origin}{path}"))
                .header("x-forwarded-for", address)
                .timeout(Duration::from_secs(10));
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(answer) => {
                    let status = answer.status().as_u16();
                    let json = answer.json().await.unwrap_or(Value::Null);
                    return Answer { status, json };
                }
                Err(e) if e.is_connect() => continue,
                Err(_) => break,
            }
        }
        Answer {
            status: 0,
            json: Value::Null,
        }
    }

    /// A call that its client tries again after a failure (5xx or no answer), recording every
    /// attempt; returns the last answer and whether it took more than one attempt.
    async fn call(
        &self,
        what: &'static str,
        expected: &'static [u16],
        (method, path): (reqwest::Method, &str),
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (Answer, bool) {
        let address = self.new_address();
        let give_up = Instant::now() + GIVE_UP_AFTER;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let answer = self
                .call_once(method.clone(), path, &address, bearer, body)
                .await;
            self.outcomes.lock().expect("not poisoned").push(Outcome {
                at: self.started.elapsed(),
                what,
                status: answer.status,
                expected,
            });
            let failed = answer.status == 0 || answer.status >= 500;
            if !failed || Instant::now() > give_up {
                return (answer, attempts > 1);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Logs in as `email`, recorded as `what`.
    async fn login_as(&self, what: &'static str, email: &str) -> Answer {
        let credentials =
            json!({"email": email, "password": PASSWORD, "refresh_token_in_body": true});
        let post = (reqwest::Method::POST, "/v1/login");
        self.call(what, &[200], post, None, Some(&credentials))
            .await
            .0
    }

    /// Exchanges `refresh_token`, recorded as `what`.
    async fn refresh_as(&self, what: &'static str, refresh_token: &str) -> Answer {
        let body = json!({ "refresh_token": refresh_token });
        let post = (reqwest::Method::POST, "/v1/token/refresh");
        self.call(what, &[200], post, None, Some(&body)).await.0
    }

    async fn login(&self, email: &str) -> (String, String) {
        tokens_of(&self.login_as("login", email).await)
    }

    async fn refresh(&self, refresh_token: &str) -> (String, String) {
        tokens_of(&self.refresh_as("refresh", refresh_token).await)
    }

    /// The status of an API call through the edge at `url` with `token` (0: no answer).
    async fn through(&self, url: &str, token: &str) -> u16 {
        self.client
            .get(format!("{url}/api/orders"))
            .bearer_auth(token)
            .send()
            .await
            .map_or(0, |answer| answer.status().as_u16())
    }

    /// `GET` through every edge with `token`, recording each status.
    async fn call_every_edge(&self, token: &str) {
        for (edge, url, _) in &self.edges {
            let status = self.through(url, token).await;
            *self
                .edge_calls
                .lock()
                .expect("not poisoned")
                .entry((edge, status))
                .or_default() += 1;
        }
    }

    /// How long after now each edge first refuses `token` (401), polling until its bound and as
    /// long again: `None` for an edge that never did.
    async fn time_until_refused(&self, token: &str) -> Vec<Option<Duration>> {
        let since = Instant::now();
        let mut refused = vec![None; self.edges.len()];
        let longest = self.edges.iter().map(|(_, _, bound)| *bound).max();
        let deadline = since + 2 * longest.unwrap_or_default();
        while Instant::now() < deadline && refused.iter().any(Option::is_none) {
            for (i, (_, url, _)) in self.edges.iter().enumerate() {
                if refused[i].is_some() {
                    continue;
                }
                if self.through(url, token).await == 401 {
                    refused[i] = Some(since.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        refused
    }
}

fn tokens_of(answer: &Answer) -> (String, String) {
    let field = |name: &str| {
        answer.json[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} in {} {}", answer.status, answer.json))
            .to_string()
    };
    (field("access_token"), field("refresh_token"))
}

/// One user: signs up, opens a session it keeps, then runs sessions until the load ends: log in,
/// call every edge, refresh, call every edge, log out, and time the edges' refusal.
async fn run_user(fleet: Arc<Fleet>) -> UserRecord {
    let email = format!("fleet-{}@example.com", uuid::Uuid::new_v4().simple());
    let credentials = json!({"email": email, "password": PASSWORD});
    fleet
        .call(
            "register",
            &[201],
            (reqwest::Method::POST, "/v1/register"),
            None,
            Some(&credentials),
        )
        .await;
    let (_, mut kept_refresh) = fleet.login(&email).await;
    let mut record = UserRecord {
        email: email.clone(),
        ..UserRecord::default()
    };
    let mut checks = Vec::new();
    let mut round = 0;
    while fleet.started.elapsed() < LOAD {
        round += 1;
        let (first, refresh_token) = fleet.login(&email).await;
        fleet.call_every_edge(&first).await;
        let (second, _) = fleet.refresh(&refresh_token).await;
        fleet.call_every_edge(&second).await;
        // A logout the origin committed but whose answer a fault ate is answered 401
        // (`token_revoked`) on the client's next attempt: the session is gone either way.
        let (_, retried) = fleet
            .call(
                "logout",
                &[204],
                (reqwest::Method::POST, "/v1/logout"),
                Some(&second),
                None,
            )
            .await;
        let checker = fleet.clone();
        checks.push(tokio::spawn(async move {
            let refused_after = checker.time_until_refused(&second).await;
            LoggedOut {
                tokens: vec![first, second],
                retried,
                refused_after,
            }
        }));
        if round % 3 == 0 {
            kept_refresh = fleet.refresh(&kept_refresh).await.1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for check in checks {
        record.logged_out.push(check.await.expect("the check ran"));
    }
    record.kept_refresh = kept_refresh;
    record
}

/// A fault's window: from the fault until it healed, plus [`HEAL_GRACE`].
#[derive(Debug, Clone, Copy)]
struct Window {
    name: &'static str,
    from: Duration,
    healed: Duration,
}

impl Window {
    fn holds(&self, at: Duration) -> bool {
        self.from <= at && at <= self.healed + HEAL_GRACE
    }
}

#[tokio::test]
async fn a_fleet_keeps_every_revocation_account_and_session_through_an_origin_crash_and_a_redis_failover(
) {
    let mut stack = Stack::start_with(StackOptions {
        origin_instances: 3,
        envoys_beside: vec![Edge::Envoy, Edge::EnvoyNative],
        redis_cluster: true,
        origin_env: vec![(
            "EDGEAUTH_CLIENT_IP".to_string(),
            r#"{"source":"x_forwarded_for","trusted_proxies":1}"#.to_string(),
        )],
        ..StackOptions::default()
    })
    .await;
    let mut edges = vec![(
        "Worker",
        stack.edge.clone(),
        Edge::Worker.revocation_bound(),
    )];
    for envoy in &stack.envoys {
        let name = match envoy.build {
            Edge::EnvoyNative => "Envoy (native module)",
            _ => "Envoy (Wasm filter)",
        };
        edges.push((name, envoy.url.clone(), envoy.build.revocation_bound()));
    }
    let fleet = Arc::new(Fleet {
        origins: stack.origins.clone(),
        turn: AtomicUsize::new(0),
        edges,
        client: stack.client.clone(),
        started: Instant::now(),
        outcomes: Mutex::default(),
        edge_calls: Mutex::default(),
        next_address: AtomicUsize::new(1),
    });
    let users: Vec<_> = (0..USERS)
        .map(|_| tokio::spawn(run_user(fleet.clone())))
        .collect();

    // The faults, one after the other.
    tokio::time::sleep(ORIGIN_CRASH_AT.saturating_sub(fleet.started.elapsed())).await;
    let crash_from = fleet.started.elapsed();
    stack.kill_origin(1).await;
    stack.restart_origin(1).await;
    wait_until_ready(&stack.client, &stack.origins[1]).await;
    let crash = Window {
        name: "origin instance killed and started again",
        from: crash_from,
        healed: fleet.started.elapsed(),
    };

    tokio::time::sleep(MASTER_KILL_AT.saturating_sub(fleet.started.elapsed())).await;
    let DenyListRedis::Cluster(cluster) = &stack.redis else {
        panic!("the stack runs a Redis Cluster")
    };
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "three masters before the failover");
    let failover_from = fleet.started.elapsed();
    cluster.kill(masters[0]);
    let promoted = loop {
        let now = cluster.masters().await;
        if now.len() == 3 && !now.contains(&masters[0]) {
            break fleet.started.elapsed();
        }
        assert!(
            fleet.started.elapsed() < failover_from + Duration::from_secs(30),
            "no replica took over in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failover = Window {
        name: "Redis master killed, its replica promoted",
        from: failover_from,
        healed: promoted,
    };

    let mut records = Vec::new();
    for user in users {
        records.push(user.await.expect("the user ran"));
    }
    let load_ended = fleet.started.elapsed();
    let windows = [crash, failover];

    // Afterwards: every account logs in, every kept session refreshes, every logged-out token
    // is refused by every origin instance (the restarted one rebuilt its deny-list, the new
    // master holds or got back what the old one had).
    let mut origin_refusals: BTreeMap<u16, usize> = BTreeMap::new();
    let (mut accounts_back, mut sessions_back) = (0, 0);
    for record in &records {
        let login = fleet.login_as("login afterwards", &record.email).await;
        accounts_back += usize::from(login.status == 200);
        let refresh = fleet
            .refresh_as("refresh of a kept session afterwards", &record.kept_refresh)
            .await;
        sessions_back += usize::from(refresh.status == 200);
        for logged_out in &record.logged_out {
            for token in &logged_out.tokens {
                for origin in &stack.origins {
                    let status = stack
                        .client
                        .get(format!("{origin}/v1/me"))
                        .bearer_auth(token)
                        .send()
                        .await
                        .map_or(0, |a| a.status().as_u16());
                    *origin_refusals.entry(status).or_default() += 1;
                }
            }
        }
    }

    let mut reconnects = Vec::new();
    for origin in &stack.origins {
        let replaced = origin_counter(
            &stack.client,
            origin,
            "edgeauth_redis_reconnects_total",
            &[],
        )
        .await;
        reconnects.push(replaced);
    }

    let outcomes = fleet.outcomes.lock().expect("not poisoned").clone();
    let edge_calls = fleet.edge_calls.lock().expect("not poisoned").clone();
    let report = Report {
        edges: &fleet.edges,
        windows: &windows,
        outcomes: &outcomes,
        edge_calls: &edge_calls,
        records: &records,
        origin_refusals: &origin_refusals,
        back: (accounts_back, sessions_back),
        reconnects: &reconnects,
        load_ended,
    };
    let text = report.markdown();
    println!("{text}");
    if let Some(path) = std::env::var_os("EDGEAUTH_FLEET_REPORT") {
        std::fs::write(path, &text).expect("the report is written");
    }

    let unexpected: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.expected.contains(&o.status))
        .filter(|o| {
            let failure = o.status == 0 || o.status >= 500;
            // A logout whose first answer a fault ate finds its session already revoked.
            let revoked_already = o.what == "logout" && o.status == 401;
            !((failure || revoked_already) && windows.iter().any(|w| w.holds(o.at)))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers outside the fault windows {windows:?} that a client would not expect: {unexpected:?}"
    );
    let edge_failures: Vec<_> = edge_calls
        .iter()
        .filter(|((_, status), _)| *status != 200)
        .collect();
    assert!(
        edge_failures.is_empty(),
        "a live token was not served by an edge: {edge_failures:?}"
    );
    for record in &records {
        for logged_out in &record.logged_out {
            for ((edge, _, bound), refused) in fleet.edges.iter().zip(&logged_out.refused_after) {
                let within = refused.is_some_and(|after| after <= *bound);
                assert!(
                    within || logged_out.retried,
                    "{edge} served a token logged out {refused:?} before, beyond its bound {bound:?}"
                );
            }
        }
    }
    assert_eq!(
        (accounts_back, sessions_back),
        (records.len(), records.len()),
        "every account logs in and every kept session refreshes"
    );
    let accepted_by_origin: usize = origin_refusals
        .iter()
        .filter(|(status, _)| **status != 401)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        accepted_by_origin, 0,
        "origins answered a logged-out token otherwise than 401: {origin_refusals:?}"
    );
}

/// Waits until the origin at `origin` says it is ready (`/readyz`): what a load balancer's
/// health check waits for before it sends the instance traffic again.
async fn wait_until_ready(client: &reqwest::Client, origin: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ready = client
            .get(format!("{origin}/readyz"))
            .send()
            .await
            .is_ok_and(|a| a.status() == 200);
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{origin} was not ready 30 s after it started again");
}

/// What the run counted, as the Markdown of `bench-results/fleet.md`.
struct Report<'a> {
    edges: &'a [(&'static str, String, Duration)],
    windows: &'a [Window],
    outcomes: &'a [Outcome],
    edge_calls: &'a BTreeMap<(&'static str, u16), usize>,
    records: &'a [UserRecord],
    origin_refusals: &'a BTreeMap<u16, usize>,
    /// Accounts that logged in afterwards, and kept sessions that refreshed.
    back: (usize, usize),
    /// Per origin instance: its Redis Cluster connections replaced after going silent.
    reconnects: &'a [u64],
    load_ended: Duration,
}

impl Report<'_> {
    fn markdown(&self) -> String {
        let mut out = String::new();
        let seconds = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        let _ = writeln!(
            out,
            "## The fleet run\n\n{USERS} simulated users for {} of load (every session: log in, \
             an API call through each edge, refresh, a call through each edge again, log out), \
             three origin instances, the deny-list on a Redis Cluster of three masters and three \
             replicas, the Worker and two Envoys (the Wasm filter and the native module).\n",
            seconds(self.load_ended)
        );
        let _ = writeln!(
            out,
            "### Faults\n\n| Fault | From | Healed | Failed origin answers in its window | Last failure after the fault |\n|---|---:|---:|---:|---:|"
        );
        for window in self.windows {
            let failures: Vec<&Outcome> = self
                .outcomes
                .iter()
                .filter(|o| (o.status == 0 || o.status >= 500) && window.holds(o.at))
                .collect();
            let last = failures
                .iter()
                .map(|o| o.at.saturating_sub(window.from))
                .max()
                .map_or("–".to_string(), seconds);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {last} |",
                window.name,
                seconds(window.from),
                seconds(window.healed),
                failures.len(),
            );
        }
        let _ = writeln!(
            out,
            "\nA failure is a 5xx or no answer; its client tried again after {} ms. A window \
             ends {} after the fault healed (the instance ready, the replica promoted).\n",
            RETRY_PAUSE.as_millis(),
            seconds(HEAL_GRACE)
        );
        let _ = writeln!(
            out,
            "### Origin answers\n\n| Request | Answers | By status |\n|---|---:|---|"
        );
        let mut by_what: BTreeMap<&str, BTreeMap<u16, usize>> = BTreeMap::new();
        for o in self.outcomes {
            *by_what
                .entry(o.what)
                .or_default()
                .entry(o.status)
                .or_default() += 1;
        }
        for (what, statuses) in &by_what {
            let total: usize = statuses.values().sum();
            let list: Vec<String> = statuses
                .iter()
                .map(|(status, n)| format!("{status}: {n}"))
                .collect();
            let _ = writeln!(out, "| {what} | {total} | {} |", list.join(", "));
        }
        let _ = writeln!(
            out,
            "\n### Edges\n\n| Edge | Calls with a live token | Answered 200 | Logged-out sessions | Refused within its bound | Refusal after logout: median / max | Bound |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for (i, (edge, _, bound)) in self.edges.iter().enumerate() {
            let calls: usize = self
                .edge_calls
                .iter()
                .filter(|((name, _), _)| name == edge)
                .map(|(_, n)| n)
                .sum();
            let ok = self.edge_calls.get(&(*edge, 200)).copied().unwrap_or(0);
            let mut refused: Vec<Option<Duration>> = self
                .records
                .iter()
                .flat_map(|r| r.logged_out.iter().map(|l| l.refused_after[i]))
                .collect();
            let within = refused
                .iter()
                .filter(|r| r.is_some_and(|after| after <= *bound))
                .count();
            refused.sort();
            let median = refused
                .get(refused.len() / 2)
                .copied()
                .flatten()
                .map_or("–".to_string(), |d| format!("{} ms", d.as_millis()));
            let max = refused
                .last()
                .copied()
                .flatten()
                .map_or("–".to_string(), |d| format!("{} ms", d.as_millis()));
            let _ = writeln!(
                out,
                "| {edge} | {calls} | {ok} | {} | {within} | {median} / {max} | {} |",
                refused.len(),
                seconds(*bound)
            );
        }
        let tokens: usize = self.origin_refusals.values().sum();
        let refused = self.origin_refusals.get(&401).copied().unwrap_or(0);
        let retried: usize = self
            .records
            .iter()
            .flat_map(|r| &r.logged_out)
            .filter(|l| l.retried)
            .count();
        let _ = writeln!(
            out,
            "\n### Afterwards\n\n- Logged-out tokens asked of every origin instance: {refused} of {tokens} answers were 401.\n\
             - Logouts that needed a second attempt (a fault ate the first): {retried}.\n\
             - Accounts that logged in again: {} of {users}; sessions kept open that refreshed: {} of {users}.\n\
             - Redis Cluster connections an origin replaced after they answered nothing for four timeouts (`edgeauth_redis_reconnects_total`), per instance: {}.",
            self.back.0,
            self.back.1,
            self.reconnects
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            users = self.records.len()
        );
        out
    }
}
