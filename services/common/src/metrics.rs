//! Prometheus metrics: one recorder per process, rendered as Prometheus text at `/metrics` on
//! every role's port, and the request counter and latency histogram every server keeps.
//!
//! Roles record through the `metrics` facade (`metrics::counter!` …); without an installed
//! recorder (unit tests, benchmarks) those calls cost nothing. The names every role records
//! are listed in the README's "Metrics" section and drawn by `compose/grafana/`.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::{Arc, LazyLock, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{MatchedPath, Request},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body, Frame, SizeHint};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use prost::Message as _;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, in seconds: from a fast REST read to a 100-megapixel image's pipeline.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How often histograms are folded and idle work done when nobody scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the process's recorder. Every histogram whose name ends in `_seconds` gets
/// [`SECONDS_BUCKETS`]. A second call is a no-op.
pub fn install() -> anyhow::Result<()> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            }
        })?;
    let _ = HANDLE.set(handle);
    describe();
    Ok(())
}

/// Help texts for the metrics every server records.
fn describe() {
    metrics::describe_counter!(
        "pixelmesh_requests_total",
        "gRPC and HTTP requests answered, by protocol, route and status code"
    );
    metrics::describe_histogram!(
        "pixelmesh_request_duration_seconds",
        metrics::Unit::Seconds,
        "time from a request's arrival to the end of its response body (streams included)"
    );
}

/// Runs before each scrape, to refresh gauges read from elsewhere (JetStream, NATS KV).
pub type Collector = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// `GET /metrics`: the Prometheus text exposition of everything this process recorded.
pub fn route(collectors: Vec<Collector>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let collectors = collectors.clone();
            async move {
                for collect in &collectors {
                    collect().await;
                }
                let body = HANDLE
                    .get()
                    .map(PrometheusHandle::render)
                    .unwrap_or_default();
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    )],
                    body,
                )
                    .into_response()
            }
        }),
    )
}

/// Where the inner middleware leaves the route a request matched, for the outer one.
#[derive(Clone, Default)]
struct RouteSlot(Arc<OnceLock<String>>);

/// Inside the router: notes the matched route template (`/api/v1/jobs/{id}`), which only
/// exists once routing has happened.
pub async fn note_route(request: Request, next: Next) -> Response {
    if let (Some(slot), Some(path)) = (
        request.extensions().get::<RouteSlot>(),
        request.extensions().get::<MatchedPath>(),
    ) {
        let _ = slot.0.set(path.as_str().to_string());
    }
    next.run(request).await
}

/// Around everything: counts each request and times it to the end of its response body, by
/// protocol, route and status. gRPC requests are labelled by their method path and their
/// `grpc-status` (from the trailers); HTTP ones by route template and status code. Routes are
/// templates or methods that exist (anything else is `unmatched` / `unknown`), so a client
/// cannot mint label values.
pub async fn record_request(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let grpc = crate::grpc::is_grpc(&request);
    let path = request.uri().path().to_string();
    let slot = RouteSlot::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    let label = move |grpc_status: Option<&str>| -> Labels {
        if grpc {
            let code = grpc_status.unwrap_or(if status == 200 { "unknown" } else { "14" });
            // Only methods that exist name a route: any other path is the client's invention.
            let route = if known_grpc_method(&path) {
                path.clone()
            } else {
                "unknown".to_string()
            };
            Labels {
                protocol: "grpc",
                route,
                code: grpc_code_name(code).to_string(),
            }
        } else {
            Labels {
                protocol: "http",
                route: slot.0.get().cloned().unwrap_or_else(|| "unmatched".into()),
                code: status.to_string(),
            }
        }
    };
    let body = axum::body::Body::new(Recorded {
        inner: body,
        started,
        // A trailers-only answer (an early error) has its status in the headers.
        grpc_status: grpc_status(&parts.headers),
        label: Some(Box::new(label)),
    });
    Response::from_parts(parts, body)
}

/// Whether `path` is `/package.Service/Method` of a service some pixelmesh server has.
fn known_grpc_method(path: &str) -> bool {
    static METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
        let sets = [
            pixelmesh_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = HashSet::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        methods
    });
    METHODS.contains(path)
}

struct Labels {
    protocol: &'static str,
    route: String,
    code: String,
}

type Labeller = Box<dyn FnOnce(Option<&str>) -> Labels + Send>;

/// A response body that records its request's metrics when it ends, or when it is dropped
/// (the client went away).
struct Recorded {
    inner: axum::body::Body,
    started: Instant,
    grpc_status: Option<String>,
    label: Option<Labeller>,
}

impl Recorded {
    fn record(&mut self) {
        if let Some(label) = self.label.take() {
            let labels = label(self.grpc_status.as_deref());
            let elapsed = self.started.elapsed().as_secs_f64();
            metrics::counter!(
                "pixelmesh_requests_total",
                "protocol" => labels.protocol,
                "route" => labels.route.clone(),
                "code" => labels.code,
            )
            .increment(1);
            metrics::histogram!(
                "pixelmesh_request_duration_seconds",
                "protocol" => labels.protocol,
                "route" => labels.route,
            )
            .record(elapsed);
        }
    }
}

impl Body for Recorded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.grpc_status = grpc_status(trailers).or(this.grpc_status.take());
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.record(),
            Poll::Pending => {}
        }
        if this.inner.is_end_stream() {
            this.record();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.record();
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// gRPC's numeric status as the name dashboards show.
fn grpc_code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_grpc_methods_are_routes() {
        for method in [
            "/pixelmesh.v1.Gateway/SubmitJob",
            "/pixelmesh.v1.Storage/GetBlob",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(known_grpc_method(method), "{method}");
        }
        for made_up in ["/pixelmesh.v1.Gateway/Bogus", "/x.Y/SubmitJob", "/", ""] {
            assert!(!known_grpc_method(made_up), "{made_up}");
        }
    }

    #[test]
    fn grpc_codes_have_their_names() {
        assert_eq!(grpc_code_name("0"), "OK");
        assert_eq!(grpc_code_name("12"), "UNIMPLEMENTED");
        assert_eq!(grpc_code_name("16"), "UNAUTHENTICATED");
        assert_eq!(grpc_code_name("99"), "UNKNOWN");
    }
}
