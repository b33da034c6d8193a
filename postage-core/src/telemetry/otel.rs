//! OpenTelemetry (the `otel` feature): postage's spans become OpenTelemetry spans through
//! [`tracing-opentelemetry`](tracing_opentelemetry), their W3C trace context goes out in
//! the headers of what is sent inside them and comes back as the parent of the delivery
//! span on the other side, and [`Otlp`] exports them to a collector.
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! # fn main() -> postage_core::Result<()> {
//! // OTEL_EXPORTER_OTLP_ENDPOINT says where (default http://localhost:4318).
//! let otlp = postage_core::telemetry::otel::Otlp::from_env("inventory")?;
//! tracing_subscriber::registry()
//!     // Spans at INFO and above: lapin logs every frame at TRACE, which costs.
//!     .with(tracing_subscriber::filter::LevelFilter::INFO)
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(otlp.layer())
//!     .init();
//! // ... run the component, then flush what is left:
//! otlp.shutdown();
//! # Ok(()) }
//! ```

use std::collections::HashMap;

use lapin::types::FieldTable;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::context::{TRACEPARENT, TRACESTATE, TraceHeaders, header_str};
use crate::error::{Error, Result};

/// The trace context of the current span, when an OpenTelemetry layer records it.
pub(crate) fn current() -> Option<TraceHeaders> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut Carrier(&mut carrier));
    Some(TraceHeaders {
        traceparent: carrier.remove(TRACEPARENT)?,
        tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
    })
}

/// Makes `span` a child of the span a delivery's headers name, when they name one.
pub(crate) fn adopt(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers else {
        return;
    };
    if header_str(headers, TRACEPARENT).is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Without an OpenTelemetry layer there is nothing to adopt the parent.
    let _ = span.set_parent(parent);
}

struct Carrier<'a>(&'a mut HashMap<&'static str, String>);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.insert(TRACEPARENT, value),
            TRACESTATE => self.0.insert(TRACESTATE, value),
            _ => None,
        };
    }
}

struct Headers<'a>(&'a FieldTable);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header_str(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

/// Spans exported over OTLP (HTTP, protobuf) to the collector the standard
/// `OTEL_EXPORTER_OTLP_*` variables name, in batches from a thread of their own.
#[derive(Debug)]
pub struct Otlp {
    provider: SdkTracerProvider,
}

impl Otlp {
    /// An exporter for the service `service` (OpenTelemetry's `service.name`), to the
    /// collector `OTEL_EXPORTER_OTLP_ENDPOINT` names (default `http://localhost:4318`).
    pub fn from_env(service: &str) -> Result<Self> {
        Self::build(
            service,
            opentelemetry_otlp::SpanExporter::builder().with_http(),
        )
    }

    /// An exporter for the service `service` to `endpoint`, a collector's traces URL
    /// (`http://collector:4318/v1/traces`).
    pub fn to(service: &str, endpoint: &str) -> Result<Self> {
        use opentelemetry_otlp::WithExportConfig;
        Self::build(
            service,
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint),
        )
    }

    fn build(
        service: &str,
        exporter: opentelemetry_otlp::SpanExporterBuilder<
            opentelemetry_otlp::HttpExporterBuilderSet,
        >,
    ) -> Result<Self> {
        let exporter = exporter
            .build()
            .map_err(|e| Error::config("OTEL_EXPORTER_OTLP_ENDPOINT", e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build();
        Ok(Self { provider })
    }

    /// A tracing layer that turns spans into OpenTelemetry spans and exports them.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("postage"))
    }

    /// Exports what is left and stops the exporter.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "could not flush the OpenTelemetry exporter");
        }
    }
}
