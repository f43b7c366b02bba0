//! On-the-fly image URLs, a superset of imgproxy's core:
//! `GET /img/<signature>/<pipeline in text form>/<source>`, where the source is `blob/<id>`
//! (a stored blob) or `url/<base64url of an http(s) URL>`.
//!
//! * **Signing.** The signature is HMAC-SHA256 over the path after it (`/<pipeline>/<source>`,
//!   exactly as sent), base64url without padding, with any of `--url-signing-keys` (several,
//!   for rotation). With no key configured, and no API keys either, the word `unsafe` stands
//!   in for a signature; with keys, it is refused.
//! * **Caching.** A result is stored in the blob store and recorded in the KV bucket
//!   `pixelmesh-image-cache` under a key made of the source's content hash and the canonical
//!   pipeline (`Pipeline::to_text` of the parsed one, so `resize:w=10` and `resize:10` are one
//!   entry); the gateway keeps recent results in memory too. A URL source's content hash is
//!   remembered for `--image-url-refresh-secs`, so repeated requests do not fetch it again.
//!   Identical requests in flight at once are processed once (single flight).
//! * **Answers.** `ETag` (the output's content hash), `Cache-Control: public, max-age=…`, `304`
//!   to a matching `If-None-Match`; `format:auto` picks AVIF or WebP from `Accept` (else the
//!   source's format) and adds `Vary: Accept`. Errors are short text bodies with a status
//!   that names the problem.
//! * **Work.** A miss is a [`LiveTask`] on the `LIVE` stream, which the filters pull on a lane
//!   of its own, apart from batch work; the answer comes back on a NATS inbox.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use futures::StreamExt as _;
use hmac::{Hmac, Mac as _};
use pixelmesh_blobs::{BlobId, BlobStore};
use pixelmesh_common::nats;
use pixelmesh_pipeline::ops::Pipeline;
use pixelmesh_proto::v1::{LiveOutput, LiveResult, LiveTask, live_result, live_task};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{OnceCell, Semaphore};

use crate::{Settings, mesh::Storage, urls};

/// The word that stands in for a signature when no signing key is configured.
pub const UNSAFE: &str = "unsafe";
/// Where image URLs live.
pub const PREFIX: &str = "/img/";
/// Shortest signing key accepted: HMAC-SHA256 wants at least 128 bits of secret.
const MIN_KEY_BYTES: usize = 16;
/// Outputs up to this size come back inside the worker's answer (NATS' default message size
/// is 1 MiB), saving a blob store read on a miss.
const MAX_INLINE_BYTES: u64 = 768 * 1024;
/// Cache records are kept this long; a result evicted before a request comes is made again.
const RECORD_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest output read back from the blob store.
const MAX_OUTPUT_BYTES: u64 = 256 * 1024 * 1024;

/// A refused or failed image request: a status and a short text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    /// A text body, never cached: a browser shows its broken-image icon, a person who opens
    /// the URL reads why.
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.message)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        response
    }
}

/// A signing key as configured; never shown in logs or `--help`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// The signing keys, and whether `unsafe` is accepted.
#[derive(Clone)]
pub struct Signing {
    keys: Vec<Vec<u8>>,
    open: bool,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("keys", &self.keys.len())
            .field("open", &self.open)
            .finish()
    }
}

