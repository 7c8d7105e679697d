//! Security events (login, failed login, soft lock, CAPTCHA, second-factor enrolment and use,
//! refresh-token reuse, logout, ending one session or all, signing keys made, rotated and
//! retired): one
//! structured log line each (target `audit`, with the user id, client address and request id),
//! and a copy in DynamoDB that a user reads back as their own recent activity
//! (`GET /v1/me/audit`).
//!
//! Events reach DynamoDB through one background writer, in batches of up to 25 (one
//! `BatchWriteItem`) at most 200 ms after they happen: one write per login cost 7% of the
//! login throughput on a 2-core machine (`bench-results/origin.md`). An audit store that is
//! slow or down never fails a request; the log line is written first and is the record of last
//! resort.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    extract::{rejection::ExtensionRejection, ConnectInfo, FromRequestParts, Request, State},
    http::{request::Parts, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::Instrument as _;

use crate::{
    clock,
    rate_limit::{client_ip, ClientAddress, ClientIpSource},
    store::{AuditEvent, AuditLog},
};

/// The request's id: the caller's `x-request-id` when it is a plain token (a load balancer's),
/// else a new UUID. Echoed in the response and carried by every log line of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

const REQUEST_ID: &str = "x-request-id";

fn acceptable_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Middleware for every route: the request id and the client's address (from the trusted source,
/// [`crate::rate_limit::client_ip`]) as request extensions, and a tracing span with the id.
pub async fn request_context(
    State(source): State<ClientIpSource>,
    peer: Result<ConnectInfo<std::net::SocketAddr>, ExtensionRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_request_id(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let peer = peer.ok().map(|ConnectInfo(addr)| addr.ip());
    let ip = client_ip(source, request.headers()).or(peer);
    request.extensions_mut().insert(ClientAddress(ip));
    request.extensions_mut().insert(RequestId(id.clone()));
    // Field names follow OpenTelemetry's HTTP conventions, so a trace backend reads them as such.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        "http.request.method" = %request.method(),
        "url.path" = request.uri().path(),
        "http.response.status_code" = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Who did what, from where: what a handler knows of its request for the audit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// The client's address from the trusted source.
    pub client_ip: Option<IpAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestFacts {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
            client_ip: parts
                .extensions
                .get::<ClientAddress>()
                .and_then(|ClientAddress(ip)| *ip),
        })
    }
}

/// Events per `BatchWriteItem` (DynamoDB's limit).
const BATCH: usize = 25;
/// The longest an event waits for its batch to fill.
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// Events queued for the writer; past this (the store down for a while) new ones are only logged.
const QUEUE: usize = 10_000;

/// Records security events.
#[derive(Clone)]
pub struct Audit {
    log: Arc<dyn AuditLog>,
    queue: tokio::sync::mpsc::Sender<Queued>,
}

