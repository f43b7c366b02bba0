//! What the gateway does, in domain terms, shared by the gRPC and HTTP edges.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{Stream, StreamExt, stream::BoxStream};
use pixelmesh_blobs::{BlobId, BlobStore};
use pixelmesh_common::{grpc::Channel, nats};
use pixelmesh_pipeline::ops::{Pipeline, remove_background};
use pixelmesh_proto::{
    Error, ErrorCode,
    v1::{
        Batch, BlobAbort, BlobInfo, BlobMeta, CountJobsRequest, DeleteJobResponse, GetBlobRequest,
        GetImageRequest, Image, ImageInput, ImageState, Job, JobEvent, JobRequest, JobState,
        JobSummary, ListJobsQuery, ListJobsRequest, ListJobsResponse, Output, PutBlobRequest,
        RecordBlobRequest, SubmitJobRequest, Worker, put_blob_request::Part,
        storage_client::StorageClient,
    },
};
use prost::Message as _;
use tokio::{io::AsyncWriteExt as _, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::{
    Settings,
    archive::{self, ZipLimits},
    auth::Caller,
    bundle::{self, ManifestRow, ZipStreamWriter},
    fanout::{Delivery, Fanout},
    images::Images,
    schedulers::Schedulers,
    stats, urls,
};

/// A watcher that heard nothing for this long re-reads the job from storage: progress goes
/// over NATS core, which may drop an event, and the final state must never be missed.
const WATCH_RESYNC: Duration = Duration::from_secs(5);
/// Most jobs in one list page.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Largest URL list a gRPC submit may carry as text (`url_list`, in one message): 100 000
/// URLs of 300 bytes. REST streams a list of any length.
pub const MAX_URL_LIST_BYTES: usize = 32 * 1024 * 1024;

/// The storage client: every call runs to storage's answer in a task of its own.
pub type Storage = StorageClient<Detached<Channel>>;

#[derive(Clone)]
pub struct Mesh {
    storage: Storage,
    /// The blob store shared with storage, when the gateway reaches it: uploads are written
    /// and downloads read there, and storage only records them.
    blobs: Option<BlobStore>,
    scheduler: Schedulers,
    nats: async_nats::Client,
    /// Every watcher's NATS subscriptions: one per subject for the whole gateway.
    fanout: Fanout<async_nats::Message>,
    settings: Settings,
    throughput: stats::Throughput,
    /// On-the-fly image URLs.
    images: Arc<Images>,
}

impl Mesh {
    pub fn new(
        storage: Storage,
        blobs: Option<BlobStore>,
        scheduler: Schedulers,
        nats: async_nats::Client,
        settings: Settings,
        images: Arc<Images>,
    ) -> Self {
        Mesh {
            storage,
            blobs,
            scheduler,
            fanout: Fanout::nats(nats.clone()),
            nats,
            settings,
            throughput: stats::Throughput::default(),
            images,
        }
    }

    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Images ended per minute, as this gateway has seen them.
    pub fn throughput(&self) -> &stats::Throughput {
        &self.throughput
    }

    /// The shared NATS subscriptions, for the throughput counter.
    pub fn fanout(&self) -> &Fanout<async_nats::Message> {
        &self.fanout
    }

    /// The task queue's depth and the recent minutes' throughput.
    /// The queue can fail to be read (NATS down) while the throughput this gateway counted
    /// is still there to show.
    pub async fn stats(&self) -> (Result<stats::Queue, Error>, Vec<stats::Minute>) {
        let queue = stats::queue(&self.nats).await;
        (
            queue,
            self.throughput.window(pixelmesh_common::time::now_ms()),
        )
    }

    /// Sets the gauges read from elsewhere before a `/metrics` scrape: the task queue from
    /// JetStream's consumer info, and the workers from their heartbeats. Bounded, so a NATS
    /// outage slows a scrape by at most a second; the gauges then keep their last values.
    pub async fn observe(&self) {
        static DESCRIBED: std::sync::Once = std::sync::Once::new();
        DESCRIBED.call_once(describe_gauges);
        // Tasks leak silently (a watcher that outlives its client): this makes them visible.
        let runtime = tokio::runtime::Handle::current().metrics();
        metrics::gauge!("pixelmesh_runtime_alive_tasks").set(runtime.num_alive_tasks() as f64);
        metrics::gauge!("pixelmesh_nats_shared_subscriptions").set(self.fanout.subjects() as f64);
        let read = async { tokio::join!(stats::queue(&self.nats), self.all_workers()) };
        let Ok((queue, workers)) = tokio::time::timeout(Duration::from_secs(1), read).await else {
            tracing::debug!("metrics: nats too slow, gauges not refreshed");
            return;
        };
        if let Ok(queue) = queue {
            metrics::gauge!("pixelmesh_queue_pending_tasks").set(queue.pending as f64);
            metrics::gauge!("pixelmesh_queue_in_flight_tasks").set(queue.in_flight as f64);
            metrics::gauge!("pixelmesh_queue_redelivered_tasks").set(queue.redelivered as f64);
        }
        if let Ok(workers) = workers {
            let busy = workers.iter().filter(|w| w.in_flight > 0).count();
            let slots: u32 = workers.iter().map(|w| w.concurrency).sum();
            metrics::gauge!("pixelmesh_workers_online").set(workers.len() as f64);
            metrics::gauge!("pixelmesh_workers_busy").set(busy as f64);
            metrics::gauge!("pixelmesh_worker_slots").set(f64::from(slots));
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn nats_connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Streams `chunks` into the blob store as a blob of `caller`'s (its key becomes one of
    /// the blob's owners): straight into the shared store when the gateway reaches it, then
    /// recorded by storage, else through storage. An error from `chunks` aborts the upload,
    /// so a broken client connection never leaves a truncated blob behind.
    ///
    /// The storage call runs in a task of its own, fed through a channel, and always ends its
    /// request stream normally: with the last chunk, or with an abort part when `chunks`
    /// fails or this future is dropped (its client hung up). Dropping the call instead
    /// would reset its HTTP/2 stream on the connection every user's calls to storage share,
    /// and enough resets make hyper's flood guard drop that connection.
    pub async fn upload<S>(&self, caller: &Caller, chunks: S) -> Result<BlobInfo, Error>
    where
        S: Stream<Item = Result<Bytes, Error>> + Send,
    {
        let meta = BlobMeta {
            max_bytes: self.settings.max_upload_bytes,
            owner: caller.owner().to_string(),
        };
        match &self.blobs {
            Some(blobs) => put_direct(blobs, self.storage.clone(), meta, chunks).await,
            None => put_blob(self.storage.clone(), meta, chunks).await,
        }
    }

    /// Stores every image of a spooled ZIP archive as a blob; the job inputs, named after
    /// the entries (folders flattened, names unique). The whole archive is checked against
    /// `limits` before anything is stored, and each entry streams from the archive to
    /// storage, so memory stays bounded whatever the archive holds.
    pub async fn upload_archive(
        &self,
        caller: &Caller,
        file: std::fs::File,
        limits: ZipLimits,
    ) -> Result<Vec<ImageInput>, Error> {
        let (mut archive, planned) = tokio::task::spawn_blocking(move || {
            let archive = archive::open(file)?;
            let planned = archive::plan(&archive, &limits)?;
            Ok::<_, Error>((archive, planned))
        })
        .await
        .map_err(|err| Error::internal(format!("reading the archive: {err}")))??;
        let mut inputs = Vec::with_capacity(planned.len());
        for entry in planned {
            let (tx, rx) = mpsc::channel::<Result<Bytes, Error>>(4);
            let name = entry.name.clone();
            let extract = tokio::task::spawn_blocking(move || {
                let extracted = archive::extract(&mut archive, &entry, |chunk| {
                    tx.blocking_send(Ok(Bytes::copy_from_slice(chunk)))
                        .map_err(|_| Error::unavailable("storage ended the upload"))
                });
                if let Err(err) = &extracted {
                    // Through the stream, so storage drops the partial blob.
                    let _ = tx.blocking_send(Err(err.clone()));
                }
                (archive, extracted)
            });
            let uploaded = self.upload(caller, ReceiverStream::new(rx)).await;
            let (returned, extracted) = extract
                .await
                .map_err(|err| Error::internal(format!("reading the archive: {err}")))?;
            archive = returned;
            // Storage's refusal (e.g. over the size limit) is the reason when both failed; an
            // extraction error aborts the upload through the stream and comes back as its error.
            let blob = uploaded
                .and_then(|blob| extracted.map(|()| blob))
                .map_err(|err| {
                    Error::new(err.code, format!("zip entry {name:?}: {}", err.message))
                })?;
            inputs.push(ImageInput {
                blob_id: blob.id,
                name,
                ..Default::default()
            });
        }
        Ok(inputs)
    }

    /// The limits an archive is read with when `taken` images of the same submit came
    /// before it: together they stay within one job.
    pub fn zip_limits(&self, taken: usize) -> ZipLimits {
        ZipLimits {
            max_entries: self.settings.max_files_per_job.saturating_sub(taken),
            max_total_bytes: self.settings.max_zip_total_bytes,
            max_entry_bytes: self.settings.max_upload_bytes,
            max_ratio: self.settings.max_zip_ratio,
        }
    }

    /// Moves the URLs of `request.url_list` (text, one per line, or CSV with a `url` column)
    /// to the end of its inputs and empties it, so the scheduler gets inputs only.
    pub fn take_url_list(&self, request: &mut SubmitJobRequest) -> Result<(), Error> {
        let text = std::mem::take(&mut request.url_list);
        let urls = self.parse_url_list(&text, request.inputs.len())?;
        request.inputs.extend(urls);
        Ok(())
    }

    /// A URL list sent whole (gRPC's `url_list`), its inputs numbered from `first_index`.
    /// REST streams its list instead ([`urls::ListReader`]).
    pub fn parse_url_list(&self, text: &str, first_index: usize) -> Result<Vec<ImageInput>, Error> {
        if text.len() > MAX_URL_LIST_BYTES {
            return Err(Error::too_large(format!(
                "url list over {MAX_URL_LIST_BYTES} bytes: send a longer one to POST /api/v1/jobs, which streams it"
            )));
        }
        urls::parse_list(text, first_index, self.settings.max_urls_per_list)
    }

    /// Submits `request` as exactly one job: refused when it has more inputs than one job
    /// may hold ([`crate::submission::Submission`] splits a long URL list instead).
    pub async fn submit_one(
        &self,
        caller: &Caller,
        request: SubmitJobRequest,
    ) -> Result<Job, Error> {
        let per_job = self.settings.max_files_per_job;
        if request.inputs.len() > per_job {
            return Err(Error::too_large(format!(
                "too many images: {}, at most {per_job} per job; a batch submit splits a long url list",
                request.inputs.len()
            )));
        }
        self.submit(caller, request).await
    }

    /// Submits one job. URL inputs are checked for form here (where they may be fetched
    /// from is the workers' check).
    pub async fn submit(
        &self,
        caller: &Caller,
        mut request: SubmitJobRequest,
    ) -> Result<Job, Error> {
        // Whatever the client sent: a job belongs to the key that made it, and only an
        // admin's job (or any, running open) may use blobs other keys uploaded.
        request.owner = caller.owner().to_string();
        request.admin = caller.admin;
        // Chosen here, so the scheduler after one that died mid-submit finds the job the
        // first stored and finishes it instead of making a second.
        request.job_id = ulid::Ulid::new().to_string();
        for (i, input) in request.inputs.iter_mut().enumerate() {
            if !input.url.is_empty() {
                let url = urls::check_url(&input.url)
                    .map_err(|message| Error::invalid(format!("input {i}: {message}")))?;
                input.url = url.into();
            }
        }
        self.check_capabilities(&request).await?;
        Ok(self
            .scheduler
            .call(|mut scheduler| {
                let request = request.clone();
                async move { scheduler.submit_job(request).await }
            })
            .await?)
    }

    /// Refuses a pipeline with an op no running filter is configured for: `describe` needs
    /// `--ai-endpoint`, `remove_background` a filter with its model (`--model-dir`). With no
    /// filter running at all the job is taken and waits for one, as any job does; the filter
    /// that gets it fails the image if it cannot run the op.
    async fn check_capabilities(&self, request: &SubmitJobRequest) -> Result<(), Error> {
        // An invalid pipeline is the scheduler's to refuse, with its full message.
        let Ok(pipeline) = Pipeline::from_proto(&request.pipeline) else {
            return Ok(());
        };
        let describes = pipeline.describes();
        let models = pipeline.models();
        if describes.is_none() && models.is_empty() {
            return Ok(());
        }
        let workers = self.all_workers().await.unwrap_or_default();
        if workers.is_empty() {
            return Ok(());
        }
        let offered = |capability: &str| {
            workers
                .iter()
                .any(|worker| worker.capabilities.iter().any(|c| c == capability))
        };
        if let Some(position) = describes
            && !offered("describe")
        {
            return Err(Error::invalid(format!(
                "op {position} (describe): no running filter has an AI endpoint; start the filters with --ai-endpoint (and the key in PIXELMESH_AI_API_KEY)"
            )));
        }
        for (position, model) in models {
            if !offered(&remove_background::model_capability(model)) {
                let mut known: Vec<&str> = workers
                    .iter()
                    .flat_map(|worker| &worker.capabilities)
                    .filter_map(|c| remove_background::capability_model(c))
                    .collect();
                known.sort_unstable();
                known.dedup();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                return Err(Error::invalid(format!(
                    "op {position} (remove_background): no running filter has the model {model:?} (models offered: {known}); put {model}.onnx in the filters' --model-dir"
                )));
            }
        }
        Ok(())
    }

    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Job, Error> {
        self.summary(caller, id).await?;
        let request = pixelmesh_proto::v1::CancelJobRequest { id: id.to_string() };
        Ok(self
            .scheduler
            .call(|mut scheduler| {
                let request = request.clone();
                async move { scheduler.cancel_job(request).await }
            })
            .await?)
    }

    /// Cancels the job if it still runs (its queued tasks are purged; tasks in flight find
    /// it gone), then deletes it and the blobs no other job uses.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<DeleteJobResponse, Error> {
        match self.cancel(caller, id).await {
            // It had ended already: nothing to cancel.
            Err(err) if err.code == ErrorCode::FailedPrecondition => {}
            cancelled => {
                cancelled?;
            }
        }
        let request = JobRequest { id: id.to_string() };
        Ok(self.storage.clone().delete_job(request).await?.into_inner())
    }

    /// The job's summary, if `caller` may see the job; another key's job is not found, so
    /// its existence is not revealed either.
    pub async fn summary(&self, caller: &Caller, id: &str) -> Result<JobSummary, Error> {
        let request = JobRequest { id: id.to_string() };
        let summary = self
            .storage
            .clone()
            .get_job_summary(request)
            .await?
            .into_inner();
        check_access(caller, id, &summary)?;
        Ok(summary)
    }

    pub async fn pause(&self, caller: &Caller, id: &str) -> Result<Job, Error> {
        self.summary(caller, id).await?;
        let request = pixelmesh_proto::v1::PauseJobRequest { id: id.to_string() };
        Ok(self
            .scheduler
            .call(|mut scheduler| {
                let request = request.clone();
                async move { scheduler.pause_job(request).await }
            })
            .await?)
    }

    pub async fn resume(&self, caller: &Caller, id: &str) -> Result<Job, Error> {
        self.summary(caller, id).await?;
        let request = pixelmesh_proto::v1::ResumeJobRequest { id: id.to_string() };
        Ok(self
            .scheduler
            .call(|mut scheduler| {
                let request = request.clone();
                async move { scheduler.resume_job(request).await }
            })
            .await?)
    }

    pub async fn retry(&self, caller: &Caller, id: &str) -> Result<Job, Error> {
        self.summary(caller, id).await?;
        let request = pixelmesh_proto::v1::RetryJobRequest { id: id.to_string() };
        Ok(self
            .scheduler
            .call(|mut scheduler| {
                let request = request.clone();
                async move { scheduler.retry_job(request).await }
            })
            .await?)
    }

    pub async fn job(&self, caller: &Caller, id: &str) -> Result<Job, Error> {
        let request = JobRequest { id: id.to_string() };
        let job = self.storage.clone().get_job(request).await?.into_inner();
        check_access(
            caller,
            id,
            job.summary.as_ref().unwrap_or(&JobSummary::default()),
        )?;
        Ok(job)
    }

    /// A page of jobs, newest first, filtered by batch and states, with the counts per state
    /// of every job (not only the page's).
    pub async fn list(
        &self,
        caller: &Caller,
        request: ListJobsRequest,
    ) -> Result<ListJobsResponse, Error> {
        let owner = owner_filter(caller);
        let query = ListJobsQuery {
            limit: request.limit.min(MAX_LIST_LIMIT),
            before: request.before,
            parent_id: request.parent_id,
            states: request.states,
            owner: owner.clone(),
        };
        let mut storage = self.storage.clone();
        let jobs = storage.list_jobs(query).await?.into_inner().jobs;
        let counts = storage
            .count_jobs(CountJobsRequest { owner })
            .await?
            .into_inner();
        Ok(ListJobsResponse {
            jobs,
            counts: Some(counts),
        })
    }

    /// Every job of batch `parent_id`, oldest first.
    pub async fn batch(&self, caller: &Caller, parent_id: &str) -> Result<Vec<JobSummary>, Error> {
        let mut jobs: Vec<JobSummary> = Vec::new();
        loop {
            let query = ListJobsQuery {
                limit: MAX_LIST_LIMIT,
                before: jobs.last().map(|job| job.id.clone()).unwrap_or_default(),
                parent_id: parent_id.to_string(),
                owner: owner_filter(caller),
                ..Default::default()
            };
            let page = self
                .storage
                .clone()
                .list_jobs(query)
                .await?
                .into_inner()
                .jobs;
            let full = page.len() == MAX_LIST_LIMIT as usize;
            jobs.extend(page);
            if !full {
                break;
            }
        }
        if jobs.is_empty() {
            return Err(Error::not_found(format!("batch {parent_id} not found")));
        }
        jobs.reverse();
        Ok(jobs)
    }

    /// An export of batch `parent_id`: `head`, then `rows` of each job, oldest job first.
    /// Each job is read from storage once the one before it is sent, so however long the
    /// batch, one job's export is held at a time.
    pub async fn batch_export(
        &self,
        caller: &Caller,
        parent_id: &str,
        head: Vec<u8>,
        rows: fn(&Job) -> Vec<u8>,
    ) -> Result<BoxStream<'static, Result<Bytes, Error>>, Error> {
        let jobs = self.batch(caller, parent_id).await?;
        let (mesh, caller) = (self.clone(), caller.clone());
        let bodies = futures::stream::iter(jobs).then(move |summary| {
            let (mesh, caller) = (mesh.clone(), caller.clone());
            async move {
                let job = mesh.job(&caller, &summary.id).await?;
                Ok(Bytes::from(rows(&job)))
            }
        });
        let head = futures::stream::iter((!head.is_empty()).then(|| Ok(Bytes::from(head))));
        Ok(head.chain(bodies).boxed())
    }

    /// Batch `parent_id` as one view: its jobs, oldest first, their summed counts and
    /// [`batch_state`].
    pub async fn batch_view(&self, caller: &Caller, parent_id: &str) -> Result<Batch, Error> {
        let jobs = self.batch(caller, parent_id).await?;
        let sum = |count: fn(&JobSummary) -> u32| jobs.iter().map(count).sum::<u32>();
        Ok(Batch {
            id: parent_id.to_string(),
            state: batch_state(&jobs) as i32,
            total: sum(|job| job.total),
            done: sum(|job| job.done),
            failed: sum(|job| job.failed),
            cancelled: sum(|job| job.cancelled),
            jobs,
        })
    }

    /// Progress of job `id` as events ordered by job version, ending after the event that
    /// reports a final state. With `after` 0 the first event is the job's current state; a
    /// watcher resuming from version `after` first gets every image event it missed (from
    /// storage), then the current state. Dropping the stream stops the relay.
    pub async fn watch(
        &self,
        caller: &Caller,
        id: &str,
        after: u64,
    ) -> Result<ReceiverStream<Result<JobEvent, Error>>, Error> {
        // Subscribe before reading storage, so no change falls between the two.
        let mut events = self.fanout.subscribe(&nats::progress_subject(id)).await?;
        let mut watch = Watch {
            storage: self.storage.clone(),
            request: JobRequest { id: id.to_string() },
            last: after,
        };
        let snapshot = watch.summary().await?;
        check_access(caller, id, &snapshot)?;
        // A version from another life of the job store (or made up) resumes nothing.
        if watch.last > snapshot.version {
            watch.last = 0;
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let caught_up = if watch.last == 0 {
                watch.last = snapshot.version;
                let finished = snapshot.state().is_final();
                let first = JobEvent {
                    summary: Some(snapshot),
                    image: None,
                };
                if tx.send(Ok(first)).await.is_err() || finished {
                    return;
                }
                Ok(false)
            } else {
                watch.catch_up(&tx).await
            };
            if !matches!(caught_up, Ok(false)) {
                if let Err(err) = caught_up {
                    let _ = tx.send(Err(err)).await;
                }
                return;
            }
            loop {
                let next = tokio::select! {
                    // The client left: stop now, not at the next event or resync.
                    () = tx.closed() => return,
                    next = tokio::time::timeout(WATCH_RESYNC, events.recv()) => next,
                };
                let behind = match next {
                    Ok(Delivery::Message(message)) => match JobEvent::decode(message.payload) {
                        Ok(event) => {
                            let version = event.summary.as_ref().map_or(0, |s| s.version);
                            if version <= watch.last {
                                continue;
                            }
                            if version > watch.last + 1 {
                                // A change went by unheard (NATS core may drop, or the
                                // scheduler published out of order): storage has it.
                                true
                            } else {
                                watch.last = version;
                                let finished =
                                    event.summary.as_ref().is_some_and(|s| s.state().is_final());
                                if tx.send(Ok(event)).await.is_err() || finished {
                                    return;
                                }
                                false
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "undecodable progress event");
                            true
                        }
                    },
                    // Events went by while this watcher was behind: storage has them.
                    Ok(Delivery::Missed(_)) => true,
                    Ok(Delivery::Closed) => return,
                    Err(_) => match watch.summary().await {
                        Ok(summary) => summary.version > watch.last,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    },
                };
                if behind {
                    match watch.catch_up(&tx).await {
                        Ok(false) => {}
                        Ok(true) => return,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// One output image: its description, the image's name, and its bytes in chunks.
    pub async fn download(
        &self,
        caller: &Caller,
        job_id: &str,
        key: OutputKey<'_>,
    ) -> Result<
        (
            Output,
            String,
            impl Stream<Item = Result<Bytes, Error>> + use<>,
        ),
        Error,
    > {
        let image = self.image(caller, job_id, key).await?;
        let index = image.index;
        let output = match (image.state(), &image.output) {
            (ImageState::Done, Some(output)) => output.clone(),
            (ImageState::Failed, _) => {
                return Err(Error::not_found(format!(
                    "image {index} of job {job_id} failed: {}",
                    image.error
                )));
            }
            (state, _) => {
                return Err(Error::not_found(format!(
                    "image {index} of job {job_id} has no output ({})",
                    state.label()
                )));
            }
        };
        let chunks = self.blob(output.blob_id.clone()).await?;
        Ok((output, image.name.clone(), chunks))
    }

    /// One image of job `job_id`, if `caller` may see the job: storage reads that image's
    /// record alone, not the job's every image with its analysis. Another key's job is not
    /// found, whether or not it has the image.
    async fn image(
        &self,
        caller: &Caller,
        job_id: &str,
        key: OutputKey<'_>,
    ) -> Result<Image, Error> {
        let (index, name) = match key {
            OutputKey::Index(index) => (index, String::new()),
            OutputKey::Name(name) => (0, name.to_string()),
        };
        let request = GetImageRequest {
            job_id: job_id.to_string(),
            index,
            name,
        };
        let found = self.storage.clone().get_image(request).await?.into_inner();
        check_access(
            caller,
            job_id,
            found.summary.as_ref().unwrap_or(&JobSummary::default()),
        )?;
        found
            .image
            .ok_or_else(|| Error::not_found(format!("job {job_id} has no image {key}")))
    }

    /// A stored blob's bytes in chunks.
    async fn blob(&self, id: String) -> Result<BoxStream<'static, Result<Bytes, Error>>, Error> {
        blob_chunks(&self.storage, self.blobs.as_ref(), id).await
    }

    /// Image `index`'s input as submitted: its name and its bytes in chunks.
    pub async fn input(
        &self,
        caller: &Caller,
        job_id: &str,
        index: u32,
    ) -> Result<(String, impl Stream<Item = Result<Bytes, Error>> + use<>), Error> {
        let image = self.image(caller, job_id, OutputKey::Index(index)).await?;
        if image.input_blob_id.is_empty() {
            return Err(Error::not_found(format!(
                "image {index} of job {job_id} was fetched by url: no stored input"
            )));
        }
        let chunks = self.blob(image.input_blob_id.clone()).await?;
        Ok((image.name.clone(), chunks))
    }

    /// Every job's progress events and every worker change, for dashboards: first a
    /// `Worker` per live worker, then changes as they happen. A worker that stops beating
    /// (killed) is reported gone once its heartbeat expires. Dropping the stream stops it.
    /// Every job's events that `caller` may see, and worker changes.
    pub async fn feed(&self, caller: &Caller) -> Result<ReceiverStream<FeedEvent>, Error> {
        let caller = caller.clone();
        let mut progress = self.fanout.subscribe(nats::ALL_PROGRESS).await?;
        // Heartbeats as NATS core sees them land on the bucket's subjects: one subscription
        // shared by every feed, where a KV watch would be a consumer per feed. Subscribed
        // before the live workers are listed, so no beat falls between the two.
        let mut beats = self.fanout.subscribe(&workers_subjects()).await?;
        let live = self.all_workers().await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut seen: HashMap<String, Instant> = HashMap::new();
            for worker in live {
                seen.insert(worker.id.clone(), Instant::now());
                if tx
                    .send(FeedEvent::Worker(worker_view(&caller, worker)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let mut sweep = tokio::time::interval(FEED_SWEEP);
            loop {
                let event = tokio::select! {
                    // The client left: stop now, not at the next event.
                    () = tx.closed() => return,
                    delivery = progress.recv() => match delivery {
                        Delivery::Message(message) => match JobEvent::decode(message.payload) {
                            Ok(event) => {
                                let owner = event.summary.as_ref().map(|s| s.owner.as_str());
                                if !caller.may_access(owner.unwrap_or_default()) {
                                    continue;
                                }
                                FeedEvent::Job(Box::new(event))
                            }
                            Err(_) => continue,
                        },
                        // A dashboard's feed has no history to resync from: it goes on.
                        Delivery::Missed(missed) => {
                            tracing::debug!(missed, "feed fell behind progress events");
                            continue;
                        }
                        Delivery::Closed => return,
                    },
                    delivery = beats.recv() => match delivery {
                        Delivery::Message(message) => match worker_change(message) {
                            Some(FeedEvent::Worker(worker)) => {
                                seen.insert(worker.id.clone(), Instant::now());
                                FeedEvent::Worker(worker_view(&caller, worker))
                            }
                            Some(FeedEvent::WorkerGone(id)) => {
                                seen.remove(&id);
                                FeedEvent::WorkerGone(id)
                            }
                            _ => continue,
                        },
                        // The next beat of each worker brings it back.
                        Delivery::Missed(missed) => {
                            tracing::debug!(missed, "feed fell behind worker heartbeats");
                            continue;
                        }
                        Delivery::Closed => return,
                    },
                    _ = sweep.tick() => {
                        // KV expiry tells no watcher: a killed worker just stops beating.
                        let gone: Vec<String> = seen
                            .iter()
                            .filter(|(_, at)| at.elapsed() > nats::HEARTBEAT_TTL)
                            .map(|(id, _)| id.clone())
                            .collect();
                        for id in gone {
                            seen.remove(&id);
                            if tx.send(FeedEvent::WorkerGone(id)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Every output of job `id` as one ZIP, written while each output streams from storage
    /// (never whole in memory), then `manifest.json` and `manifest.csv` with a row per image
    /// (failed ones too, with their error). An error part-way ends the stream with it.
    pub async fn bundle(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<ReceiverStream<Result<Bytes, Error>>, Error> {
        let job = self.job(caller, id).await?;
        let (storage, blobs) = (self.storage.clone(), self.blobs.clone());
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            if let Err(err) = write_bundle(job, storage, blobs, &tx).await {
                let _ = tx.send(Err(err)).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Live workers, from their heartbeats, as `caller` may see them ([`worker_view`]).
    pub async fn workers(&self, caller: &Caller) -> Result<Vec<Worker>, Error> {
        let workers = self.all_workers().await?;
        Ok(workers
            .into_iter()
            .map(|worker| worker_view(caller, worker))
            .collect())
    }

    /// Live workers, from their heartbeats, whole: for the gateway's own gauges.
    async fn all_workers(&self) -> Result<Vec<Worker>, Error> {
        let js = async_nats::jetstream::new(self.nats.clone());
        // Filters create the bucket: while NATS answers, a missing one means no filter yet.
        let bucket = match js.get_key_value(nats::WORKERS_BUCKET).await {
            Ok(bucket) => bucket,
            Err(_) if self.nats_connected() => return Ok(Vec::new()),
            Err(err) => return Err(Error::unavailable(format!("reading workers: {err}"))),
        };
        let mut keys = bucket
            .keys()
            .await
            .map_err(|err| Error::unavailable(format!("listing workers: {err}")))?;
        let mut workers = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(Some(value)) = bucket.get(&key).await
                && let Ok(worker) = Worker::decode(value)
            {
                workers.push(worker);
            }
        }
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }
}

/// The subjects the heartbeat bucket's puts and deletes are published on.
fn workers_subjects() -> String {
    format!("$KV.{}.>", nats::WORKERS_BUCKET)
}

/// A heartbeat bucket message as the feed reports it: a put is the worker's beat, a delete
/// or purge (a worker stopping) its departure. `None` for what cannot be read.
fn worker_change(message: async_nats::Message) -> Option<FeedEvent> {
    let prefix = format!("$KV.{}.", nats::WORKERS_BUCKET);
    let key = message.subject.as_str().strip_prefix(&prefix)?.to_string();
    let operation = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get("KV-Operation"))
        .map(|value| value.as_str().to_string());
    match operation.as_deref() {
        Some("DEL" | "PURGE") => Some(FeedEvent::WorkerGone(key)),
        _ => Worker::decode(message.payload).ok().map(FeedEvent::Worker),
    }
}

/// A worker as `caller` may see it: its last error for admins only. That error is one task's
/// and may carry another user's URL (query secrets included), file name or blob ids, while
/// the worker list is shared by every key. The other fields are the worker's own: id, host,
/// version, slots, counts and times.
pub fn worker_view(caller: &Caller, mut worker: Worker) -> Worker {
    if !caller.admin {
        worker.last_error.clear();
    }
    worker
}

/// A blob's bytes in chunks: from the shared store when there is one, else as storage
/// streams them.
pub(crate) async fn blob_chunks(
    storage: &Storage,
    blobs: Option<&BlobStore>,
    id: String,
) -> Result<BoxStream<'static, Result<Bytes, Error>>, Error> {
    if let Some(blobs) = blobs {
        let id = BlobId::parse(&id)?;
        return Ok(blobs.reader(&id).await?.chunks);
    }
    Ok(storage
        .clone()
        .get_blob(GetBlobRequest { id })
        .await?
        .into_inner()
        .map(|chunk| chunk.map(|c| Bytes::from(c.chunk)).map_err(Error::from))
        .boxed())
}

/// [`Mesh::upload`] into the shared store: the bytes go there, then storage records the
/// blob with its owner and image header (so a submit's checks need no read of the store).
async fn put_direct<S>(
    blobs: &BlobStore,
    mut storage: Storage,
    meta: BlobMeta,
    chunks: S,
) -> Result<BlobInfo, Error>
where
    S: Stream<Item = Result<Bytes, Error>> + Send,
{
    let head = std::sync::Mutex::new(Vec::new());
    let chunks = chunks.inspect(|chunk| {
        if let (Ok(chunk), Ok(mut head)) = (chunk, head.lock()) {
            pixelmesh_blobs::extend_head(&mut head, chunk);
        }
    });
    let stored = blobs.put_stream(chunks, meta.max_bytes).await?;
    let head = head.into_inner().unwrap_or_default();
    let info = pixelmesh_blobs::info(stored.id.as_str(), stored.size, &head);
    storage
        .record_blob(RecordBlobRequest {
            blob: Some(info.clone()),
            owner: meta.owner,
        })
        .await?;
    Ok(info)
}

/// [`Mesh::upload`]'s work: `chunks` into storage as a blob described by `meta`.
async fn put_blob<S>(mut storage: Storage, meta: BlobMeta, chunks: S) -> Result<BlobInfo, Error>
where
    S: Stream<Item = Result<Bytes, Error>> + Send,
{
    let (tx, rx) = mpsc::channel::<Feed>(4);
    let put = tokio::spawn(
        async move {
            storage
                .put_blob(put_parts(meta, rx))
                .await
                .map(tonic::Response::into_inner)
                .map_err(Error::from)
        }
        .in_current_span(),
    );
    let answer = |put: tokio::task::JoinHandle<Result<BlobInfo, Error>>| async move {
        put.await
            .map_err(|err| Error::internal(format!("uploading to storage: {err}")))?
    };
    futures::pin_mut!(chunks);
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) if chunk.is_empty() => {}
            Ok(chunk) => {
                if tx.send(Feed::Chunk(chunk)).await.is_err() {
                    // Storage ended the call (e.g. over the size limit); its answer says why.
                    return answer(put).await;
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "upload aborted");
                let _ = tx.send(Feed::Abort(err.message.clone())).await;
                // Storage's answer to an abort is an error that says nothing new; waiting for
                // it means the partial blob is gone before the client hears why.
                let _ = answer(put).await;
                return Err(err);
            }
        }
    }
    // Fails only when storage ended the call already; then its answer says why.
    let _ = tx.send(Feed::End).await;
    answer(put).await
}

/// What the request side of an upload hands the task that calls storage.
enum Feed {
    Chunk(Bytes),
    /// Every chunk was sent: the upload is whole.
    End,
    /// The upload failed on the request side, for this reason: storage drops what it has.
    Abort(String),
}

/// The messages of one PutBlob call: `meta`, each chunk fed, then a normal end of stream
/// after [`Feed::End`], or an abort part when the feed fails or its sender goes away without
/// an end (the request's future was dropped). Never a truncated blob, never a reset stream.
fn put_parts(
    meta: BlobMeta,
    feed: mpsc::Receiver<Feed>,
) -> impl Stream<Item = PutBlobRequest> + Send + 'static {
    let message = |part| PutBlobRequest { part: Some(part) };
    let abort = move |reason: &str| {
        message(Part::Abort(BlobAbort {
            reason: reason.to_string(),
        }))
    };
    let parts = futures::stream::unfold(Some(feed), move |feed| async move {
        let mut feed = feed?;
        match feed.recv().await {
            Some(Feed::Chunk(chunk)) => Some((message(Part::Chunk(chunk.to_vec())), Some(feed))),
            Some(Feed::End) => None,
            Some(Feed::Abort(reason)) => Some((abort(&reason), None)),
            None => Some((abort("the client went away"), None)),
        }
    });
    futures::stream::once(async move { message(Part::Meta(meta)) }).chain(parts)
}

/// A channel whose calls each run to their answer's head in a task of their own, so a
/// request future dropped mid-call (its client hung up) does not reset the call's HTTP/2
/// stream before the peer has taken it up: hyper's guard against reset floods counts exactly
/// those, and closes the connection every user's calls share once there are too many. A
/// stream dropped later (a download whose client left) is still reset, which the guard
/// does not count.
#[derive(Debug, Clone)]
pub struct Detached<S>(S);

impl<S> Detached<S> {
    pub fn new(inner: S) -> Self {
        Detached(inner)
    }
}

impl<S, B> tower::Service<axum::http::Request<B>> for Detached<S>
where
    S: tower::Service<axum::http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        // Called here, in the caller's span, so the trace context goes with the request.
        let call = self.0.call(request);
        let task = tokio::spawn(
            async move { call.await.map_err(Into::<tower::BoxError>::into) }.in_current_span(),
        );
        Box::pin(async move { task.await? })
    }
}

fn describe_gauges() {
    use metrics::describe_gauge;
    describe_gauge!(
        "pixelmesh_queue_pending_tasks",
        "tasks waiting for a worker (JetStream)"
    );
    describe_gauge!(
        "pixelmesh_queue_in_flight_tasks",
        "tasks a worker holds, not yet acknowledged"
    );
    describe_gauge!(
        "pixelmesh_queue_redelivered_tasks",
        "tasks delivered more than once and not yet acknowledged"
    );
    describe_gauge!(
        "pixelmesh_workers_online",
        "filter workers with a live heartbeat"
    );
    describe_gauge!(
        "pixelmesh_workers_busy",
        "workers running at least one task"
    );
    describe_gauge!(
        "pixelmesh_worker_slots",
        "tasks the online workers can run at once"
    );
    describe_gauge!(
        "pixelmesh_runtime_alive_tasks",
        "tokio tasks alive in this process"
    );
    describe_gauge!(
        "pixelmesh_nats_shared_subscriptions",
        "nats subjects this gateway subscribes to for its watchers, each shared by all of them"
    );
}

/// One state for a batch's jobs: queued while all are; running while any is queued or
/// running; paused while the others are paused or ended. Once all ended: cancelled if all
/// were, failed if every image failed, completed_with_errors if any image failed or was
/// cancelled, else completed.
pub fn batch_state(jobs: &[JobSummary]) -> JobState {
    let states = || jobs.iter().map(JobSummary::state);
    let sum = |count: fn(&JobSummary) -> u32| jobs.iter().map(count).sum::<u32>();
    let (total, failed, cancelled) = (
        sum(|job| job.total),
        sum(|job| job.failed),
        sum(|job| job.cancelled),
    );
    if states().all(|state| state == JobState::Queued) {
        JobState::Queued
    } else if states().any(|state| !state.is_final() && state != JobState::Paused) {
        JobState::Running
    } else if states().any(|state| state == JobState::Paused) {
        JobState::Paused
    } else if states().all(|state| state == JobState::Cancelled) {
        JobState::Cancelled
    } else if failed == total {
        JobState::Failed
    } else if failed > 0 || cancelled > 0 {
        JobState::CompletedWithErrors
    } else {
        JobState::Completed
    }
}

/// Writes `chunks` to an unnamed temp file (gone when closed) and returns it rewound: a
/// ZIP's directory sits at its end, so an archive is read from disk, never held in memory.
/// More than `max_bytes` is refused as soon as it arrives; an error from `chunks` ends the
/// spooling with it.
pub async fn spool<S>(chunks: S, max_bytes: u64) -> Result<std::fs::File, Error>
where
    S: Stream<Item = Result<Bytes, Error>>,
{
    let file = tempfile::tempfile()
        .map_err(|err| Error::internal(format!("creating a temp file for the archive: {err}")))?;
    let mut file = tokio::fs::File::from_std(file);
    let write_error = |err: std::io::Error| Error::internal(format!("spooling the archive: {err}"));
    let mut spooled: u64 = 0;
    futures::pin_mut!(chunks);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        spooled += chunk.len() as u64;
        if spooled > max_bytes {
            return Err(Error::too_large(format!("archive over {max_bytes} bytes")));
        }
        file.write_all(&chunk).await.map_err(write_error)?;
    }
    file.flush().await.map_err(write_error)?;
    let mut file = file.into_std().await;
    std::io::Seek::rewind(&mut file).map_err(write_error)?;
    Ok(file)
}

/// Writes the bundle of `job` into `tx`; stops quietly when the client goes away.
async fn write_bundle(
    job: Job,
    storage: Storage,
    blobs: Option<BlobStore>,
    tx: &mpsc::Sender<Result<Bytes, Error>>,
) -> Result<(), Error> {
    let send = |bytes: Bytes| async move {
        tx.send(Ok(bytes))
            .await
            .map_err(|_| Error::unavailable("client went away"))
    };
    let mut zip = ZipStreamWriter::new();
    let mut taken: HashSet<String> = ["manifest.json", "manifest.csv"].map(String::from).into();
    let mut rows = Vec::with_capacity(job.images.len());
    for image in &job.images {
        let mut row = ManifestRow {
            index: image.index,
            input_name: image.name.clone(),
            output_name: String::new(),
            state: image.state().label().to_string(),
            size_bytes: 0,
            width: 0,
            height: 0,
            worker: image.worker_id.clone(),
            duration_ms: image.duration_ms,
            error: image.error.clone(),
        };
        if let (ImageState::Done, Some(output)) = (image.state(), &image.output) {
            let extension = bundle::extension(&output.content_type);
            let name = bundle::output_name(&image.name, image.index, extension, &mut taken);
            send(zip.start_entry(&name)?).await?;
            let mut chunks = blob_chunks(&storage, blobs.as_ref(), output.blob_id.clone()).await?;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                zip.data(&chunk);
                send(chunk).await?;
            }
            send(zip.finish_entry()).await?;
            row.output_name = name;
            row.size_bytes = output.size_bytes;
            row.width = output.width;
            row.height = output.height;
        }
        rows.push(row);
    }
    for (name, bytes) in [
        ("manifest.json", bundle::manifest_json(&rows)),
        ("manifest.csv", bundle::manifest_csv(&rows)),
    ] {
        send(zip.start_entry(name)?).await?;
        zip.data(&bytes);
        send(Bytes::from(bytes)).await?;
        send(zip.finish_entry()).await?;
    }
    send(zip.finish()).await?;
    Ok(())
}

/// Which image's output to download.
#[derive(Debug, Clone, Copy)]
pub enum OutputKey<'a> {
    Index(u32),
    /// The input's name; the first image of that name.
    Name(&'a str),
}

impl std::fmt::Display for OutputKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputKey::Index(index) => write!(f, "{index}"),
            OutputKey::Name(name) => write!(f, "named {name:?}"),
        }
    }
}

/// How often the feed looks for workers whose heartbeat expired.
const FEED_SWEEP: Duration = Duration::from_secs(5);

/// What the all-jobs feed reports.
pub enum FeedEvent {
    // Boxed: an event is several times the size of the others.
    Job(Box<JobEvent>),
    Worker(Worker),
    WorkerGone(String),
}

/// One watcher's position in a job's history.
struct Watch {
    storage: Storage,
    request: JobRequest,
    /// The version of the last event sent.
    last: u64,
}

impl Watch {
    async fn summary(&mut self) -> Result<JobSummary, Error> {
        Ok(self
            .storage
            .get_job_summary(self.request.clone())
            .await?
            .into_inner())
    }

    /// Sends, from storage, every image change after `last` in version order, then the
    /// job's current state. True when the watcher is done (final state, or gone).
    async fn catch_up(
        &mut self,
        tx: &mpsc::Sender<Result<JobEvent, Error>>,
    ) -> Result<bool, Error> {
        let job = self
            .storage
            .get_job(self.request.clone())
            .await?
            .into_inner();
        let summary = job.summary.unwrap_or_default();
        for image in changed_since(job.images, self.last) {
            let event = JobEvent {
                summary: Some(summary.clone()),
                image: Some(image),
            };
            if tx.send(Ok(event)).await.is_err() {
                return Ok(true);
            }
        }
        if summary.version <= self.last {
            return Ok(summary.state().is_final());
        }
        self.last = summary.version;
        let finished = summary.state().is_final();
        let event = JobEvent {
            summary: Some(summary),
            image: None,
        };
        Ok(tx.send(Ok(event)).await.is_err() || finished)
    }
}

/// The images whose last change came after version `after` and is worth an event of its own
/// (an outcome, or tile progress), in the order the changes happened. Cancelled images are
/// left to the job's counts.
fn changed_since(images: Vec<Image>, after: u64) -> Vec<Image> {
    let mut changed: Vec<Image> = images
        .into_iter()
        .filter(|image| {
            image.version > after
                && match image.state() {
                    ImageState::Done | ImageState::Failed => true,
                    ImageState::Pending => image.tiles_total > 0,
                    _ => false,
                }
        })
        .collect();
    changed.sort_by_key(|image| (image.version, image.index));
    changed
}

/// Another key's job answers like a job that does not exist.
fn check_access(caller: &Caller, id: &str, summary: &JobSummary) -> Result<(), Error> {
    if caller.may_access(&summary.owner) {
        Ok(())
    } else {
        Err(Error::not_found(format!("job {id} not found")))
    }
}

/// The owner a caller's lists are limited to: none for admins.
fn owner_filter(caller: &Caller) -> String {
    if caller.admin {
        String::new()
    } else {
        caller.owner().to_string()
    }
}

/// The version an event stands for: an image event's change, or the job's state.
pub fn event_version(event: &JobEvent) -> u64 {
    match (&event.image, &event.summary) {
        (Some(image), _) => image.version,
        (None, Some(summary)) => summary.version,
        (None, None) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(index: u32, state: ImageState, version: u64, tiles_total: u32) -> Image {
        Image {
            index,
            state: state as i32,
            version,
            tiles_total,
            ..Default::default()
        }
    }

    #[test]
    fn catch_up_replays_outcomes_and_tile_progress_after_the_version_in_order() {
        let images = vec![
            image(0, ImageState::Done, 9, 0),
            image(1, ImageState::Failed, 4, 0),
            image(2, ImageState::Done, 3, 0),
            image(3, ImageState::Pending, 7, 6),
            image(4, ImageState::Pending, 1, 0),
            image(5, ImageState::Cancelled, 10, 0),
        ];
        let replayed: Vec<(u32, u64)> = changed_since(images, 3)
            .iter()
            .map(|image| (image.index, image.version))
            .collect();
        assert_eq!(replayed, [(1, 4), (3, 7), (0, 9)]);
    }

    /// The state of a batch of jobs of two images each, given as (state, failed, cancelled).
    fn state_of(jobs: &[(JobState, u32, u32)]) -> JobState {
        let jobs: Vec<JobSummary> = jobs
            .iter()
            .map(|&(state, failed, cancelled)| JobSummary {
                state: state as i32,
                total: 2,
                done: 2 - failed - cancelled,
                failed,
                cancelled,
                ..Default::default()
            })
            .collect();
        batch_state(&jobs)
    }

    #[test]
    fn a_batch_runs_while_any_job_does_then_sums_its_outcomes() {
        use JobState::*;
        assert_eq!(state_of(&[(Queued, 0, 0), (Queued, 0, 0)]), Queued);
        assert_eq!(state_of(&[(Completed, 0, 0), (Queued, 0, 0)]), Running);
        assert_eq!(state_of(&[(Paused, 0, 0), (Running, 0, 0)]), Running);
        assert_eq!(state_of(&[(Paused, 0, 0), (Completed, 0, 0)]), Paused);
        assert_eq!(state_of(&[(Cancelled, 0, 2), (Cancelled, 0, 2)]), Cancelled);
        assert_eq!(state_of(&[(Failed, 2, 0), (Failed, 2, 0)]), Failed);
        let with_errors = CompletedWithErrors;
        assert_eq!(state_of(&[(Failed, 2, 0), (Completed, 0, 0)]), with_errors);
        assert_eq!(
            state_of(&[(Completed, 0, 0), (Cancelled, 0, 2)]),
            with_errors
        );
        assert_eq!(state_of(&[(Completed, 0, 0), (Completed, 0, 0)]), Completed);
    }

    /// What the fake storage saw of a PutBlob call, message by message.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Meta {
            owner: String,
        },
        Chunk(Vec<u8>),
        Abort(String),
        /// The request stream ended: normally, or after a reset.
        End,
        /// The sender reset the request stream. tonic reads a reset with CANCEL, which is
        /// what hyper sends for a dropped call, as a normal end of the stream, so storage
        /// could take a cut-off blob as whole: the reset is seen on the body, below tonic.
        Reset,
    }

    /// A storage that answers PutBlob only, as storage does: a blob for an upload that ends,
    /// an error for one that is aborted. It reports every message as it arrives.
    async fn fake_storage() -> (Storage, mpsc::UnboundedReceiver<Seen>) {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let resets = seen_tx.clone();
        let put = tower::service_fn(
            move |request: tonic::Request<tonic::Streaming<PutBlobRequest>>| {
                let seen = seen_tx.clone();
                async move {
                    let mut parts = request.into_inner();
                    let (mut size, mut aborted) = (0, false);
                    loop {
                        let part = match parts.message().await {
                            Ok(Some(message)) => message.part,
                            Ok(None) => break,
                            Err(status) => return Err(status),
                        };
                        let _ = seen.send(match part {
                            Some(Part::Meta(meta)) => Seen::Meta { owner: meta.owner },
                            Some(Part::Chunk(chunk)) => {
                                size += chunk.len() as u64;
                                Seen::Chunk(chunk)
                            }
                            Some(Part::Abort(abort)) => {
                                aborted = true;
                                Seen::Abort(abort.reason)
                            }
                            None => continue,
                        });
                    }
                    let _ = seen.send(Seen::End);
                    if aborted {
                        return Err(tonic::Status::aborted("upload aborted"));
                    }
                    Ok(tonic::Response::new(BlobInfo {
                        id: "blob".into(),
                        size_bytes: size,
                        ..Default::default()
                    }))
                }
            },
        );
        let route = move |request: axum::extract::Request| {
            let put = put.clone();
            let seen = resets.clone();
            let request = request.map(|body| {
                axum::body::Body::new(http_body_util::BodyExt::map_err(body, move |err| {
                    let _ = seen.send(Seen::Reset);
                    err
                }))
            });
            async move {
                let codec = tonic_prost::ProstCodec::<BlobInfo, PutBlobRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                grpc.client_streaming(put, request)
                    .await
                    .map(axum::body::Body::new)
            }
        };
        let app =
            axum::Router::new().route("/pixelmesh.v1.Storage/PutBlob", axum::routing::post(route));
        let url = crate::protect::testing::serve(app).await;
        let channel = pixelmesh_common::grpc::channel(&url).expect("a channel");
        (StorageClient::new(Detached::new(channel)), seen)
    }

    fn alice() -> BlobMeta {
        BlobMeta {
            max_bytes: 0,
            owner: "alice".into(),
        }
    }

    async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("storage saw more in time")
            .expect("storage is up")
    }

    #[tokio::test]
    async fn an_upload_goes_to_storage_whole_and_ends_cleanly() {
        let (storage, mut seen) = fake_storage().await;
        let chunks = ["ab", "", "cd"].map(|chunk| Ok(Bytes::from(chunk)));
        let blob = put_blob(storage, alice(), futures::stream::iter(chunks))
            .await
            .expect("stored");
        assert_eq!(blob.size_bytes, 4);
        for expected in [
            Seen::Meta {
                owner: "alice".into(),
            },
            Seen::Chunk(b"ab".to_vec()),
            Seen::Chunk(b"cd".to_vec()),
            Seen::End,
        ] {
            assert_eq!(next(&mut seen).await, expected);
        }
    }

    #[tokio::test]
    async fn a_failed_upload_is_aborted_at_storage_not_cut_off() {
        let (storage, mut seen) = fake_storage().await;
        let chunks = [Ok(Bytes::from("ab")), Err(Error::invalid("the body broke"))];
        let err = put_blob(storage, alice(), futures::stream::iter(chunks))
            .await
            .expect_err("a broken body stored");
        assert_eq!(err.code, ErrorCode::InvalidArgument, "the body's error");
        assert_eq!(err.message, "the body broke");
        assert!(matches!(next(&mut seen).await, Seen::Meta { .. }));
        assert_eq!(next(&mut seen).await, Seen::Chunk(b"ab".to_vec()));
        assert_eq!(next(&mut seen).await, Seen::Abort("the body broke".into()));
        assert_eq!(next(&mut seen).await, Seen::End, "ended, not reset");
    }

    #[tokio::test]
    async fn an_upload_dropped_mid_way_is_aborted_and_the_connection_serves_on() {
        let (storage, mut seen) = fake_storage().await;
        let (tx, rx) = mpsc::channel::<Result<Bytes, Error>>(1);
        let upload = tokio::spawn(put_blob(storage.clone(), alice(), ReceiverStream::new(rx)));
        tx.send(Ok(Bytes::from("ab")))
            .await
            .expect("the upload reads");
        assert!(matches!(next(&mut seen).await, Seen::Meta { .. }));
        assert_eq!(next(&mut seen).await, Seen::Chunk(b"ab".to_vec()));
        // What hyper does with a request future when its HTTP/1 client hangs up.
        upload.abort();
        assert!(upload.await.expect_err("dropped").is_cancelled());
        assert_eq!(
            next(&mut seen).await,
            Seen::Abort("the client went away".into())
        );
        assert_eq!(next(&mut seen).await, Seen::End, "ended, not reset");
        drop(tx);

        // The same connection carries the next upload.
        let chunks = futures::stream::iter([Ok(Bytes::from("xyz"))]);
        let blob = put_blob(storage, alice(), chunks).await.expect("stored");
        assert_eq!(blob.size_bytes, 3);
    }

    #[test]
    fn only_admins_see_a_workers_last_error() {
        let worker = Worker {
            id: "w-1".into(),
            failed: 3,
            last_error: "fetching https://example.com/a.jpg?token=secret: 404".into(),
            ..Default::default()
        };
        let alice = Caller {
            key: Some("alice".into()),
            admin: false,
        };
        let seen = worker_view(&alice, worker.clone());
        assert_eq!(seen.last_error, "");
        assert_eq!((seen.id.as_str(), seen.failed), ("w-1", 3));
        let root = Caller {
            key: Some("root".into()),
            admin: true,
        };
        assert_eq!(worker_view(&root, worker.clone()), worker);
        assert_eq!(worker_view(&Caller::open(), worker.clone()), worker);
    }

    #[tokio::test]
    async fn spooling_stops_at_the_cap_and_rewinds_what_fits() {
        use std::io::Read as _;
        let chunks =
            |n: usize| futures::stream::iter((0..n).map(|i| Ok(Bytes::from(vec![i as u8; 10]))));
        let mut file = spool(chunks(3), 30).await.expect("30 bytes fit");
        let mut spooled = Vec::new();
        file.read_to_end(&mut spooled).expect("read back");
        assert_eq!(spooled.len(), 30);
        assert_eq!(&spooled[20..], [2; 10]);

        let err = spool(chunks(4), 30)
            .await
            .expect_err("40 bytes spooled under a 30-byte cap");
        assert_eq!(err.code, ErrorCode::ResourceExhausted);
        let failing =
            futures::stream::iter([Ok(Bytes::from_static(b"PK")), Err(Error::invalid("cut"))]);
        let err = spool(failing, 30)
            .await
            .expect_err("a broken stream spooled");
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }
}