impl Signing {
    /// `keys` as configured (each at least 16 bytes); `unsafe` is accepted only when there
    /// are none and the gateway runs without API keys, since an unsigned URL lets anyone
    /// read any blob whose id they know.
    pub fn new(keys: &[String], api_keys_on: bool) -> Result<Signing, String> {
        let keys: Vec<Vec<u8>> = keys
            .iter()
            .map(|key| key.trim())
            .filter(|key| !key.is_empty())
            .map(|key| {
                if key.len() < MIN_KEY_BYTES {
                    Err(format!(
                        "a url signing key has {} bytes; at least {MIN_KEY_BYTES} are needed",
                        key.len()
                    ))
                } else {
                    Ok(key.as_bytes().to_vec())
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Signing {
            open: keys.is_empty() && !api_keys_on,
            keys,
        })
    }

    /// Whether image URLs can be served at all: with keys, or open.
    pub fn enabled(&self) -> bool {
        self.open || !self.keys.is_empty()
    }

    /// The signature the gateway puts in the URLs it makes itself (the UI's thumbnails):
    /// by the first key, or `unsafe` when open. `None` when image URLs are off.
    pub fn sign(&self, signed: &str) -> Option<String> {
        match self.keys.first() {
            Some(key) => Some(sign(key, signed)),
            None => self.open.then(|| UNSAFE.to_string()),
        }
    }

    fn verify(&self, signature: &str, signed: &str) -> Result<(), Refusal> {
        if signature == UNSAFE {
            return if self.open {
                Ok(())
            } else if self.keys.is_empty() {
                Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "unsigned image urls are off while api keys are on: configure --url-signing-keys",
                ))
            } else {
                Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "this gateway needs signed image urls",
                ))
            };
        }
        let mac = URL_SAFE_NO_PAD
            .decode(signature.trim_end_matches('='))
            .map_err(|_| Refusal::new(StatusCode::FORBIDDEN, "invalid signature"))?;
        // Each key in turn, so URLs signed with a retiring key keep working while it is
        // listed. `verify_slice` compares in constant time.
        let valid = self.keys.iter().any(|key| {
            let mut hmac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key");
            hmac.update(signed.as_bytes());
            hmac.verify_slice(&mac).is_ok()
        });
        if valid {
            Ok(())
        } else {
            Err(Refusal::new(StatusCode::FORBIDDEN, "invalid signature"))
        }
    }
}

/// The signature of `signed` (the path after the signature, starting with `/`) by `key`:
/// HMAC-SHA256, base64url without padding.
pub fn sign(key: &[u8], signed: &str) -> String {
    let mut hmac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key");
    hmac.update(signed.as_bytes());
    URL_SAFE_NO_PAD.encode(hmac.finalize().into_bytes())
}

/// The path of an image URL for a stored blob, `/img/<signature>/<pipeline>/blob/<id>`,
/// or `None` when image URLs are off.
pub fn blob_url(signing: &Signing, pipeline: &str, blob_id: &str) -> Option<String> {
    let signed = format!("/{pipeline}/blob/{blob_id}");
    let signature = signing.sign(&signed)?;
    Some(format!("/img/{signature}{signed}"))
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Blob(BlobId),
    Url(String),
}

/// An image URL's path, taken apart.
#[derive(Debug, PartialEq, Eq)]
struct ImagePath<'a> {
    signature: &'a str,
    /// What the signature covers: everything after it, from its `/`.
    signed: &'a str,
    /// The pipeline's text, percent-decoded.
    pipeline: String,
    source: Source,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, message)
}

/// Splits `/img/<signature>/<pipeline>/<source>`. The source is the last two segments
/// (`blob/<id>`, `url/<base64url>`), so the pipeline's own `/`s need no escaping.
fn parse(path: &str) -> Result<ImagePath<'_>, Refusal> {
    let rest = path
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("not an image url"))?;
    let (signature, _) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected /img/<signature>/<pipeline>/<source>"))?;
    let signed = &rest[signature.len()..];
    let mut segments = signed[1..].rsplitn(3, '/');
    let (value, kind, pipeline) = match (segments.next(), segments.next(), segments.next()) {
        (Some(value), Some(kind), Some(pipeline)) if !pipeline.is_empty() => {
            (value, kind, pipeline)
        }
        _ => {
            return Err(bad(
                "expected /img/<signature>/<pipeline>/<source>, the source blob/<id> or url/<base64url>",
            ));
        }
    };
    let source = match kind {
        "blob" => Source::Blob(BlobId::parse(value).map_err(|err| bad(err.message))?),
        "url" => {
            let bytes = URL_SAFE_NO_PAD
                .decode(value.trim_end_matches('='))
                .map_err(|_| bad("the source url is not valid base64url"))?;
            let url =
                String::from_utf8(bytes).map_err(|_| bad("the source url is not valid utf-8"))?;
            let checked = urls::check_url(&url).map_err(bad)?;
            Source::Url(checked.to_string())
        }
        other => {
            return Err(bad(format!(
                "unknown source kind {other:?}: expected blob/<id> or url/<base64url>"
            )));
        }
    };
    let pipeline = percent_encoding::percent_decode_str(pipeline)
        .decode_utf8()
        .map_err(|_| bad("the pipeline is not valid utf-8"))?
        .into_owned();
    Ok(ImagePath {
        signature,
        signed,
        pipeline,
        source,
    })
}

