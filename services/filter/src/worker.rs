//! The consumer loop: pull one task at a time per free slot from the shared durable
//! consumer, run it off the async runtime, store the output, publish the result, then ack.
//!
//! Ack discipline (see STYLE.md): in-progress acks while a task runs; `Term` on input that
//! can never succeed, after publishing its failure; `Nak(delay)` with back-off on failures of
//! the image that may pass (its URL's server answered 503), and on the last allowed delivery
//! such a failure is published as the image's too, so the job always finishes. Storage or
//! NATS being unreachable is not the image's failure: the task is held, with in-progress
//! acks, until they answer, and runs again on the same delivery (see [`crate::outage`]).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use pixelmesh_blobs::{BlobId, BlobStore};
use pixelmesh_common::{config::QueueConfig, grpc::Channel, nats, telemetry};
use pixelmesh_proto::{
    Error, ErrorCode,
    v1::{
        BlobMeta, GetBlobRequest, JobRequest, JobState, Output, PutBlobRequest, Task, TaskResult,
        TileAssembly, TileInput, TileOutput, TileSplit, Tiling, put_blob_request::Part,
        storage_client::StorageClient, task, task_result::Outcome,
    },
};
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    budget::{self, Budget, Deadline},
    codec::{self, InputMetadata, Limits},
    describe::{DescribeError, Describer},
    engine::{self, Processed},
    fetch::{FetchError, Fetcher},
    logos::{self, LogoCache},
    ops::{Assets, FileFormat, Pipeline},
    outage::Outage,
    tiles::{self, Canvas, Policy, Rect, Tile},
};

/// Chunk size for blobs sent to storage.
const CHUNK: usize = 64 * 1024;
/// How long one pull waits for a task; also bounds how late a stop signal is noticed.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Counters the heartbeat reports.
#[derive(Debug, Default)]
pub struct Stats {
    pub in_flight: std::sync::atomic::AtomicU32,
    pub done: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub last_error: Mutex<String>,
    /// Signalled when a task starts or ends, so the worker list shows who is busy now.
    pub changed: tokio::sync::Notify,
}

/// Why a task did not produce an output.
#[derive(Debug)]
pub(crate) enum TaskError {
    /// The job ended (cancelled), was paused or was deleted before the task ran.
    Skipped,
    /// The input can never succeed: record the failure, do not retry.
    Permanent(String),
    /// May succeed on another delivery.
    Transient(String),
    /// Storage or NATS could not be reached: not the image's fault, so no attempt is spent.
    Infrastructure(String),
}

impl From<Error> for TaskError {
    fn from(err: Error) -> Self {
        if err.code.is_transient() {
            TaskError::Transient(err.message)
        } else {
            TaskError::Permanent(err.message)
        }
    }
}

impl From<FetchError> for TaskError {
    fn from(err: FetchError) -> Self {
        match err {
            FetchError::Permanent(message) => TaskError::Permanent(message),
            FetchError::Transient(message) => TaskError::Transient(message),
        }
    }
}

/// A storage call's failure: a transient one means storage is down or struggling.
impl From<tonic::Status> for TaskError {
    fn from(status: tonic::Status) -> Self {
        let err = Error::from(status);
        if err.code.is_transient() {
            TaskError::Infrastructure(err.message)
        } else {
            TaskError::Permanent(err.message)
        }
    }
}

pub(crate) struct Worker {
    pub id: String,
    pub storage: StorageClient<Channel>,
    /// The blob store shared with storage, when this worker reaches it; else bytes go
    /// through storage's gRPC.
    pub blobs: Option<BlobStore>,
    pub js: jetstream::Context,
    pub queue: QueueConfig,
    pub limits: Limits,
    pub stats: Arc<Stats>,
    /// One permit per image processed at once; tasks beyond it wait here, already
    /// downloaded.
    pub cpu: Arc<Semaphore>,
    /// The memory budget in KiB, one permit each: a task takes its estimated peak before it
    /// takes a core, so four 100-megapixel images queue instead of taking 5 GB at once.
    pub memory: Arc<Semaphore>,
    pub memory_kib: u32,
    /// Wall-clock limit of one task's work (`None`: none), from its delivery.
    pub task_timeout: Option<Duration>,
    pub logos: Mutex<LogoCache>,
    pub fetcher: Fetcher,
    pub outage: Outage,
    /// Asks the AI endpoint for `describe` ops; `None` when none is configured.
    pub describer: Option<Arc<Describer>>,
    /// The segmentation models `remove_background` runs; `None` without `--model-dir`.
    pub models: Option<Arc<crate::segment::Models>>,
    /// Cancelled when the worker stops: a task held through an outage is given back then.
    pub stopping: CancellationToken,
}

