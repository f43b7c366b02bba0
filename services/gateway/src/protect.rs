//! The layers in front of everything: request ids, compression, api keys, a per-client rate
//! limit, body caps, load shedding, idle bodies and timeouts.
//!
//! One stack sees gRPC and REST alike (they share the port), so each refusal is answered in
//! the caller's protocol from one [`Error`]: REST gets the JSON body of
//! [`crate::http::ApiError`] with the code's HTTP status, gRPC a trailers-only response with
//! the code's gRPC status. From the outside in:
//!
//! 1. **request id** — `x-request-id` kept when sane, else a new ULID; on the response and
//!    in a `req{request_id}` span around everything below, so every log line carries it;
//! 2. **compression** — gzip for JSON and text responses the client accepts it for; never
//!    event streams, images, ZIPs or gRPC (which compresses its own messages);
//! 3. **api keys** — [`auth::authenticate`], so the layers below know the [`Caller`];
//! 4. **rate limit** — a token bucket per key (per client address when the gateway runs
//!    open), before anything costly: a flood from one key is refused without taking a slot;
//! 5. **body cap** — small bodies everywhere but the two routes that stream uploads;
//! 6. **load shedding** — two pools of slots: *transfers* (submits and uploads: REST
//!    `POST /api/v1/jobs` and `POST /api/v1/uploads`, gRPC `UploadImage`, `UploadArchive`,
//!    `SubmitJob`, `SubmitBatch`) and everything else, so a flood of uploads never sheds a
//!    status read, an event stream or a download. A full pool refuses at once with `503` +
//!    `Retry-After` (gRPC `UNAVAILABLE`) instead of queueing. A transfer also counts against
//!    its key's limit (per client address when open): one over it gets `429` + `Retry-After`
//!    (gRPC `RESOURCE_EXHAUSTED`), so one key cannot hold the whole transfer pool. A slot
//!    is held until the response head is ready: a transfer holds it for its whole upload,
//!    while watch streams and downloads give it back once they start streaming;
//! 7. **idle bodies** — a request body that delivers no byte for the idle time while its
//!    reader waits fails the read, and the request is answered `408` (gRPC
//!    `DEADLINE_EXCEEDED`). The handler sees the failed read like a broken connection, so an
//!    upload in progress is aborted at storage and its slot comes free. Only time spent
//!    waiting on the client counts, never time the gateway spends passing bytes on;
//! 8. **timeout** — for calls that answer in one piece; never event streams, downloads,
//!    submits, uploads or streaming gRPC methods.
//!
//! `/healthz`, `/metrics` and the gRPC health service pass the rate limit, load shedding and
//! the idle limit, so probes answer truthfully while the gateway is saturated.
//!
//! These are axum middleware functions rather than tower's `ConcurrencyLimit`/`LoadShed`/
//! `Timeout`: the stack is applied with `Router::layer`, which gives every route its own copy
//! of a layer (tower's `ConcurrencyLimitLayer` would make one semaphore per route), and
//! tower's errors would need a `HandleErrorLayer` per refusal anyway. Shedding is the same
//! thing `ConcurrencyLimit` + `LoadShed` do: a permit taken without waiting, held by the
//! future that produces the response head.
//!
//! [`Caller`]: crate::auth::Caller

use std::{
    collections::HashMap,
    fmt,
    future::Future as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, DefaultBodyLimit, Request, State},
    http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode, Version, header},
    middleware::{Next, from_fn, from_fn_with_state},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use governor::{
    Quota,
    clock::{Clock, DefaultClock, Reference as _},
    middleware::NoOpMiddleware,
    state::keyed::DefaultKeyedStateStore,
};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pixelmesh_proto::{Error, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::compression::{CompressionLayer, Predicate as _, predicate::SizeAbove};
use tracing::Instrument as _;

use crate::{
    Settings,
    auth::{self, ApiKeys, Caller},
};

/// The request id header, read from the request and set on the response.
pub const REQUEST_ID: &str = "x-request-id";
/// Longest request id kept from a client.
const MAX_REQUEST_ID_CHARS: usize = 64;
/// Responses smaller than this are not worth a gzip header.
const MIN_COMPRESS_BYTES: u16 = 256;
/// Most clients the rate limiter remembers. Idle clients (whose bucket has refilled) are
/// forgotten, so this only binds when this many are limited at the same time; then newcomers
/// share one bucket until room frees.
const MAX_RATE_CLIENTS: usize = 65_536;
/// How often the rate limiter forgets idle clients.
const RATE_SWEEP_EVERY: Duration = Duration::from_secs(30);
/// gRPC methods with no timeout: the streaming ones, and submits (as on REST: a URL list is
/// checked and split while the caller waits, and a submit cut off half-way helps no one).
const GRPC_LONG_LIVED: &[&str] = &[
    "/pixelmesh.v1.Gateway/WatchJob",
    "/pixelmesh.v1.Gateway/UploadImage",
    "/pixelmesh.v1.Gateway/DownloadOutput",
    "/pixelmesh.v1.Gateway/SubmitJob",
    "/pixelmesh.v1.Gateway/SubmitBatch",
    "/pixelmesh.v1.Gateway/UploadArchive",
    "/pixelmesh.v1.Gateway/DownloadOutputs",
    "/grpc.health.v1.Health/Watch",
];
/// gRPC methods that carry uploads or submits: they take a transfer slot, as REST's
/// [`streams_request_body`] routes do.
const GRPC_TRANSFERS: &[&str] = &[
    "/pixelmesh.v1.Gateway/UploadImage",
    "/pixelmesh.v1.Gateway/UploadArchive",
    "/pixelmesh.v1.Gateway/SubmitJob",
    "/pixelmesh.v1.Gateway/SubmitBatch",
];

/// The protection settings, from [`Settings`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests other than transfers in handlers at once; 0 means no limit.
    pub max_concurrent_requests: usize,
    /// Transfers (submits and uploads) in handlers at once; 0 means no limit.
    pub max_concurrent_uploads: usize,
    /// Transfers one key (or, open, one client) may have in handlers at once; 0 means no
    /// limit.
    pub max_uploads_per_key: usize,
    /// Longest a request body may deliver nothing while its reader waits; `None` means no
    /// limit.
    pub body_idle_timeout: Option<Duration>,
    /// Requests per second per client, refilled continuously; 0 means no rate limit.
    pub rate_limit_per_second: f64,
    /// Requests a client may make at once before the rate applies.
    pub rate_limit_burst: u32,
    /// Longest a one-piece call may take to answer; `None` means no timeout.
    pub request_timeout: Option<Duration>,
    /// Largest body of a request other than a submit or an upload.
    pub max_body_bytes: usize,
}

