//! The filter role: the worker that turns input images into outputs.
//!
//! * [`ops`] — the operations: one file per op with its parameters, validation and pixel code;
//!   [`ops::Pipeline`] parses and validates a pipeline from protobuf or JSON;
//! * [`codec`] — decoding with limits checked from the header first, and encoding;
//! * [`animation`] — animated GIF and WebP, decoded and encoded frame by frame;
//! * [`engine`] — `process`: bytes in, pipeline applied, bytes out;
//! * [`budget`] — what a pipeline will cost on an image, estimated before it runs, and the
//!   deadline that stops it while it runs;
//! * [`tiles`] — splitting huge images into tiles with halos, and stitching them back;
//! * [`worker`] — the JetStream consumer loop with its ack discipline;
//! * `live` — the live lane: on-the-fly image requests, on a consumer and CPU slots of
//!   their own, so they never queue behind batch work;
//! * [`fetch`] — downloading URL inputs without letting a URL reach the private network;
//! * [`describe`] — asking an AI vision endpoint for the `describe` op, with its limits,
//!   retries and answer cache;
//! * [`segment`] — the ONNX segmentation models `remove_background` runs, from `--model-dir`;
//! * [`outage`] — holding tasks while storage or NATS is down, so outages spend no attempts;
//! * [`heartbeat`] — the worker's entry in the `pixelmesh-workers` KV bucket.

pub mod animation;
mod avif;
pub mod codec;
pub mod colour;
pub mod describe;
pub mod engine;
pub mod fetch;
mod gif_writer;
pub mod heartbeat;
mod live;
pub mod logos;
mod metadata;
pub mod outage;
mod png_writer;
pub mod segment;
pub mod tiles;
pub mod worker;

// The pipeline model lives in its own crate, shared with the gateway and scheduler; these
// keep the filter's paths (`pixelmesh_filter::ops::Pipeline`) as they were.
pub use pixelmesh_pipeline::{Bitmap, budget, ops};

#[cfg(test)]
use pixelmesh_pipeline::testdata;

use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use clap::Args;
use pixelmesh_common::{
    config::QueueConfig,
    grpc::{MAX_MESSAGE_BYTES, Server, channel},
    nats,
};
use pixelmesh_proto::v1::storage_client::StorageClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The filter's own settings.
#[derive(Debug, Clone, Args)]
#[group(id = "filter_settings")]
pub struct Settings {
    /// Images processed at once; defaults to the number of cores (one image per core is
    /// fastest).
    #[arg(long, env = "PIXELMESH_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// On-the-fly image requests (`GET /img/…`) processed at once, on slots apart from the
    /// batch lane's: a request runs at once beside batch images, sharing the cores with them
    /// for its moment, instead of waiting for one to end. Defaults to the number of cores.
    #[arg(long, env = "PIXELMESH_LIVE_CONCURRENCY")]
    pub live_concurrency: Option<usize>,
    /// Tasks held beyond `concurrency`, downloading or uploading while the others compute, so
    /// no core waits on the network between images. 0 fetches only when a core is free.
    #[arg(long, env = "PIXELMESH_PREFETCH", default_value_t = 1)]
    pub prefetch: usize,
    /// Largest image accepted, in pixels (width × height), checked from the header before
    /// decoding.
    #[arg(long, env = "PIXELMESH_MAX_PIXELS", default_value_t = codec::Limits::default().max_pixels)]
    pub max_pixels: u64,
    /// Largest input file accepted, in bytes.
    #[arg(long, env = "PIXELMESH_MAX_INPUT_BYTES", default_value_t = codec::Limits::default().max_input_bytes)]
    pub max_input_bytes: u64,
    /// Memory the images this worker holds at once may need, in bytes, by their estimated
    /// peak (see the budget module): a task waits until its estimate fits, and one estimated
    /// over the whole budget runs alone. Set it below the container's memory limit.
    #[arg(long, env = "PIXELMESH_MEMORY_BUDGET_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub memory_budget_bytes: u64,
    /// Longest one task may take, fetch and processing included; past it the image fails
    /// with a clear error and its core is freed. 0: no limit.
    #[arg(long, env = "PIXELMESH_TASK_TIMEOUT_SECS", default_value_t = 120)]
    pub task_timeout_secs: u64,
    /// This worker's id in the worker list; defaults to the host name and a random suffix.
    #[arg(long, env = "PIXELMESH_WORKER_ID")]
    pub worker_id: Option<String>,
    #[command(flatten)]
    pub queue: QueueConfig,
    #[command(flatten)]
    pub fetch: fetch::FetchSettings,
    #[command(flatten)]
    pub ai: describe::AiSettings,
    #[command(flatten)]
    pub models: segment::ModelSettings,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub nats: pixelmesh_common::config::NatsConfig,
    pub storage_url: String,
    /// The blob store to read inputs from and write outputs to directly, checked to be
    /// storage's at start; `None`: through storage's gRPC.
    pub blob_store: Option<String>,
    pub settings: Settings,
}