/// The formats a client's `Accept` header takes, best first among AVIF and WebP.
fn auto_format(accept: &str) -> Option<&'static str> {
    let takes = |wanted: &str| {
        accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|media| media.eq_ignore_ascii_case(wanted))
                && !parts.any(|param| {
                    matches!(
                        param.replace(' ', "").as_str(),
                        "q=0" | "q=0.0" | "q=0.00" | "q=0.000"
                    )
                })
        })
    };
    if takes("image/avif") {
        Some("avif")
    } else if takes("image/webp") {
        Some("webp")
    } else {
        None
    }
}

/// `pipeline` with `format:auto` resolved against `accept`: to AVIF or WebP, or, when the
/// client takes neither, the format op dropped so the source's format is kept. The flag says
/// whether `auto` was there (the answer then varies with `Accept`).
fn resolve_auto(pipeline: &str, accept: &str) -> (String, bool) {
    let mut varies = false;
    let chosen = auto_format(accept);
    let ops: Vec<String> = pipeline
        .split('/')
        .filter_map(|op| {
            let Some(args) = op.strip_prefix("format:") else {
                return Some(op.to_string());
            };
            let mut args: Vec<&str> = args.split(',').collect();
            let auto = args
                .iter()
                .position(|arg| matches!(*arg, "auto" | "format=auto"));
            let Some(at) = auto else {
                return Some(op.to_string());
            };
            varies = true;
            match chosen {
                Some(format) => {
                    let replaced = if args[at] == "auto" {
                        format.to_string()
                    } else {
                        format!("format={format}")
                    };
                    args[at] = &replaced;
                    Some(format!("format:{}", args.join(",")))
                }
                None => None,
            }
        })
        .collect();
    (ops.join("/"), varies)
}

/// A result, as served.
#[derive(Debug)]
struct Cached {
    blob_id: String,
    content_type: String,
    bytes: Bytes,
}

/// What the KV bucket records of a result.
#[derive(Serialize, Deserialize)]
struct Record {
    blob_id: String,
    content_type: String,
}

/// Weighs memory cache entries by their bytes.
#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<String, Arc<Cached>> for ByBytes {
    fn weight(&self, key: &String, value: &Arc<Cached>) -> u64 {
        (key.len() + value.bytes.len() + value.content_type.len() + value.blob_id.len() + 64) as u64
    }
}

/// How a request was answered, for the `x-pixelmesh-cache` header and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// From the cache.
    Hit,
    /// Processed for this request.
    Miss,
    /// Processed once for this request and others that asked at the same moment.
    Shared,
}

impl Served {
    fn label(self) -> &'static str {
        match self {
            Served::Hit => "hit",
            Served::Miss => "miss",
            Served::Shared => "shared",
        }
    }
}

type Flight = Arc<OnceCell<Result<Arc<Cached>, Refusal>>>;

/// Takes a flight off the map when a request of it is done or gone: once it has its result
/// (later requests find that in the cache), or when nobody else waits on it (a request
/// that hung up before its image was made). So the map holds only flights in progress.
struct Landing<'a> {
    flights: &'a Mutex<HashMap<String, Flight>>,
    key: &'a str,
    flight: &'a Flight,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let Ok(mut flights) = self.flights.lock() else {
            return;
        };
        let ours = flights
            .get(self.key)
            .is_some_and(|current| Arc::ptr_eq(current, self.flight));
        // The map's reference and this request's are the only ones left.
        if ours && (self.flight.initialized() || Arc::strong_count(self.flight) <= 2) {
            flights.remove(self.key);
        }
    }
}

/// The image URL service: shared by every request of the gateway.
pub struct Images {
    signing: Signing,
    settings: Settings,
    nats: async_nats::Client,
    js: async_nats::jetstream::Context,
    replicas: u16,
    /// The result records, opened (or created) on first use.
    records: OnceCell<async_nats::jetstream::kv::Store>,
    /// The `LIVE` stream, made sure of on first use.
    streams: OnceCell<()>,
    memory: quick_cache::sync::Cache<String, Arc<Cached>, ByBytes>,
    flights: Mutex<HashMap<String, Flight>>,
    /// Misses being processed at once; one more is answered 503 at once.
    misses: Arc<Semaphore>,
    storage: Storage,
    blobs: Option<BlobStore>,
}