/// Pulls and runs tasks, holding at most `held` at once, until `stop` is cancelled; then
/// waits for the held ones.
pub(crate) async fn consume(
    worker: Arc<Worker>,
    held: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // NATS may go away between the worker's start and its first pull (the health server is
    // already up by then): wait for it, as the pull loop does, rather than exit.
    let consumer = loop {
        match open_consumer(&worker).await {
            Ok(consumer) => break consumer,
            Err(err) => {
                tracing::warn!(error = %err, "opening the task consumer failed, retrying");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(PULL_EXPIRES) => {}
                }
            }
        }
    };
    let slots = Arc::new(Semaphore::new(held.max(1)));
    let mut running = tokio::task::JoinSet::new();
    tracing::info!(worker = %worker.id, concurrency = worker.cpu.available_permits(), held, "filter consuming tasks");
    while !stop.is_cancelled() {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot?,
        };
        // While storage or NATS is down, tasks pulled now would only wait with the held ones.
        if worker.outage.is_down() {
            tokio::select! {
                () = stop.cancelled() => break,
                () = worker.outage.wait_clear() => {}
            }
        }
        while running.try_join_next().is_some() {}
        match pull_one(&consumer, "tasks").await {
            Some(message) => {
                let worker = worker.clone();
                running.spawn(async move {
                    handle(&worker, message).await;
                    drop(slot);
                });
            }
            None => drop(slot),
        }
    }
    tracing::info!(
        in_flight = worker
            .stats
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed),
        "stopped fetching, finishing in-flight tasks"
    );
    while running.join_next().await.is_some() {}
    Ok(())
}

/// One message from `consumer`, or `None` after [`PULL_EXPIRES`] without one (or a failed
/// pull, logged as a pull of `what`). One message per pull so that idle replicas get their
/// share (fair sharing); the pull is never abandoned half-way, so no delivered task is left
/// unacknowledged.
pub(crate) async fn pull_one(
    consumer: &jetstream::consumer::PullConsumer,
    what: &str,
) -> Option<jetstream::Message> {
    let batch = consumer
        .batch()
        .max_messages(1)
        .expires(PULL_EXPIRES)
        .messages()
        .await;
    let mut batch = match batch {
        Ok(batch) => batch,
        Err(err) => {
            tracing::warn!(error = %err, what, "pulling failed");
            tokio::time::sleep(PULL_EXPIRES).await;
            return None;
        }
    };
    match batch.next().await {
        Some(Ok(message)) => Some(message),
        Some(Err(err)) => {
            tracing::warn!(error = %err, what, "receiving failed");
            None
        }
        None => None,
    }
}

/// The filters' shared durable consumer of the task stream. create_consumer creates or
/// updates, so every replica converges on the same settings.
async fn open_consumer(worker: &Worker) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = worker.js.get_stream(nats::TASKS_STREAM).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(nats::FILTER_CONSUMER.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: worker.queue.ack_wait(),
            max_deliver: worker.queue.max_deliver,
            ..Default::default()
        })
        .await?;
    Ok(consumer)
}

