//! Job lifecycle: submit, cancel, and resuming what a previous scheduler left unfinished.
//!
//! The scheduler holds no state: storage has the jobs, JetStream has the queued tasks and
//! the unrecorded results. A job is persisted `queued` before any task is published and
//! marked `running` once every task is; a scheduler that dies in between re-publishes the
//! job's pending tasks on start, and JetStream's `Nats-Msg-Id` dedup drops the repeats.

use std::time::Duration;

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt, stream};
use pixelmesh_common::{grpc::Channel, nats, telemetry};
use pixelmesh_filter::ops::{Op, Pipeline};
use pixelmesh_proto::{
    Error, ErrorCode,
    v1::{
        CreateJobRequest, GetBlobRequest, ImageState, Job, JobEvent, JobRequest, JobState,
        ListUnfinishedJobsRequest, RecordResultRequest, SubmitJobRequest, Task, TaskResult, Tiling,
        storage_client::StorageClient, task, task_result::Outcome,
    },
};
use prost::Message as _;
use tracing::Instrument as _;

use crate::Settings;

/// Tasks published (or blobs checked) at once for one job.
const PUBLISH_CONCURRENCY: usize = 64;
/// The longest image name kept; names are labels, not paths.
const MAX_NAME_LEN: usize = 255;

#[derive(Clone)]
pub struct Jobs {
    storage: StorageClient<Channel>,
    nats: async_nats::Client,
    js: jetstream::Context,
    settings: Settings,
}

impl Jobs {
    pub fn new(
        storage: StorageClient<Channel>,
        nats: async_nats::Client,
        js: jetstream::Context,
        settings: Settings,
    ) -> Self {
        Jobs {
            storage,
            nats,
            js,
            settings,
        }
    }

    /// Validates the request, persists the job and queues one task per image.
    pub async fn submit(&self, request: SubmitJobRequest) -> Result<Job, Error> {
        let pipeline = Pipeline::from_proto(&request.pipeline)?;
        let tiling = match request.tiling {
            t if t == Tiling::Unspecified as i32 => Tiling::Auto,
            t => Tiling::try_from(t).map_err(|_| {
                Error::invalid(format!("tiling must be auto, always or never, got {t}"))
            })?,
        };
        if tiling == Tiling::Always && pipeline.tile_halo().is_none() {
            return Err(Error::invalid(format!(
                "tiling always needs a pipeline of pointwise and blur-like ops only; {} cannot run on tiles",
                pipeline
                    .ops()
                    .iter()
                    .enumerate()
                    .find(|(_, op)| op.tile_halo().is_none())
                    .map(|(i, op)| format!("op {} ({})", i + 1, op.name()))
                    .unwrap_or_default()
            )));
        }
        if request.inputs.is_empty() {
            return Err(Error::invalid("a job needs at least one input image"));
        }
        for (i, input) in request.inputs.iter().enumerate() {
            if input.name.len() > MAX_NAME_LEN || input.name.chars().any(char::is_control) {
                return Err(Error::invalid(format!(
                    "input {i}: name must be at most {MAX_NAME_LEN} bytes without control characters"
                )));
            }
        }
        self.check_blobs_exist(&request).await?;
        self.check_logos_exist(&pipeline).await?;

        let id = ulid::Ulid::new().to_string();
        let span = tracing::info_span!("submit_job", otel.name = "submit job", job = %id);
        async {
            let job = self
                .storage
                .clone()
                .create_job(CreateJobRequest {
                    id: id.clone(),
                    pipeline: pipeline.to_proto(),
                    inputs: request.inputs,
                    tiling: tiling as i32,
                    parent_id: request.parent_id,
                    owner: request.owner,
                })
                .await?
                .into_inner();
            metrics::counter!("pixelmesh_jobs_submitted_total").increment(1);
            metrics::counter!("pixelmesh_images_submitted_total")
                .increment(job.images.len() as u64);
            tracing::info!(images = job.images.len(), "job created");
            self.dispatch(job).await
        }
        .instrument(span)
        .await
    }

