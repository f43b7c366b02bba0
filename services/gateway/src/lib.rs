//! The gateway role: the only public edge. One port serves gRPC (`pixelmesh.v1.Gateway`,
//! reflection, health) and HTTP (`/api/v1`, `/healthz`, the web UI at `/`). Stateless: scale it out freely.
//!
//! * [`mesh`] — what both edges do, in domain terms: stream uploads to storage, submit and
//!   cancel through the scheduler, read jobs, relay progress and downloads, list workers;
//! * [`grpc`] — `pixelmesh.v1.Gateway`, translating protobuf at the edge;
//! * [`http`] — the REST API and server-sent events, translating JSON and multipart at the
//!   edge;
//! * [`images`] — on-the-fly image URLs (`/img/…`): signatures, the result cache, the live
//!   lane;
//! * [`archive`] — reading a user's ZIP of images safely (names, sizes, ratios, types);
//! * [`urls`] — URL inputs: lists (text or CSV) read as they stream and each URL checked;
//! * [`submission`] — the jobs a submit makes as its inputs arrive: a long URL list becomes
//!   a batch of jobs sharing a parent id;
//! * [`bundle`] — writing a ZIP of a job's outputs as a stream, with its manifests;
//! * [`export`] — a job's analysis reports as CSV, JSON and XLSX;
//! * [`fanout`] — one NATS subscription per subject, shared by every event watcher;
//! * [`schedulers`] — one or several schedulers, each asked in turn, skipping a dead one;
//! * [`auth`] — API keys: who is calling;
//! * [`protect`] — the tower layers in front of everything: limits, timeouts, load shedding;
//! * [`stats`] — the dashboard's numbers: queue depth and images ended per minute;
//! * [`web`] — the web UI's files, with the single-page fallback.

pub mod archive;
pub mod auth;
pub mod bundle;
pub mod export;
pub mod fanout;
pub mod grpc;
pub mod http;
pub mod images;
pub mod mesh;
pub mod protect;
pub mod schedulers;
pub mod stats;
pub mod submission;
pub mod urls;
pub mod web;

use std::{future::Future, sync::Arc};

use clap::Args;
use pixelmesh_common::grpc::{MAX_MESSAGE_BYTES, Server, channel};
use pixelmesh_proto::v1::{gateway_server::GatewayServer, storage_client::StorageClient};
use tokio::net::TcpListener;

