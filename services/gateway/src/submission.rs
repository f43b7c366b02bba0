//! The jobs one submit makes, filled as its inputs arrive. A URL list of millions streams
//! through: each time `--max-files-per-job` inputs have arrived they go to the scheduler as
//! one job, and the jobs share a parent id (a batch). Only the job being filled is held, so a
//! submit's memory does not grow with its list. Inputs that fit one job make one job without
//! a parent, as before.
//!
//! A list is taken whole or not at all: when a later line is bad, or a later job is refused,
//! the jobs already made from the list are cancelled and deleted, and the error names the
//! line or the job.

use pixelmesh_proto::{
    Error,
    v1::{ImageInput, JobSummary, Operation, SubmitJobRequest},
};

use crate::{auth::Caller, mesh::Mesh};

pub struct Submission<'a> {
    mesh: &'a Mesh,
    caller: &'a Caller,
    /// The pipeline and tiling of every job, and the inputs of the one being filled.
    next: SubmitJobRequest,
    has_pipeline: bool,
    /// Empty until a second job is needed.
    parent_id: String,
    /// The jobs made so far: their summaries only, never their images.
    jobs: Vec<JobSummary>,
    images: usize,
}

/// What a submit made.
pub struct Submitted {
    /// Empty when the inputs made one job.
    pub parent_id: String,
    pub jobs: Vec<JobSummary>,
    pub images: usize,
}

impl<'a> Submission<'a> {
    pub fn new(mesh: &'a Mesh, caller: &'a Caller) -> Self {
        Submission {
            mesh,
            caller,
            next: SubmitJobRequest::default(),
            has_pipeline: false,
            parent_id: String::new(),
            jobs: Vec::new(),
            images: 0,
        }
    }

    /// A submit whose request is whole already (gRPC): its inputs, then its URL list text.
    pub async fn of_request(
        mesh: &'a Mesh,
        caller: &'a Caller,
        mut request: SubmitJobRequest,
    ) -> Result<Submitted, Error> {
        let url_list = std::mem::take(&mut request.url_list);
        let inputs = std::mem::take(&mut request.inputs);
        let mut submission = Submission::new(mesh, caller);
        submission.next = request;
        submission.has_pipeline = true;
        let made = async {
            for input in inputs {
                submission.add(input).await?;
            }
            if !url_list.is_empty() {
                let urls = mesh.parse_url_list(&url_list, submission.images())?;
                for input in urls {
                    submission.add(input).await?;
                }
            }
            submission.finish().await
        }
        .await;
        match made {
            Ok(made) => Ok(made),
            Err(err) => Err(submission.abandon(err).await),
        }
    }

    pub fn caller(&self) -> &'a Caller {
        self.caller
    }

    /// Images taken so far, in the jobs made and the one being filled.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Whether a job was made already: the pipeline and tiling can no longer change.
    fn started(&self) -> Result<(), Error> {
        if self.jobs.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "the \"pipeline\" and \"tiling\" parts must come before a url list longer than one job ({} images)",
                self.mesh.settings().max_files_per_job
            )))
        }
    }

    pub fn set_pipeline(&mut self, pipeline: Vec<Operation>) -> Result<(), Error> {
        self.started()?;
        self.next.pipeline = pipeline;
        self.has_pipeline = true;
        Ok(())
    }

    pub fn set_tiling(&mut self, tiling: i32) -> Result<(), Error> {
        self.started()?;
        self.next.tiling = tiling;
        Ok(())
    }

    /// Takes one more input; when the job being filled is full, it is submitted first.
    pub async fn add(&mut self, input: ImageInput) -> Result<(), Error> {
        if self.next.inputs.len() >= self.mesh.settings().max_files_per_job.max(1) {
            self.submit_next().await?;
        }
        self.next.inputs.push(input);
        self.images += 1;
        Ok(())
    }

    /// Submits the job being filled, as one of the batch.
    async fn submit_next(&mut self) -> Result<(), Error> {
        if !self.has_pipeline {
            return Err(Error::invalid(format!(
                "the \"pipeline\" part must come before a url list longer than one job ({} images): the list is made into jobs as it arrives",
                self.mesh.settings().max_files_per_job
            )));
        }
        if self.parent_id.is_empty() {
            self.parent_id = ulid::Ulid::new().to_string();
        }
        let request = SubmitJobRequest {
            inputs: std::mem::take(&mut self.next.inputs),
            parent_id: self.parent_id.clone(),
            ..self.next.clone()
        };
        let job = self
            .mesh
            .submit(self.caller, request)
            .await
            .map_err(|err| {
                Error::new(
                    err.code,
                    format!(
                        "batch {}: job {}: {}",
                        self.parent_id,
                        self.jobs.len() + 1,
                        err.message
                    ),
                )
            })?;
        self.jobs.push(job.summary.unwrap_or_default());
        Ok(())
    }

    /// Submits what is left: one job without a parent if no job was made yet, else the
    /// batch's last.
    pub async fn finish(&mut self) -> Result<Submitted, Error> {
        if self.images == 0 {
            return Err(Error::invalid(
                "missing \"file\", \"archive\" or \"urls\" part: a job needs at least one image",
            ));
        }
        if self.jobs.is_empty() {
            let request = std::mem::take(&mut self.next);
            let job = self.mesh.submit(self.caller, request).await?;
            return Ok(Submitted {
                parent_id: String::new(),
                jobs: vec![job.summary.unwrap_or_default()],
                images: self.images,
            });
        }
        if !self.next.inputs.is_empty() {
            self.submit_next().await?;
        }
        tracing::info!(batch = %self.parent_id, jobs = self.jobs.len(), images = self.images, "url list made into jobs");
        Ok(Submitted {
            parent_id: self.parent_id.clone(),
            jobs: std::mem::take(&mut self.jobs),
            images: self.images,
        })
    }

    /// Undoes a submit that failed part way: cancels and deletes the jobs it made. Returns
    /// `err`, saying so when there were any.
    pub async fn abandon(self, err: Error) -> Error {
        if self.jobs.is_empty() {
            return err;
        }
        for job in &self.jobs {
            if let Err(delete) = self.mesh.delete(self.caller, &job.id).await {
                tracing::warn!(job = %job.id, error = %delete, "could not delete a job of a refused url list");
            }
        }
        tracing::info!(batch = %self.parent_id, jobs = self.jobs.len(), error = %err.message, "url list refused, its jobs deleted");
        Error::new(
            err.code,
            format!(
                "{} (the list was refused whole: the {} jobs made from its earlier lines were cancelled and deleted)",
                err.message,
                self.jobs.len()
            ),
        )
    }
}
