//! `pixelmesh.v1.Gateway`: converts protobuf at the edge and calls [`Mesh`].

use std::pin::Pin;

use futures::{Stream, StreamExt};
use pixelmesh_proto::{
    Error,
    v1::{
        CancelJobRequest, DeleteJobResponse, DownloadOutputRequest, DownloadOutputResponse,
        GetJobRequest, Job, JobEvent, ListJobsRequest, ListJobsResponse, ListWorkersRequest,
        ListWorkersResponse, SubmitJobRequest, UploadImageRequest, UploadImageResponse,
        WatchJobRequest, gateway_server::Gateway,
    },
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::caller_of,
    mesh::{Mesh, OutputKey},
};

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;
type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadOutputResponse, Status>> + Send>>;

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
        let chunks = request.into_inner().map(|message| {
            message
                .map(|m| bytes::Bytes::from(m.chunk))
                .map_err(Error::from)
        });
        let blob = self.mesh.upload(chunks).await?;
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
        Ok(Response::new(
            self.mesh.submit(&caller, request.into_inner()).await?,
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

    async fn retry_job(&self, request: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.retry(&caller, &request.into_inner().id).await?,
        ))
    }

    async fn pause_job(&self, request: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.pause(&caller, &request.into_inner().id).await?,
        ))
    }

    async fn resume_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(
            self.mesh.resume(&caller, &request.into_inner().id).await?,
        ))
    }

    async fn delete_job(
        &self,
        request: Request<CancelJobRequest>,
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
        let (output, _name, chunks) = self
            .mesh
            .download(&caller, &request.job_id, OutputKey::Index(request.index))
            .await?;
        let mut first = Some(output);
        let messages = chunks.map(move |chunk| {
            Ok(DownloadOutputResponse {
                output: first.take(),
                chunk: chunk.map_err(Status::from)?.to_vec(),
            })
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        Ok(Response::new(ListWorkersResponse {
            workers: self.mesh.workers().await?,
        }))
    }
}
