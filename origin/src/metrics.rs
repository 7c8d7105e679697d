//! Prometheus metrics on `GET /metrics`, with the names, labels and buckets of the contract in
//! `ops/metrics.md` that the alert rules and the dashboard read.
//!
//! One registry per process, kept in a static: the stores, the Redis connections and the
//! hashing pool record into it from wherever they run, without a handle threaded through every
//! constructor, and a process has one `/metrics` to scrape.

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        LazyLock,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Upper bounds, in seconds, of every histogram. 0.05 and 0.8 are the refresh and login
/// objectives (`ops/slo.md`), so the share within each is one bucket, never interpolated.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// `route`, `method`, `status` of an answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

/// `route`, `method` of a request's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    route: String,
    method: String,
}

/// The DynamoDB operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    operation: String,
}

/// The DynamoDB operation and why it failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationErrorLabels {
    operation: String,
    kind: &'static str,
}

/// Which Redis connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    connection: &'static str,
}

/// A mail's template and what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MailLabels {
    template: &'static str,
    outcome: &'static str,
}

/// The origin's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    hash_queue: Gauge,
    dynamodb_seconds: Family<OperationLabels, Histogram>,
    dynamodb_errors: Family<OperationErrorLabels, Counter>,
    redis_seconds: Family<ConnectionLabels, Histogram>,
    redis_errors: Family<ConnectionLabels, Counter>,
    redis_reconnects: Family<ConnectionLabels, Counter>,
    deny_list_entries: Gauge,
    signing_key_age: Gauge,
    mail_messages: Family<MailLabels, Counter>,
    mail_send_errors: Counter,
    mail_queue: Gauge,
    /// When the current signing key started signing; the age is computed at scrape time.
    signing_key_since: AtomicI64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Why a DynamoDB call failed, as the `kind` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynamoFailure {
    /// Refused for capacity.
    Throttled,
    /// Anything else that left the call without an answer.
    Unavailable,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("edgeauth");
        let requests = Family::<RequestLabels, Counter>::default();
        // Counters get `_total` from the encoder.
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<RouteLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from request received to response headers sent",
            request_seconds.clone(),
        );
        let hash_queue = Gauge::default();
        registry.register(
            "password_hash_queue_depth",
            "argon2 jobs waiting for a thread of the hashing pool",
            hash_queue.clone(),
        );
        let dynamodb_seconds = Family::<OperationLabels, Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        registry.register(
            "dynamodb_request_duration_seconds",
            "One DynamoDB call, retries included, failed ones too",
            dynamodb_seconds.clone(),
        );
        let dynamodb_errors = Family::<OperationErrorLabels, Counter>::default();
        registry.register(
            "dynamodb_errors",
            "DynamoDB calls that failed, by kind (throttled, unavailable)",
            dynamodb_errors.clone(),
        );
        let redis_seconds = Family::<ConnectionLabels, Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        registry.register(
            "redis_request_duration_seconds",
            "One Redis command, pipeline or script, failed ones too",
            redis_seconds.clone(),
        );
        let redis_errors = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "redis_errors",
            "Redis commands that failed (error reply, timeout, connection lost)",
            redis_errors.clone(),
        );
        let redis_reconnects = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "redis_reconnects",
            "Redis Cluster connections replaced after answering nothing for four timeouts",
            redis_reconnects.clone(),
        );
        let deny_list_entries = Gauge::default();
        registry.register(
            "deny_list_entries",
            "Live revocations on the access-token deny-list",
            deny_list_entries.clone(),
        );
        let signing_key_age = Gauge::default();
        registry.register(
            "signing_key_age_seconds",
            "Age of the key that currently signs tokens",
            signing_key_age.clone(),
        );
        let mail_messages = Family::<MailLabels, Counter>::default();
        registry.register(
            "mail_messages",
            "Mail messages delivered to the SMTP server (sent) or given up (failed), by template",
            mail_messages.clone(),
        );
        let mail_send_errors = Counter::default();
        registry.register(
            "mail_send_errors",
            "Delivery attempts the SMTP server did not take, each retried later",
            mail_send_errors.clone(),
        );
        let mail_queue = Gauge::default();
        registry.register(
            "mail_queue_depth",
            "Mail messages queued or waiting for a retry",
            mail_queue.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            hash_queue,
            dynamodb_seconds,
            dynamodb_errors,
            redis_seconds,
            redis_errors,
            redis_reconnects,
            deny_list_entries,
            signing_key_age,
            mail_messages,
            mail_send_errors,
            mail_queue,
            signing_key_since: AtomicI64::new(i64::MIN),
        }
    }

    /// An answered request. `route` is the route template (`None`: no route matched).
    pub fn request(&self, route: Option<&str>, method: &str, status: u16, took: Duration) {
        let route = route.unwrap_or("unmatched").to_owned();
        let method = method.to_owned();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method: method.clone(),
                status: status.to_string(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route, method })
            .observe(took.as_secs_f64());
    }

    /// A hashing job queued (`+1`) or taken by a thread (`-1`).
    pub fn hash_queue(&self, change: i64) {
        self.hash_queue.inc_by(change);
    }

    /// One DynamoDB call.
    pub fn dynamodb(&self, operation: &str, took: Duration, failure: Option<DynamoFailure>) {
        let operation = operation.to_owned();
        self.dynamodb_seconds
            .get_or_create(&OperationLabels {
                operation: operation.clone(),
            })
            .observe(took.as_secs_f64());
        if let Some(failure) = failure {
            let kind = match failure {
                DynamoFailure::Throttled => "throttled",
                DynamoFailure::Unavailable => "unavailable",
            };
            self.dynamodb_errors
                .get_or_create(&OperationErrorLabels { operation, kind })
                .inc();
        }
    }

    /// One Redis call on `connection` (`deny_list`, `profile_cache`, `rate_limit`, `soft_lock`).
    pub fn redis(&self, connection: &'static str, took: Duration, failed: bool) {
        let labels = ConnectionLabels { connection };
        self.redis_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.redis_errors.get_or_create(&labels).inc();
        }
    }

    /// The `connection` Redis Cluster connection was replaced by a new one.
    pub fn redis_reconnect(&self, connection: &'static str) {
        self.redis_reconnects
            .get_or_create(&ConnectionLabels { connection })
            .inc();
    }

    /// Live revocations, as last counted.
    pub fn deny_list_entries(&self, count: i64) {
        self.deny_list_entries.set(count);
    }

    /// The current signing key started signing at `since` (Unix seconds).
    pub fn signing_key_since(&self, since: i64) {
        self.signing_key_since.store(since, Ordering::Relaxed);
    }

    /// A mail message of `template` left the queue: `sent` or `failed`.
    pub fn mail(&self, template: &'static str, outcome: &'static str) {
        self.mail_messages
            .get_or_create(&MailLabels { template, outcome })
            .inc();
    }

    /// A delivery attempt that will be retried.
    pub fn mail_send_error(&self) {
        self.mail_send_errors.inc();
    }

    /// A mail message queued (`+1`) or done (`-1`).
    pub fn mail_queue(&self, change: i64) {
        self.mail_queue.inc_by(change);
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn encode(&self, now: i64) -> Result<String, std::fmt::Error> {
        let since = self.signing_key_since.load(Ordering::Relaxed);
        if since != i64::MIN {
            self.signing_key_age.set(now.saturating_sub(since).max(0));
        }
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