impl Limits {
    pub fn from_settings(settings: &Settings) -> Self {
        Limits {
            max_concurrent_requests: settings.max_concurrent_requests,
            max_concurrent_uploads: settings.max_concurrent_uploads,
            max_uploads_per_key: settings.max_uploads_per_key,
            body_idle_timeout: (settings.body_idle_timeout_secs > 0)
                .then(|| Duration::from_secs(settings.body_idle_timeout_secs)),
            rate_limit_per_second: settings.rate_limit_per_second,
            rate_limit_burst: settings.rate_limit_burst,
            request_timeout: (settings.request_timeout_secs > 0)
                .then(|| Duration::from_secs(settings.request_timeout_secs)),
            max_body_bytes: settings.max_body_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_settings(&Settings::default())
    }
}

/// Wraps the whole app (gRPC and HTTP routes merged) in the protection layers.
pub fn protect(app: Router, limits: &Limits, keys: Arc<ApiKeys>) -> Router {
    // `Router::layer` puts each new layer around the ones before: innermost first.
    let mut app = app.layer(DefaultBodyLimit::max(limits.max_body_bytes));
    if let Some(timeout) = limits.request_timeout {
        app = app.layer(from_fn_with_state(timeout, time_limit));
    }
    if let Some(idle) = limits.body_idle_timeout {
        app = app.layer(from_fn_with_state(idle, idle_bodies));
    }
    let slots = Slots::new(limits);
    if !slots.is_unlimited() {
        app = app.layer(from_fn_with_state(Arc::new(slots), shed));
    }
    app = app.layer(from_fn_with_state(limits.max_body_bytes, cap_body));
    if let Some(limiter) = RateLimiter::new(
        limits.rate_limit_per_second,
        limits.rate_limit_burst,
        MAX_RATE_CLIENTS,
    ) {
        app = app.layer(from_fn_with_state(Arc::new(limiter), rate_limit));
    }
    app.layer(from_fn_with_state(keys, auth::authenticate))
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .compress_when(SizeAbove::new(MIN_COMPRESS_BYTES).and(compressible)),
        )
        .layer(from_fn(request_id))
}

/// Whether a request speaks gRPC: those get their refusals as gRPC statuses.
pub use pixelmesh_common::grpc::is_grpc;

/// The gRPC services every server has and anyone may call: health and reflection.
pub fn is_grpc_health_or_reflection(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// Health checks and metric scrapes: never rate limited or shed.
fn is_health(path: &str) -> bool {
    path == "/healthz" || path == "/metrics" || path.starts_with("/grpc.health.v1.Health/")
}

/// REST calls that stream their request body: the multipart submit and raw uploads. Their
/// own limits apply (`--max-request-bytes`, `--max-upload-bytes`), not the body cap.
fn streams_request_body(method: &Method, path: &str) -> bool {
    method == Method::POST && (path == "/api/v1/jobs" || path == "/api/v1/uploads")
}

/// Submits and uploads: they take a transfer slot and count against their key's limit. By
/// path alone, whatever the content type claims, so no header moves a transfer into the
/// other pool.
fn is_transfer(request: &Request) -> bool {
    let path = request.uri().path();
    streams_request_body(request.method(), path) || GRPC_TRANSFERS.contains(&path)
}

/// Calls whose answer or request is a long stream: event streams, downloads, submits and
/// uploads, and their gRPC counterparts. They get no timeout.
fn is_long_lived(request: &Request) -> bool {
    let path = request.uri().path();
    if is_grpc(request) {
        return GRPC_LONG_LIVED.contains(&path) || path.starts_with("/grpc.reflection.");
    }
    path.ends_with("/events")
        || path.contains("/outputs")
        || streams_request_body(request.method(), path)
}

/// A refusal in the caller's protocol: the JSON error body with the code's status, or a
/// trailers-only gRPC response with the code's gRPC status. Both come from the one mapping
/// in `pixelmesh_proto::ErrorCode`.
pub fn error_response(grpc: bool, err: Error) -> Response {
    if grpc {
        tonic::Status::from(err).into_http::<Body>()
    } else {
        crate::http::ApiError::from(err).into_response()
    }
}

/// A refusal that may be retried after `seconds`; REST gets `Retry-After`.
fn retry_later(grpc: bool, err: Error, seconds: u64) -> Response {
    let mut response = error_response(grpc, err);
    if !grpc {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

/// The request id of a request, as inserted by the request id layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

fn sane_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| sane_request_id(id))
        .map_or_else(|| ulid::Ulid::new().to_string(), str::to_string);
    // Sane ids and ULIDs are visible ASCII, so this conversion does not fail.
    let value = HeaderValue::from_str(&id).ok();
    if let Some(value) = &value {
        request.headers_mut().insert(REQUEST_ID, value.clone());
    }
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("req", request_id = %id);
    let mut response = next.run(request).instrument(span).await;
    if let Some(value) = value {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// JSON and text (and the UI's scripts) compress well; event streams must reach the browser
/// event by event, images and ZIPs are compressed already, and gRPC compresses per message.
fn compressible(_: StatusCode, _: Version, headers: &HeaderMap, _: &Extensions) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    match pixelmesh_common::media::essence(content_type).as_str() {
        "text/event-stream" => false,
        "application/json" | "application/javascript" | "application/wasm" => true,
        other => other.starts_with("text/") || other.ends_with("+json"),
    }
}

async fn shed(State(slots): State<Arc<Slots>>, request: Request, next: Next) -> Response {
    if is_health(request.uri().path()) {
        return next.run(request).await;
    }
    let grpc = is_grpc(&request);
    // Taken without waiting, dropped when the handler has produced the response head.
    if !is_transfer(&request) {
        let Ok(_slot) = slots.requests.try_take() else {
            tracing::debug!("shedding load: every request slot is taken");
            return at_capacity(grpc);
        };
        return next.run(request).await;
    }
    // The key's own limit first: a key at its limit is told so, whatever the pool holds.
    let _key_slot = match &slots.per_key {
        Some(per_key) => {
            let client = ClientKey::of(&request);
            match per_key.try_take(&client) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(client = ?client, max = per_key.max, "too many transfers from one client");
                    let err = Error::new(
                        ErrorCode::RateLimited,
                        format!(
                            "too many uploads and submits at once for this key or client: at most {}, retry when one ends",
                            per_key.max
                        ),
                    );
                    return retry_later(grpc, err, 1);
                }
            }
        }
        None => None,
    };
    let Ok(_slot) = slots.transfers.try_take() else {
        tracing::debug!("shedding load: every transfer slot is taken");
        return at_capacity(grpc);
    };
    next.run(request).await
}

