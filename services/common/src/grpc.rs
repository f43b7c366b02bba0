//! The one gRPC server helper and the client channel every role uses.
//!
//! Every server gets `grpc.health.v1` and server reflection (v1 and v1alpha, because grpcurl
//! 1.8 speaks only v1alpha), a tracing span per request whose parent is the caller's W3C
//! `traceparent` and whose trace id goes back as `x-trace-id`, Prometheus text at `/metrics`
//! with every request counted and timed, and a bounded graceful stop. The gateway merges its HTTP routes into the
//! same server, so gRPC and HTTP share one port.

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use axum::{Router, middleware};
use http::Request;
use tokio::net::TcpListener;
use tonic::{
    server::NamedService,
    service::{Interceptor, Routes, interceptor::InterceptedService},
    transport::Endpoint,
};
use tonic_health::server::HealthReporter;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::{metrics, telemetry};

/// How long open connections (watch streams, downloads) may go on after the stop signal.
const GRACE: Duration = Duration::from_secs(10);

/// A server under construction: add gRPC services and HTTP routes, then [`Server::serve`].
pub struct Server {
    role: &'static str,
    routes: Routes,
    health: HealthReporter,
    http: Router,
    fallback: Option<Router>,
    wrap: Box<dyn FnOnce(Router) -> Router + Send>,
    collectors: Vec<metrics::Collector>,
    max_pending_accept_resets: usize,
}

/// hyper's default for [`Server::trusted_peers`]' setting: a guard against reset floods.
const PUBLIC_PENDING_ACCEPT_RESETS: usize = 20;
/// Between our own roles one connection carries every user's calls, and each upload or
/// download a user abandons may reset a stream on it; the guard must not drop the connection
/// for that (it did: "remotely-reset pending-accept streams reached limit (20)").
const TRUSTED_PENDING_ACCEPT_RESETS: usize = 100_000;

impl Server {
    /// A server for `role` (`gateway`, `scheduler`, …): its request spans are that role's,
    /// also when `pixelmesh all` runs every role in one process.
    pub fn new(role: &'static str) -> anyhow::Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pixelmesh_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let routes = Routes::new(health_service)
            .add_service(reflection().build_v1().context("reflection v1")?)
            .add_service(reflection().build_v1alpha().context("reflection v1alpha")?);
        Ok(Server {
            role,
            routes,
            health,
            http: Router::new(),
            fallback: None,
            wrap: Box::new(|app| app),
            collectors: Vec::new(),
            max_pending_accept_resets: PUBLIC_PENDING_ACCEPT_RESETS,
        })
    }

    /// For servers only other roles call (storage, scheduler): streams the peer resets
    /// before they are accepted never close the connection.
    pub fn trusted_peers(mut self) -> Self {
        self.max_pending_accept_resets = TRUSTED_PENDING_ACCEPT_RESETS;
        self
    }

    /// Adds a gRPC service and reports it serving through `grpc.health.v1`.
    pub async fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.health.set_serving::<S>().await;
        self.routes = self.routes.add_service(service);
        self
    }

    /// Merges plain HTTP routes into the same port.
    pub fn http(mut self, router: Router) -> Self {
        self.http = self.http.merge(router);
        self
    }

    /// Answers every request no gRPC service or HTTP route takes (the gateway's web UI, with
    /// its single-page fallback). It replaces tonic's own fallback, so it must answer gRPC
    /// requests for unknown services itself.
    pub fn fallback(mut self, router: Router) -> Self {
        self.fallback = Some(router);
        self
    }

    /// Wraps the whole app, gRPC and HTTP routes merged, in the caller's layers (auth,
    /// limits…), so one middleware stack sees every request. The layers run inside the
    /// tracing span, so requests they refuse are traced too. Called again, the new layers go
    /// around the earlier ones.
    pub fn layer_with(mut self, wrap: impl FnOnce(Router) -> Router + Send + 'static) -> Self {
        let inner = self.wrap;
        self.wrap = Box::new(move |app| wrap(inner(app)));
        self
    }

    /// Runs `collect` before every `/metrics` scrape, to refresh gauges read from elsewhere.
    pub fn metrics_collector(mut self, collect: metrics::Collector) -> Self {
        self.collectors.push(collect);
        self
    }

    /// Serves until `shutdown` resolves, then lets open requests finish for a bounded time.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let role = self.role;
        let mut app = self
            .routes
            .into_axum_router()
            .merge(self.http)
            .merge(metrics::route(self.collectors))
            .layer(middleware::from_fn(metrics::note_route));
        if let Some(fallback) = self.fallback {
            app = app.fallback_service(fallback);
        }
        let app = (self.wrap)(app)
            .layer(middleware::from_fn(metrics::record_request))
            .layer(middleware::from_fn(trace_id_header))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(move |request: &Request<_>| request_span(role, request)),
            );
        serve_connections(app, listener, shutdown, self.max_pending_accept_resets).await
    }
}

