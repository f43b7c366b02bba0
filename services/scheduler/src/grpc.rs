//! `pixelmesh.v1.Scheduler`: converts wire types and calls [`Jobs`].

use pixelmesh_proto::v1::{
    CancelJobRequest, Job, PauseJobRequest, ResumeJobRequest, RetryJobRequest, SubmitJobRequest,
    scheduler_server::Scheduler,
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

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
        // Run to its end even if the caller goes away: a submit dropped half-way would leave
        // a provisional job whose tasks may already run. Finished, it is confirmed or
        // abandoned, never half of either.
        let jobs = self.jobs.clone();
        let request = request.into_inner();
        let submit = tokio::spawn(async move { jobs.submit(request).await }.in_current_span());
        let job = submit
            .await
            .map_err(|err| Status::internal(format!("submit task failed: {err}")))??;
        Ok(Response::new(job))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.jobs.cancel(&request.into_inner().id).await?,
        ))
    }

    async fn retry_job(&self, request: Request<RetryJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.jobs.retry(&request.into_inner().id).await?,
        ))
    }

    async fn pause_job(&self, request: Request<PauseJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.jobs.pause(&request.into_inner().id).await?,
        ))
    }

    async fn resume_job(
        &self,
        request: Request<ResumeJobRequest>,
    ) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.jobs.resume(&request.into_inner().id).await?,
        ))
    }
}