fn at_capacity(grpc: bool) -> Response {
    let err = Error::unavailable("the gateway is at capacity, retry shortly");
    retry_later(grpc, err, 1)
}

/// The slots requests hold while in handlers: one pool for transfers, one for the rest, and
/// each key's count of transfers.
struct Slots {
    requests: Pool,
    transfers: Pool,
    per_key: Option<Arc<KeySlots>>,
}

impl Slots {
    fn new(limits: &Limits) -> Self {
        Slots {
            requests: Pool::new(limits.max_concurrent_requests),
            transfers: Pool::new(limits.max_concurrent_uploads),
            per_key: (limits.max_uploads_per_key > 0)
                .then(|| Arc::new(KeySlots::new(limits.max_uploads_per_key))),
        }
    }

    fn is_unlimited(&self) -> bool {
        self.requests.0.is_none() && self.transfers.0.is_none() && self.per_key.is_none()
    }
}

/// A pool of slots; `None` means no limit.
struct Pool(Option<Arc<Semaphore>>);

impl Pool {
    fn new(slots: usize) -> Self {
        Pool((slots > 0).then(|| Arc::new(Semaphore::new(slots.min(Semaphore::MAX_PERMITS)))))
    }

    /// A slot, taken without waiting (`Ok(None)` when there is no limit), or `Err` when every
    /// slot is taken.
    fn try_take(&self) -> Result<Option<OwnedSemaphorePermit>, ()> {
        match &self.0 {
            Some(pool) => pool.clone().try_acquire_owned().map(Some).map_err(|_| ()),
            None => Ok(None),
        }
    }
}

/// How many transfers each key (or client) has in handlers. A key is in the map only while
/// it has one, so the map never holds more entries than there are transfers in handlers.
struct KeySlots {
    max: usize,
    counts: Mutex<HashMap<ClientKey, usize>>,
}

/// One of a key's transfer slots; given back when dropped.
struct KeySlot {
    slots: Arc<KeySlots>,
    client: ClientKey,
}