/// Accepts connections until `shutdown` resolves, then lets open ones finish for [`GRACE`].
///
/// What `axum::serve` does, written out because it cannot set HTTP/2 options: each
/// connection speaks HTTP/1.1 or HTTP/2 (gRPC), with `TCP_NODELAY` (without it each small
/// HTTP/2 frame written after another waits for the peer's delayed ACK, up to 40 ms: that was
/// most of a single image's latency) and `ConnectInfo<SocketAddr>` on every request, so
/// per-client limits of a server without api keys go by the peer's address.
async fn serve_connections(
    app: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    max_pending_accept_resets: usize,
) -> anyhow::Result<()> {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::{conn::auto, graceful::GracefulShutdown},
        service::TowerToHyperService,
    };
    use tower::ServiceExt as _;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_pending_accept_reset_streams(max_pending_accept_resets);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, most likely: let open connections finish some work.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set tcp_nodelay");
        }
        let service =
            app.clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(addr));
                    request
                });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, peer = %addr, "connection ended with an error");
            }
        });
    }
    drop(listener);
    match tokio::time::timeout(GRACE, graceful.shutdown()).await {
        Ok(()) => Ok(()),
        Err(_) => {
            tracing::warn!(
                grace_secs = GRACE.as_secs(),
                "connections still open after grace period, closing them"
            );
            Ok(())
        }
    }
}

/// Whether a request speaks gRPC (`application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

fn request_span<B>(role: &'static str, request: &Request<B>) -> Span {
    let path = request.uri().path();
    // Jaeger lists spans by name: a gRPC call by its method, an HTTP one by method and path.
    let name = if is_grpc(request) {
        path.trim_start_matches('/').to_string()
    } else {
        format!("{} {path}", request.method())
    };
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        method = %request.method(),
        path,
        trace_id = tracing::field::Empty,
    );
    telemetry::set_role(&span, role);
    telemetry::set_parent_from_http(&span, request.headers());
    span
}

/// The response header naming the request's trace, for a user to paste into Jaeger.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// Answers every request (gRPC responses carry it as initial metadata) with its trace id.
async fn trace_id_header(
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let trace_id = telemetry::trace_id(&Span::current());
    let mut response = next.run(request).await;
    if let Some(value) = trace_id.and_then(|id| http::HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(TRACE_ID_HEADER, value);
    }
    response
}

/// Injects the current span's trace context into every outgoing gRPC request.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInterceptor;

impl Interceptor for TraceInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        telemetry::inject_grpc(request.metadata_mut());
        Ok(request)
    }
}

/// The channel type every internal client uses.
pub type Channel = InterceptedService<tonic::transport::Channel, TraceInterceptor>;

/// A lazily connected channel to another role: roles may start in any order, and a role
/// that restarts is reconnected to on the next call.
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid grpc address {url}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        TraceInterceptor,
    ))
}

/// Largest gRPC message any server or client accepts. Blobs travel in 64 KiB chunks, so only
/// job descriptions with many images get near this.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