/// Limits on what clients may send. They are enforced while streaming, never after buffering.
#[derive(Debug, Clone, Args)]
#[group(id = "gateway_settings")]
pub struct Settings {
    /// Largest single uploaded image, in bytes.
    #[arg(long, env = "PIXELMESH_MAX_UPLOAD_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Largest whole HTTP request body (all files of one multipart submit), in bytes.
    #[arg(long, env = "PIXELMESH_MAX_REQUEST_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_request_bytes: u64,
    /// Most images in one job: files and ZIP entries of one submit together. A longer URL
    /// list is split into jobs of at most this many, sharing a parent id.
    #[arg(long, env = "PIXELMESH_MAX_FILES_PER_JOB", default_value_t = 1000)]
    pub max_files_per_job: usize,
    /// Most URLs in one submitted URL list (all the jobs it is split into together). REST
    /// streams the list, so this bounds the batch, not the gateway's memory.
    #[arg(long, env = "PIXELMESH_MAX_URLS_PER_LIST", default_value_t = 5_000_000)]
    pub max_urls_per_list: usize,
    /// Most bytes a ZIP's entries may hold uncompressed, together.
    #[arg(long, env = "PIXELMESH_MAX_ZIP_TOTAL_BYTES", default_value_t = 4 * 1024 * 1024 * 1024)]
    pub max_zip_total_bytes: u64,
    /// Highest compression ratio (uncompressed / compressed) of a ZIP entry over 1 MiB:
    /// photos barely compress, so a high ratio means a zip bomb.
    #[arg(long, env = "PIXELMESH_MAX_ZIP_RATIO", default_value_t = 100)]
    pub max_zip_ratio: u64,
    /// API keys, as comma-separated `name:secret` pairs (name: A-Z a-z 0-9 _ . -; secret: at
    /// least 16 of A-Z a-z 0-9 - . _ ~ + / =). With any key configured here, in
    /// --admin-keys or in --api-keys-file, every API and gRPC call needs one, as
    /// `Authorization: Bearer <secret>` (or `?access_token=<secret>` on a GET, for browser
    /// event streams), and a key sees only the jobs it made. With none, the gateway runs
    /// open.
    #[arg(
        long,
        env = "PIXELMESH_API_KEYS",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub api_keys: auth::KeyList,
    /// Admin keys, as --api-keys: they see, download and cancel every key's jobs.
    #[arg(
        long,
        env = "PIXELMESH_ADMIN_KEYS",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub admin_keys: auth::KeyList,
    /// A file of API keys, one `name:secret` or `name:secret:admin` per line; blank lines
    /// and lines starting with `#` are skipped. Read once at start.
    #[arg(long, env = "PIXELMESH_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Most requests in handlers at once, submits and uploads aside (they have
    /// --max-concurrent-uploads); one more is refused at once with 503 and `Retry-After`
    /// (gRPC UNAVAILABLE) rather than queued. A watch stream or download holds its slot only
    /// until its response starts. `/healthz` is never refused. 0: no limit.
    #[arg(long, env = "PIXELMESH_MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Most submits and uploads in handlers at once (REST `POST /api/v1/jobs` and
    /// `/api/v1/uploads`; gRPC UploadImage, UploadArchive, SubmitJob, SubmitBatch), a pool
    /// apart from --max-concurrent-requests, so uploads never crowd out reads, event streams
    /// or downloads. Each holds its slot for its whole upload; one more is refused at once
    /// with 503 and `Retry-After` (gRPC UNAVAILABLE). 0: no limit.
    #[arg(long, env = "PIXELMESH_MAX_CONCURRENT_UPLOADS", default_value_t = 64)]
    pub max_concurrent_uploads: usize,
    /// Most submits and uploads one API key (running open: one client address, IPv6 one
    /// /64) may have in handlers at once; one more gets 429 with `Retry-After` (gRPC
    /// RESOURCE_EXHAUSTED), so one user cannot take every upload slot. 0: no limit.
    #[arg(long, env = "PIXELMESH_MAX_UPLOADS_PER_KEY", default_value_t = 8)]
    pub max_uploads_per_key: usize,
    /// Seconds a request body may deliver no byte while the gateway waits for one; then the
    /// request fails with 408 (gRPC DEADLINE_EXCEEDED) and what it uploaded so far is
    /// dropped, so a stalled client frees its slot. 0: no limit.
    #[arg(long, env = "PIXELMESH_BODY_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    pub body_idle_timeout_secs: u64,
    /// Requests per second one API key may make, or, running open, one client address
    /// (IPv6: one /64); over it, 429 with `Retry-After` (gRPC RESOURCE_EXHAUSTED). 0: no
    /// rate limit, the default, so one user and load tests on one machine are never
    /// throttled; set it when the gateway is shared.
    #[arg(long, env = "PIXELMESH_RATE_LIMIT_PER_SECOND", default_value_t = 0.0)]
    pub rate_limit_per_second: f64,
    /// Requests a key or client may make in a burst before --rate-limit-per-second applies.
    #[arg(long, env = "PIXELMESH_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,
    /// Seconds a call that answers in one piece may take before it is answered 504 (gRPC
    /// DEADLINE_EXCEEDED). Event streams, downloads, submits, uploads and streaming gRPC
    /// methods (and SubmitJob) have no timeout. 0: no timeout.
    #[arg(long, env = "PIXELMESH_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Largest request body, in bytes, of every call but the multipart submit
    /// (--max-request-bytes) and uploads (--max-upload-bytes); over it, 413.
    #[arg(long, env = "PIXELMESH_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Keys that sign image URLs (`GET /img/<signature>/<pipeline>/<source>`),
    /// comma-separated, each at least 16 bytes. Every one is accepted and the first signs
    /// the URLs the gateway makes itself (the UI's thumbnails): to rotate, put the new key
    /// first and drop the old one once its URLs are gone. With none and no API keys, the
    /// word `unsafe` stands in for a signature; with none and API keys on, image URLs are
    /// off.
    #[arg(
        long,
        env = "PIXELMESH_URL_SIGNING_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub url_signing_keys: Vec<images::Secret>,
    /// `Cache-Control: public, max-age=` of image URL answers, in seconds.
    #[arg(
        long,
        env = "PIXELMESH_IMAGE_CACHE_MAX_AGE_SECS",
        default_value_t = 31_536_000
    )]
    pub image_cache_max_age_secs: u64,
    /// How long an image URL's `url/` source is trusted to stay the same: within it, a
    /// repeated request is answered from the cache without fetching the source again.
    #[arg(long, env = "PIXELMESH_IMAGE_URL_REFRESH_SECS", default_value_t = 3600)]
    pub image_url_refresh_secs: u64,
    /// Largest source of an image URL, in bytes (its encoded file); over it, 413.
    #[arg(long, env = "PIXELMESH_IMAGE_MAX_SOURCE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub image_max_source_bytes: u64,
    /// Largest source of an image URL, in pixels, checked from its header; over it, 413.
    #[arg(long, env = "PIXELMESH_IMAGE_MAX_PIXELS", default_value_t = 50_000_000)]
    pub image_max_pixels: u64,
    /// Most ops in an image URL's pipeline; over it, 413.
    #[arg(long, env = "PIXELMESH_IMAGE_MAX_OPS", default_value_t = 16)]
    pub image_max_ops: usize,
    /// Memory for recent image URL results in this gateway, in bytes: hits answered from it
    /// need no blob store read.
    #[arg(long, env = "PIXELMESH_IMAGE_MEMORY_CACHE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub image_memory_cache_bytes: u64,
    /// Image URL misses this gateway has being made at once; one more is answered 503 with
    /// `Retry-After` at once.
    #[arg(long, env = "PIXELMESH_IMAGE_MAX_MISSES", default_value_t = 64)]
    pub image_max_misses: usize,
    /// Longest an image URL miss waits for its image; then 504.
    #[arg(long, env = "PIXELMESH_IMAGE_TIMEOUT_SECS", default_value_t = 25)]
    pub image_timeout_secs: u64,
    /// Serve the web UI from this folder (as `scripts/web.sh` builds it into web/dist)
    /// instead of the copy compiled into the binary: for UI development.
    #[arg(long, env = "PIXELMESH_WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,
}