/// Runs one delivered task to its ack.
async fn handle(worker: &Worker, message: jetstream::Message) {
    let attempt = message
        .info()
        .map(|info| info.delivered)
        .unwrap_or(1)
        .max(1) as u32;
    let task = match Task::decode(message.payload.clone()) {
        Ok(task) => task,
        Err(err) => {
            tracing::error!(subject = %message.subject, error = %err, "undecodable task dropped");
            ack(&message, AckKind::Term).await;
            return;
        }
    };
    let stage = match &task.stage {
        None => "image".to_string(),
        Some(task::Stage::Tile(tile)) => format!("tile {}", tile.tile),
        Some(task::Stage::Assemble(_)) => "assemble".to_string(),
    };
    let span = tracing::info_span!(
        "task",
        otel.name = format!("task {stage}"),
        job = %task.job_id,
        index = task.index,
        stage,
        attempt,
        trace_id = tracing::field::Empty,
    );
    telemetry::set_parent_from_nats(&span, message.headers.as_ref());
    if attempt > 1 {
        metrics::counter!("pixelmesh_tasks_redelivered_total").increment(1);
    }
    async {
        use std::sync::atomic::Ordering::Relaxed;
        worker.stats.in_flight.fetch_add(1, Relaxed);
        worker.stats.changed.notify_one();
        let started = Instant::now();
        let ack_wait = worker.queue.ack_wait();
        let outcome = loop {
            let deadline = worker.task_timeout.map(Deadline::after);
            match with_progress_acks(&message, ack_wait, run_task(worker, &task, deadline)).await {
                Err(TaskError::Infrastructure(error)) => {
                    // Held, not retried through JetStream: that would spend a delivery.
                    worker.outage.report(&error);
                    if !hold_through_outage(worker, &message).await {
                        ack(&message, AckKind::Nak(None)).await;
                        return;
                    }
                    tracing::info!(error = %error, "storage answers again, running the task again");
                }
                outcome => break outcome,
            }
        };
        let elapsed = started.elapsed();
        let duration_ms = elapsed.as_millis() as u64;
        worker.stats.in_flight.fetch_sub(1, Relaxed);
        worker.stats.changed.notify_one();

        let last_attempt = i64::from(attempt) >= worker.queue.max_deliver;
        let (outcome, ack_kind) = match outcome {
            Ok(outcome) => (outcome, AckKind::Ack),
            Err(TaskError::Skipped) => {
                tracing::info!("job already ended, task skipped");
                ack(&message, AckKind::Ack).await;
                return;
            }
            Err(TaskError::Permanent(error)) => (Outcome::Error(error), AckKind::Term),
            Err(TaskError::Transient(error)) if last_attempt => (
                Outcome::Error(format!("gave up after {attempt} attempts: {error}")),
                AckKind::Term,
            ),
            Err(TaskError::Infrastructure(_)) => unreachable!("held until storage answers"),
            Err(TaskError::Transient(error)) => {
                let delay = backoff(attempt);
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "task failed, will retry");
                record_error(&worker.stats, &error);
                ack(&message, AckKind::Nak(Some(delay))).await;
                return;
            }
        };
        if let Outcome::Error(error) = &outcome {
            tracing::warn!(error = %error, "image failed");
            record_error(&worker.stats, error);
        }
        let result = TaskResult {
            job_id: task.job_id.clone(),
            index: task.index,
            outcome: Some(outcome),
            worker_id: worker.id.clone(),
            attempts: attempt,
            duration_ms,
        };
        // NATS down: the result is kept and published once it answers, without running
        // the task again or spending a delivery.
        while let Err(err) = publish_result(worker, &result).await {
            worker.outage.report(&format!("publishing result: {err}"));
            if !hold_through_outage(worker, &message).await {
                ack(&message, AckKind::Nak(None)).await;
                return;
            }
        }
        let kind = match &result.outcome {
            Some(Outcome::Error(_)) => {
                worker.stats.failed.fetch_add(1, Relaxed);
                metrics::counter!("pixelmesh_images_processed_total", "outcome" => "failed")
                    .increment(1);
                "failed"
            }
            Some(Outcome::Split(split)) => {
                tracing::info!(duration_ms, tiles = split.tiles.len(), "image split into tiles");
                "split"
            }
            Some(Outcome::Tile(tile)) => {
                metrics::counter!("pixelmesh_tiles_processed_total").increment(1);
                tracing::info!(duration_ms, tile = tile.tile, "tile done");
                "tile"
            }
            Some(Outcome::Output(_)) | None => {
                worker.stats.done.fetch_add(1, Relaxed);
                metrics::counter!("pixelmesh_images_processed_total", "outcome" => "done")
                    .increment(1);
                tracing::info!(duration_ms, "image done");
                if task.stage.is_some() { "assemble" } else { "image" }
            }
        };
        metrics::histogram!("pixelmesh_task_duration_seconds", "kind" => kind)
            .record(elapsed.as_secs_f64());
        ack(&message, ack_kind).await;
    }
    .instrument(span)
    .await;
}

/// Holds `message` (in-progress acks) until storage and NATS answer again: true then, false
/// if the worker is stopping first.
async fn hold_through_outage(worker: &Worker, message: &jetstream::Message) -> bool {
    let wait = async {
        tokio::select! {
            () = worker.outage.wait_clear() => true,
            () = worker.stopping.cancelled() => false,
        }
    };
    with_progress_acks(message, worker.queue.ack_wait(), wait).await
}

