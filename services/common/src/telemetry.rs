//! Logging, OTLP trace export, and W3C trace-context propagation through gRPC metadata and
//! NATS headers, so one job is one trace across every service.

use std::collections::HashMap;

use anyhow::Context as _;
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Flushes buffered spans when dropped; keep it alive for the life of the process.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "trace exporter did not shut down cleanly");
        }
    }
}

/// Installs the global subscriber. `PIXELMESH_LOG` (or `RUST_LOG`) sets the filter;
/// `PIXELMESH_LOG_FORMAT=json` switches to JSON lines; `OTEL_EXPORTER_OTLP_ENDPOINT` turns on
/// OTLP/gRPC trace export under `service_name`.
pub fn init(service_name: &str) -> anyhow::Result<Telemetry> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    // Empty counts as unset: compose passes `RUST_LOG: ${RUST_LOG:-}` through.
    let directives = |var: &str| std::env::var(var).ok().filter(|d| !d.trim().is_empty());
    let filter = directives("PIXELMESH_LOG")
        .or_else(|| directives("RUST_LOG"))
        .and_then(|d| EnvFilter::try_new(d).ok())
        .unwrap_or_else(|| EnvFilter::new("info,sled=warn,async_nats=warn,h2=warn,tower=warn"));
    let json = std::env::var("PIXELMESH_LOG_FORMAT").is_ok_and(|f| f == "json");
    // Logs go to stderr, leaving stdout to command output; colour only on a terminal, so log
    // files and `docker logs` stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt_plain = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    });
    let fmt_json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });

    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .context("creating otlp exporter")?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(service_name.to_string())
                            .build(),
                    )
                    .build(),
            )
        }
        _ => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("pixelmesh")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_plain)
        .with(fmt_json)
        .with(otel)
        .try_init()
        .context("installing the tracing subscriber")?;
    if let Some(provider) = &provider {
        global::set_tracer_provider(provider.clone());
    }
    Ok(Telemetry { provider })
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Writes the current span's context into outgoing gRPC metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` a child of the trace named by incoming HTTP/gRPC headers, if any.
pub fn set_parent_from_http(span: &Span, headers: &http::HeaderMap) {
    let cx = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}

/// Trace context for a NATS message's headers.
pub fn nats_headers() -> async_nats::HeaderMap {
    let cx = Span::current().context();
    let mut fields = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut fields));
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in fields {
        headers.insert(k.as_str(), v.as_str());
    }
    headers
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Makes `span` a child of the trace carried in a NATS message's headers, if any.
pub fn set_parent_from_nats(span: &Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(headers) = headers {
        let cx = global::get_text_map_propagator(|p| p.extract(&NatsExtractor(headers)));
        let _ = span.set_parent(cx);
    }
}
