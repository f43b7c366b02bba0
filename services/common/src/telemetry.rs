//! Logging, OTLP trace export, and W3C trace-context propagation through gRPC metadata and
//! NATS headers, so one job is one trace across every service, named in every log line.

use std::collections::HashMap;

use anyhow::Context as _;
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt as _, TracerProvider as _},
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
            // Bounded: a stop must not wait on a collector that is gone.
            && let Err(err) = provider.shutdown_with_timeout(std::time::Duration::from_secs(3))
        {
            tracing::warn!(error = %err, "trace exporter did not shut down cleanly");
        }
    }
}

/// Installs the global subscriber and the process's metrics recorder.
///
/// * `PIXELMESH_LOG` (or `RUST_LOG`) sets the level filter; `PIXELMESH_LOG_FORMAT=json`
///   switches from human-readable lines to JSON lines, one object per event with its spans'
///   fields (job id, trace id);
/// * every span belongs to an OpenTelemetry trace, exported or not, so trace ids link log
///   lines across services and reach clients as `x-trace-id`;
/// * `OTEL_EXPORTER_OTLP_ENDPOINT` turns on OTLP/gRPC export under `service_name`, sampled as
///   `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` say (default: every trace, and always
///   the caller's decision). Spans leave through a bounded queue on a background thread:
///   when the collector is slow or gone, spans are dropped, never waited for.
pub fn init(services: Services) -> anyhow::Result<Telemetry> {
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
            .fmt_fields(WithoutOtel)
            .with_writer(std::io::stderr)
    });
    let fmt_json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });

    let service_name = match services {
        Services::One(name) => name,
        Services::PerRole => "pixelmesh",
    };
    let mut provider = SdkTracerProvider::builder().with_resource(resource(service_name));
    let exporting = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => {
            provider = match services {
                Services::One(_) => provider.with_batch_exporter(otlp_exporter()?),
                Services::PerRole => provider.with_batch_exporter(ByRole::new()?),
            };
            Some(endpoint)
        }
        _ => None,
    };
    let provider = provider.build();
    // Spans carry their fields as attributes; file and line are noise in Jaeger's view.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("pixelmesh"))
        .with_location(false);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_plain)
        .with(fmt_json)
        .with(otel)
        .try_init()
        .context("installing the tracing subscriber")?;
    global::set_tracer_provider(provider.clone());
    crate::metrics::install().context("installing the metrics recorder")?;
    if let Some(endpoint) = exporting {
        tracing::info!(endpoint = %endpoint, service = service_name, "exporting traces over otlp");
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Log fields as `name=value`, leaving out the `otel.*` fields that only name and type spans
/// for OpenTelemetry.
struct WithoutOtel;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for WithoutOtel {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldWriter<'writer> {
    writer: tracing_subscriber::fmt::format::Writer<'writer>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("otel.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{value:?}")
        } else {
            write!(self.writer, "{separator}{}={value:?}", field.name())
        };
    }
}

/// Whose name spans are exported under (OpenTelemetry's `service.name`).
#[derive(Debug, Clone, Copy)]
pub enum Services {
    /// One role per process: every span is this service's.
    One(&'static str),
    /// `pixelmesh all`: each span is exported under its role's name (`pixelmesh-gateway`,
    /// …), so a trace looks the same as in a mesh of separate processes.
    PerRole,
}

/// The service name of each role, and the crate whose spans are that role's.
const ROLES: [(&str, &str, &str); 4] = [
    ("gateway", "pixelmesh_gateway", "pixelmesh-gateway"),
    ("scheduler", "pixelmesh_scheduler", "pixelmesh-scheduler"),
    ("filter", "pixelmesh_filter", "pixelmesh-filter"),
    ("storage", "pixelmesh_storage", "pixelmesh-storage"),
];

/// The span attribute naming the role whose server made a span in shared code.
const ROLE_ATTRIBUTE: &str = "pixelmesh.role";

/// Marks `span` as `role`'s, for spans made in shared code (a server's request span).
pub fn set_role(span: &Span, role: &'static str) {
    span.set_attribute(ROLE_ATTRIBUTE, role);
}

fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_string())
        .build()
}