fn record_error(stats: &Stats, error: &str) {
    if let Ok(mut last) = stats.last_error.lock() {
        *last = error.to_string();
    }
}

/// 1 s, 2 s, 4 s … capped at 30 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

pub(crate) async fn ack(message: &jetstream::Message, kind: AckKind) {
    // Double ack: the server confirms, so an ack lost on the way cannot silently turn into
    // a redelivery of work we consider done.
    if let Err(err) = message.double_ack_with(kind).await {
        tracing::warn!(error = %err, "acking task failed");
    }
}

/// Tells JetStream the task is still being worked on while `work` runs, so long images are
/// not redelivered to another worker.
async fn with_progress_acks<T>(
    message: &jetstream::Message,
    ack_wait: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = (ack_wait / 3).max(Duration::from_millis(300));
    let keepalive = async {
        loop {
            tokio::time::sleep(every).await;
            if let Err(err) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %err, "in-progress ack failed");
            }
        }
    };
    tokio::select! {
        result = work => result,
        () = keepalive => unreachable_loop(),
    }
}

fn unreachable_loop<T>() -> T {
    unreachable!("the keep-alive loop never ends")
}

async fn run_task(
    worker: &Worker,
    task: &Task,
    deadline: Option<Deadline>,
) -> Result<Outcome, TaskError> {
    let mut storage = worker.storage.clone();
    let summary = match storage
        .get_job_summary(JobRequest {
            id: task.job_id.clone(),
        })
        .await
    {
        Ok(summary) => summary.into_inner(),
        // Deleted since the task was queued.
        Err(status) if status.code() == tonic::Code::NotFound => return Err(TaskError::Skipped),
        Err(status) => return Err(status.into()),
    };
    // A paused job's tasks are dropped: resuming dispatches its pending images again.
    if summary.state().is_final() || summary.state() == JobState::Paused {
        return Err(TaskError::Skipped);
    }
    let pipeline = Pipeline::from_proto(&task.pipeline)?;
    match &task.stage {
        None => run_image(worker, &mut storage, task, pipeline, deadline).await,
        Some(task::Stage::Tile(tile)) => run_tile(worker, &mut storage, tile, pipeline, deadline)
            .await
            .map(Outcome::Tile),
        Some(task::Stage::Assemble(assembly)) => {
            run_assembly(worker, &mut storage, assembly, pipeline, deadline)
                .await
                .map(Outcome::Output)
        }
    }
}

/// A whole image: processed here, or split into tiles when it is big and the pipeline
/// allows it.
async fn run_image(
    worker: &Worker,
    storage: &mut StorageClient<Channel>,
    task: &Task,
    pipeline: Pipeline,
    deadline: Option<Deadline>,
) -> Result<Outcome, TaskError> {
    let started = Instant::now();
    let max_bytes = worker.limits.max_input_bytes;
    let input = if task.url.is_empty() {
        download(worker, storage, &task.input_blob_id, max_bytes).await?
    } else {
        let input = worker
            .fetcher
            .fetch(&task.url, max_bytes)
            .instrument(engine::stage_span("fetch"))
            .await?;
        metrics::counter!("pixelmesh_filter_bytes_in_total").increment(input.len() as u64);
        input
    };
    let downloaded = Instant::now();
    // What the image will cost, from its header: over the job's per-image budget it fails
    // here (a URL input's size is first known here; a stored one's was checked at submit).
    // An input whose header does not read fails in the decoder, naming the problem.
    let probe = codec::probe(&input);
    // An animation is processed whole, frame by frame: never tiled, each frame counted.
    let frames = pipeline.frames_processed(probe.map_or(1, |probe| probe.frames));
    let policy = match Policy::from_task(task) {
        policy if frames > 1 => Policy {
            mode: Tiling::Never,
            ..policy
        },
        policy => policy,
    };
    let pixels = probe.map(|probe| u64::from(probe.width) * u64::from(probe.height));
    let estimate = probe.zip(pixels).map(|(probe, pixels)| {
        policy
            .estimate(&pipeline, pixels, |pipeline| {
                pipeline.estimate_probed(&probe.input())
            })
            .for_frames(frames)
    });
    if let Some(estimate) = &estimate {
        let budget = Budget {
            max_memory_bytes: task.max_image_memory_bytes,
            max_cpu_ms: task.max_image_cpu_ms,
        };
        budget
            .check(estimate)
            .map_err(|err| TaskError::Permanent(err.to_string()))?;
    }
    let bytes = estimate.map_or(0, |estimate| estimate.peak_bytes);
    if let Some(halo) =
        tiles::pixels_of(&input).and_then(|pixels| policy.halo_for(&pipeline, pixels))
    {
        return split(
            worker,
            storage,
            input,
            policy.tile_size,
            halo,
            bytes,
            deadline,
        )
        .await;
    }
    let mut assets = load_logos(worker, storage, &pipeline).await?;
    if let Some(models) = &worker.models {
        assets.set_segmenter(models.clone());
    }
    let limits = worker.limits;
    let processed = on_cpu(worker, bytes, deadline, move || {
        engine::process_with(&input, &pipeline, &limits, &assets)
    })
    .await?
    .map_err(|err| TaskError::Permanent(err.to_string()))?;
    let processed = describe(worker, processed, deadline).await?;
    let processed_at = Instant::now();
    let output = upload(worker, storage, processed).await?;
    tracing::debug!(
        download_ms = (downloaded - started).as_millis() as u64,
        process_ms = (processed_at - downloaded).as_millis() as u64,
        upload_ms = processed_at.elapsed().as_millis() as u64,
        "task stages"
    );
    Ok(Outcome::Output(output))
}

