//! `pixelmesh.v1.Gateway`: converts protobuf at the edge and calls [`Mesh`].

use std::pin::Pin;

use futures::{Stream, StreamExt};
use pixelmesh_proto::{
    Error,
    v1::{
        Batch, CancelJobRequest, DeleteJobRequest, DeleteJobResponse, DownloadChunk,
        DownloadOutputRequest, DownloadOutputResponse, DownloadOutputsRequest,
        ExportAnalysisRequest, ExportAnalysisResponse, GetBatchRequest, GetJobRequest, Job,
        JobEvent, ListJobsRequest, ListJobsResponse, ListWorkersRequest, ListWorkersResponse,
        PauseJobRequest, ResumeJobRequest, RetryJobRequest, SubmitBatchResponse, SubmitJobRequest,
        UploadArchiveRequest, UploadArchiveResponse, UploadImageRequest, UploadImageResponse,
        WatchJobRequest, gateway_server::Gateway,
    },
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::caller_of,
    export::{self, Format},
    mesh::{self, Mesh, OutputKey},
    submission::Submission,
};

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;
type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadOutputResponse, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<DownloadChunk, Status>> + Send>>;

pub struct GatewayService {
    mesh: Mesh,
}

impl GatewayService {
    pub fn new(mesh: Mesh) -> Self {
        GatewayService { mesh }
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn upload_image(
        &self,
        request: Request<Streaming<UploadImageRequest>>,
    ) -> Result<Response<UploadImageResponse>, Status> {
        let caller = caller_of(&request)?;
        let chunks = request.into_inner().map(|message| {
            message
                .map(|m| bytes::Bytes::from(m.chunk))
                .map_err(Error::from)
        });
        let blob = self.mesh.upload(&caller, chunks).await?;
        Ok(Response::new(UploadImageResponse {
            blob_id: blob.id,
            size_bytes: blob.size_bytes,
        }))
    }

    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        let mut request = request.into_inner();
        self.mesh.take_url_list(&mut request)?;
        Ok(Response::new(self.mesh.submit_one(&caller, request).await?))
    }

    async fn upload_archive(
        &self,
        request: Request<Streaming<UploadArchiveRequest>>,
    ) -> Result<Response<UploadArchiveResponse>, Status> {
        // Each entry's blob becomes the caller's, as an UploadImage's does.
        let caller = caller_of(&request)?;
        let chunks = request.into_inner().map(|message| {
            message
                .map(|m| bytes::Bytes::from(m.chunk))
                .map_err(Error::from)
        });
        // The archive as sent is bounded like REST's whole submit body (--max-request-bytes);
        // what it unpacks to, by --max-zip-total-bytes, checked before anything is stored.
        let file = mesh::spool(chunks, self.mesh.settings().max_request_bytes).await?;
        let inputs = self
            .mesh
            .upload_archive(&caller, file, self.mesh.zip_limits(0))
            .await?;
        Ok(Response::new(UploadArchiveResponse { inputs }))
    }

    async fn submit_batch(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        let caller = caller_of(&request)?;
        let made = Submission::of_request(&self.mesh, &caller, request.into_inner()).await?;
        Ok(Response::new(SubmitBatchResponse {
            parent_id: made.parent_id,
            jobs: made.jobs,
        }))
    }

    async fn get_batch(
        &self,
        request: Request<GetBatchRequest>,
    ) -> Result<Response<Batch>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh
                .batch_view(&caller, &request.into_inner().id)
                .await?,
        ))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.job(&caller, &request.into_inner().id).await?,
        ))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.list(&caller, request.into_inner()).await?,
        ))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let events = self
            .mesh
            .watch(&caller, &request.id, request.after_version)
            .await?;
        Ok(Response::new(Box::pin(
            events.map(|e| e.map_err(Status::from)),
        )))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.cancel(&caller, &request.into_inner().id).await?,
        ))
    }

    async fn retry_job(&self, request: Request<RetryJobRequest>) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.retry(&caller, &request.into_inner().id).await?,
        ))
    }

    async fn pause_job(&self, request: Request<PauseJobRequest>) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.pause(&caller, &request.into_inner().id).await?,
        ))
    }

    async fn resume_job(
        &self,
        request: Request<ResumeJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.resume(&caller, &request.into_inner().id).await?,
        ))
    }

    async fn delete_job(
        &self,
        request: Request<DeleteJobRequest>,
    ) -> Result<Response<DeleteJobResponse>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.delete(&caller, &request.into_inner().id).await?,
        ))
    }

    type DownloadOutputStream = DownloadStream;

    async fn download_output(
        &self,
        request: Request<DownloadOutputRequest>,
    ) -> Result<Response<Self::DownloadOutputStream>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let key = if request.name.is_empty() {
            OutputKey::Index(request.index)
        } else {
            OutputKey::Name(&request.name)
        };
        let (output, _name, chunks) = self.mesh.download(&caller, &request.job_id, key).await?;
        let mut first = Some(output);
        let messages = chunks.map(move |chunk| {
            Ok(DownloadOutputResponse {
                output: first.take(),
                chunk: chunk.map_err(Status::from)?.to_vec(),
            })
        });
        Ok(Response::new(Box::pin(messages)))
    }

    type DownloadOutputsStream = ChunkStream;

    async fn download_outputs(
        &self,
        request: Request<DownloadOutputsRequest>,
    ) -> Result<Response<Self::DownloadOutputsStream>, Status> {
        let caller = caller_of(&request)?;
        let chunks = self
            .mesh
            .bundle(&caller, &request.into_inner().job_id)
            .await?;
        let messages = chunks.map(|chunk| {
            Ok(DownloadChunk {
                chunk: chunk.map_err(Status::from)?.to_vec(),
            })
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn export_analysis(
        &self,
        request: Request<ExportAnalysisRequest>,
    ) -> Result<Response<ExportAnalysisResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let format = Format::from_extension(&request.format).ok_or_else(|| {
            Error::invalid(format!(
                "unknown analysis format {:?}: expected csv, json or xlsx",
                request.format
            ))
        })?;
        let job = self.mesh.job(&caller, &request.job_id).await?;
        Ok(Response::new(ExportAnalysisResponse {
            content_type: format.content_type().to_string(),
            file_name: format.file_name(&request.job_id),
            data: export::render(&job, format)?,
        }))
    }

    /// Shared by every key: a worker's `last_error` goes to admins only (see
    /// [`mesh::worker_view`]).
    async fn list_workers(
        &self,
        request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(ListWorkersResponse {
            workers: self.mesh.workers(&caller).await?,
        }))
    }
}