impl Images {
    pub fn new(
        settings: &Settings,
        signing: Signing,
        nats: async_nats::Client,
        replicas: u16,
        storage: Storage,
        blobs: Option<BlobStore>,
    ) -> Images {
        let capacity = settings.image_memory_cache_bytes.max(1);
        Images {
            signing,
            js: async_nats::jetstream::new(nats.clone()),
            nats,
            replicas,
            records: OnceCell::new(),
            streams: OnceCell::new(),
            // Estimated entries: thumbnails of about 32 KiB.
            memory: quick_cache::sync::Cache::with_weighter(
                (capacity / (32 * 1024)).clamp(16, 1 << 20) as usize,
                capacity,
                ByBytes,
            ),
            flights: Mutex::new(HashMap::new()),
            misses: Arc::new(Semaphore::new(settings.image_max_misses.max(1))),
            settings: settings.clone(),
            storage,
            blobs,
        }
    }

    pub fn signing(&self) -> &Signing {
        &self.signing
    }

    /// Answers `GET <path>`: the image, a 304, or a refusal.
    pub async fn serve(&self, path: &str, headers: &HeaderMap) -> Response {
        let header = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
        };
        let accept = header(header::ACCEPT);
        let if_none_match = header(header::IF_NONE_MATCH);
        match self.image(path, accept).await {
            Ok((cached, served, varies)) => {
                metrics::counter!("pixelmesh_image_requests_total", "served" => served.label())
                    .increment(1);
                self.answer(&cached, served, varies, if_none_match)
            }
            Err(refusal) => {
                let status = refusal.status.as_str().to_string();
                metrics::counter!("pixelmesh_image_requests_total", "served" => "error", "status" => status)
                    .increment(1);
                tracing::info!(status = refusal.status.as_u16(), error = %refusal.message, "image url refused");
                refusal.into_response()
            }
        }
    }

    fn answer(
        &self,
        cached: &Cached,
        served: Served,
        varies: bool,
        if_none_match: &str,
    ) -> Response {
        let etag = format!("\"{}\"", cached.blob_id);
        let matches = if_none_match
            .split(',')
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == etag || tag == "*");
        let mut response = if matches {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut response = Response::new(Body::from(cached.bytes.clone()));
            if let Ok(value) = HeaderValue::from_str(&cached.content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        };
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, value);
        }
        if let Ok(value) = HeaderValue::from_str(&format!(
            "public, max-age={}",
            self.settings.image_cache_max_age_secs
        )) {
            headers.insert(header::CACHE_CONTROL, value);
        }
        if varies {
            headers.insert(header::VARY, HeaderValue::from_static("Accept"));
        }
        headers.insert(
            "x-pixelmesh-cache",
            HeaderValue::from_static(served.label()),
        );
        response
    }

    async fn image(
        &self,
        path: &str,
        accept: &str,
    ) -> Result<(Arc<Cached>, Served, bool), Refusal> {
        if !self.signing.enabled() {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "image urls are off while api keys are on: configure --url-signing-keys",
            ));
        }
        let request = parse(path)?;
        self.signing.verify(request.signature, request.signed)?;
        let (text, varies) = resolve_auto(&request.pipeline, accept);
        let pipeline = self.check(&text)?;
        let canonical = pipeline.to_text();
        let source_id = match &request.source {
            Source::Blob(id) => Some(id.as_str().to_string()),
            Source::Url(url) => self.url_source(url).await,
        };
        if let Some(source_id) = &source_id
            && let Some(cached) = self.lookup(&result_key(source_id, &canonical)).await
        {
            return Ok((cached, Served::Hit, varies));
        }
        let flight_key = match &request.source {
            Source::Blob(id) => result_key(id.as_str(), &canonical),
            Source::Url(url) => format!(
                "f.{}",
                blake3::hash(format!("{url}\n{canonical}").as_bytes()).to_hex()
            ),
        };
        let (cached, served) = self
            .single_flight(flight_key, || {
                self.process(&request.source, &pipeline, &canonical)
            })
            .await?;
        Ok((cached, served, varies))
    }

    /// Parses and checks the pipeline against the per-request limits.
    fn check(&self, text: &str) -> Result<Pipeline, Refusal> {
        let pipeline = Pipeline::from_text(text).map_err(|err| bad(err.message))?;
        let ops = pipeline.ops().len();
        if ops > self.settings.image_max_ops {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the pipeline has {ops} ops, over the limit of {} for image urls",
                    self.settings.image_max_ops
                ),
            ));
        }
        if let Some(position) = pipeline.describes() {
            return Err(bad(format!(
                "op {} (describe) is not offered on image urls: submit a job",
                position + 1
            )));
        }
        Ok(pipeline)
    }

    /// Runs `work` once for every request with `key` in flight at the same moment. If the
    /// request running it goes away, the next waiter runs it.
    async fn single_flight<F, Fut>(
        &self,
        key: String,
        work: F,
    ) -> Result<(Arc<Cached>, Served), Refusal>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Cached>, Refusal>>,
    {
        let flight = {
            let mut flights = self.flights.lock().expect("flights lock");
            flights.entry(key.clone()).or_default().clone()
        };
        let _landing = Landing {
            flights: &self.flights,
            key: &key,
            flight: &flight,
        };
        let mut ran = false;
        let result = flight
            .get_or_init(|| {
                ran = true;
                work()
            })
            .await
            .clone();
        let served = if ran { Served::Miss } else { Served::Shared };
        result.map(|cached| (cached, served))
    }

    /// A cached result: from memory, else from its record and the blob store. Anything
    /// missing or unreadable is a miss, never an error: the result is made again.
    async fn lookup(&self, key: &str) -> Option<Arc<Cached>> {
        if let Some(cached) = self.memory.get(key) {
            return Some(cached);
        }
        let records = self.records().await.ok()?;
        let entry = records.get(key).await.ok()??;
        let record: Record = serde_json::from_slice(&entry).ok()?;
        let bytes = self.read_blob(&record.blob_id).await.ok()?;
        let cached = Arc::new(Cached {
            blob_id: record.blob_id,
            content_type: record.content_type,
            bytes,
        });
        self.remember(key, &cached);
        Some(cached)
    }

    fn remember(&self, key: &str, cached: &Arc<Cached>) {
        // One entry may take at most an eighth of the memory cache.
        if (cached.bytes.len() as u64) <= self.settings.image_memory_cache_bytes / 8 {
            self.memory.insert(key.to_string(), cached.clone());
        }
    }

    /// The content hash a URL source had when it was last fetched, if recently enough.
    /// Recorded as `<fetched at, unix ms> <blob id>`.
    async fn url_source(&self, url: &str) -> Option<String> {
        let records = self.records().await.ok()?;
        let value = records.get(url_key(url)).await.ok()??;
        let (at, id) = std::str::from_utf8(&value).ok()?.split_once(' ')?;
        let age_ms = pixelmesh_common::time::now_ms().saturating_sub(at.parse::<i64>().ok()?);
        let fresh_ms = i64::try_from(self.settings.image_url_refresh_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        (age_ms < fresh_ms).then(|| id.to_string())
    }

    async fn records(&self) -> anyhow::Result<&async_nats::jetstream::kv::Store> {
        self.records
            .get_or_try_init(|| async {
                nats::kv_bucket(
                    &self.js,
                    async_nats::jetstream::kv::Config {
                        bucket: nats::IMAGE_CACHE_BUCKET.into(),
                        history: 1,
                        max_age: RECORD_MAX_AGE,
                        storage: async_nats::jetstream::stream::StorageType::File,
                        num_replicas: usize::from(self.replicas),
                        ..Default::default()
                    },
                )
                .await
            })
            .await
    }

    async fn read_blob(&self, id: &str) -> Result<Bytes, pixelmesh_proto::Error> {
        let mut chunks =
            crate::mesh::blob_chunks(&self.storage, self.blobs.as_ref(), id.to_string()).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if (bytes.len() + chunk.len()) as u64 > MAX_OUTPUT_BYTES {
                return Err(pixelmesh_proto::Error::too_large("output too large"));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes.into())
    }

    /// Has a filter make the image, records it, and keeps it in memory.
    async fn process(
        &self,
        source: &Source,
        pipeline: &Pipeline,
        canonical: &str,
    ) -> Result<Arc<Cached>, Refusal> {
        let _permit = self.misses.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many images being made at once; try again shortly",
            )
        })?;
        let task = LiveTask {
            source: Some(match source {
                Source::Blob(id) => live_task::Source::BlobId(id.as_str().to_string()),
                Source::Url(url) => live_task::Source::Url(url.clone()),
            }),
            pipeline: pipeline.to_proto(),
            max_input_bytes: self.settings.image_max_source_bytes,
            max_pixels: self.settings.image_max_pixels,
            max_inline_bytes: MAX_INLINE_BYTES,
        };
        let output = self.run(task).await?;
        let bytes = if output.inline.is_empty() && output.size_bytes > 0 {
            self.read_blob(&output.blob_id).await.map_err(|err| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("reading the result: {}", err.message),
                )
            })?
        } else {
            Bytes::from(output.inline)
        };
        let cached = Arc::new(Cached {
            blob_id: output.blob_id,
            content_type: output.content_type,
            bytes,
        });
        let key = result_key(&output.source_blob_id, canonical);
        self.remember(&key, &cached);
        if let Ok(records) = self.records().await {
            let record = Record {
                blob_id: cached.blob_id.clone(),
                content_type: cached.content_type.clone(),
            };
            let written = async {
                records
                    .put(&key, serde_json::to_vec(&record)?.into())
                    .await?;
                if let Source::Url(url) = source {
                    let fetched = format!(
                        "{} {}",
                        pixelmesh_common::time::now_ms(),
                        output.source_blob_id
                    );
                    records
                        .put(url_key(url), fetched.into_bytes().into())
                        .await?;
                }
                anyhow::Ok(())
            };
            // Not recording only costs a later request the work again.
            if let Err(err) = written.await {
                tracing::warn!(error = %err, "recording an image url result failed");
            }
        }
        Ok(cached)
    }

    /// Publishes `task` to the live lane and waits for a filter's answer.
    async fn run(&self, task: LiveTask) -> Result<LiveOutput, Refusal> {
        let unavailable = |what: &str, err: &dyn std::fmt::Display| {
            tracing::warn!(error = %err, "{what}");
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the mesh is unavailable; try again shortly",
            )
        };
        self.streams
            .get_or_try_init(|| nats::ensure_streams(&self.js, self.replicas))
            .await
            .map_err(|err| unavailable("creating the live stream failed", &err))?;
        let reply = self.nats.new_inbox();
        let mut answers = self
            .nats
            .subscribe(reply.clone())
            .await
            .map_err(|err| unavailable("subscribing for a live answer failed", &err))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(nats::REPLY_HEADER, reply.as_str());
        let subject = nats::live_subject(&ulid::Ulid::new().to_string());
        let timeout = Duration::from_secs(self.settings.image_timeout_secs.max(1));
        let answer = async {
            self.js
                .publish_with_headers(subject, headers, task.encode_to_vec().into())
                .await
                .map_err(|err| unavailable("publishing a live task failed", &err))?
                .await
                .map_err(|err| unavailable("publishing a live task failed", &err))?;
            answers.next().await.ok_or_else(|| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the mesh is unavailable; try again shortly",
                )
            })
        };
        let message = tokio::time::timeout(timeout, answer).await.map_err(|_| {
            Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the image was not ready within {} s", timeout.as_secs()),
            )
        })??;
        let result = LiveResult::decode(message.payload).map_err(|err| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("undecodable answer: {err}"),
            )
        })?;
        match result.outcome {
            Some(live_result::Outcome::Output(output)) => Ok(output),
            Some(live_result::Outcome::Error(error)) => Err(Refusal::new(
                StatusCode::from_u16(error.status as u16)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                error.message,
            )),
            None => Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "empty answer",
            )),
        }
    }
}