/// Downloads and decodes the logos the pipeline's watermarks overlay, or takes them from the
/// worker's cache. A logo that is missing or does not decode fails the image, naming it.
pub(crate) async fn load_logos(
    worker: &Worker,
    storage: &mut StorageClient<Channel>,
    pipeline: &Pipeline,
) -> Result<Assets, TaskError> {
    let mut assets = Assets::default();
    for blob_id in pipeline.logos() {
        let cached = worker
            .logos
            .lock()
            .ok()
            .and_then(|mut cache| cache.get(blob_id));
        let logo = match cached {
            Some(logo) => logo,
            None => {
                let named = |err: TaskError| match err {
                    TaskError::Permanent(message) => {
                        TaskError::Permanent(format!("watermark logo {blob_id}: {message}"))
                    }
                    other => other,
                };
                let limits = codec::Limits {
                    max_pixels: worker.limits.max_pixels.min(logos::MAX_LOGO_PIXELS),
                    ..worker.limits
                };
                let bytes = download(worker, storage, blob_id, limits.max_input_bytes)
                    .await
                    .map_err(named)?;
                // Decoded as RGBA, and converted once.
                let need = logos::MAX_LOGO_PIXELS.saturating_mul(8);
                let logo = on_cpu(worker, need, None, move || codec::decode(&bytes, &limits))
                    .await
                    .map_err(named)?
                    .map_err(|err| named(TaskError::Permanent(err.to_string())))?;
                let logo = Arc::new(logo.image);
                if let Ok(mut cache) = worker.logos.lock() {
                    cache.insert(blob_id, logo.clone());
                }
                logo
            }
        };
        assets.insert(blob_id, logo);
    }
    Ok(assets)
}

/// Decodes once, stores every tile with its halo as raw pixels, and reports the plan; the
/// scheduler then publishes one task per tile. Tiles are cut one at a time and uploaded while
/// the next is cut, so the split holds the image and a couple of tiles, not the image twice.
async fn split(
    worker: &Worker,
    storage: &mut StorageClient<Channel>,
    input: Vec<u8>,
    tile_size: u32,
    halo: u32,
    bytes: u64,
    deadline: Option<Deadline>,
) -> Result<Outcome, TaskError> {
    // Two tiles in flight: one uploading, one cut and waiting.
    let (cut_tx, mut cut_rx) = tokio::sync::mpsc::channel::<(Tile, Vec<u8>)>(1);
    let limits = worker.limits;
    let cutting = on_cpu(worker, bytes, deadline, move || {
        let decoded = engine::stage_span("decode")
            .in_scope(|| codec::decode(&input, &limits))
            .map_err(|err| err.to_string())?;
        drop(input);
        let image = decoded.image;
        let (width, height) = (image.width(), image.height());
        let size = tiles::tile_size_for(width, height, tile_size);
        for tile in tiles::plan(width, height, size, halo) {
            let bytes = tiles::encode_raw(&tiles::extract(&image, tile.source)?);
            if cut_tx.blocking_send((tile, bytes)).is_err() {
                // The uploads stopped; their error is the one reported.
                break;
            }
        }
        Ok::<_, String>((decoded.format, width, height))
    });
    let uploading = async {
        let mut stored = Vec::new();
        while let Some((tile, bytes)) = cut_rx.recv().await {
            let blob_id = put_blob(worker, storage, bytes).await?;
            stored.push(TileInput {
                tile: stored.len() as u32,
                core: Some(tile.core.to_proto()),
                source: Some(tile.source.to_proto()),
                blob_id,
            });
        }
        Ok::<_, TaskError>(stored)
    };
    let (cut, stored) = tokio::join!(cutting, uploading);
    let stored = stored?;
    let (format, width, height) = cut?.map_err(TaskError::Permanent)?;
    Ok(Outcome::Split(TileSplit {
        width,
        height,
        input_format: format.to_proto() as i32,
        tiles: stored,
    }))
}