impl KeySlots {
    fn new(max: usize) -> Self {
        KeySlots {
            max: max.max(1),
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, usize>> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for `client`, or `None` when it holds its limit already.
    fn try_take(self: &Arc<Self>, client: &ClientKey) -> Option<KeySlot> {
        let mut counts = self.counts();
        let count = counts.entry(client.clone()).or_insert(0);
        // `max` is at least 1, so a refused key had an entry already: nothing to remove.
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(KeySlot {
            slots: Arc::clone(self),
            client: client.clone(),
        })
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.counts().len()
    }
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts();
        if let Some(count) = counts.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// Wraps every request body (health checks aside) in an [`IdleBody`]; a request whose body
/// went idle and that the handler then failed is answered as the idle body's refusal,
/// whatever error the handler made of the failed read (a multipart parse error, a broken
/// gRPC stream).
async fn idle_bodies(State(idle): State<Duration>, request: Request, next: Next) -> Response {
    if is_health(request.uri().path()) {
        return next.run(request).await;
    }
    let grpc = is_grpc(&request);
    let http1 = request.version() < Version::HTTP_2;
    let went_idle = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| Body::new(IdleBody::new(body, idle, went_idle.clone())));
    let response = next.run(request).await;
    if went_idle.load(Ordering::Acquire) && is_failure(grpc, &response) {
        tracing::info!(
            idle_secs = idle.as_secs_f64(),
            "request body idle, request failed"
        );
        let mut response = idle_response(grpc, idle);
        if http1 {
            // The rest of the body was never read: the connection cannot carry another
            // request. (HTTP/2 ends just this stream, and forbids the header.)
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return response;
    }
    response
}

/// Whether a response reports a failure: an error status, or a gRPC status other than OK.
fn is_failure(grpc: bool, response: &Response) -> bool {
    if grpc {
        response
            .headers()
            .get("grpc-status")
            .is_some_and(|status| status.as_bytes() != b"0")
    } else {
        response.status().is_client_error() || response.status().is_server_error()
    }
}

/// The answer to a request whose body went idle: 408 with the JSON error body, or gRPC
/// DEADLINE_EXCEEDED.
fn idle_response(grpc: bool, idle: Duration) -> Response {
    // A slow client is not a slow gateway: 408 tells a client it may send the request again.
    error_response(
        grpc,
        Error::new(ErrorCode::RequestTimeout, BodyIdle(idle).to_string()),
    )
}

/// The error an idle body fails with.
#[derive(Debug, Clone, Copy)]
struct BodyIdle(Duration);

impl fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no bytes of the request body for {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyIdle {}

/// A request body that fails once it has delivered no byte for `idle` while its reader
/// waited. The clock runs only while a read is pending, from the first pending read after
/// the last byte: time the handler spends elsewhere (streaming to storage, under its
/// backpressure) never counts against the client.
struct IdleBody {
    inner: Body,
    idle: Duration,
    /// Made on the first pending read, then reset: one allocation per body at most.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `timer` runs: a read is pending and no byte came since it started.
    waiting: bool,
    went_idle: Arc<AtomicBool>,
}

impl IdleBody {
    fn new(inner: Body, idle: Duration, went_idle: Arc<AtomicBool>) -> Self {
        IdleBody {
            inner,
            idle,
            timer: None,
            waiting: false,
            went_idle,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.went_idle.load(Ordering::Acquire) {
            // Failed once: stays failed, so no reader mistakes a later poll for more body.
            return Poll::Ready(Some(Err(axum::Error::new(BodyIdle(this.idle)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(|data| !data.is_empty()) {
                    this.waiting = false;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.waiting {
                    timer.as_mut().reset(deadline);
                    this.waiting = true;
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.went_idle.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(axum::Error::new(BodyIdle(this.idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            done => done,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    if is_long_lived(&request) {
        return next.run(request).await;
    }
    let grpc = is_grpc(&request);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_secs = limit.as_secs_f64(), "request timed out");
            let err = Error::new(
                ErrorCode::DeadlineExceeded,
                format!("no answer within {} s", limit.as_secs_f64()),
            );
            error_response(grpc, err)
        }
    }
}

async fn cap_body(State(max): State<usize>, request: Request, next: Next) -> Response {
    if is_grpc(&request) || streams_request_body(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        let err = Error::too_large(format!("request body over {max} bytes"));
        return error_response(false, err);
    }
    // A body without a length is cut off at the cap while it is read.
    let request = request.map(|body| Body::new(http_body_util::Limited::new(body, max)));
    next.run(request).await
}

async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    if is_health(request.uri().path()) {
        return next.run(request).await;
    }
    let client = ClientKey::of(&request);
    if let Err(wait) = limiter.check(&client) {
        let seconds = wait.as_secs_f64().ceil() as u64;
        tracing::debug!(client = ?client, retry_after_secs = seconds, "rate limited");
        let err = Error::new(
            ErrorCode::RateLimited,
            format!("too many requests, retry in {} s", seconds.max(1)),
        );
        return retry_later(is_grpc(&request), err, seconds);
    }
    next.run(request).await
}

/// Whom a rate limit counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    /// An api key's name.
    Key(String),
    /// A client address, when the gateway runs open (or a path needs no key). IPv6 clients
    /// count by /64: one host usually holds a whole /64.
    Addr(IpAddr),
    /// Neither (no connection info): all such requests share one bucket.
    Unknown,
}

impl ClientKey {
    fn of(request: &Request) -> Self {
        if let Some(Caller { key: Some(key), .. }) = request.extensions().get::<Caller>() {
            return ClientKey::Key(key.clone());
        }
        match request.extensions().get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(addr)) => ClientKey::Addr(network_of(addr.ip())),
            None => ClientKey::Unknown,
        }
    }
}

fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
    }
}

/// Keyed GCRA limits (`governor`: lock-free, one state per client), bounded in number.
struct RateLimiter<C: Clock = DefaultClock> {
    limiter: governor::RateLimiter<
        ClientKey,
        DefaultKeyedStateStore<ClientKey>,
        C,
        NoOpMiddleware<C::Instant>,
    >,
    clock: C,
    max_clients: usize,
    /// When idle clients were last forgotten.
    swept: Mutex<C::Instant>,
}

impl RateLimiter {
    /// `None` when `per_second` is 0 (or not a number): no rate limit.
    fn new(per_second: f64, burst: u32, max_clients: usize) -> Option<Self> {
        Self::with_clock(per_second, burst, max_clients, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    fn with_clock(per_second: f64, burst: u32, max_clients: usize, clock: C) -> Option<Self> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return None;
        }
        let period = Duration::try_from_secs_f64(1.0 / per_second)
            .unwrap_or(Duration::MAX)
            .max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
        Some(RateLimiter {
            limiter: governor::RateLimiter::dashmap_with_clock(quota, clock.clone()),
            swept: Mutex::new(clock.now()),
            clock,
            max_clients: max_clients.max(1),
        })
    }

    /// Counts one request of `client`, or says how long until it may make one.
    fn check(&self, client: &ClientKey) -> Result<(), Duration> {
        let now = self.clock.now();
        let full = self.limiter.len() >= self.max_clients;
        self.sweep(now, full);
        // Still full: every remembered client is being limited right now. Rather than grow,
        // everyone shares one bucket until the next sweep frees room.
        let client = if self.limiter.len() >= self.max_clients {
            &ClientKey::Unknown
        } else {
            client
        };
        self.limiter
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(now))
    }

    /// Forgets clients whose state is as good as new (their bucket refilled), every
    /// [`RATE_SWEEP_EVERY`], or every second while the map is full.
    fn sweep(&self, now: C::Instant, full: bool) {
        let due = if full {
            Duration::from_secs(1)
        } else {
            RATE_SWEEP_EVERY
        };
        let mut swept = self
            .swept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if Duration::from(now.duration_since(*swept)) >= due {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            *swept = now;
        }
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// Serving a protected app for tests, as `Server::serve` does: on a loopback port, with the
/// peer's address on every request.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;

    use axum::Router;

    /// Serves `app` and answers its base URL. The listener is bound before this returns, so
    /// the first request needs no wait.
    pub async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).await
        });
        format!("http://{addr}")
    }

    /// Limits with every layer off but the ones a test turns on.
    pub fn no_limits() -> super::Limits {
        super::Limits {
            max_concurrent_requests: 0,
            max_concurrent_uploads: 0,
            max_uploads_per_key: 0,
            body_idle_timeout: None,
            rate_limit_per_second: 0.0,
            rate_limit_burst: 1,
            request_timeout: None,
            max_body_bytes: 1024 * 1024,
        }
    }

    /// A refusal must come at once, not after waiting in a queue: fails the test if an
    /// answer takes longer than any machine needs for a loopback round trip.
    pub async fn at_once<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), future)
            .await
            .expect("answered at once, not queued")
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::{
        Json,
        response::sse::{Event, Sse},
        routing::{get, post},
    };
    use governor::clock::FakeRelativeClock;
    use tokio::sync::{mpsc, watch};
    use tower::ServiceExt as _;

    use super::{
        testing::{at_once, no_limits, serve},
        *,
    };

    fn open() -> Arc<ApiKeys> {
        Arc::new(ApiKeys::open())
    }

    async fn json(response: reqwest::Response) -> serde_json::Value {
        response.json().await.expect("a json body")
    }

    #[tokio::test]
    async fn a_full_gateway_sheds_at_once_and_recovers() {
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let (release, released) = watch::channel(false);
        let slow = move || {
            let entered = entered_tx.clone();
            let mut released = released.clone();
            async move {
                let _ = entered.send(());
                let _ = released.wait_for(|go| *go).await;
                "done"
            }
        };
        let app = Router::new()
            .route("/api/v1/slow", get(slow))
            .route("/pixelmesh.v1.Gateway/GetJob", post(|| async { "grpc" }))
            .route("/healthz", get(|| async { "ok" }));
        let limits = Limits {
            max_concurrent_requests: 2,
            ..no_limits()
        };
        let base = serve(protect(app, &limits, open())).await;
        let client = reqwest::Client::new();

        let held: Vec<_> = (0..2)
            .map(|_| tokio::spawn(client.get(format!("{base}/api/v1/slow")).send()))
            .collect();
        for _ in 0..2 {
            entered.recv().await.expect("a request in the handler");
        }

        let refused = at_once(client.get(format!("{base}/api/v1/slow")).send())
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert_eq!(json(refused).await["code"], "unavailable");

        let grpc = at_once(
            client
                .post(format!("{base}/pixelmesh.v1.Gateway/GetJob"))
                .header(header::CONTENT_TYPE, "application/grpc")
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "14");

        let health = at_once(client.get(format!("{base}/healthz")).send())
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);

        release.send_replace(true);
        for request in held {
            let response = request.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.text().await.unwrap(), "done");
        }
        let again = client
            .get(format!("{base}/api/v1/slow"))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_running_stream_holds_no_slot() {
        let endless =
            || async { Sse::new(futures::stream::pending::<Result<Event, Infallible>>()) };
        let app = Router::new()
            .route("/api/v1/jobs/{id}/events", get(endless))
            .route("/api/v1/jobs/{id}", get(|| async { "job" }));
        let limits = Limits {
            max_concurrent_requests: 1,
            ..no_limits()
        };
        let base = serve(protect(app, &limits, open())).await;
        let client = reqwest::Client::new();

        let stream = client
            .get(format!("{base}/api/v1/jobs/a/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        // The stream is still open (its body never ends), and the one slot is free.
        let job = at_once(client.get(format!("{base}/api/v1/jobs/a")).send())
            .await
            .unwrap();
        assert_eq!(job.status(), StatusCode::OK);
        drop(stream);
    }

    /// A handler that reports each request entering it, then waits for the release.
    fn held(
        entered: mpsc::UnboundedSender<()>,
        released: watch::Receiver<bool>,
    ) -> impl Fn() -> futures::future::BoxFuture<'static, &'static str> + Clone + Send + Sync + 'static
    {
        move || {
            let entered = entered.clone();
            let mut released = released.clone();
            Box::pin(async move {
                let _ = entered.send(());
                let _ = released.wait_for(|go| *go).await;
                "done"
            })
        }
    }

    #[tokio::test]
    async fn uploads_and_other_requests_are_shed_from_their_own_pools() {
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let (release, released) = watch::channel(false);
        let hold = held(entered_tx, released);
        let app = Router::new()
            .route("/api/v1/uploads", post(hold.clone()))
            .route("/api/v1/slow", get(hold))
            .route("/api/v1/jobs", get(|| async { "jobs" }))
            .route("/pixelmesh.v1.Gateway/UploadImage", post(|| async { "up" }))
            .route("/pixelmesh.v1.Gateway/ListJobs", post(|| async { "list" }))
            .route("/healthz", get(|| async { "ok" }));
        let limits = Limits {
            max_concurrent_requests: 1,
            max_concurrent_uploads: 2,
            ..no_limits()
        };
        let base = serve(protect(app, &limits, open())).await;
        let client = reqwest::Client::new();
        let upload = || client.post(format!("{base}/api/v1/uploads")).send();
        let grpc = |method: &str| {
            client
                .post(format!("{base}/pixelmesh.v1.Gateway/{method}"))
                .header(header::CONTENT_TYPE, "application/grpc")
                .send()
        };

        let uploads: Vec<_> = (0..2).map(|_| tokio::spawn(upload())).collect();
        for _ in 0..2 {
            entered.recv().await.expect("an upload in its handler");
        }
        // The upload pool is full: one more upload is shed at once...
        let refused = at_once(upload()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert_eq!(json(refused).await["code"], "unavailable");
        let refused = at_once(grpc("UploadImage")).await.unwrap();
        assert_eq!(refused.headers()["grpc-status"], "14");
        // ... and every other request still has its slot.
        let jobs = at_once(client.get(format!("{base}/api/v1/jobs")).send())
            .await
            .unwrap();
        assert_eq!(jobs.status(), StatusCode::OK);
        let listed = at_once(grpc("ListJobs")).await.unwrap();
        assert_eq!(listed.status(), StatusCode::OK);
        assert!(!listed.headers().contains_key("grpc-status"));

        // The other way round: reads fill their one slot, and uploads do not care.
        let slow = tokio::spawn(client.get(format!("{base}/api/v1/slow")).send());
        entered.recv().await.expect("a read in its handler");
        let refused = at_once(client.get(format!("{base}/api/v1/jobs")).send())
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let health = at_once(client.get(format!("{base}/healthz")).send())
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);

        release.send_replace(true);
        for request in uploads.into_iter().chain([slow]) {
            let response = request.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert_eq!(upload().await.unwrap().status(), StatusCode::OK);
        let jobs = client.get(format!("{base}/api/v1/jobs")).send().await;
        assert_eq!(jobs.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_key_over_its_upload_limit_gets_429_and_other_keys_do_not() {
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let (release, released) = watch::channel(false);
        let hold = held(entered_tx, released);
        let app = Router::new()
            .route("/api/v1/jobs", post(hold.clone()).get(|| async { "jobs" }))
            .route("/api/v1/uploads", post(hold))
            .route("/pixelmesh.v1.Gateway/SubmitJob", post(|| async { "job" }));
        let limits = Limits {
            max_concurrent_uploads: 10,
            max_uploads_per_key: 2,
            ..no_limits()
        };
        let keys = ApiKeys::parse(
            "alice:alice-secret-0123456789,bob:bob-secret-0123456789",
            "",
        )
        .unwrap();
        let base = serve(protect(app, &limits, Arc::new(keys))).await;
        let client = reqwest::Client::new();
        let alice = "alice-secret-0123456789";
        let bob = "bob-secret-0123456789";
        let post = |path: &str, secret: &str| {
            client
                .post(format!("{base}{path}"))
                .bearer_auth(secret)
                .send()
        };

        // A submit and an upload: both count against alice's two.
        let held: Vec<_> = ["/api/v1/jobs", "/api/v1/uploads"]
            .into_iter()
            .map(|path| tokio::spawn(post(path, alice)))
            .collect();
        for _ in 0..2 {
            entered.recv().await.expect("a transfer in its handler");
        }
        let limited = at_once(post("/api/v1/uploads", alice)).await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "1");
        let body = json(limited).await;
        assert_eq!(body["code"], "rate_limited");
        assert!(
            body["error"].as_str().unwrap().contains("at most 2"),
            "{body}"
        );
        let grpc = at_once(
            client
                .post(format!("{base}/pixelmesh.v1.Gateway/SubmitJob"))
                .header(header::CONTENT_TYPE, "application/grpc")
                .bearer_auth(alice)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(grpc.headers()["grpc-status"], "8");
        // Only transfers count: alice may still read.
        let read = client
            .get(format!("{base}/api/v1/jobs"))
            .bearer_auth(alice)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), StatusCode::OK);

        // Bob's own limit is untouched by alice's.
        let bobs = tokio::spawn(post("/api/v1/uploads", bob));
        at_once(entered.recv())
            .await
            .expect("bob's upload in its handler");

        release.send_replace(true);
        for request in held.into_iter().chain([bobs]) {
            let response = request.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        let again = post("/api/v1/uploads", alice).await.unwrap();
        assert_eq!(again.status(), StatusCode::OK, "alice's slots came back");
    }

    #[test]
    fn key_slots_come_back_and_idle_keys_are_forgotten() {
        let slots = Arc::new(KeySlots::new(2));
        let alice = ClientKey::Key("alice".into());
        let bob = ClientKey::Addr(IpAddr::from([10, 0, 0, 1]));
        let first = slots.try_take(&alice).expect("alice's first");
        let second = slots.try_take(&alice).expect("alice's second");
        assert!(slots.try_take(&alice).is_none(), "alice is at her limit");
        let bobs = slots.try_take(&bob).expect("bob has his own");
        assert_eq!(slots.clients(), 2);
        drop(first);
        let third = slots.try_take(&alice).expect("a slot came back");
        drop((second, third, bobs));
        assert_eq!(slots.clients(), 0, "no entry outlives its last slot");
    }

    /// A request whose body arrives as the test sends it.
    fn streamed(path: &str, grpc: bool) -> (mpsc::Sender<Result<Bytes, Infallible>>, Request) {
        let (tx, rx) = mpsc::channel(8);
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut request = Request::builder().method(Method::POST).uri(path);
        if grpc {
            request = request.header(header::CONTENT_TYPE, "application/grpc");
        }
        (tx, request.body(body).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_goes_idle_fails_with_408_and_a_slow_one_does_not() {
        // The clock is paused: it jumps to the next timer whenever every task waits, so the
        // idle second passes as soon as nothing else can happen.
        let read = |request: Request| async move {
            let grpc = is_grpc(&request);
            match axum::body::to_bytes(request.into_body(), usize::MAX).await {
                Ok(bytes) => bytes.len().to_string().into_response(),
                // As handlers do with a broken body: their own error, which the layer replaces.
                Err(_) if grpc => tonic::Status::internal("broken").into_http::<Body>(),
                Err(_) => StatusCode::BAD_REQUEST.into_response(),
            }
        };
        let late_reader = |request: Request| async move {
            // Busy elsewhere (storage, say) for longer than the idle time before reading.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let bytes = axum::body::to_bytes(request.into_body(), usize::MAX).await;
            bytes
                .map(|b| b.len().to_string())
                .map_err(|_| StatusCode::BAD_REQUEST)
        };
        let app = Router::new()
            .route("/api/v1/uploads", post(read))
            .route("/pixelmesh.v1.Gateway/UploadImage", post(read))
            .route("/api/v1/jobs", post(late_reader));
        let limits = Limits {
            body_idle_timeout: Some(Duration::from_secs(1)),
            ..no_limits()
        };
        let app = protect(app, &limits, open());
        let chunk = || Ok(Bytes::from_static(b"0123456789"));

        // Ten bytes, then nothing: failed a second after the last byte.
        let (tx, request) = streamed("/api/v1/uploads", false);
        tx.send(chunk()).await.unwrap();
        let started = tokio::time::Instant::now();
        let response = app.clone().oneshot(request).await.unwrap();
        let waited = started.elapsed();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "request_timeout");
        assert!(body["error"].as_str().unwrap().contains("1 s"), "{body}");
        drop(tx);

        let (tx, request) = streamed("/pixelmesh.v1.Gateway/UploadImage", true);
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");
        drop(tx);

        // A byte every 0.6 s never leaves the body idle for a second.
        let (tx, request) = streamed("/api/v1/uploads", false);
        let trickle = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(600)).await;
                tx.send(chunk()).await.unwrap();
            }
        });
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"50");
        trickle.await.unwrap();

        // A body sent whole and read late: the handler's own time is not the client's.
        let (tx, request) = streamed("/api/v1/jobs", false);
        tx.send(chunk()).await.unwrap();
        drop(tx);
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_key_over_its_rate_gets_429_and_other_keys_do_not() {
        let app = Router::new()
            .route("/api/v1/jobs", get(|| async { "jobs" }))
            .route("/pixelmesh.v1.Gateway/ListJobs", post(|| async { "grpc" }))
            .route("/healthz", get(|| async { "ok" }));
        let limits = Limits {
            // A token every 100 s: nothing refills while the test runs.
            rate_limit_per_second: 0.01,
            rate_limit_burst: 3,
            ..no_limits()
        };
        let keys = ApiKeys::parse(
            "alice:alice-secret-0123456789,bob:bob-secret-0123456789",
            "",
        )
        .unwrap();
        let base = serve(protect(app, &limits, Arc::new(keys))).await;
        let client = reqwest::Client::new();
        let get = |secret: &str| {
            client
                .get(format!("{base}/api/v1/jobs"))
                .bearer_auth(secret)
                .send()
        };

        for _ in 0..3 {
            let response = get("alice-secret-0123456789").await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        let limited = get("alice-secret-0123456789").await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = limited.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=100).contains(&retry_after), "{retry_after}");
        assert_eq!(json(limited).await["code"], "rate_limited");

        let grpc = client
            .post(format!("{base}/pixelmesh.v1.Gateway/ListJobs"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .bearer_auth("alice-secret-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(grpc.headers()["grpc-status"], "8");

        let bob = get("bob-secret-0123456789").await.unwrap();
        assert_eq!(bob.status(), StatusCode::OK);
        for _ in 0..5 {
            let health = client.get(format!("{base}/healthz")).send().await.unwrap();
            assert_eq!(health.status(), StatusCode::OK);
        }
    }

    #[test]
    fn buckets_refill_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(2.0, 2, 10, clock.clone()).unwrap();
        let alice = ClientKey::Key("alice".into());
        assert!(limiter.check(&alice).is_ok());
        assert!(limiter.check(&alice).is_ok());
        let wait = limiter.check(&alice).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        clock.advance(Duration::from_millis(250));
        assert_eq!(limiter.check(&alice), Err(Duration::from_millis(250)));
        clock.advance(Duration::from_millis(250));
        assert!(limiter.check(&alice).is_ok());
        // Another client has its own bucket.
        assert!(limiter.check(&ClientKey::Key("bob".into())).is_ok());
        assert!(RateLimiter::new(0.0, 10, 10).is_none());
        assert!(RateLimiter::new(f64::NAN, 10, 10).is_none());
    }

    #[test]
    fn the_rate_limiter_forgets_idle_clients_and_stays_bounded() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(1.0, 1, 2, clock.clone()).unwrap();
        let client = |n: u8| ClientKey::Addr(IpAddr::from([10, 0, 0, n]));
        let ms = Duration::from_millis;
        assert!(limiter.check(&client(1)).is_ok());
        clock.advance(ms(1));
        assert!(limiter.check(&client(2)).is_ok());
        // Full of limited clients: a newcomer shares one bucket with the other newcomers.
        clock.advance(ms(1));
        assert!(limiter.check(&client(3)).is_ok());
        assert!(limiter.check(&client(4)).is_err());
        assert!(limiter.clients() <= 3);
        // Once their buckets have refilled, idle clients are swept away.
        clock.advance(RATE_SWEEP_EVERY);
        assert!(limiter.check(&client(4)).is_ok());
        assert_eq!(limiter.clients(), 1);
    }

    #[test]
    fn ipv6_clients_count_by_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(network_of(a), network_of(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(network_of(mapped), IpAddr::from([192, 0, 2, 7]));
    }

    #[tokio::test]
    async fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let echo = |request: Request| async move {
            let header = request.headers()[REQUEST_ID].to_str().unwrap().to_string();
            let extension = request.extensions().get::<RequestId>().unwrap().0.clone();
            assert_eq!(header, extension);
            header
        };
        let app = protect(
            Router::new().route("/api/v1/echo", get(echo)),
            &no_limits(),
            open(),
        );
        let base = serve(app).await;
        let client = reqwest::Client::new();
        let call = |id: Option<&str>| {
            let mut request = client.get(format!("{base}/api/v1/echo"));
            if let Some(id) = id {
                request = request.header(REQUEST_ID, id);
            }
            async move {
                let response = request.send().await.unwrap();
                let returned = response.headers()[REQUEST_ID].to_str().unwrap().to_string();
                let seen = response.text().await.unwrap();
                assert_eq!(returned, seen, "the handler saw the returned id");
                returned
            }
        };

        let made = call(None).await;
        assert!(made.parse::<ulid::Ulid>().is_ok(), "{made}");
        assert_ne!(call(None).await, made, "each request gets its own id");
        assert_eq!(call(Some("trace-42_a.b")).await, "trace-42_a.b");
        for insane in ["a b", "<script>", &"x".repeat(65), ""] {
            let replaced = call(Some(insane)).await;
            assert_ne!(replaced, insane);
            assert!(replaced.parse::<ulid::Ulid>().is_ok(), "{replaced}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_time_out_but_streams_do_not() {
        // The clock is paused: it jumps to the next timer whenever every task waits.
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        };
        let app = Router::new()
            .route("/api/v1/jobs/{id}", get(slow))
            .route("/api/v1/jobs/{id}/events", get(slow))
            .route("/api/v1/jobs/{id}/outputs/{output}", get(slow))
            .route("/api/v1/uploads", post(slow))
            .route("/pixelmesh.v1.Gateway/GetJob", post(slow))
            .route("/pixelmesh.v1.Gateway/WatchJob", post(slow))
            .route("/pixelmesh.v1.Gateway/SubmitJob", post(slow));
        let limits = Limits {
            request_timeout: Some(Duration::from_secs(30)),
            ..no_limits()
        };
        let app = protect(app, &limits, open());
        let call = |method: Method, path: &str, grpc: bool| {
            let mut request = Request::builder().method(method).uri(path);
            if grpc {
                request = request.header(header::CONTENT_TYPE, "application/grpc");
            }
            app.clone().oneshot(request.body(Body::empty()).unwrap())
        };

        let started = tokio::time::Instant::now();
        let response = call(Method::GET, "/api/v1/jobs/a", false).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(30) && waited < Duration::from_secs(60));
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "deadline_exceeded");

        let response = call(Method::POST, "/pixelmesh.v1.Gateway/GetJob", true)
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");

        for (method, path, grpc) in [
            (Method::GET, "/api/v1/jobs/a/events", false),
            (Method::GET, "/api/v1/jobs/a/outputs/0", false),
            (Method::POST, "/api/v1/uploads", false),
            (Method::POST, "/pixelmesh.v1.Gateway/WatchJob", true),
            (Method::POST, "/pixelmesh.v1.Gateway/SubmitJob", true),
        ] {
            let response = call(method, path, grpc).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert!(!response.headers().contains_key("grpc-status"), "{path}");
        }
    }

