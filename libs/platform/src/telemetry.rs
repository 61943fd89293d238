//! Telemetry: JSON logs, OpenTelemetry traces (exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set) and W3C trace-context propagation.
//!
//! No log line or span field may carry personal data: write ids, never names, emails or phones.

use std::collections::HashMap;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TRACEPARENT: &str = "traceparent";

/// Flushes pending spans when shut down.
#[must_use = "call shutdown() before exiting so spans are flushed"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops the trace exporter.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tokio::task::spawn_blocking(move || self.provider.shutdown())
            .await
            .context("join tracer shutdown")?
            .context("shut down tracer provider")
    }
}

/// Installs JSON logs on stdout, the OpenTelemetry layer and the W3C propagator.
///
/// `RUST_LOG` filters logs (default `info`). A second call in one process (tests) keeps the
/// first subscriber.
pub fn init(service: &'static str) -> anyhow::Result<Telemetry> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    if !endpoint.trim().is_empty() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .context("build otlp span exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true);
    // Spans get their parents from tracing's span tree and traceparents are read through
    // `OpenTelemetrySpanExt`, so nothing needs an OpenTelemetry context made current on
    // every poll of an instrumented future, nor busy/idle clocks and thread attributes
    // taken per span: together a few percent of a capture's CPU.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false);
    // Tests install one subscriber per process; a second init keeps the first.
    let _already_installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

/// Returns the W3C `traceparent` of the current span, empty when there is none.
pub fn current_traceparent() -> String {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// Makes `traceparent` (if valid) the parent of `span`.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    // A span already entered cannot take a new parent; the error only says so.
    let _ignored = span.set_parent(context);
}

/// Makes the remote parent found in HTTP/2 headers (gRPC metadata) the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &tonic::codegen::http::HeaderMap) {
    if let Some(value) = headers
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
    {
        set_parent_from_traceparent(span, value);
    }
}
