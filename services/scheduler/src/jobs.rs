//! Job lifecycle: submit, cancel, and reconciling what a previous scheduler left unfinished.
//!
//! The scheduler holds no state: storage has the jobs, JetStream has the queued tasks and
//! the unrecorded results.
//!
//! **A submit is all or nothing.** The job is persisted `queued` and *provisional*, its tasks
//! are published, then marking it `running` confirms it; only then is the client answered.
//! A submit that fails (or takes longer than [`SUBMIT_TIMEOUT`]) abandons the job: its tasks
//! are purged and storage removes it, so a client told "no" never finds the job running
//! later and may resubmit without making a duplicate. If storage cannot be reached to
//! abandon it, the job stays provisional, which nothing runs, and reconciliation
//! ([`crate::reconcile`]) removes it. Workers may start a provisional job's tasks early;
//! their results are recorded once, or dropped with the job.
//!
//! [`Jobs`] reaches storage through [`JobStore`] and NATS through [`TaskQueue`], so the
//! state machine is unit-tested against in-memory fakes (`tests.rs` beside this file).

use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use pixelmesh_common::{nats, time::now_ms};
use pixelmesh_pipeline::{
    budget::Budget,
    ops::{Op, Pipeline},
    tiles::Policy,
};
use pixelmesh_proto::{
    Error, ErrorCode,
    v1::{
        BlobInfo, CheckBlobsRequest, CreateJobRequest, ImageState, Job, JobEvent, JobState,
        SubmitJobRequest, Task, TaskResult, Tiling, task, task_result::Outcome,
    },
};
use tracing::Instrument as _;

use crate::{
    Settings,
    queue::{JetStreamQueue, TaskQueue},
    reconcile,
    store::{GrpcStore, JobStore},
};

#[cfg(test)]
mod tests;

/// Tasks published at once for one job.
const PUBLISH_CONCURRENCY: usize = 64;
/// Longest a submit may take from creating the job to confirming it; past it the job is
/// abandoned and the client told so. Below [`reconcile::PROVISIONAL_TTL`], so reconciliation
/// never abandons a submit still in progress.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an abandon is retried while storage is unreachable; reconciliation takes over
/// after that.
const ABANDON_RETRY_FOR: Duration = Duration::from_secs(600);
/// The longest image name kept; names are labels, not paths.
const MAX_NAME_LEN: usize = 255;

/// The job state machine over a store and a queue: storage over gRPC and JetStream in the
/// scheduler, in-memory fakes in unit tests.
#[derive(Clone)]
pub struct Jobs<S = GrpcStore, Q = JetStreamQueue> {
    storage: S,
    queue: Q,
    settings: Settings,
}