    #[tokio::test]
    async fn json_is_gzipped_and_event_streams_and_images_are_not() {
        let big = || async {
            let rows: Vec<String> = (0..200).map(|i| format!("row {i}")).collect();
            Json(serde_json::json!({ "rows": rows }))
        };
        let events = || async {
            let event = Event::default().data("x".repeat(4096));
            Sse::new(futures::stream::iter([Ok::<_, Infallible>(event)]))
        };
        let image = || async { ([(header::CONTENT_TYPE, "image/png")], vec![0u8; 4096]) };
        let app = Router::new()
            .route("/api/v1/jobs", get(big))
            .route("/api/v1/events", get(events))
            .route("/api/v1/jobs/a/outputs/0", get(image));
        let base = serve(protect(app, &no_limits(), open())).await;
        let client = reqwest::Client::new();
        let get = |path: &str, gzip: bool| {
            let mut request = client.get(format!("{base}{path}"));
            if gzip {
                request = request.header(header::ACCEPT_ENCODING, "gzip");
            }
            request.send()
        };

        let zipped = get("/api/v1/jobs", true).await.unwrap();
        assert_eq!(zipped.headers()[header::CONTENT_ENCODING], "gzip");
        let bytes = zipped.bytes().await.unwrap();
        assert_eq!(bytes[..2], [0x1f, 0x8b], "a gzip stream");

        let plain = get("/api/v1/jobs", false).await.unwrap();
        assert!(!plain.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(json(plain).await["rows"][199], "row 199");

        for path in ["/api/v1/events", "/api/v1/jobs/a/outputs/0"] {
            let response = get(path, true).await.unwrap();
            assert!(
                !response.headers().contains_key(header::CONTENT_ENCODING),
                "{path}"
            );
            assert!(response.bytes().await.unwrap().len() >= 4096, "{path}");
        }
    }

    #[tokio::test]
    async fn small_bodies_are_capped_except_uploads() {
        let count = |body: Body| async move {
            let bytes = axum::body::to_bytes(body, usize::MAX).await;
            bytes
                .map(|b| b.len().to_string())
                .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)
        };
        let app = Router::new()
            .route("/api/v1/jobs/{id}/cancel", post(count))
            .route("/api/v1/uploads", post(count))
            .route(
                "/api/v1/echo",
                post(|body: bytes::Bytes| async move { body.len().to_string() }),
            )
            .route("/pixelmesh.v1.Gateway/UploadImage", post(count))
            // As the submit route does: its own, larger limit wins over the small default.
            .route(
                "/api/v1/jobs",
                post(|body: bytes::Bytes| async move { body.len().to_string() })
                    .layer(DefaultBodyLimit::max(1024 * 1024)),
            );
        let limits = Limits {
            max_body_bytes: 1024,
            ..no_limits()
        };
        let base = serve(protect(app, &limits, open())).await;
        let client = reqwest::Client::new();

        let refused = client
            .post(format!("{base}/api/v1/jobs/a/cancel"))
            .body(vec![0u8; 2048])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json(refused).await["code"], "resource_exhausted");

