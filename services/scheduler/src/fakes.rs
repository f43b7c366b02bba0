//! In-memory [`JobStore`] and [`TaskQueue`] for unit tests of [`crate::jobs::Jobs`].
//!
//! They are only worth anything if they behave like the real ones where the scheduler relies
//! on it, so:
//!
//! * [`MemoryStore`] keeps the state rules of `services/storage/src/meta.rs`: a result is
//!   recorded once and only for a pending image of an unfinished job, the last outcome
//!   finishes the job, a split and its tiles are counted once and the last tile hands back
//!   the assembly, cancel refuses an ended job, retry only an ended (not cancelled) job with
//!   failed images, pause a queued or running one, resume a paused one; retry and resume
//!   count the generation up, requeue and resume make a tiled image start over.
//! * [`MemoryQueue`] is a stream with JetStream's dedup: a task whose id was published
//!   before is dropped, even after its message was taken or purged. It records what it
//!   stored, what was purged and every progress event, and can be told to fail.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use pixelmesh_proto::{
    Error, ErrorCode,
    v1::{
        BlobInfo, CheckBlobsRequest, CreateJobRequest, Image, ImageState, Job, JobEvent, JobState,
        JobSummary, RecordResultResponse, Task, TaskResult, TileAssembly, task_result::Outcome,
    },
};

use crate::{
    queue::TaskQueue,
    reconcile::{self, Queued},
    store::JobStore,
};

#[derive(Clone, Default)]
pub struct MemoryStore(Arc<Mutex<StoreState>>);

#[derive(Default)]
struct StoreState {
    /// By id: ULIDs sort by creation time, so this iterates oldest first.
    jobs: BTreeMap<String, Job>,
    /// The tiles processed so far of each split image, by (job, index).
    tiles: HashMap<(String, u32), TileAssembly>,
    /// Blob id → its header and the keys that may use it.
    blobs: HashMap<String, (BlobInfo, HashSet<String>)>,
    /// The next call of each named method fails with this error.
    faults: HashMap<&'static str, Error>,
    /// Every call made, by method name, failed ones included.
    calls: Vec<&'static str>,
}

fn not_found(id: &str) -> Error {
    Error::not_found(format!("job {id} not found"))
}

fn precondition(message: String) -> Error {
    Error::new(ErrorCode::FailedPrecondition, message)
}

fn bump(summary: &mut JobSummary) -> u64 {
    summary.version += 1;
    summary.version
}

impl MemoryStore {
    fn state(&self) -> MutexGuard<'_, StoreState> {
        self.0.lock().expect("store lock")
    }

    /// Runs one call: fails it if a fault was set for `method`, else applies `f`.
    fn call<T>(
        &self,
        method: &'static str,
        f: impl FnOnce(&mut StoreState) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut state = self.state();
        state.calls.push(method);
        if let Some(err) = state.faults.remove(method) {
            return Err(err);
        }
        f(&mut state)
    }

    /// A blob `owner` uploaded, `width` x `height` pixels.
    pub fn add_blob(&self, id: &str, owner: &str, width: u32, height: u32) {
        self.add_animation(id, owner, width, height, 1);
    }

    /// An animated blob `owner` uploaded, `frames` frames of `width` x `height` pixels.
    pub fn add_animation(&self, id: &str, owner: &str, width: u32, height: u32, frames: u32) {
        let info = BlobInfo {
            id: id.to_string(),
            size_bytes: 1000,
            width,
            height,
            bytes_per_pixel: 4,
            frames,
        };
        self.state()
            .blobs
            .insert(id.to_string(), (info, HashSet::from([owner.to_string()])));
    }

    /// The next call of `method` (the trait method's name) fails with `err`.
    pub fn fail_next(&self, method: &'static str, err: Error) {
        self.state().faults.insert(method, err);
    }

    /// The methods called so far, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        self.state().calls.clone()
    }

    pub fn job(&self, id: &str) -> Option<Job> {
        self.state().jobs.get(id).cloned()
    }

    pub fn job_ids(&self) -> Vec<String> {
        self.state().jobs.keys().cloned().collect()
    }

    /// Changes a stored job behind the scheduler's back (its age, for one).
    pub fn edit(&self, id: &str, f: impl FnOnce(&mut Job)) {
        f(self.state().jobs.get_mut(id).expect("job to edit"));
    }
}