fn otlp_exporter() -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("creating otlp exporter")
}

/// Sends each span under its role's service name: one OTLP exporter per role, each with its
/// own resource. A span's role is its `pixelmesh.role` attribute, else the crate that made it
/// (the `target` attribute); anything else goes out as plain `pixelmesh`.
#[derive(Debug)]
struct ByRole {
    roles: Vec<opentelemetry_otlp::SpanExporter>,
    other: opentelemetry_otlp::SpanExporter,
}

impl ByRole {
    fn new() -> anyhow::Result<Self> {
        let with_name = |name: &str| -> anyhow::Result<_> {
            let mut exporter = otlp_exporter()?;
            opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource(name));
            Ok(exporter)
        };
        Ok(ByRole {
            roles: ROLES
                .iter()
                .map(|(_, _, name)| with_name(name))
                .collect::<anyhow::Result<_>>()?,
            other: with_name("pixelmesh")?,
        })
    }

    /// Index into `roles`, or `roles.len()` for none.
    fn role_of(span: &opentelemetry_sdk::trace::SpanData) -> usize {
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.as_str())
        };
        let by_attribute = attribute(ROLE_ATTRIBUTE)
            .and_then(|role| ROLES.iter().position(|(name, _, _)| *name == role.as_ref()));
        by_attribute
            .or_else(|| {
                let target = attribute("target")?;
                ROLES.iter().position(|(_, krate, _)| {
                    target.as_ref() == *krate || target.starts_with(&format!("{krate}::"))
                })
            })
            .unwrap_or(ROLES.len())
    }
}

impl opentelemetry_sdk::trace::SpanExporter for ByRole {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let mut parts: Vec<Vec<_>> = (0..=ROLES.len()).map(|_| Vec::new()).collect();
        for span in batch {
            parts[Self::role_of(&span)].push(span);
        }
        let mut result = Ok(());
        for (exporter, part) in self.roles.iter().chain([&self.other]).zip(parts) {
            if !part.is_empty()
                && let Err(err) = exporter.export(part).await
            {
                result = Err(err);
            }
        }
        result
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let mut result = Ok(());
        for exporter in self.roles.iter().chain([&self.other]) {
            if let Err(err) = exporter.shutdown_with_timeout(timeout) {
                result = Err(err);
            }
        }
        result
    }

    /// Each role's exporter keeps its own resource.
    fn set_resource(&mut self, _resource: &Resource) {}
}

/// The trace `span` belongs to, as the 32 hex digits Jaeger searches by; `None` without the
/// OpenTelemetry layer (unit tests).
pub fn trace_id(span: &Span) -> Option<String> {
    let cx = span.context();
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Fills `span`'s `trace_id` field (declared `trace_id = tracing::field::Empty`), so every log
/// line inside it names its trace. Call it after setting the span's parent: reading the id
/// fixes the span's place in its trace.
pub fn record_trace_id(span: &Span) {
    if let Some(id) = trace_id(span) {
        span.record("trace_id", id.as_str());
    }
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

/// Makes `span` a child of the trace named by incoming HTTP/gRPC headers, if any, and
/// records its trace id.
pub fn set_parent_from_http(span: &Span, headers: &http::HeaderMap) {
    let cx = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
    record_trace_id(span);
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

/// Makes `span` a child of the trace carried in a NATS message's headers, if any, and
/// records its trace id.
pub fn set_parent_from_nats(span: &Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(headers) = headers {
        let cx = global::get_text_map_propagator(|p| p.extract(&NatsExtractor(headers)));
        let _ = span.set_parent(cx);
    }
    record_trace_id(span);
}