        // Without a length, the body is cut off at the cap while it is read.
        let chunks = futures::stream::iter((0..3).map(|_| Ok::<_, Infallible>(vec![0u8; 800])));
        let chunked = client
            .post(format!("{base}/api/v1/echo"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(chunked.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let small = client
            .post(format!("{base}/api/v1/echo"))
            .body(vec![0u8; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(small.text().await.unwrap(), "1000");

        for (path, content_type) in [
            ("/api/v1/uploads", "application/octet-stream"),
            ("/pixelmesh.v1.Gateway/UploadImage", "application/grpc"),
            ("/api/v1/jobs", "multipart/form-data; boundary=x"),
        ] {
            let response = client
                .post(format!("{base}{path}"))
                .header(header::CONTENT_TYPE, content_type)
                .body(vec![0u8; 64 * 1024])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.text().await.unwrap(), "65536", "{path}");
        }
    }

    #[test]
    fn only_text_like_responses_are_compressible() {
        let with = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            compressible(
                StatusCode::OK,
                Version::HTTP_11,
                &headers,
                &Extensions::new(),
            )
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("text/csv"));
        assert!(with("application/problem+json"));
        assert!(!with("text/event-stream"));
        assert!(!with("image/jpeg"));
        assert!(!with("application/zip"));
        assert!(!with("application/grpc"));
        assert!(!with("application/octet-stream"));
    }
}