/// Runs the pipeline on one tile and stores its core.
async fn run_tile(
    worker: &Worker,
    storage: &mut StorageClient<Channel>,
    input: &TileInput,
    pipeline: Pipeline,
    deadline: Option<Deadline>,
) -> Result<TileOutput, TaskError> {
    let tile = Tile {
        core: Rect::from_proto(input.core.as_ref()),
        source: Rect::from_proto(input.source.as_ref()),
    };
    let bytes = download(worker, storage, &input.blob_id, raw_limit(&worker.limits)).await?;
    // The tile, the pipeline's copy of it, and its core.
    let need = (bytes.len() as u64).saturating_mul(3);
    let core = on_cpu(worker, need, deadline, move || {
        tiles::process_tile(tiles::decode_raw(bytes)?, tile, &pipeline)
            .map(|core| tiles::encode_raw(&core))
    })
    .await?
    .map_err(TaskError::Permanent)?;
    Ok(TileOutput {
        tile: input.tile,
        core: Some(tile.core.to_proto()),
        blob_id: put_blob(worker, storage, core).await?,
    })
}

/// Pastes every processed tile into the whole image and encodes it as the pipeline says.
async fn run_assembly(
    worker: &Worker,
    storage: &mut StorageClient<Channel>,
    assembly: &TileAssembly,
    pipeline: Pipeline,
    deadline: Option<Deadline>,
) -> Result<Output, TaskError> {
    let mut canvas = Canvas::new(assembly.width, assembly.height, &worker.limits)
        .map_err(TaskError::Permanent)?;
    let mut covered = 0u64;
    for tile in &assembly.tiles {
        let at = Rect::from_proto(tile.core.as_ref());
        let bytes = download(worker, storage, &tile.blob_id, raw_limit(&worker.limits)).await?;
        let core = tiles::decode_raw(bytes).map_err(TaskError::Permanent)?;
        canvas.paste(at, &core).map_err(TaskError::Permanent)?;
        covered += u64::from(at.width) * u64::from(at.height);
    }
    if covered != u64::from(assembly.width) * u64::from(assembly.height) {
        return Err(TaskError::Permanent(format!(
            "tiles cover {covered} pixels of a {}x{} image",
            assembly.width, assembly.height
        )));
    }
    let input_format = FileFormat::from_proto(assembly.input_format).unwrap_or(FileFormat::Png);
    // The canvas, and the encoder's working copy of it.
    let need = u64::from(assembly.width) * u64::from(assembly.height) * 8;
    let processed = on_cpu(worker, need, deadline, move || {
        let image = canvas.finish()?;
        // Pipelines that keep metadata are not tiled (see the format op's tile_halo).
        engine::encode(&image, &pipeline, input_format, &InputMetadata::default())
            .map_err(|err| err.to_string())
    })
    .await?
    .map_err(TaskError::Permanent)?;
    upload(worker, storage, processed).await
}