impl StoreState {
    fn job_mut(&mut self, id: &str) -> Result<&mut Job, Error> {
        self.jobs.get_mut(id).ok_or_else(|| not_found(id))
    }

    fn create(&mut self, request: CreateJobRequest) -> Result<Job, Error> {
        let id = request.id.clone();
        if self.jobs.contains_key(&id) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("job {id} already exists"),
            ));
        }
        if request.inputs.is_empty() {
            return Err(Error::invalid("a job needs at least one input image"));
        }
        let job = Job {
            summary: Some(JobSummary {
                id: id.clone(),
                state: JobState::Queued as i32,
                total: request.inputs.len() as u32,
                created_at_ms: pixelmesh_common::time::now_ms(),
                version: 1,
                parent_id: request.parent_id,
                owner: request.owner,
                ..Default::default()
            }),
            pipeline: request.pipeline,
            images: request
                .inputs
                .into_iter()
                .enumerate()
                .map(|(i, input)| Image {
                    index: i as u32,
                    name: input.name,
                    input_blob_id: input.blob_id,
                    url: input.url,
                    state: ImageState::Pending as i32,
                    version: 1,
                    ..Default::default()
                })
                .collect(),
            tiling: request.tiling,
            generation: 0,
            provisional: true,
        };
        self.jobs.insert(id, job.clone());
        Ok(job)
    }

    fn mark_running(&mut self, id: &str) -> Result<JobSummary, Error> {
        let job = self.job_mut(id)?;
        job.provisional = false;
        let summary = job.summary.get_or_insert_default();
        if summary.state() == JobState::Queued {
            summary.state = JobState::Running as i32;
            bump(summary);
        }
        Ok(summary.clone())
    }

    fn record(&mut self, result: TaskResult) -> Result<RecordResultResponse, Error> {
        let id = result.job_id.as_str();
        let outcome = result
            .outcome
            .clone()
            .ok_or_else(|| Error::invalid("result has neither output nor error"))?;
        let StoreState { jobs, tiles, .. } = self;
        let job = jobs.get_mut(id).ok_or_else(|| not_found(id))?;
        let (generation, pipeline) = (job.generation, job.pipeline.clone());
        let summary = job.summary.get_or_insert_default();
        let image = job
            .images
            .get_mut(result.index as usize)
            .ok_or_else(|| Error::invalid(format!("job {id} has no image {}", result.index)))?;
        let answer = |applied, summary: &JobSummary, image: &Image, assemble, pipeline| {
            RecordResultResponse {
                applied,
                summary: Some(summary.clone()),
                image: Some(image.clone()),
                assemble,
                pipeline,
                generation,
            }
        };
        if summary.state().is_final() || image.state() != ImageState::Pending {
            return Ok(answer(false, summary, image, None, Vec::new()));
        }
        let key = (id.to_string(), result.index);
        match outcome {
            Outcome::Split(split) => {
                if image.tiles_total > 0 {
                    return Ok(answer(false, summary, image, None, pipeline));
                }
                image.tiles_total = split.tiles.len() as u32;
                image.version = bump(summary);
                let plan = TileAssembly {
                    width: split.width,
                    height: split.height,
                    input_format: split.input_format,
                    tiles: Vec::new(),
                };
                tiles.insert(key, plan);
                return Ok(answer(true, summary, image, None, pipeline));
            }
            Outcome::Tile(tile) => {
                let plan = tiles.get_mut(&key).ok_or_else(|| {
                    Error::invalid(format!("image {} was not split into tiles", result.index))
                })?;
                if tile.tile >= image.tiles_total {
                    return Err(Error::invalid(format!("tile {} out of range", tile.tile)));
                }
                let applied = !plan.tiles.iter().any(|done| done.tile == tile.tile);
                if applied {
                    plan.tiles.push(tile);
                    plan.tiles.sort_by_key(|done| done.tile);
                    image.tiles_done = plan.tiles.len() as u32;
                    image.version = bump(summary);
                }
                // Handed back for a repeated last tile too, as storage does.
                let assemble = (plan.tiles.len() as u32 == image.tiles_total).then(|| plan.clone());
                return Ok(answer(applied, summary, image, assemble, pipeline));
            }
            Outcome::Output(output) => {
                image.state = ImageState::Done as i32;
                image.output = Some(output);
                summary.done += 1;
            }
            Outcome::Error(error) => {
                image.state = ImageState::Failed as i32;
                image.error = error;
                summary.failed += 1;
            }
        }
        tiles.remove(&key);
        image.worker_id = result.worker_id;
        image.attempts = result.attempts;
        image.version = bump(summary);
        if summary.done + summary.failed + summary.cancelled >= summary.total {
            summary.state = if summary.failed == 0 {
                JobState::Completed
            } else if summary.done == 0 {
                JobState::Failed
            } else {
                JobState::CompletedWithErrors
            } as i32;
            summary.finished_at_ms = pixelmesh_common::time::now_ms();
        }
        Ok(answer(true, summary, image, None, Vec::new()))
    }

    fn cancel(&mut self, id: &str) -> Result<Job, Error> {
        let job = self.job_mut(id)?;
        let summary = job.summary.get_or_insert_default();
        match summary.state() {
            JobState::Cancelled => return Ok(job.clone()),
            state if state.is_final() => {
                return Err(precondition(format!(
                    "job {id} already ended ({})",
                    state.label()
                )));
            }
            _ => {}
        }
        let version = bump(summary);
        for image in &mut job.images {
            if image.state() == ImageState::Pending {
                image.state = ImageState::Cancelled as i32;
                image.version = version;
                summary.cancelled += 1;
            }
        }
        summary.state = JobState::Cancelled as i32;
        Ok(job.clone())
    }

    fn retry(&mut self, id: &str) -> Result<Job, Error> {
        let StoreState { jobs, tiles, .. } = self;
        let job = jobs.get_mut(id).ok_or_else(|| not_found(id))?;
        let summary = job.summary.get_or_insert_default();
        let state = summary.state();
        if !state.is_final() {
            return Err(precondition(format!("job {id} is still {}", state.label())));
        }
        if state == JobState::Cancelled {
            return Err(precondition(format!("job {id} was cancelled")));
        }
        if summary.failed == 0 {
            return Err(precondition(format!("job {id} has no failed images")));
        }
        let version = bump(summary);
        for image in &mut job.images {
            if image.state() == ImageState::Failed {
                // Outcome, attempts and tiles forgotten: the image runs as if just submitted.
                *image = Image {
                    index: image.index,
                    name: std::mem::take(&mut image.name),
                    input_blob_id: std::mem::take(&mut image.input_blob_id),
                    url: std::mem::take(&mut image.url),
                    state: ImageState::Pending as i32,
                    version,
                    ..Default::default()
                };
                summary.failed -= 1;
                tiles.remove(&(id.to_string(), image.index));
            }
        }
        summary.state = JobState::Queued as i32;
        summary.finished_at_ms = 0;
        job.generation += 1;
        Ok(job.clone())
    }

    fn pause(&mut self, id: &str) -> Result<Job, Error> {
        let job = self.job_mut(id)?;
        let summary = job.summary.get_or_insert_default();
        match summary.state() {
            JobState::Paused => {}
            JobState::Queued | JobState::Running => {
                summary.state = JobState::Paused as i32;
                bump(summary);
            }
            state => {
                return Err(precondition(format!(
                    "job {id} already ended ({})",
                    state.label()
                )));
            }
        }
        Ok(job.clone())
    }

    fn resume(&mut self, id: &str) -> Result<Job, Error> {
        let StoreState { jobs, tiles, .. } = self;
        let job = jobs.get_mut(id).ok_or_else(|| not_found(id))?;
        let summary = job.summary.get_or_insert_default();
        if summary.state() != JobState::Paused {
            return Err(precondition(format!(
                "job {id} is {}, not paused",
                summary.state().label()
            )));
        }
        let version = bump(summary);
        for image in &mut job.images {
            if image.state() == ImageState::Pending && image.tiles_total > 0 {
                image.tiles_total = 0;
                image.tiles_done = 0;
                image.version = version;
                tiles.remove(&(id.to_string(), image.index));
            }
        }
        summary.state = JobState::Queued as i32;
        job.generation += 1;
        Ok(job.clone())
    }

    fn requeue(&mut self, id: &str, indexes: &[u32]) -> Result<Job, Error> {
        let StoreState { jobs, tiles, .. } = self;
        let job = jobs.get_mut(id).ok_or_else(|| not_found(id))?;
        let summary = job.summary.get_or_insert_default();
        if summary.state().is_final() {
            return Ok(job.clone());
        }
        for &index in indexes {
            let Some(image) = job.images.get_mut(index as usize) else {
                continue;
            };
            if image.state() == ImageState::Pending {
                image.tiles_total = 0;
                image.tiles_done = 0;
                image.version = bump(summary);
                tiles.remove(&(id.to_string(), index));
            }
        }
        Ok(job.clone())
    }

    fn abandon(&mut self, id: &str) {
        self.jobs.remove(id);
        self.tiles.retain(|(job, _), _| job != id);
    }

    fn check_blobs(&self, request: &CheckBlobsRequest) -> Vec<BlobInfo> {
        request
            .ids
            .iter()
            .map(|id| match self.blobs.get(id) {
                Some((info, owners)) if request.admin || owners.contains(&request.owner) => {
                    info.clone()
                }
                // Missing and not theirs read the same.
                _ => BlobInfo::default(),
            })
            .collect()
    }
}