impl Default for Settings {
    /// The flags' defaults, without reading the environment.
    fn default() -> Self {
        pixelmesh_common::config::flag_defaults()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub nats: pixelmesh_common::config::NatsConfig,
    pub storage_url: String,
    /// One scheduler's gRPC URL, or several, comma-separated (see [`schedulers`]).
    pub scheduler_url: String,
    /// The blob store to write uploads to and serve downloads from directly, checked to be
    /// storage's at start; `None`: through storage's gRPC.
    pub blob_store: Option<String>,
    pub settings: Settings,
}

/// Serves the public API until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Checked before connecting to anything: a bad key list stops the gateway at start.
    let keys = auth::ApiKeys::from_settings(&config.settings)?;
    if keys.is_open() {
        tracing::warn!("gateway running open: no api keys configured");
    } else {
        tracing::info!(keys = ?keys, "api keys required");
    }
    let signing = images::Signing::new(
        &config
            .settings
            .url_signing_keys
            .iter()
            .map(|key| key.0.clone())
            .collect::<Vec<_>>(),
        !keys.is_open(),
    )
    .map_err(|err| anyhow::anyhow!("--url-signing-keys: {err}"))?;
    let limits = protect::Limits::from_settings(&config.settings);
    let nats = pixelmesh_common::nats::connect(&config.nats.url, "pixelmesh-gateway").await?;
    let storage_channel = channel(&config.storage_url)?;
    let blobs = match &config.blob_store {
        Some(url) => {
            let mut storage = StorageClient::new(storage_channel.clone());
            Some(
                pixelmesh_blobs::open_shared(url, &mut storage, &config.storage_url)
                    .await
                    .map_err(|err| anyhow::anyhow!("the blob store: {}", err.message))?,
            )
        }
        None => None,
    };
    let storage = StorageClient::new(mesh::Detached::new(storage_channel))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let scheduler = schedulers::Schedulers::new(&config.scheduler_url)?;
    let web = web::router(match &config.settings.web_dir {
        Some(dir) => web::Source::Dir(dir.clone()),
        None => web::Source::Embedded,
    })
    .await;
    let images = images::Images::new(
        &config.settings,
        signing,
        nats.clone(),
        config.nats.replicas,
        storage.clone(),
        blobs.clone(),
    );
    let mesh = mesh::Mesh::new(
        storage,
        blobs,
        scheduler,
        nats,
        config.settings,
        Arc::new(images),
    );
    mesh.throughput().clone().count(mesh.fanout()).await?;

    let server = Server::new("gateway")?
        .add_service(
            GatewayServer::new(grpc::GatewayService::new(mesh.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .await
        .metrics_collector({
            let mesh = mesh.clone();
            Arc::new(move || {
                let mesh = mesh.clone();
                Box::pin(async move { mesh.observe().await })
            })
        })
        .http(http::router(mesh))
        .fallback(web)
        .layer_with(move |app| protect::protect(app, &limits, Arc::new(keys)));
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    server.serve(listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_flags_defaults() {
        let settings = Settings::default();
        assert_eq!(settings.max_upload_bytes, 256 * 1024 * 1024);
        assert_eq!(settings.max_files_per_job, 1000);
        assert_eq!(settings.max_concurrent_uploads, 64);
        assert_eq!(settings.max_uploads_per_key, 8);
        assert_eq!(settings.rate_limit_per_second, 0.0);
        assert!(settings.web_dir.is_none());
        assert!(settings.api_keys_file.is_none());
    }
}