/// Runs CPU-bound `work` off the async runtime, holding `bytes` of the worker's memory budget
/// (all of it when `bytes` is more: such a task runs alone) and one of its CPU slots, with
/// `deadline` as the thread's deadline (see [`budget::with_deadline`]).
async fn on_cpu<T: Send + 'static>(
    worker: &Worker,
    bytes: u64,
    deadline: Option<Deadline>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TaskError> {
    let asked = Instant::now();
    let kib = u32::try_from(bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, worker.memory_kib.max(1));
    let memory = worker
        .memory
        .clone()
        .acquire_many_owned(kib)
        .await
        .map_err(|err| TaskError::Transient(format!("worker stopping: {err}")))?;
    let cpu = worker
        .cpu
        .clone()
        .acquire_owned()
        .await
        .map_err(|err| TaskError::Transient(format!("worker stopping: {err}")))?;
    tracing::debug!(
        wait_ms = asked.elapsed().as_millis() as u64,
        "cpu slot taken"
    );
    // The thread works inside the task's span, so its spans (decode, each op, encode) are
    // the task's children.
    let span = tracing::Span::current();
    let (done, result) = tokio::sync::oneshot::channel();
    // A thread of its own rather than tokio's blocking pool: batch work runs at a lower
    // priority, and a pool thread would keep it for the live requests it runs later. One
    // thread start per image is microseconds against its milliseconds.
    std::thread::Builder::new()
        .name("batch-image".into())
        .spawn(move || {
            yield_to_live_work();
            let result = span.in_scope(|| budget::with_deadline(deadline, work));
            drop(cpu);
            drop(memory);
            let _ = done.send(result);
        })
        .map_err(|err| TaskError::Transient(format!("starting a worker thread: {err}")))?;
    result.await.map_err(|_| {
        TaskError::Permanent("internal error while processing: the image's thread panicked".into())
    })
}

/// Lowers the calling thread's priority to nice 10, so an on-the-fly image request (the
/// live lane, at the process's own priority) takes a core from batch work at once: the
/// kernel gives a nice-10 thread about a tenth of a contended core. Measured: a miss beside
/// a 500-image batch took 405 ms at p50 with both at one priority (63 ms alone).
#[allow(unsafe_code)]
fn yield_to_live_work() {
    // SAFETY: gettid and setpriority take and return plain integers and touch no memory of
    // ours. On Linux, PRIO_PROCESS with a thread id sets that thread's nice value alone.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0
    };
    if failed {
        tracing::debug!("could not lower a batch thread's priority");
    }
}

/// A raw tile holds at most the pixel limit's worth of RGBA, plus its header.
fn raw_limit(limits: &Limits) -> u64 {
    limits.max_pixels.saturating_mul(4).saturating_add(64)
}

