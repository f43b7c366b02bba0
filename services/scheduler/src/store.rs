//! [`JobStore`]: the storage calls the scheduler makes, and nothing else.
//!
//! Storage owns every rule of a job's state (what may be paused, retried, recorded twice…);
//! the scheduler only asks and acts on the answer. The trait lets [`crate::jobs::Jobs`] run
//! against the storage role over gRPC ([`GrpcStore`], a thin adapter) or, in unit tests,
//! against an in-memory store that keeps the same rules.

use std::future::Future;

use pixelmesh_common::grpc::Channel;
use pixelmesh_proto::{
    Error,
    v1::{
        BlobInfo, CheckBlobsRequest, CreateJobRequest, Job, JobRequest, JobSummary,
        ListUnfinishedJobsRequest, RecordResultRequest, RecordResultResponse, RequeueImagesRequest,
        TaskResult, storage_client::StorageClient,
    },
};

/// Job metadata, as the storage role keeps it (see `proto/pixelmesh/v1/storage.proto` for
/// each call's rules). Every call is one atomic change or read.
pub trait JobStore: Clone + Send + Sync + 'static {
    /// Which of the request's blobs its owner may use: one answer per id, in order, with an
    /// empty id for a blob missing or not theirs.
    fn check_blobs(
        &self,
        request: CheckBlobsRequest,
    ) -> impl Future<Output = Result<Vec<BlobInfo>, Error>> + Send;
    /// A new job, queued and provisional, every image pending.
    fn create_job(
        &self,
        request: CreateJobRequest,
    ) -> impl Future<Output = Result<Job, Error>> + Send;
    fn get_job(&self, id: &str) -> impl Future<Output = Result<Job, Error>> + Send;
    /// Jobs not in a final state, oldest first.
    fn list_unfinished_jobs(&self) -> impl Future<Output = Result<Vec<JobSummary>, Error>> + Send;
    /// Queued → running, and no longer provisional.
    fn mark_job_running(&self, id: &str) -> impl Future<Output = Result<JobSummary, Error>> + Send;
    /// Records one outcome once; finishes the job with its last image.
    fn record_result(
        &self,
        result: TaskResult,
    ) -> impl Future<Output = Result<RecordResultResponse, Error>> + Send;
    fn cancel_job(&self, id: &str) -> impl Future<Output = Result<Job, Error>> + Send;
    fn pause_job(&self, id: &str) -> impl Future<Output = Result<Job, Error>> + Send;
    /// Paused → queued under a new generation.
    fn resume_job(&self, id: &str) -> impl Future<Output = Result<Job, Error>> + Send;
    /// An ended job's failed images back to pending, queued under a new generation.
    fn retry_job(&self, id: &str) -> impl Future<Output = Result<Job, Error>> + Send;
    /// Removes the job whatever its state; a job already gone is no error.
    fn abandon_job(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Puts the still-pending images among `indexes` back to the start.
    fn requeue_images(
        &self,
        id: &str,
        indexes: Vec<u32>,
    ) -> impl Future<Output = Result<Job, Error>> + Send;
}

/// The storage role over gRPC. A newtype rather than an impl on the client itself, whose
/// same-named inherent methods would otherwise be shadowed by these.
#[derive(Clone)]
pub struct GrpcStore(pub StorageClient<Channel>);

/// A tonic client is a cheap handle: each call clones it, since its methods take `&mut self`.
impl JobStore for GrpcStore {
    async fn check_blobs(&self, request: CheckBlobsRequest) -> Result<Vec<BlobInfo>, Error> {
        Ok(self
            .0
            .clone()
            .check_blobs(request)
            .await?
            .into_inner()
            .blobs)
    }

    async fn create_job(&self, request: CreateJobRequest) -> Result<Job, Error> {
        Ok(self.0.clone().create_job(request).await?.into_inner())
    }

    async fn get_job(&self, id: &str) -> Result<Job, Error> {
        Ok(self.0.clone().get_job(job(id)).await?.into_inner())
    }

    async fn list_unfinished_jobs(&self) -> Result<Vec<JobSummary>, Error> {
        Ok(self
            .0
            .clone()
            .list_unfinished_jobs(ListUnfinishedJobsRequest {})
            .await?
            .into_inner()
            .jobs)
    }

    async fn mark_job_running(&self, id: &str) -> Result<JobSummary, Error> {
        Ok(self.0.clone().mark_job_running(job(id)).await?.into_inner())
    }

    async fn record_result(&self, result: TaskResult) -> Result<RecordResultResponse, Error> {
        let request = RecordResultRequest {
            result: Some(result),
        };
        Ok(self.0.clone().record_result(request).await?.into_inner())
    }

    async fn cancel_job(&self, id: &str) -> Result<Job, Error> {
        Ok(self.0.clone().cancel_job(job(id)).await?.into_inner())
    }

    async fn pause_job(&self, id: &str) -> Result<Job, Error> {
        Ok(self.0.clone().pause_job(job(id)).await?.into_inner())
    }

    async fn resume_job(&self, id: &str) -> Result<Job, Error> {
        Ok(self.0.clone().resume_job(job(id)).await?.into_inner())
    }

    async fn retry_job(&self, id: &str) -> Result<Job, Error> {
        Ok(self.0.clone().retry_job(job(id)).await?.into_inner())
    }

    async fn abandon_job(&self, id: &str) -> Result<(), Error> {
        self.0.clone().abandon_job(job(id)).await?;
        Ok(())
    }

    async fn requeue_images(&self, id: &str, indexes: Vec<u32>) -> Result<Job, Error> {
        let request = RequeueImagesRequest {
            job_id: id.to_string(),
            indexes,
        };
        Ok(self.0.clone().requeue_images(request).await?.into_inner())
    }
}

fn job(id: &str) -> JobRequest {
    JobRequest { id: id.to_string() }
}