impl JobStore for MemoryStore {
    async fn check_blobs(&self, request: CheckBlobsRequest) -> Result<Vec<BlobInfo>, Error> {
        self.call("check_blobs", |s| Ok(s.check_blobs(&request)))
    }

    async fn create_job(&self, request: CreateJobRequest) -> Result<Job, Error> {
        self.call("create_job", |s| s.create(request))
    }

    async fn get_job(&self, id: &str) -> Result<Job, Error> {
        self.call("get_job", |s| {
            s.jobs.get(id).cloned().ok_or_else(|| not_found(id))
        })
    }

    async fn list_unfinished_jobs(&self) -> Result<Vec<JobSummary>, Error> {
        self.call("list_unfinished_jobs", |s| {
            Ok(s.jobs
                .values()
                .filter_map(|job| job.summary.clone())
                .filter(|summary| !summary.state().is_final())
                .collect())
        })
    }

    async fn mark_job_running(&self, id: &str) -> Result<JobSummary, Error> {
        self.call("mark_job_running", |s| s.mark_running(id))
    }

    async fn record_result(&self, result: TaskResult) -> Result<RecordResultResponse, Error> {
        self.call("record_result", |s| s.record(result))
    }

    async fn cancel_job(&self, id: &str) -> Result<Job, Error> {
        self.call("cancel_job", |s| s.cancel(id))
    }