pub(crate) async fn download(
    worker: &Worker,
    storage: &mut StorageClient<Channel>,
    blob_id: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, TaskError> {
    let bytes = match &worker.blobs {
        Some(blobs) => {
            read_direct(blobs, blob_id, max_bytes)
                .instrument(engine::stage_span("fetch"))
                .await?
        }
        None => {
            download_blob(storage, blob_id, max_bytes)
                .instrument(engine::stage_span("fetch"))
                .await?
        }
    };
    metrics::counter!("pixelmesh_filter_bytes_in_total").increment(bytes.len() as u64);
    Ok(bytes)
}

/// A blob straight from the shared store.
async fn read_direct(
    blobs: &BlobStore,
    blob_id: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, TaskError> {
    let id = BlobId::parse(blob_id).map_err(|err| TaskError::Permanent(err.message))?;
    match blobs.get(&id, max_bytes).await {
        // The engine takes a Vec; a file store's Bytes owns its Vec, so this does not copy.
        Ok(bytes) => Ok(Vec::from(bytes)),
        Err(err) => Err(store_error(err, max_bytes)),
    }
}

/// A shared store's failure as a task's: a missing or oversized blob is the input's fault;
/// a store that does not answer is not, so no attempt is spent on it.
fn store_error(err: Error, max_bytes: u64) -> TaskError {
    match err.code {
        ErrorCode::NotFound => TaskError::Permanent(err.message),
        ErrorCode::ResourceExhausted => TaskError::Permanent(format!(
            "input is over the limit of {max_bytes} bytes ({})",
            err.message
        )),
        code if code.is_transient() => TaskError::Infrastructure(err.message),
        _ => TaskError::Transient(err.message),
    }
}

async fn download_blob(
    storage: &mut StorageClient<Channel>,
    blob_id: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, TaskError> {
    let mut chunks = storage
        .get_blob(GetBlobRequest {
            id: blob_id.to_string(),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::NotFound => TaskError::Permanent(format!("blob {blob_id} not found")),
            _ => TaskError::from(status),
        })?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if bytes.is_empty() && chunk.size_bytes > 0 {
            if chunk.size_bytes > max_bytes {
                return Err(TaskError::Permanent(format!(
                    "input is {} bytes, over the limit of {max_bytes} bytes",
                    chunk.size_bytes
                )));
            }
            bytes.reserve_exact(chunk.size_bytes as usize);
        }
        if (bytes.len() + chunk.chunk.len()) as u64 > max_bytes {
            return Err(TaskError::Permanent(format!(
                "input is over the limit of {max_bytes} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk.chunk);
    }
    Ok(bytes)
}

/// Fills the reports of the pipeline's `describe` ops from the AI endpoint, one after the
/// other, within the task's deadline.
async fn describe(
    worker: &Worker,
    mut processed: Processed,
    deadline: Option<Deadline>,
) -> Result<Processed, TaskError> {
    for asked in std::mem::take(&mut processed.describe) {
        let Some(describer) = &worker.describer else {
            return Err(TaskError::Permanent(format!(
                "op {} (describe): this filter has no AI endpoint (--ai-endpoint)",
                asked.position
            )));
        };
        let answer = describer
            .describe(&asked)
            .instrument(engine::stage_span("describe"));
        let answer = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.at().into(), answer)
                .await
                .map_err(|_| {
                    TaskError::Permanent(format!(
                        "op {} (describe): the task's time limit of {} s passed waiting for the AI service",
                        asked.position,
                        deadline.limit().as_secs()
                    ))
                })?,
            None => answer.await,
        };
        let description = answer.map_err(|err| {
            let message = format!("op {} (describe): {err}", asked.position);
            match err {
                DescribeError::Refused(_) => TaskError::Permanent(message),
                DescribeError::Unavailable(_) => TaskError::Transient(message),
            }
        })?;
        processed.analysis[asked.report] = description.report(&asked);
    }
    Ok(processed)
}

async fn upload(
    worker: &Worker,
    storage: &mut StorageClient<Channel>,
    processed: Processed,
) -> Result<Output, TaskError> {
    let size_bytes = processed.bytes.len() as u64;
    Ok(Output {
        blob_id: put_blob(worker, storage, processed.bytes).await?,
        content_type: processed.content_type.to_string(),
        width: processed.width,
        height: processed.height,
        size_bytes,
        analysis: processed.analysis,
    })
}

/// Stores `bytes`, in the shared store or through storage, and returns the blob id.
pub(crate) async fn put_blob(
    worker: &Worker,
    storage: &mut StorageClient<Channel>,
    bytes: Vec<u8>,
) -> Result<String, TaskError> {
    let size = bytes.len() as u64;
    let id = match &worker.blobs {
        Some(blobs) => blobs
            .put(bytes.into())
            .instrument(engine::stage_span("store"))
            .await
            .map(|stored| stored.id.to_string())
            .map_err(|err| match err.code {
                // The store refusing our own output is not the input's fault; another try
                // may land on a healthier moment.
                ErrorCode::ResourceExhausted => TaskError::Transient(err.message),
                code if code.is_transient() => TaskError::Infrastructure(err.message),
                _ => TaskError::Transient(err.message),
            })?,
        None => put_through_storage(storage, bytes).await?,
    };
    metrics::counter!("pixelmesh_filter_bytes_out_total").increment(size);
    Ok(id)
}

async fn put_through_storage(
    storage: &mut StorageClient<Channel>,
    bytes: Vec<u8>,
) -> Result<String, TaskError> {
    let parts = std::iter::once(PutBlobRequest {
        part: Some(Part::Meta(BlobMeta::default())),
    })
    .chain(
        (0..bytes.len())
            .step_by(CHUNK)
            .map(move |start| PutBlobRequest {
                part: Some(Part::Chunk(
                    bytes[start..(start + CHUNK).min(bytes.len())].to_vec(),
                )),
            }),
    );
    let info = storage
        .put_blob(futures::stream::iter(parts))
        .instrument(engine::stage_span("store"))
        .await
        .map_err(|status| match status.code() {
            // Storage refusing our own output is not the input's fault; another try may land
            // on a healthier moment (disk space freed).
            tonic::Code::ResourceExhausted => TaskError::Transient(status.message().to_string()),
            _ => TaskError::from(status),
        })?
        .into_inner();
    Ok(info.id)
}

async fn publish_result(worker: &Worker, result: &TaskResult) -> anyhow::Result<()> {
    worker
        .js
        .publish_with_headers(
            nats::result_subject(&result.job_id, result.index),
            telemetry::nats_headers(),
            result.encode_to_vec().into(),
        )
        .await?
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
