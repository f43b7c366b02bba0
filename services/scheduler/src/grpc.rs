//! `pixelmesh.v1.Scheduler`: converts wire types and calls [`Jobs`].

use pixelmesh_proto::v1::{CancelJobRequest, Job, SubmitJobRequest, scheduler_server::Scheduler};
use tonic::{Request, Response, Status};

use crate::jobs::Jobs;

pub struct SchedulerService {
    jobs: Jobs,
}

impl SchedulerService {
    pub fn new(jobs: Jobs) -> Self {
        SchedulerService { jobs }
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<Job>, Status> {
        Ok(Response::new(self.jobs.submit(request.into_inner()).await?))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.jobs.cancel(&request.into_inner().id).await?,
        ))
    }

    async fn retry_job(&self, request: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.jobs.retry(&request.into_inner().id).await?,
        ))
    }

    async fn pause_job(&self, request: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.jobs.pause(&request.into_inner().id).await?,
        ))
    }

    async fn resume_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.jobs.resume(&request.into_inner().id).await?,
        ))
    }
}