/// The cache key of a result: the source's content hash and the canonical pipeline.
fn result_key(source_blob_id: &str, canonical: &str) -> String {
    format!(
        "r.{}",
        blake3::hash(format!("{source_blob_id}\n{canonical}").as_bytes()).to_hex()
    )
}

/// The key recording a URL source's content hash.
fn url_key(url: &str) -> String {
    format!("u.{}", blake3::hash(url.as_bytes()).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOB: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_path_splits_into_signature_pipeline_and_source() {
        let url = URL_SAFE_NO_PAD.encode("https://example.com/a.jpg");
        let path = format!("/img/sig/resize:w=10/format:webp,q=80/url/{url}");
        let parsed = parse(&path).unwrap();
        assert_eq!(parsed.signature, "sig");
        assert_eq!(
            parsed.signed,
            format!("/resize:w=10/format:webp,q=80/url/{url}")
        );
        assert_eq!(parsed.pipeline, "resize:w=10/format:webp,q=80");
        assert_eq!(
            parsed.source,
            Source::Url("https://example.com/a.jpg".into())
        );
        for bad in [
            "/img/sig",
            "/img/sig/blob/x",
            "/img/sig/resize:w=10/file/abc",
            "/img/sig/resize:w=10/url/!!!",
        ] {
            assert_eq!(
                parse(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        // URLs are checked as URL lists' are.
        let ftp = URL_SAFE_NO_PAD.encode("ftp://example.com/a.jpg");
        assert!(parse(&format!("/img/sig/grayscale/url/{ftp}")).is_err());
    }

    #[test]
    fn signatures_verify_with_any_listed_key_and_unsafe_only_when_open() {
        let old = "an-old-key-0123456789".to_string();
        let new = "the-new-key-0123456789".to_string();
        let signing = Signing::new(&[new.clone(), old.clone()], true).unwrap();
        let signed = "/grayscale/blob/x";
        assert!(
            signing
                .verify(&sign(old.as_bytes(), signed), signed)
                .is_ok()
        );
        assert!(
            signing
                .verify(&sign(new.as_bytes(), signed), signed)
                .is_ok()
        );
        assert_eq!(signing.sign(signed), Some(sign(new.as_bytes(), signed)));
        let forged = sign(b"somebody-else-0123456789", signed);
        assert_eq!(
            signing.verify(&forged, signed).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert!(
            signing
                .verify(&sign(old.as_bytes(), signed), "/blur:2/blob/x")
                .is_err()
        );
        assert!(signing.verify(UNSAFE, signed).is_err());

        let open = Signing::new(&[], false).unwrap();
        assert!(open.verify(UNSAFE, signed).is_ok());
        assert_eq!(open.sign(signed).as_deref(), Some(UNSAFE));
        // API keys on and no signing key: no image urls at all.
        let closed = Signing::new(&[], true).unwrap();
        assert!(!closed.enabled());
        assert!(closed.verify(UNSAFE, signed).is_err());
        assert!(Signing::new(&["short".into()], false).is_err());
    }

    #[test]
    fn auto_format_follows_accept() {
        let chrome = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8";
        assert_eq!(
            resolve_auto("resize:w=10/format:auto,q=70", chrome),
            ("resize:w=10/format:avif,q=70".into(), true)
        );
        assert_eq!(
            resolve_auto("format:format=auto", "image/webp,*/*"),
            ("format:format=webp".into(), true)
        );
        assert_eq!(
            resolve_auto("grayscale/format:auto", "*/*"),
            ("grayscale".into(), true)
        );
        assert_eq!(
            resolve_auto("format:auto", "image/avif;q=0, image/webp"),
            ("format:webp".into(), true)
        );
        assert_eq!(
            resolve_auto("format:png", chrome),
            ("format:png".into(), false)
        );
    }

    #[test]
    fn one_source_and_pipeline_make_one_key() {
        let a = Pipeline::from_text("resize:10,20").unwrap().to_text();
        let b = Pipeline::from_text("resize:w=10,h=20").unwrap().to_text();
        assert_eq!(result_key(BLOB, &a), result_key(BLOB, &b));
        assert_ne!(result_key(BLOB, &a), result_key(&"1".repeat(64), &a));
        assert_eq!(
            blob_url(&Signing::new(&[], false).unwrap(), "grayscale", BLOB).unwrap(),
            format!("/img/unsafe/grayscale/blob/{BLOB}")
        );
    }
}
