//! An OTLP/gRPC trace collector in the test process, as Jaeger runs one: the roles export to
//! it and tests read back whole traces.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// How long spans may take to arrive after the job ended (export batches every 100 ms here).
pub const SPAN_TIMEOUT: Duration = Duration::from_secs(30);

/// The `service.name` of each role's spans.
pub const SERVICES: [&str; 4] = [
    "pixelmesh-gateway",
    "pixelmesh-scheduler",
    "pixelmesh-filter",
    "pixelmesh-storage",
];

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: String,
    pub name: String,
    pub attributes: HashMap<String, String>,
}

/// An OTLP/gRPC trace collector, as Jaeger runs one.
#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(pairs: &[KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Span {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_id: hex(&span.parent_span_id),
                        name: span.name.clone(),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Listens on a free loopback port; export to `http://{addr}`.
    pub async fn start() -> (Self, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("collector");
        });
        (collector, addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans received so far of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Waits until the trace is whole: it holds a span named `last`, spans of every role, no
    /// span whose parent is missing but for the trace's one entry point, and for each
    /// `(name, parent)` of `leaves` a span `name` under a span `parent` (the roles export in
    /// batches, so a batch may still be on its way after `last` arrived; a leaf from another
    /// role than its parent's is the one thing a missing parent cannot reveal).
    pub async fn wait_for(&self, trace_id: &str, last: &str, leaves: &[(&str, &str)]) -> Vec<Span> {
        let deadline = Instant::now() + SPAN_TIMEOUT;
        loop {
            let spans = self.trace(trace_id);
            let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
            // Parents outside the trace: empty for a root, the caller's for a continued trace.
            let outside: HashSet<&str> = spans
                .iter()
                .map(|s| s.parent_id.as_str())
                .filter(|parent| !ids.contains(parent))
                .collect();
            let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
            let name_of = |id: &str| spans.iter().find(|s| s.span_id == id).map(|s| &s.name);
            let has_leaf = |(name, parent): &(&str, &str)| {
                spans
                    .iter()
                    .any(|s| s.name == *name && name_of(&s.parent_id).is_some_and(|p| p == parent))
            };
            if spans.iter().any(|s| s.name == last)
                && SERVICES.iter().all(|service| services.contains(service))
                && outside.len() <= 1
                && leaves.iter().all(has_leaf)
            {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} not whole (a {last:?} span, every role, every parent) within \
                 {SPAN_TIMEOUT:?}; it has {:?}",
                spans
                    .iter()
                    .map(|s| (&s.service, &s.name, &s.span_id, &s.parent_id))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The spans of one trace, with lookups by name and by id.
pub struct Trace {
    pub spans: Vec<Span>,
}

impl Trace {
    pub fn named(&self, name: &str) -> Vec<&Span> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    pub fn one(&self, name: &str) -> &Span {
        let found = self.named(name);
        assert_eq!(found.len(), 1, "one {name:?} span expected: {found:#?}");
        found[0]
    }

    pub fn parent(&self, span: &Span) -> &Span {
        self.spans
            .iter()
            .find(|s| s.span_id == span.parent_id)
            .unwrap_or_else(|| panic!("parent of {span:?} not in the trace"))
    }

    /// Whether `ancestor` is `span`'s parent, grandparent, ….
    pub fn descends_from(&self, span: &Span, ancestor: &Span) -> bool {
        let mut at = span;
        while !at.parent_id.is_empty() && at.parent_id != "0000000000000000" {
            at = self.parent(at);
            if at.span_id == ancestor.span_id {
                return true;
            }
        }
        false
    }
}