/// What the writer receives: an event, or a request to store what it holds now.
#[derive(Debug)]
enum Queued {
    Event(AuditEvent),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Audit {
    /// Events go to `log` (DynamoDB) through a writer task on the current runtime.
    pub fn new(log: Arc<dyn AuditLog>) -> Self {
        let (queue, events) = tokio::sync::mpsc::channel(QUEUE);
        tokio::spawn(write_batches(log.clone(), events));
        Self { log, queue }
    }

    /// Logs `event` for `subject` (a user id, or `email:<hash>`) and stores it in the background.
    pub fn record(&self, event: &'static str, subject: &str, facts: &RequestFacts) {
        let record = logged(event, subject, facts);
        if self.queue.try_send(Queued::Event(record)).is_err() {
            tracing::warn!(target: "audit", event, "audit queue full: event only logged");
        }
    }

    /// Logs and stores `event` before returning: for rare events of short-lived processes (an
    /// operator's command), which could exit before the background writer's next batch.
    pub async fn record_and_wait(&self, event: &'static str, subject: &str, facts: &RequestFacts) {
        let record = logged(event, subject, facts);
        if let Err(error) = self.log.record(&[record]).await {
            tracing::warn!(target: "audit", event, %error, "audit event not stored");
        }
    }

    /// Returns once every event recorded so far has been stored (or failed to be): a Lambda
    /// environment is frozen between invocations, so its answer must not go out before the
    /// events of its request are written.
    pub async fn flush(&self) {
        let (done, stored) = tokio::sync::oneshot::channel();
        if self.queue.send(Queued::Flush(done)).await.is_ok() {
            let _ = stored.await;
        }
    }

    /// Stores what is queued, then keeps of `user_id`'s events only the network each came from
    /// ([`network_of`]): an account's deletion keeps its security record (what happened, when,
    /// in which request) under its random id, which nothing links to a person any more.
    pub async fn pseudonymise(&self, user_id: &str) -> Result<u32, crate::store::StoreError> {
        self.flush().await;
        self.log.pseudonymise(user_id).await
    }

    /// A user's newest events first.
    pub async fn for_user(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, crate::store::StoreError> {
        self.log.for_user(user_id, limit).await
    }
}

/// The event, written to the log (target `audit`) first.
fn logged(event: &'static str, subject: &str, facts: &RequestFacts) -> AuditEvent {
    let record = AuditEvent {
        user_id: subject.to_owned(),
        at_ms: clock::now_millis(),
        event: event.to_owned(),
        client_ip: facts.client_ip.map(|ip| ip.to_string()),
        request_id: facts.request_id.clone(),
    };
    tracing::info!(
        target: "audit",
        event,
        user_id = %record.user_id,
        client_ip = record.client_ip.as_deref().unwrap_or("-"),
        request_id = record.request_id.as_deref().unwrap_or("-"),
    );
    record
}

/// The writer: waits for an event, gathers what follows for up to [`BATCH_WAIT`] or [`BATCH`]
/// events, and stores them in one call; a flush request stores the batch at once.
async fn write_batches(log: Arc<dyn AuditLog>, mut queue: tokio::sync::mpsc::Receiver<Queued>) {
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::new();
        let mut flushed = Vec::new();
        match first {
            Queued::Event(event) => batch.push(event),
            Queued::Flush(done) => flushed.push(done),
        }
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while flushed.is_empty() && batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(Queued::Event(event))) => batch.push(event),
                Ok(Some(Queued::Flush(done))) => flushed.push(done),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            if let Err(error) = log.record(&batch).await {
                tracing::warn!(target: "audit", events = batch.len(), %error, "audit events not stored");
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// The network an address belongs to, as kept of a deleted account's events: an IPv4 address's
/// /24, an IPv6 address's /48 (a site's prefix, RFC 6177), written as a CIDR block. Anything
/// else (a network already) is returned as it is.
pub fn network_of(address: &str) -> String {
    let parsed = address.parse::<std::net::IpAddr>().map(|ip| match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    });
    match parsed {
        Ok(std::net::IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            let network = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            format!("{network}/48")
        }
        Err(_) => address.to_owned(),
    }
}

/// An event's subject before or without an account: the email's hash, never the address.
pub fn email_subject(account_key: &str) -> String {
    format!("email:{account_key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Stored(std::sync::Mutex<Vec<AuditEvent>>);

    #[async_trait::async_trait]
    impl AuditLog for Stored {
        async fn record(&self, events: &[AuditEvent]) -> Result<(), crate::store::StoreError> {
            self.0.lock().expect("lock").extend_from_slice(events);
            Ok(())
        }
        async fn for_user(
            &self,
            _: &str,
            _: u32,
        ) -> Result<Vec<AuditEvent>, crate::store::StoreError> {
            Ok(Vec::new())
        }
        async fn pseudonymise(&self, _: &str) -> Result<u32, crate::store::StoreError> {
            Ok(0)
        }
    }

    #[test]
    fn a_deleted_accounts_events_keep_the_network_not_the_address() {
        assert_eq!(network_of("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(network_of("2001:db8:1:2:3:4:5:6"), "2001:db8:1::/48");
        assert_eq!(network_of("::ffff:203.0.113.77"), "203.0.113.0/24");
        // Applied twice, nothing more changes: a retried deletion rewrites nothing.
        assert_eq!(network_of("203.0.113.0/24"), "203.0.113.0/24");
        assert_eq!(network_of("2001:db8:1::/48"), "2001:db8:1::/48");
    }

    #[tokio::test]
    async fn a_flush_stores_what_was_recorded_before_it_returns() {
        let log = Arc::new(Stored::default());
        let audit = Audit::new(log.clone());
        audit.record("login", "u-1", &RequestFacts::default());
        audit.record("logout", "u-1", &RequestFacts::default());
        // Without the flush the batch would wait up to BATCH_WAIT for more events.
        audit.flush().await;
        let events: Vec<String> = log
            .0
            .lock()
            .expect("lock")
            .iter()
            .map(|e| e.event.clone())
            .collect();
        assert_eq!(events, ["login", "logout"]);
        // A flush with nothing pending returns too.
        audit.flush().await;
    }

    #[test]
    fn only_plain_request_ids_are_taken_from_the_caller() {
        assert!(acceptable_request_id(
            "b7c1e0f2-1a2b-4c3d-8e9f-001122334455"
        ));
        assert!(acceptable_request_id("lb.req:42"));
        assert!(!acceptable_request_id(""));
        assert!(!acceptable_request_id("two words"));
        assert!(!acceptable_request_id("x\r\nset-cookie: a=b"));
        assert!(!acceptable_request_id(&"a".repeat(129)));
    }
}