    /// Every input must name a blob that storage has, so a typo fails the submit, not the job.
    async fn check_blobs_exist(&self, request: &SubmitJobRequest) -> Result<(), Error> {
        // URL inputs are fetched by the workers; storage checks their form.
        let blobs = request
            .inputs
            .iter()
            .enumerate()
            .filter(|(_, input)| input.url.is_empty());
        stream::iter(
            blobs
                .map(|(i, input)| (i, input.clone()))
                .collect::<Vec<_>>(),
        )
        .map(|(i, input)| {
            let what = format!("input {i} ({})", input.name);
            self.check_blob_exists(input.blob_id, what)
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(())
    }

    /// Every watermark's logo must be a stored blob, so a wrong id fails the submit, not each
    /// image. Whether it decodes is up to the workers: a logo that does not fails the images.
    async fn check_logos_exist(&self, pipeline: &Pipeline) -> Result<(), Error> {
        for (i, op) in pipeline.ops().iter().enumerate() {
            if let Op::Watermark(watermark) = op {
                let what = format!("op {} (watermark): logo", i + 1);
                self.check_blob_exists(watermark.logo().to_string(), what)
                    .await?;
            }
        }
        Ok(())
    }

    /// Storage's answer for blob `id`, its refusals prefixed with `what` refers to it.
    async fn check_blob_exists(&self, id: String, what: String) -> Result<(), Error> {
        self.storage
            .clone()
            .stat_blob(GetBlobRequest { id })
            .await
            .map(drop)
            .map_err(|status| {
                let err = Error::from(status);
                match err.code {
                    ErrorCode::NotFound | ErrorCode::InvalidArgument => {
                        Error::new(err.code, format!("{what}: {}", err.message))
                    }
                    _ => err,
                }
            })
    }

    /// Publishes the pending images' tasks and marks the job running.
    async fn dispatch(&self, mut job: Job) -> Result<Job, Error> {
        let summary = job.summary.clone().unwrap_or_default();
        let generation = job.generation;
        let tasks: Vec<Task> = job
            .images
            .iter()
            .filter(|image| image.state() == ImageState::Pending)
            .map(|image| Task {
                job_id: summary.id.clone(),
                index: image.index,
                input_blob_id: image.input_blob_id.clone(),
                url: image.url.clone(),
                name: image.name.clone(),
                pipeline: job.pipeline.clone(),
                tiling: job.tiling,
                tile_above_pixels: self.settings.tile_above_pixels,
                tile_size: self.settings.tile_size,
                stage: None,
            })
            .collect();
        stream::iter(tasks)
            .map(|task| {
                let id = nats::task_id(&task.job_id, task.index, generation);
                self.publish_task(task, id)
            })
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let summary = self
            .storage
            .clone()
            .mark_job_running(JobRequest {
                id: summary.id.clone(),
            })
            .await?
            .into_inner();
        tracing::info!(job = %summary.id, "job dispatched");
        self.publish_progress(JobEvent {
            summary: Some(summary.clone()),
            image: None,
        })
        .await;
        job.summary = Some(summary);
        Ok(job)
    }

    /// Publishes `task` with `id` as its JetStream dedup id.
    /// The trace context in the headers is the caller's (the submit, or the recording of a
    /// split), so a job's tasks, and an image's tiles, are sibling spans in its trace.
    async fn publish_task(&self, task: Task, id: String) -> Result<(), Error> {
        let subject = nats::task_subject(&task.job_id, task.index);
        let mut headers = telemetry::nats_headers();
        let span = tracing::info_span!(
            "publish_task",
            otel.name = "publish task",
            otel.kind = "producer",
            subject = %subject,
        );
        async {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let ack = self
                .js
                .publish_with_headers(subject, headers, task.encode_to_vec().into())
                .await
                .map_err(|err| Error::unavailable(format!("publishing task: {err}")))?;
            ack.await
                .map_err(|err| Error::unavailable(format!("publishing task: {err}")))?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Cancels the job in storage, then removes its queued tasks from the stream. Workers
    /// also check the job state before they start a task, for tasks already delivered.
    pub async fn cancel(&self, id: &str) -> Result<Job, Error> {
        let job = self
            .storage
            .clone()
            .cancel_job(JobRequest { id: id.to_string() })
            .await?
            .into_inner();
        self.purge_tasks(id).await;
        match &job.summary {
            Some(summary) if summary.state() == JobState::Cancelled => job_finished(summary),
            _ => tracing::info!(job = %id, "job cancelled"),
        }
        self.publish_state(&job).await;
        Ok(job)
    }

    /// Pauses the job in storage, then removes its queued tasks from the stream; workers
    /// skip any they already hold. Tasks running now finish and are recorded.
    pub async fn pause(&self, id: &str) -> Result<Job, Error> {
        let job = self
            .storage
            .clone()
            .pause_job(JobRequest { id: id.to_string() })
            .await?
            .into_inner();
        self.purge_tasks(id).await;
        tracing::info!(job = %id, "job paused");
        self.publish_state(&job).await;
        Ok(job)
    }

    /// Dispatches a paused job's pending images again, under a new generation so that
    /// JetStream's dedup window does not drop the new tasks.
    pub async fn resume(&self, id: &str) -> Result<Job, Error> {
        let job = self
            .storage
            .clone()
            .resume_job(JobRequest { id: id.to_string() })
            .await?
            .into_inner();
        tracing::info!(job = %id, generation = job.generation, "job resumed");
        self.publish_state(&job).await;
        self.dispatch(job).await
    }

    /// Removes the job's queued tasks from the stream, best effort: workers check the job's
    /// state before running a task anyway.
    async fn purge_tasks(&self, id: &str) {
        match self.js.get_stream(nats::TASKS_STREAM).await {
            Ok(stream) => {
                if let Err(err) = stream.purge().filter(nats::job_tasks_filter(id)).await {
                    tracing::warn!(job = %id, error = %err, "purging the job's tasks failed");
                }
            }
            Err(err) => tracing::warn!(job = %id, error = %err, "tasks stream unavailable"),
        }
    }

    /// Runs an ended job's failed images again: storage puts them back to pending under a
    /// new generation, then they are dispatched like a new job's.
    pub async fn retry(&self, id: &str) -> Result<Job, Error> {
        let job = self
            .storage
            .clone()
            .retry_job(JobRequest { id: id.to_string() })
            .await?
            .into_inner();
        tracing::info!(job = %id, generation = job.generation, "retrying failed images");
        self.publish_state(&job).await;
        self.dispatch(job).await
    }

    /// Records one result once, and tells watchers when it changed anything. A split or the
    /// last tile of a tiled image leads to the next tasks: its tiles, or its assembly.
    pub async fn record(&self, result: TaskResult) -> Result<bool, Error> {
        let job = result.job_id.clone();
        let index = result.index;
        let split = match &result.outcome {
            Some(Outcome::Split(split)) => Some(split.clone()),
            _ => None,
        };
        let recorded = self
            .storage
            .clone()
            .record_result(RecordResultRequest {
                result: Some(result),
            })
            .await?
            .into_inner();
        // Published again for a duplicate result too: the scheduler that recorded it first
        // may have died before publishing, and JetStream's dedup drops true repeats.
        let pending = recorded
            .image
            .as_ref()
            .is_some_and(|image| image.state() == ImageState::Pending);
        if pending && let Some(split) = split {
            let tiles = split.tiles.len();
            let tasks = split.tiles.into_iter().map(|tile| {
                let id = nats::tile_task_id(&job, index, tile.tile, recorded.generation);
                let task =
                    self.stage_task(&job, index, &recorded.pipeline, task::Stage::Tile(tile));
                (task, id)
            });
            stream::iter(tasks)
                .map(|(task, id)| self.publish_task(task, id))
                .buffer_unordered(PUBLISH_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            tracing::info!(job = %job, index, tiles, "image split, tile tasks published");
        }
        if pending && let Some(assemble) = recorded.assemble.clone() {
            let task = self.stage_task(
                &job,
                index,
                &recorded.pipeline,
                task::Stage::Assemble(assemble),
            );
            self.publish_task(
                task,
                nats::assemble_task_id(&job, index, recorded.generation),
            )
            .await?;
            tracing::info!(job = %job, index, "tiles done, assembly published");
        }
        if !recorded.applied {
            tracing::debug!(job = %job, index, "duplicate or late result ignored");
            return Ok(false);
        }
        if let Some(summary) = &recorded.summary
            && summary.state().is_final()
        {
            job_finished(summary);
        }
        self.publish_progress(JobEvent {
            summary: recorded.summary,
            image: recorded.image,
        })
        .await;
        Ok(true)
    }

    /// A tile or assembly task of image `index`.
    fn stage_task(
        &self,
        job: &str,
        index: u32,
        pipeline: &[pixelmesh_proto::v1::Operation],
        stage: task::Stage,
    ) -> Task {
        Task {
            job_id: job.to_string(),
            index,
            pipeline: pipeline.to_vec(),
            stage: Some(stage),
            ..Default::default()
        }
    }

    /// Tells watchers the job's state changed (no image did).
    async fn publish_state(&self, job: &Job) {
        self.publish_progress(JobEvent {
            summary: job.summary.clone(),
            image: None,
        })
        .await;
    }

    /// Progress goes over NATS core: a watcher that misses an event re-reads storage.
    pub async fn publish_progress(&self, event: JobEvent) {
        let Some(summary) = &event.summary else {
            return;
        };
        let subject = nats::progress_subject(&summary.id);
        if let Err(err) = self
            .nats
            .publish_with_headers(
                subject,
                telemetry::nats_headers(),
                event.encode_to_vec().into(),
            )
            .await
        {
            tracing::warn!(job = %summary.id, error = %err, "publishing progress failed");
        }
    }

    /// Finishes what a previous scheduler left: jobs still `queued` get their pending tasks
    /// (re-)published. `running` jobs need nothing: their tasks and results wait in JetStream.
    pub async fn resume_unfinished(&self) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(100);
        let unfinished = loop {
            match self
                .storage
                .clone()
                .list_unfinished_jobs(ListUnfinishedJobsRequest {})
                .await
            {
                Ok(list) => break list.into_inner().jobs,
                Err(status) => {
                    tracing::warn!(error = %status.message(), "storage not ready, retrying resume");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        for summary in unfinished {
            if summary.state() != JobState::Queued {
                continue;
            }
            let span = tracing::info_span!("resume", job = %summary.id);
            let resumed = async {
                let job = self
                    .storage
                    .clone()
                    .get_job(JobRequest {
                        id: summary.id.clone(),
                    })
                    .await?
                    .into_inner();
                self.dispatch(job).await
            }
            .instrument(span)
            .await;
            match resumed {
                Ok(_) => tracing::info!(job = %summary.id, "resumed queued job"),
                Err(err) => tracing::warn!(job = %summary.id, error = %err, "resuming job failed"),
            }
        }
        Ok(())
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

/// Marks a job's end in its trace, its log and `pixelmesh_jobs_finished_total{state}`.
fn job_finished(summary: &pixelmesh_proto::v1::JobSummary) {
    let state = summary.state().label();
    let _span =
        tracing::info_span!("job_complete", otel.name = "job complete", job = %summary.id, state)
            .entered();
    metrics::counter!("pixelmesh_jobs_finished_total", "state" => state).increment(1);
    tracing::info!(
        state,
        done = summary.done,
        failed = summary.failed,
        "job finished"
    );
}