    async fn pause_job(&self, id: &str) -> Result<Job, Error> {
        self.call("pause_job", |s| s.pause(id))
    }

    async fn resume_job(&self, id: &str) -> Result<Job, Error> {
        self.call("resume_job", |s| s.resume(id))
    }

    async fn retry_job(&self, id: &str) -> Result<Job, Error> {
        self.call("retry_job", |s| s.retry(id))
    }

    async fn abandon_job(&self, id: &str) -> Result<(), Error> {
        self.call("abandon_job", |s| {
            s.abandon(id);
            Ok(())
        })
    }

    async fn requeue_images(&self, id: &str, indexes: Vec<u32>) -> Result<Job, Error> {
        self.call("requeue_images", |s| s.requeue(id, &indexes))
    }
}

#[derive(Clone, Default)]
pub struct MemoryQueue(Arc<Mutex<QueueState>>);

#[derive(Default)]
struct QueueState {
    disconnected: bool,
    /// Publishes that succeed before every later one fails; `None`: all succeed.
    publish_budget: Option<usize>,
    /// The dedup id of every publish that succeeded, repeats included.
    attempts: Vec<String>,
    /// Every message the stream stored, in order, with its dedup id.
    stored: Vec<(String, Task)>,
    /// What the stream still holds: stored, not taken by a worker nor purged.
    queued: Vec<(String, Task)>,
    /// Dedup ids seen: the window outlives the messages.
    seen: HashSet<String>,
    /// Results waiting in `RESULTS`, by (job, index).
    results: HashSet<(String, u32)>,
    /// Queued tasks that ran out of deliveries, by (job, index).
    exhausted: HashMap<(String, u32), u64>,
    purged: Vec<String>,
    progress: Vec<JobEvent>,
}