/// Runs a worker until `shutdown` resolves: then it stops fetching, finishes the tasks it
/// holds, removes its heartbeat and returns.
/// The filter's metrics, at zero from the start so rates over them are defined.
fn describe_metrics() {
    use metrics::{Unit, counter, describe_counter, describe_histogram};
    describe_counter!(
        "pixelmesh_images_processed_total",
        "images finished by this worker, by outcome (done, failed)"
    );
    for outcome in ["done", "failed"] {
        counter!("pixelmesh_images_processed_total", "outcome" => outcome).absolute(0);
    }
    describe_counter!(
        "pixelmesh_tiles_processed_total",
        "tiles of huge images processed"
    );
    counter!("pixelmesh_tiles_processed_total").absolute(0);
    describe_counter!(
        "pixelmesh_live_images_total",
        "on-the-fly image requests (GET /img) processed by this worker, by outcome"
    );
    for outcome in ["done", "failed"] {
        counter!("pixelmesh_live_images_total", "outcome" => outcome).absolute(0);
    }
    describe_histogram!(
        "pixelmesh_live_duration_seconds",
        Unit::Seconds,
        "an on-the-fly image request on the worker, from delivery to answer"
    );
    describe_counter!(
        "pixelmesh_tasks_redelivered_total",
        "tasks this worker got on a second or later delivery (a worker died or timed out)"
    );
    counter!("pixelmesh_tasks_redelivered_total").absolute(0);
    describe_counter!(
        "pixelmesh_filter_bytes_in_total",
        Unit::Bytes,
        "input bytes read: images from storage or their URLs, tiles, logos"
    );
    counter!("pixelmesh_filter_bytes_in_total").absolute(0);
    describe_counter!(
        "pixelmesh_filter_bytes_out_total",
        Unit::Bytes,
        "bytes stored: outputs, tiles"
    );
    counter!("pixelmesh_filter_bytes_out_total").absolute(0);
    describe_histogram!(
        "pixelmesh_task_duration_seconds",
        Unit::Seconds,
        "a task from delivery to result, by kind (image, split, tile, assemble, failed)"
    );
    describe_histogram!(
        "pixelmesh_operation_duration_seconds",
        Unit::Seconds,
        "one pipeline operation on one image or tile, by op"
    );
}

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = config.settings;
    describe_metrics();
    let client = nats::connect(&config.nats.url, "pixelmesh-filter").await?;
    let js = async_nats::jetstream::new(client.clone());
    nats::ensure_streams(&js, config.nats.replicas).await?;
    let bucket = nats::workers_bucket(&js, config.nats.replicas).await?;
    let storage_channel = channel(&config.storage_url)?;
    let mut storage = StorageClient::new(storage_channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let blobs = match &config.blob_store {
        Some(url) => Some(
            pixelmesh_blobs::open_shared(url, &mut storage, &config.storage_url)
                .await
                .map_err(|err| anyhow::anyhow!("the blob store: {}", err.message))?,
        ),
        None => None,
    };

    let describer = match &settings.ai.ai_endpoint {
        Some(endpoint) if !endpoint.trim().is_empty() => {
            let cache = describe::cache_bucket(&js, config.nats.replicas).await?;
            describe::Describer::new(&settings.ai, describe::ApiKey::from_env(), Some(cache))?
        }
        _ => None,
    };
    if describer.is_some() {
        tracing::info!(model = %settings.ai.ai_model, "describe offered");
    }
    let models = match settings.models.model_dir.clone() {
        // Parsing and optimising a large model takes seconds of CPU.
        Some(dir) => Some(Arc::new(
            tokio::task::spawn_blocking(move || segment::Models::load(&dir)).await??,
        )),
        None => None,
    };
    let capabilities = capabilities(describer.is_some(), models.as_deref());

    let host = hostname();
    let id = settings
        .worker_id
        .clone()
        .unwrap_or_else(|| heartbeat::worker_id(&host));
    let concurrency = settings
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let stats = Arc::new(worker::Stats::default());
    let stop = CancellationToken::new();
    let memory_kib = u32::try_from(settings.memory_budget_bytes / 1024)
        .unwrap_or(u32::MAX)
        .max(1);
    let worker = Arc::new(worker::Worker {
        id: id.clone(),
        storage,
        blobs: blobs.clone(),
        js,
        queue: settings.queue.clone(),
        limits: codec::Limits {
            max_pixels: settings.max_pixels,
            max_input_bytes: settings.max_input_bytes,
        },
        stats: stats.clone(),
        cpu: Arc::new(tokio::sync::Semaphore::new(concurrency)),
        memory: Arc::new(tokio::sync::Semaphore::new(memory_kib as usize)),
        memory_kib,
        task_timeout: (settings.task_timeout_secs > 0)
            .then(|| std::time::Duration::from_secs(settings.task_timeout_secs)),
        logos: Default::default(),
        fetcher: fetch::Fetcher::new(&settings.fetch).context("building the url fetcher")?,
        outage: outage::Outage::new(storage_channel, client, blobs),
        describer: describer.map(Arc::new),
        models,
        stopping: stop.clone(),
    });

    let beat_stop = CancellationToken::new();
    let beats = tokio::spawn(heartbeat::run(
        bucket,
        pixelmesh_proto::v1::Worker {
            id: id.clone(),
            host,
            version: env!("CARGO_PKG_VERSION").to_string(),
            concurrency: concurrency as u32,
            started_at_ms: pixelmesh_common::time::now_ms(),
            capabilities,
            ..Default::default()
        },
        stats,
        beat_stop.clone(),
    ));
    let server_stop = CancellationToken::new();
    tracing::info!(addr = %listener.local_addr()?, worker = %id, "filter listening");
    let server =
        tokio::spawn(Server::new("filter")?.serve(listener, server_stop.clone().cancelled_owned()));

    let live_concurrency = settings.live_concurrency.unwrap_or(concurrency).max(1);
    let live = tokio::spawn(live::consume(
        worker.clone(),
        Arc::new(tokio::sync::Semaphore::new(live_concurrency)),
        live_concurrency + settings.prefetch,
        stop.clone(),
    ));
    let consuming = worker::consume(worker, concurrency + settings.prefetch, stop.clone());
    tokio::pin!(consuming, shutdown);
    let consumed = tokio::select! {
        result = &mut consuming => result,
        () = &mut shutdown => {
            stop.cancel();
            consuming.await
        }
    };
    // The batch lane may end on its own (an error): the live lane ends with it.
    stop.cancel();
    live.await.context("live lane panicked")??;
    beat_stop.cancel();
    let _ = beats.await;
    server_stop.cancel();
    server.await.context("health server panicked")??;
    tracing::info!(worker = %id, "filter stopped");
    consumed
}

/// What the heartbeat says this filter offers beyond the plain ops: `describe` with an AI
/// endpoint, and `model:NAME` for each segmentation model.
fn capabilities(describes: bool, models: Option<&segment::Models>) -> Vec<String> {
    let describe = describes.then(|| "describe".to_string());
    let models = models
        .into_iter()
        .flat_map(|models| models.names().map(ops::remove_background::model_capability));
    describe.into_iter().chain(models).collect()
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "filter".to_string())
}
