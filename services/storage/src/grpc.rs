//! `pixelmesh.v1.Storage`: converts wire types and calls the [`BlobStore`] and, through
//! [`Store`], the metadata: every change on the writer thread, every read on a blocking thread.

use std::{
    pin::Pin,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use pixelmesh_blobs::{BlobId, BlobStore};
use pixelmesh_common::media::IMAGE_HEADER_BYTES;
use pixelmesh_proto::{
    Error,
    v1::{
        BlobInfo, BlobStoreInfo, CheckBlobsRequest, CheckBlobsResponse, CountJobsRequest,
        CreateJobRequest, DeleteJobResponse, GetBlobRequest, GetBlobResponse, GetBlobStoreRequest,
        GetImageRequest, Job, JobCounts, JobImage, JobRequest, JobSummaries, JobSummary,
        ListJobsQuery, ListUnfinishedJobsRequest, PutBlobRequest, RecordBlobRequest,
        RecordResultRequest, RecordResultResponse, RequeueImagesRequest, operation,
        put_blob_request::Part, storage_server::Storage,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::store::Store;

/// Most blob ids one `CheckBlobs` may ask about: a job's images and its logos.
const MAX_CHECKED_BLOBS: usize = 100_000;

pub struct StorageService {
    blobs: BlobStore,
    /// The id in the blob store's marker.
    store_id: String,
    store: Store,
}

impl StorageService {
    pub fn new(blobs: BlobStore, store_id: String, store: Store) -> Self {
        StorageService {
            blobs,
            store_id,
            store,
        }
    }

    /// Removes what only `job` referred to: its outputs at once, its inputs and logos when
    /// they were not written lately (an upload for a job not submitted yet may share their
    /// content; the orphan sweep takes those later). Their owner records go with them.
    async fn remove_job_blobs(&self, job: Job) -> Result<DeleteJobResponse, Error> {
        let keep = self.store.read(|meta| meta.referenced_blobs()).await?;
        let now = SystemTime::now();
        // Collected before any await: iterator closures held across one make the future
        // not Send.
        let outputs: Vec<String> = job
            .images
            .iter()
            .filter_map(|image| image.output.as_ref().map(|o| o.blob_id.clone()))
            .collect();
        let inputs_and_logos: Vec<String> = job
            .images
            .iter()
            .map(|image| image.input_blob_id.clone())
            .chain(job.pipeline.iter().filter_map(|op| match &op.op {
                Some(operation::Op::Watermark(watermark)) => Some(watermark.logo.clone()),
                _ => None,
            }))
            .collect();
        let (mut count, mut bytes) =
            crate::gc::remove_if_unreferenced(&self.blobs, outputs, &keep, now).await;
        let cutoff = now.checked_sub(INPUT_DELETE_GRACE).unwrap_or(now);
        let (more, more_bytes) =
            crate::gc::remove_if_unreferenced(&self.blobs, inputs_and_logos, &keep, cutoff).await;
        count += more;
        bytes += more_bytes;
        let mut gone = Vec::new();
        let ids: Vec<String> = job
            .images
            .iter()
            .flat_map(|image| {
                let output = image.output.as_ref().map(|o| o.blob_id.clone());
                output.into_iter().chain([image.input_blob_id.clone()])
            })
            .collect();
        for id in ids {
            let Ok(blob) = BlobId::parse(&id) else {
                continue;
            };
            if !self.blobs.exists(&blob).await.unwrap_or(true) {
                gone.push(id);
            }
        }
        if !gone.is_empty() {
            self.store
                .write(move |meta| meta.forget_blobs(&gone))
                .await?;
        }
        Ok(DeleteJobResponse {
            blobs_removed: count as u32,
            bytes_removed: bytes,
        })
    }

    /// A stored blob's size and image header: as its upload recorded them, else read from
    /// its first bytes (a worker's output, or a blob stored before headers were recorded).
    /// A recorded blob is taken at its record's word: asking an object store about each of
    /// a 10,000-image job's inputs would cost as many round trips. Its record goes when the
    /// blob is deleted.
    async fn describe(&self, id: &BlobId, recorded: Option<BlobInfo>) -> Result<BlobInfo, Error> {
        if let Some(info) = recorded.filter(|info| info.size_bytes > 0) {
            return Ok(info);
        }
        let size = self.blobs.stat(id).await?;
        let head = self.blobs.head(id, IMAGE_HEADER_BYTES).await?;
        Ok(pixelmesh_blobs::info(id.as_str(), size, &head))
    }
}

/// A deleted job's inputs and logos written this recently stay (for the orphan sweep): an
/// upload for a job not submitted yet may have the same content, hence the same blob.
const INPUT_DELETE_GRACE: Duration = Duration::from_secs(600);

type BlobStream = Pin<Box<dyn Stream<Item = Result<GetBlobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Storage for StorageService {
    async fn put_blob(
        &self,
        request: Request<Streaming<PutBlobRequest>>,
    ) -> Result<Response<BlobInfo>, Status> {
        let mut parts = request.into_inner();
        // The first message carries the meta (older senders may start with a chunk).
        let (meta, first) = match parts.message().await? {
            Some(PutBlobRequest {
                part: Some(Part::Meta(meta)),
            }) => (meta, None),
            other => (Default::default(), other),
        };
        // The start of the file, for its image header.
        let head = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let aborted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let chunks = futures::stream::iter(first.map(Ok))
            .chain(parts)
            .filter_map({
                let (head, aborted) = (head.clone(), aborted.clone());
                move |part| {
                    let (head, aborted) = (head.clone(), aborted.clone());
                    async move {
                        match part {
                            Err(status) => Some(Err(Error::from(status))),
                            Ok(PutBlobRequest { part }) => match part {
                                Some(Part::Chunk(chunk)) => {
                                    if let Ok(mut head) = head.lock() {
                                        pixelmesh_blobs::extend_head(&mut head, &chunk);
                                    }
                                    Some(Ok(Bytes::from(chunk)))
                                }
                                Some(Part::Meta(_)) => Some(Err(Error::invalid(
                                    "meta must be the first message, sent once",
                                ))),
                                Some(Part::Abort(abort)) => {
                                    let reason: String = abort.reason.chars().take(200).collect();
                                    tracing::debug!(reason = %reason, "upload aborted by the sender");
                                    aborted.store(true, std::sync::atomic::Ordering::Relaxed);
                                    Some(Err(Error::unavailable(format!(
                                        "upload aborted: {reason}"
                                    ))))
                                }
                                None => None,
                            },
                        }
                    }
                }
            });
        // A stream error (client gone mid-upload) or an abort fails the put, which stores
        // nothing.
        let stored = match self.blobs.put_stream(chunks, meta.max_bytes).await {
            Ok(stored) => stored,
            Err(err) if aborted.load(std::sync::atomic::Ordering::Relaxed) => {
                return Err(Status::cancelled(err.message));
            }
            Err(err) => return Err(err.into()),
        };
        metrics::counter!("pixelmesh_storage_bytes_written_total").increment(stored.size);
        let head = head.lock().map(|head| head.clone()).unwrap_or_default();
        let info = pixelmesh_blobs::info(stored.id.as_str(), stored.size, &head);
        // Only uploads are recorded: a worker's output is owned through its job.
        if !meta.owner.is_empty() {
            let record = info.clone();
            let owner = meta.owner;
            self.store
                .write(move |meta| meta.add_blob(&record, &owner))
                .await?;
        }
        Ok(Response::new(info))
    }

    type GetBlobStream = BlobStream;

    async fn get_blob(
        &self,
        request: Request<GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let id = BlobId::parse(&request.into_inner().id)?;
        let reader = self.blobs.reader(&id).await?;
        let size_bytes = reader.size;
        let mut chunks = reader.chunks;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let message = match chunks.next().await.transpose() {
                    Ok(Some(chunk)) => {
                        metrics::counter!("pixelmesh_storage_bytes_read_total")
                            .increment(chunk.len() as u64);
                        Ok(GetBlobResponse {
                            size_bytes: if first { size_bytes } else { 0 },
                            chunk: chunk.to_vec(),
                        })
                    }
                    Ok(None) => return,
                    Err(err) => Err(Status::from(err)),
                };
                first = false;
                let failed = message.is_err();
                // A client that went away closes the channel and stops the reading.
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stat_blob(
        &self,
        request: Request<GetBlobRequest>,
    ) -> Result<Response<BlobInfo>, Status> {
        let id = BlobId::parse(&request.into_inner().id)?;
        let recorded = {
            let id = id.to_string();
            self.store.read(move |meta| meta.blob_info(&id)).await?
        };
        Ok(Response::new(self.describe(&id, recorded).await?))
    }

    async fn check_blobs(
        &self,
        request: Request<CheckBlobsRequest>,
    ) -> Result<Response<CheckBlobsResponse>, Status> {
        let CheckBlobsRequest { ids, owner, admin } = request.into_inner();
        if ids.len() > MAX_CHECKED_BLOBS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_CHECKED_BLOBS} blobs per check"
            )));
        }
        // Who may use what, and what uploads recorded, in one read.
        let access = self
            .store
            .read(move |meta| {
                ids.into_iter()
                    .map(|id| {
                        let Ok(blob) = BlobId::parse(&id) else {
                            return Ok(None);
                        };
                        if !admin && !meta.owns(&id, &owner)? {
                            return Ok(None);
                        }
                        Ok(Some((blob, meta.blob_info(&id)?)))
                    })
                    .collect::<Result<Vec<_>, Error>>()
            })
            .await?;
        let mut blobs = Vec::with_capacity(access.len());
        for entry in access {
            let info = match entry {
                None => BlobInfo::default(),
                Some((id, recorded)) => match self.describe(&id, recorded).await {
                    Ok(info) => info,
                    Err(err) if err.code == pixelmesh_proto::ErrorCode::NotFound => {
                        BlobInfo::default()
                    }
                    Err(err) => return Err(err.into()),
                },
            };
            blobs.push(info);
        }
        Ok(Response::new(CheckBlobsResponse { blobs }))
    }

    async fn record_blob(
        &self,
        request: Request<RecordBlobRequest>,
    ) -> Result<Response<BlobInfo>, Status> {
        let RecordBlobRequest { blob, owner } = request.into_inner();
        let blob = blob.ok_or_else(|| Status::invalid_argument("blob is missing"))?;
        let id = BlobId::parse(&blob.id)?;
        // The writer's word on the size is checked against the store: a role writing to
        // another store than storage's must not get a record of bytes storage cannot serve.
        let size = match self.blobs.stat(&id).await {
            Ok(size) => size,
            Err(err) if err.code == pixelmesh_proto::ErrorCode::NotFound => {
                return Err(Status::not_found(format!(
                    "blob {id} is not in storage's blob store {}",
                    self.blobs.url()
                )));
            }
            Err(err) => return Err(err.into()),
        };
        if size != blob.size_bytes {
            return Err(Status::invalid_argument(format!(
                "blob {id} is {size} bytes in the store, not {}",
                blob.size_bytes
            )));
        }
        metrics::counter!("pixelmesh_storage_bytes_written_total").increment(size);
        let record = blob.clone();
        self.store
            .write(move |meta| meta.add_blob(&record, &owner))
            .await?;
        Ok(Response::new(blob))
    }

    async fn get_blob_store(
        &self,
        _request: Request<GetBlobStoreRequest>,
    ) -> Result<Response<BlobStoreInfo>, Status> {
        Ok(Response::new(BlobStoreInfo {
            id: self.store_id.clone(),
            url: self.blobs.url().to_string(),
            max_blob_bytes: self.blobs.max_blob_bytes(),
        }))
    }

    async fn create_job(
        &self,
        request: Request<CreateJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let request = request.into_inner();
        let job = self.store.write(move |meta| meta.create(request)).await?;
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.store.read(move |meta| meta.job(&id)).await?,
        ))
    }

    async fn get_job_summary(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<JobSummary>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.store.read(move |meta| meta.summary(&id)).await?,
        ))
    }

    async fn get_image(
        &self,
        request: Request<GetImageRequest>,
    ) -> Result<Response<JobImage>, Status> {
        let GetImageRequest {
            job_id,
            index,
            name,
        } = request.into_inner();
        let (summary, image) = self
            .store
            .read(move |meta| meta.image(&job_id, index, &name))
            .await?;
        Ok(Response::new(JobImage {
            summary: Some(summary),
            image,
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsQuery>,
    ) -> Result<Response<JobSummaries>, Status> {
        let query = request.into_inner();
        let jobs = self.store.read(move |meta| meta.list(&query)).await?;
        Ok(Response::new(JobSummaries { jobs }))
    }

    async fn pause_job(&self, request: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.store.write(move |meta| meta.pause(&id)).await?,
        ))
    }

    async fn resume_job(&self, request: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.store.write(move |meta| meta.resume(&id)).await?,
        ))
    }

    async fn count_jobs(
        &self,
        request: Request<CountJobsRequest>,
    ) -> Result<Response<JobCounts>, Status> {
        let owner = request.into_inner().owner;
        Ok(Response::new(
            self.store.read(move |meta| meta.counts(&owner)).await?,
        ))
    }

    async fn list_unfinished_jobs(
        &self,
        _request: Request<ListUnfinishedJobsRequest>,
    ) -> Result<Response<JobSummaries>, Status> {
        Ok(Response::new(JobSummaries {
            jobs: self.store.read(|meta| meta.unfinished()).await?,
        }))
    }

    async fn mark_job_running(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<JobSummary>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.store.write(move |meta| meta.mark_running(&id)).await?,
        ))
    }

    async fn record_result(
        &self,
        request: Request<RecordResultRequest>,
    ) -> Result<Response<RecordResultResponse>, Status> {
        let result = request
            .into_inner()
            .result
            .ok_or_else(|| Status::invalid_argument("result is missing"))?;
        let recorded = self.store.write(move |meta| meta.record(&result)).await?;
        Ok(Response::new(RecordResultResponse {
            applied: recorded.applied,
            summary: Some(recorded.summary),
            image: recorded.image,
            assemble: recorded.assemble,
            pipeline: recorded.pipeline,
            generation: recorded.generation,
        }))
    }

    async fn cancel_job(&self, request: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.store.write(move |meta| meta.cancel(&id)).await?,
        ))
    }

    async fn retry_job(&self, request: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.store.write(move |meta| meta.retry(&id)).await?,
        ))
    }

    async fn delete_job(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<DeleteJobResponse>, Status> {
        let id = request.into_inner().id;
        let job = self.store.write(move |meta| meta.delete(&id)).await?;
        Ok(Response::new(self.remove_job_blobs(job).await?))
    }

    async fn abandon_job(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<DeleteJobResponse>, Status> {
        let id = request.into_inner().id;
        match self.store.write(move |meta| meta.abandon(&id)).await? {
            Some(job) => Ok(Response::new(self.remove_job_blobs(job).await?)),
            None => Ok(Response::new(DeleteJobResponse::default())),
        }
    }

    async fn requeue_images(
        &self,
        request: Request<RequeueImagesRequest>,
    ) -> Result<Response<Job>, Status> {
        let RequeueImagesRequest { job_id, indexes } = request.into_inner();
        Ok(Response::new(
            self.store
                .write(move |meta| meta.requeue(&job_id, &indexes))
                .await?,
        ))
    }
}
