//! `pixelmesh.v1.Storage`: converts wire types and calls [`Blobs`] and [`Meta`].

use std::{
    pin::Pin,
    time::{Duration, SystemTime},
};

use futures::Stream;
use pixelmesh_proto::{
    Error,
    v1::{
        BlobInfo, CountJobsRequest, CreateJobRequest, DeleteJobResponse, GetBlobRequest,
        GetBlobResponse, Job, JobCounts, JobRequest, JobSummaries, JobSummary, ListJobsQuery,
        ListUnfinishedJobsRequest, PutBlobRequest, RecordResultRequest, RecordResultResponse,
        operation, put_blob_request::Part, storage_server::Storage,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    blobs::{BlobId, Blobs},
    meta::Meta,
};

pub struct StorageService {
    blobs: Blobs,
    meta: Meta,
}

impl StorageService {
    pub fn new(blobs: Blobs, meta: Meta) -> Self {
        StorageService { blobs, meta }
    }

    /// Runs a metadata change off the async runtime, then makes it durable before answering.
    async fn mutate<T: Send + 'static>(
        &self,
        change: impl FnOnce(&Meta) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let meta = self.meta.clone();
        // In the request's span, so what the change logs names its trace.
        let span = tracing::Span::current();
        let value = tokio::task::spawn_blocking(move || span.in_scope(|| change(&meta)))
            .await
            .map_err(|err| Status::internal(format!("metadata task failed: {err}")))??;
        self.meta.flush().await?;
        Ok(value)
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
        let mut writer = None;
        // A stream error (client gone mid-upload) returns early; the writer's temp file is
        // dropped with it, so no partial blob is ever stored.
        while let Some(part) = parts.message().await? {
            match part.part {
                Some(Part::Meta(meta)) if writer.is_none() => {
                    writer = Some(self.blobs.writer(meta.max_bytes).await?);
                }
                Some(Part::Meta(_)) => {
                    return Err(Status::invalid_argument(
                        "meta must be the first message, sent once",
                    ));
                }
                Some(Part::Chunk(chunk)) => {
                    if writer.is_none() {
                        writer = Some(self.blobs.writer(0).await?);
                    }
                    if let Some(writer) = writer.as_mut() {
                        writer.write(&chunk).await?;
                    }
                }
                None => {}
            }
        }
        let writer = writer.ok_or_else(|| Status::invalid_argument("blob is empty"))?;
        let info = writer.finish().await?;
        metrics::counter!("pixelmesh_storage_bytes_written_total").increment(info.size);
        Ok(Response::new(BlobInfo {
            id: info.id.to_string(),
            size_bytes: info.size,
        }))
    }

    type GetBlobStream = BlobStream;

    async fn get_blob(
        &self,
        request: Request<GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let id = BlobId::parse(&request.into_inner().id)?;
        let mut reader = self.blobs.reader(&id).await?;
        let size_bytes = reader.size();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let message = match reader.next_chunk().await {
                    Ok(Some(chunk)) => {
                        metrics::counter!("pixelmesh_storage_bytes_read_total")
                            .increment(chunk.len() as u64);
                        Ok(GetBlobResponse {
                            size_bytes: if first { size_bytes } else { 0 },
                            chunk,
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
        let info = self.blobs.stat(&id).await?;
        Ok(Response::new(BlobInfo {
            id: info.id.to_string(),
            size_bytes: info.size,
        }))
    }

    async fn create_job(
        &self,
        request: Request<CreateJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let request = request.into_inner();
        let job = self.mutate(move |meta| meta.create(request)).await?;
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<JobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(self.meta.job(&request.into_inner().id)?))
    }

    async fn get_job_summary(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<JobSummary>, Status> {
        Ok(Response::new(self.meta.summary(&request.into_inner().id)?))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsQuery>,
    ) -> Result<Response<JobSummaries>, Status> {
        let query = request.into_inner();
        let jobs = self.meta.list(&query)?;
        Ok(Response::new(JobSummaries { jobs }))
    }

    async fn pause_job(&self, request: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.mutate(move |meta| meta.pause(&id)).await?,
        ))
    }

    async fn resume_job(&self, request: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.mutate(move |meta| meta.resume(&id)).await?,
        ))
    }

    async fn count_jobs(
        &self,
        request: Request<CountJobsRequest>,
    ) -> Result<Response<JobCounts>, Status> {
        Ok(Response::new(
            self.meta.counts(&request.into_inner().owner)?,
        ))
    }

    async fn list_unfinished_jobs(
        &self,
        _request: Request<ListUnfinishedJobsRequest>,
    ) -> Result<Response<JobSummaries>, Status> {
        Ok(Response::new(JobSummaries {
            jobs: self.meta.unfinished()?,
        }))
    }

    async fn mark_job_running(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<JobSummary>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.mutate(move |meta| meta.mark_running(&id)).await?,
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
        let recorded = self.mutate(move |meta| meta.record(&result)).await?;
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
            self.mutate(move |meta| meta.cancel(&id)).await?,
        ))
    }

    async fn retry_job(&self, request: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(
            self.mutate(move |meta| meta.retry(&id)).await?,
        ))
    }

    async fn delete_job(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<DeleteJobResponse>, Status> {
        let id = request.into_inner().id;
        let job = self.mutate(move |meta| meta.delete(&id)).await?;
        let (blobs, meta) = (self.blobs.clone(), self.meta.clone());
        let removed = tokio::task::spawn_blocking(move || {
            let keep = meta.referenced_blobs()?;
            let now = SystemTime::now();
            let outputs = job
                .images
                .iter()
                .filter_map(|image| image.output.as_ref().map(|o| o.blob_id.as_str()));
            let (mut count, mut bytes) = blobs.remove_if_unreferenced(outputs, &keep, now);
            let inputs = job.images.iter().map(|image| image.input_blob_id.as_str());
            let logos = job.pipeline.iter().filter_map(|op| match &op.op {
                Some(operation::Op::Watermark(watermark)) => Some(watermark.logo.as_str()),
                _ => None,
            });
            let cutoff = now.checked_sub(INPUT_DELETE_GRACE).unwrap_or(now);
            let (more, more_bytes) =
                blobs.remove_if_unreferenced(inputs.chain(logos), &keep, cutoff);
            count += more;
            bytes += more_bytes;
            Ok::<_, Error>((count, bytes))
        })
        .await
        .map_err(|err| Status::internal(format!("blob removal task failed: {err}")))??;
        Ok(Response::new(DeleteJobResponse {
            blobs_removed: removed.0 as u32,
            bytes_removed: removed.1,
        }))
    }
}
