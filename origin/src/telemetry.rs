//! Logs and traces. Logs are JSON lines on stdout, filtered by `RUST_LOG` (default `info`);
//! every line of a request carries its `request_id` (the request span's field). Traces are off
//! unless `otlp_traces_endpoint` is set: then every request, DynamoDB call and Redis command is
//! an OpenTelemetry span, batched and exported over OTLP/HTTP (JSON) to a collector, usually a
//! local agent or sidecar.
//!
//! The exporter's HTTP client is a blocking one on the batch processor's own thread, so export
//! never runs on, or waits for, the request-serving runtime: [`init`] runs before that runtime
//! starts and [`Telemetry::shutdown`] after it ends, flushing what is batched.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};
use tracing_subscriber::{
    filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter, Layer as _,
};

/// `service.name` of the exported spans.
pub const SERVICE_NAME: &str = "edgeauth-origin";

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber is set already.
    #[error("logging: {0}")]
    Subscriber(String),
}

/// What must outlive the runtime: the span exporter, flushed at shutdown.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the JSON log layer and, with an endpoint, the OTLP span exporter.
pub fn init(otlp_traces_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let provider = match otlp_traces_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
                    .build(),
            )
        }
        None => None,
    };
    // The origin's own spans only (request, DynamoDB, Redis), whatever RUST_LOG says: the
    // libraries' internal spans would multiply the volume without saying more.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE_NAME))
            .with_filter(Targets::new().with_target("edgeauth_origin", tracing::Level::INFO))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Exports what is batched and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("origin: traces not flushed at shutdown: {error}");
            }
        }
    }
}