impl MemoryQueue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.0.lock().expect("queue lock")
    }

    pub fn disconnect(&self) {
        self.state().disconnected = true;
    }

    /// The next `n` publishes succeed, every later one fails; `None`: every one succeeds.
    pub fn fail_publishes_after(&self, n: Option<usize>) {
        self.state().publish_budget = n;
    }

    /// How many publishes of dedup id `id` succeeded, repeats included.
    pub fn attempts(&self, id: &str) -> usize {
        self.state()
            .attempts
            .iter()
            .filter(|seen| *seen == id)
            .count()
    }

    /// Every task the stream stored (duplicates dropped), with its dedup id.
    pub fn stored(&self) -> Vec<(String, Task)> {
        self.state().stored.clone()
    }

    /// The tasks of `job` still in the stream.
    pub fn queued(&self, job: &str) -> Vec<(String, Task)> {
        let state = self.state();
        let of_job = state.queued.iter().filter(|(_, task)| task.job_id == job);
        of_job.cloned().collect()
    }

    /// A worker takes image `index`'s task and acks it: it leaves the stream.
    pub fn take(&self, job: &str, index: u32) -> Option<Task> {
        let mut state = self.state();
        let at = state
            .queued
            .iter()
            .position(|(_, task)| task.job_id == job && task.index == index)?;
        Some(state.queued.remove(at).1)
    }

    /// A worker published image `index`'s result, not yet recorded.
    pub fn result_waiting(&self, job: &str, index: u32) {
        self.state().results.insert((job.to_string(), index));
    }

    /// Image `index`'s queued task ran out of deliveries.
    pub fn exhaust(&self, job: &str, index: u32, deliveries: u64) {
        let mut state = self.state();
        state.exhausted.insert((job.to_string(), index), deliveries);
    }

    /// The jobs purged, in order.
    pub fn purged(&self) -> Vec<String> {
        self.state().purged.clone()
    }

    pub fn progress(&self) -> Vec<JobEvent> {
        self.state().progress.clone()
    }
}

impl TaskQueue for MemoryQueue {
    type Lookup = MemoryQueue;

    fn is_connected(&self) -> bool {
        !self.state().disconnected
    }

    async fn publish_task(&self, task: Task, id: String) -> Result<(), Error> {
        let mut state = self.state();
        if state.disconnected {
            return Err(Error::unavailable("publishing task: disconnected"));
        }
        if let Some(left) = &mut state.publish_budget {
            if *left == 0 {
                return Err(Error::unavailable("publishing task: timed out"));
            }
            *left -= 1;
        }
        state.attempts.push(id.clone());
        if state.seen.insert(id.clone()) {
            state.stored.push((id.clone(), task.clone()));
            state.queued.push((id, task));
        }
        Ok(())
    }

    async fn purge_tasks(&self, job: &str) -> Result<(), Error> {
        let mut state = self.state();
        state.queued.retain(|(_, task)| task.job_id != job);
        state.purged.push(job.to_string());
        Ok(())
    }

    async fn publish_progress(&self, job: &str, event: JobEvent) -> Result<(), Error> {
        let same = event.summary.as_ref().is_some_and(|s| s.id == job);
        assert!(same, "progress of job {job} published for another");
        self.state().progress.push(event);
        Ok(())
    }

    async fn lookup(&self) -> Result<MemoryQueue, Error> {
        Ok(self.clone())
    }
}

impl reconcile::Queue for MemoryQueue {
    async fn look(&self, job: &str, index: u32) -> Result<Queued, Error> {
        let state = self.state();
        let key = (job.to_string(), index);
        let queued = state
            .queued
            .iter()
            .any(|(_, task)| task.job_id == job && task.index == index);
        Ok(match (queued, state.exhausted.get(&key)) {
            (true, Some(&deliveries)) => Queued::Exhausted { deliveries },
            (true, None) => Queued::Task,
            (false, _) if state.results.contains(&key) => Queued::Result,
            (false, _) => Queued::Nothing,
        })
    }
}