impl<S: JobStore, Q: TaskQueue> Jobs<S, Q> {
    pub fn new(storage: S, queue: Q, settings: Settings) -> Self {
        Jobs {
            storage,
            queue,
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
        // Refused before anything is stored: a submit that cannot queue its tasks would only
        // leave a job to abandon.
        if !self.queue.is_connected() {
            return Err(Error::unavailable(
                "the task queue is unreachable, nothing was submitted: retry shortly",
            ));
        }
        let blobs = self.check_blobs(&request, &pipeline).await?;
        check_animations(&request, &pipeline, &blobs)?;
        self.check_budget(&request, &pipeline, tiling, &blobs)?;

        let id = match request.job_id.as_str() {
            "" => ulid::Ulid::new().to_string(),
            given => given
                .parse::<ulid::Ulid>()
                .map_err(|_| Error::invalid(format!("job id {given:?} is not a ULID")))?
                .to_string(),
        };
        let span = tracing::info_span!("submit_job", otel.name = "submit job", job = %id);
        let owner = request.owner.clone();
        // Whether this call stored the job: only then is it this call's to abandon.
        let mut stored = false;
        let submitted = tokio::time::timeout(SUBMIT_TIMEOUT, async {
            let created = self
                .storage
                .create_job(CreateJobRequest {
                    id: id.clone(),
                    pipeline: pipeline.to_proto(),
                    inputs: request.inputs,
                    tiling: tiling as i32,
                    parent_id: request.parent_id,
                    owner: request.owner,
                })
                .await;
            let job = match created {
                Ok(job) => job,
                Err(err) if err.code == ErrorCode::AlreadyExists => {
                    return self.resubmitted(&id, &owner).await;
                }
                Err(err) => return Err(err),
            };
            stored = true;
            tracing::info!(images = job.images.len(), "job created");
            self.dispatch(job).await
        })
        .instrument(span.clone())
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the submit took over {} s, nothing was submitted: retry shortly",
                    SUBMIT_TIMEOUT.as_secs()
                ),
            ))
        });
        match submitted {
            Ok(job) => {
                metrics::counter!("pixelmesh_jobs_submitted_total").increment(1);
                metrics::counter!("pixelmesh_images_submitted_total")
                    .increment(job.images.len() as u64);
                Ok(job)
            }
            Err(err) if stored => {
                tracing::warn!(parent: &span, error = %err, "submit failed, abandoning the job");
                self.abandon(&id).instrument(span).await;
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// A submit sent again with the id of a job already stored: the gateway's retry on this
    /// scheduler after the one it asked first died mid-submit, or lost its answer. The stored
    /// job is the answer; one never confirmed is dispatched now (its tasks that were queued
    /// already are dropped as repeats by JetStream), never a second job.
    async fn resubmitted(&self, id: &str, owner: &str) -> Result<Job, Error> {
        let job = self.storage.get_job(id).await?;
        let summary = job.summary.clone().unwrap_or_default();
        if summary.owner != owner {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("job {id} already exists"),
            ));
        }
        if !job.provisional {
            tracing::info!(job = %id, "submit sent again: the job is already confirmed");
            return Ok(job);
        }
        tracing::info!(job = %id, "submit sent again: dispatching the job a scheduler left unconfirmed");
        self.dispatch(job).await
    }

    /// Removes a job whose submit failed: its queued tasks, then its records. While storage
    /// is unreachable this retries in the background for a while; the job stays provisional
    /// meanwhile, which nothing runs, and reconciliation removes it if this gives up.
    async fn abandon(&self, id: &str) {
        self.purge_tasks(id).await;
        if self.storage.abandon_job(id).await.is_ok() {
            return;
        }
        let storage = self.storage.clone();
        let id = id.to_string();
        tokio::spawn(
            async move {
                let deadline = tokio::time::Instant::now() + ABANDON_RETRY_FOR;
                let mut delay = Duration::from_millis(200);
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(delay).await;
                    match storage.abandon_job(&id).await {
                        Ok(()) => {
                            tracing::info!(job = %id, "abandoned job removed");
                            return;
                        }
                        Err(err) => {
                            tracing::debug!(job = %id, error = %err, "abandon failed, retrying");
                        }
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                tracing::warn!(job = %id, "could not remove abandoned job: reconciliation will");
            }
            .in_current_span(),
        );
    }

    /// Every input whose size storage read from its header must fit the per-image budget,
    /// estimated from that size and the pipeline's ops: what cannot fit is refused before
    /// anything is queued, naming the image, the limit and the costliest stage. URL inputs are
    /// checked the same way by their worker once it has read their header.
    fn check_budget(
        &self,
        request: &SubmitJobRequest,
        pipeline: &Pipeline,
        tiling: Tiling,
        blobs: &[Option<BlobInfo>],
    ) -> Result<(), Error> {
        let budget = Budget {
            max_memory_bytes: self.settings.max_image_memory_bytes,
            max_cpu_ms: self.settings.max_image_cpu_secs.saturating_mul(1000),
        };
        let policy = Policy {
            mode: tiling,
            above_pixels: self.settings.tile_above_pixels,
            tile_size: self.settings.tile_size,
        };
        for (i, (input, blob)) in request.inputs.iter().zip(blobs).enumerate() {
            let Some(blob) = blob
                .as_ref()
                .filter(|blob| blob.width > 0 && blob.height > 0)
            else {
                continue;
            };
            let pixels = u64::from(blob.width) * u64::from(blob.height);
            // An animation is processed whole, frame by frame, never tiled.
            let frames = pipeline.frames_processed(blob.frames);
            let policy = if frames > 1 {
                Policy {
                    mode: Tiling::Never,
                    ..policy
                }
            } else {
                policy
            };
            let estimate = policy
                .estimate(pipeline, pixels, |pipeline| {
                    pipeline.estimate(blob.width, blob.height, blob.bytes_per_pixel)
                })
                .for_frames(frames);
            budget
                .check(&estimate)
                .map_err(|err| Error::too_large(format!("input {i} ({}): {err}", input.name)))?;
        }
        Ok(())
    }

    /// Every blob input and logo must be a stored blob that the submitting key may use (it
    /// uploaded it, or a job of its produced it; an admin may use any). One that is missing
    /// or someone else's fails the submit, naming the input, without telling which.
    async fn check_blobs(
        &self,
        request: &SubmitJobRequest,
        pipeline: &Pipeline,
    ) -> Result<Vec<Option<BlobInfo>>, Error> {
        // What each checked id is called in an error: an input, or a watermark's logo.
        let mut named: Vec<(String, String)> = request
            .inputs
            .iter()
            .enumerate()
            .filter(|(_, input)| input.url.is_empty())
            .map(|(i, input)| (input.blob_id.clone(), format!("input {i} ({})", input.name)))
            .collect();
        for (i, op) in pipeline.ops().iter().enumerate() {
            if let Op::Watermark(watermark) = op {
                named.push((
                    watermark.logo().to_string(),
                    format!("op {} (watermark): logo", i + 1),
                ));
            }
        }
        if named.is_empty() {
            return Ok(vec![None; request.inputs.len()]);
        }
        let checked = self
            .storage
            .check_blobs(CheckBlobsRequest {
                ids: named.iter().map(|(id, _)| id.clone()).collect(),
                owner: request.owner.clone(),
                admin: request.admin,
            })
            .await?;
        if checked.len() != named.len() {
            return Err(Error::internal("storage answered a blob check partly"));
        }
        if let Some(((id, what), _)) = named
            .iter()
            .zip(&checked)
            .find(|(_, info)| info.id.is_empty())
        {
            let shown: String = id.chars().take(80).collect();
            return Err(Error::not_found(format!("{what}: blob {shown} not found")));
        }
        let mut found = checked.into_iter();
        Ok(request
            .inputs
            .iter()
            .map(|input| {
                if input.url.is_empty() {
                    found.next()
                } else {
                    None
                }
            })
            .collect())
    }

    /// Publishes the pending images' tasks and marks the job running.
    async fn dispatch(&self, mut job: Job) -> Result<Job, Error> {
        let id = job
            .summary
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let generation = job.generation;
        let tasks: Vec<(Task, String)> = job
            .images
            .iter()
            .filter(|image| image.state() == ImageState::Pending)
            .map(|image| {
                let task_id = nats::task_id(&id, image.index, generation);
                (self.image_task(&job, image.index), task_id)
            })
            .collect();
        self.publish_tasks(tasks).await?;
        let summary = self.storage.mark_job_running(&id).await?;
        tracing::info!(job = %summary.id, "job dispatched");
        self.publish_progress(JobEvent {
            summary: Some(summary.clone()),
            image: None,
        })
        .await;
        job.summary = Some(summary);
        job.provisional = false;
        Ok(job)
    }

    /// The task of image `index` processed whole (or split, if it is big).
    fn image_task(&self, job: &Job, index: u32) -> Task {
        let image = job.images.get(index as usize).cloned().unwrap_or_default();
        Task {
            job_id: job
                .summary
                .as_ref()
                .map(|s| s.id.clone())
                .unwrap_or_default(),
            index,
            input_blob_id: image.input_blob_id,
            url: image.url,
            name: image.name,
            pipeline: job.pipeline.clone(),
            tiling: job.tiling,
            tile_above_pixels: self.settings.tile_above_pixels,
            tile_size: self.settings.tile_size,
            max_image_memory_bytes: self.settings.max_image_memory_bytes,
            max_image_cpu_ms: self.settings.max_image_cpu_secs.saturating_mul(1000),
            stage: None,
        }
    }

    /// Publishes tasks with their dedup ids, several at once.
    async fn publish_tasks(&self, tasks: Vec<(Task, String)>) -> Result<(), Error> {
        stream::iter(tasks)
            .map(|(task, id)| self.queue.publish_task(task, id))
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Cancels the job in storage, then removes its queued tasks from the stream. Workers
    /// also check the job state before they start a task, for tasks already delivered.
    pub async fn cancel(&self, id: &str) -> Result<Job, Error> {
        let job = self.storage.cancel_job(id).await?;
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
        let job = self.storage.pause_job(id).await?;
        self.purge_tasks(id).await;
        tracing::info!(job = %id, "job paused");
        self.publish_state(&job).await;
        Ok(job)
    }

    /// Dispatches a paused job's pending images again, under a new generation so that
    /// JetStream's dedup window does not drop the new tasks.
    pub async fn resume(&self, id: &str) -> Result<Job, Error> {
        let job = self.storage.resume_job(id).await?;
        tracing::info!(job = %id, generation = job.generation, "job resumed");
        self.publish_state(&job).await;
        self.dispatch(job).await
    }

    /// Removes the job's queued tasks from the stream, best effort: workers check the job's
    /// state before running a task anyway.
    async fn purge_tasks(&self, id: &str) {
        if let Err(err) = self.queue.purge_tasks(id).await {
            tracing::warn!(job = %id, error = %err, "purging the job's tasks failed");
        }
    }

    /// Runs an ended job's failed images again: storage puts them back to pending under a
    /// new generation, then they are dispatched like a new job's.
    pub async fn retry(&self, id: &str) -> Result<Job, Error> {
        let job = self.storage.retry_job(id).await?;
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
        let recorded = self.storage.record_result(result).await?;
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
                .map(|(task, id)| self.queue.publish_task(task, id))
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
            self.queue
                .publish_task(
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
        metrics::counter!("pixelmesh_results_recorded_total").increment(1);
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
        let job = summary.id.clone();
        if let Err(err) = self.queue.publish_progress(&job, event).await {
            tracing::warn!(job = %job, error = %err, "publishing progress failed");
        }
    }

    /// Reconciles every unfinished job with the queue (see [`crate::reconcile`]) while this
    /// scheduler holds the reconciler lease (`held`, see [`crate::lease`]): as it takes the
    /// lease, once storage answers, then every [`reconcile::EVERY`] until `stop`.
    pub async fn reconcile_forever(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        mut held: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                holds = held.wait_for(|holds| *holds) => if holds.is_err() { return },
            }
            let wait = match self.reconcile().await {
                Ok(()) => {
                    delay = Duration::from_millis(100);
                    reconcile::EVERY
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reconciliation failed, retrying");
                    delay = (delay * 2).min(Duration::from_secs(5));
                    delay
                }
            };
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(wait) => {}
                // Lost: wait to take it again, and reconcile at once then.
                _ = held.wait_for(|holds| !*holds) => {}
            }
        }
    }

    /// One pass of reconciliation over every unfinished job.
    pub async fn reconcile(&self) -> Result<(), Error> {
        let unfinished = self.storage.list_unfinished_jobs().await?;
        let queue = self.queue.lookup().await?;
        for summary in unfinished {
            if summary.state() == JobState::Paused {
                continue;
            }
            let span = tracing::info_span!("reconcile", job = %summary.id);
            if let Err(err) = self
                .reconcile_job(&summary.id, &queue)
                .instrument(span)
                .await
            {
                tracing::warn!(job = %summary.id, error = %err, "reconciling job failed");
            }
        }
        Ok(())
    }

    async fn reconcile_job(&self, id: &str, queue: &Q::Lookup) -> Result<(), Error> {
        let job = match self.storage.get_job(id).await {
            Ok(job) => job,
            // Ended and deleted meanwhile.
            Err(err) if err.code == ErrorCode::NotFound => return Ok(()),
            Err(err) => return Err(err),
        };
        let plan = reconcile::plan_with(&job, now_ms(), queue).await?;
        if plan.abandon {
            tracing::warn!("job left provisional by a submit that never finished, abandoning it");
            self.purge_tasks(id).await;
            self.storage.abandon_job(id).await?;
            return Ok(());
        }
        if plan.dispatch {
            self.dispatch(job).await?;
            tracing::info!("queued job dispatched");
            return Ok(());
        }
        for (index, error) in plan.fail {
            tracing::warn!(index, error = %error, "task out of deliveries, failing its image");
            self.record(TaskResult {
                job_id: id.to_string(),
                index,
                outcome: Some(Outcome::Error(error)),
                ..Default::default()
            })
            .await?;
        }
        if !plan.requeue.is_empty() {
            let job = self
                .storage
                .requeue_images(id, plan.requeue.clone())
                .await?;
            // New dedup ids: the lost task's id may still be in JetStream's dedup window.
            let at = now_ms();
            let tasks = plan
                .requeue
                .iter()
                .filter(|&&index| {
                    job.images
                        .get(index as usize)
                        .is_some_and(|image| image.state() == ImageState::Pending)
                })
                .map(|&index| {
                    let task_id = format!("{}.r{at}", nats::task_id(id, index, job.generation));
                    (self.image_task(&job, index), task_id)
                })
                .collect::<Vec<_>>();
            tracing::warn!(
                images = tasks.len(),
                "pending images had lost their task, queued again"
            );
            self.publish_tasks(tasks).await?;
        }
        Ok(())
    }
}

impl<S> Jobs<S, JetStreamQueue> {
    pub(crate) fn jetstream(&self) -> &async_nats::jetstream::Context {
        self.queue.jetstream()
    }
}

/// An animated blob input (its frame count read by storage from the header) whose pipeline
/// has an op that cannot animate is refused, naming the input and the op: the user picks one
/// frame with `frame=0`, or drops the op. A URL input is checked by its worker once fetched.
fn check_animations(
    request: &SubmitJobRequest,
    pipeline: &Pipeline,
    blobs: &[Option<BlobInfo>],
) -> Result<(), Error> {
    for (i, (input, blob)) in request.inputs.iter().zip(blobs).enumerate() {
        let frames = blob.as_ref().map_or(1, |blob| blob.frames);
        if let Some(refusal) = pipeline.animation_refusal(frames) {
            return Err(Error::invalid(format!(
                "input {i} ({}): {refusal}",
                input.name
            )));
        }
    }
    Ok(())
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
