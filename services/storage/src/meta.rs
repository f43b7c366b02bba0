//! Job metadata in sled, values encoded as the protobuf messages themselves.
//!
//! Trees: `jobs` (job id → `Job` with summary and pipeline, images left out), `images`
//! (job id + `/` + index big-endian → `Image`), `unfinished` (job id → nothing: an index so a
//! starting scheduler does not scan every job), `tiles` (image key → `TileAssembly`: a tiled
//! image's size and the tiles processed so far; removed when the image gets its outcome),
//! `batches` (parent id + `/` + job id → nothing: the jobs of each batch), `counts`
//! (`all/<state>` and `owner/<owner>/<state>` → how many jobs, big-endian u64: list counts
//! without a scan), `owners` (blob id + `/` + owner → nothing: the keys that uploaded a blob
//! or whose job produced it) and `blob_info` (blob id → `BlobInfo`: an upload's size and image
//! header) and `by_state` (state + job id, and owner + state + job id → nothing: filtered
//! lists read the jobs they return, not every job; see [`state_prefix`]). Job ids are ULIDs, so key order is creation order. Every change that touches more
//! than one key is one transaction, so counts, counters and images never disagree, even after
//! a crash.
//!
//! `Meta` is synchronous and called only through [`crate::store::Store`]: changes on its one
//! writer thread, reads on blocking threads (the module docs there say why).

use std::path::Path;
use std::time::{Duration, Instant};

use pixelmesh_common::time::now_ms;
use pixelmesh_proto::{
    Error, ErrorCode, MAX_TILES,
    v1::{
        BlobInfo, CreateJobRequest, Image, ImageInput, ImageState, Job, JobCounts, JobState,
        JobSummary, ListJobsQuery, Operation, TaskResult, TileAssembly, TileOutput, TileSplit,
        operation, task_result::Outcome,
    },
};
use prost::Message as _;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

/// Largest page of [`Meta::list`].
pub const MAX_LIST: u32 = 1000;
const DEFAULT_LIST: u32 = 50;
/// An output's analysis reports together: a report is a few kilobytes (a 256-bin histogram and
/// a summary of EXIF), so this is room for dozens.
pub const MAX_ANALYSIS_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct Meta {
    db: sled::Db,
    jobs: sled::Tree,
    images: sled::Tree,
    unfinished: sled::Tree,
    tiles: sled::Tree,
    batches: sled::Tree,
    counts: sled::Tree,
    owners: sled::Tree,
    blob_info: sled::Tree,
    by_state: sled::Tree,
    max_images_per_job: u32,
}

/// The outcome of [`Meta::record`].
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub applied: bool,
    pub summary: JobSummary,
    pub image: Option<Image>,
    /// Every tile of the image is processed: what the assembly task needs.
    pub assemble: Option<TileAssembly>,
    /// For a split or tile result of a pending image: the job's pipeline, for the tasks that
    /// come next.
    pub pipeline: Vec<Operation>,
    /// The job's generation, for the next tasks' ids.
    pub generation: u32,
}

fn db_error(err: impl std::fmt::Display) -> Error {
    Error::internal(format!("metadata store: {err}"))
}

fn tx_error(err: TransactionError<Error>) -> Error {
    match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => db_error(err),
    }
}

fn abort(err: Error) -> ConflictableTransactionError<Error> {
    ConflictableTransactionError::Abort(err)
}

/// A job's header read inside a transaction.
fn tx_job(
    jobs: &sled::transaction::TransactionalTree,
    id: &str,
) -> Result<Job, ConflictableTransactionError<Error>> {
    let bytes = jobs
        .get(id)?
        .ok_or_else(|| abort(Error::not_found(format!("job {id} not found"))))?;
    decode(&bytes).map_err(abort)
}

/// Marks the `counts` tree as built (see [`Meta::recount`]).
const COUNTS_READY: &[u8] = b"ready";

/// The counter of jobs in `state` among `owner`'s (every job's when `owner` is empty).
fn counter_key(owner: &str, state: JobState) -> Vec<u8> {
    let state = match state {
        JobState::Unspecified => JobState::Queued,
        state => state,
    };
    if owner.is_empty() {
        format!("all/{}", state.label()).into_bytes()
    } else {
        format!("owner/{owner}/{}", state.label()).into_bytes()
    }
}

/// The counters a job of `owner` in `state` counts in: every job's, and its owner's when it
/// has one.
fn counter_keys(owner: &str, state: JobState) -> Vec<Vec<u8>> {
    let mut keys = vec![counter_key("", state)];
    if !owner.is_empty() {
        keys.push(counter_key(owner, state));
    }
    keys
}

fn read_counter(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// A job's state, as its header says.
fn state_of(job: &Job) -> JobState {
    job.summary
        .as_ref()
        .map_or(JobState::Unspecified, JobSummary::state)
}

fn owner_of(job: &Job) -> &str {
    job.summary.as_ref().map_or("", |s| s.owner.as_str())
}

/// Adds `delta` (1 or -1) to the counters a job of `owner` in `state` counts in.
fn count(
    counts: &sled::transaction::TransactionalTree,
    owner: &str,
    state: JobState,
    delta: i64,
) -> Result<(), ConflictableTransactionError<Error>> {
    for key in counter_keys(owner, state) {
        let n = counts.get(&key)?.map_or(0, |bytes| read_counter(&bytes));
        let n = n.saturating_add_signed(delta);
        counts.insert(key, &n.to_be_bytes())?;
    }
    Ok(())
}

/// Writes a job's header and moves the per-state counters and index entries when its state
/// changed from `was`, the state the transaction read (`None` for a new job). A job's owner
/// never changes.
fn put_job(
    jobs: &sled::transaction::TransactionalTree,
    counts: &sled::transaction::TransactionalTree,
    by_state: &sled::transaction::TransactionalTree,
    id: &str,
    was: Option<JobState>,
    job: &Job,
) -> Result<(), ConflictableTransactionError<Error>> {
    jobs.insert(id.as_bytes(), job.encode_to_vec())?;
    let state = state_of(job);
    if was != Some(state) {
        let owner = owner_of(job);
        if let Some(was) = was {
            count(counts, owner, was, -1)?;
            for key in state_keys(owner, was, id) {
                by_state.remove(key)?;
            }
        }
        count(counts, owner, state, 1)?;
        for key in state_keys(owner, state, id) {
            by_state.insert(key, &[])?;
        }
    }
    Ok(())
}

/// Marks the `by_state` index as built (see [`Meta::reindex`]); no entry starts with `r`.
const INDEX_READY: &[u8] = b"ready";

/// Where `by_state` keeps the jobs in `state` among `owner`'s (every job's when `owner` is
/// empty): `a` + state, or `o` + the owner's length + owner + state; the job id (26 bytes)
/// follows. The length keeps an owner from reaching into another's range, whatever bytes it
/// holds, and ids in key order are creation order, so a range read backwards is newest first.
fn state_prefix(owner: &str, state: JobState) -> Vec<u8> {
    let state = match state {
        JobState::Unspecified => JobState::Queued,
        state => state,
    } as i32 as u8;
    if owner.is_empty() {
        vec![b'a', state]
    } else {
        let mut prefix = Vec::with_capacity(owner.len() + 4);
        prefix.push(b'o');
        prefix.extend_from_slice(&(owner.len() as u16).to_be_bytes());
        prefix.extend_from_slice(owner.as_bytes());
        prefix.push(state);
        prefix
    }
}

/// The `by_state` entries of job `id` of `owner` in `state`: every job's, and its owner's.
fn state_keys(owner: &str, state: JobState, id: &str) -> Vec<Vec<u8>> {
    let mut scopes = vec![""];
    if !owner.is_empty() {
        scopes.push(owner);
    }
    scopes
        .into_iter()
        .map(|scope| {
            let mut key = state_prefix(scope, state);
            key.extend_from_slice(id.as_bytes());
            key
        })
        .collect()
}

/// ULIDs as the scheduler makes them: 26 characters of uppercase Crockford base32, the first
/// at most `7` (128 bits). Only this canonical form keeps key order equal to creation order
/// and gives each job one key.
pub fn check_job_id(id: &str) -> Result<(), Error> {
    let ok = id.len() == 26
        && id.as_bytes()[0] <= b'7'
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)));
    if ok {
        Ok(())
    } else {
        let shown: String = id.chars().take(40).collect();
        Err(Error::invalid(format!("job id {shown:?} is not a ulid")))
    }
}

fn image_key(id: &str, index: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 5);
    key.extend_from_slice(id.as_bytes());
    key.push(b'/');
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn batch_key(parent_id: &str, id: &str) -> Vec<u8> {
    format!("{parent_id}/{id}").into_bytes()
}

fn owner_key(blob_id: &str, owner: &str) -> Vec<u8> {
    format!("{blob_id}/{owner}").into_bytes()
}

/// Reads of a job whose images keep changing meanwhile, before giving up: each change of a
/// job takes the writer well under a millisecond, so this many in a row means a storm.
const MAX_JOB_READS: usize = 100;

/// Longest owner (an API key's name) a job records.
const MAX_OWNER_BYTES: usize = 128;
/// Longest URL an input may have; the gateway checks URLs properly, this bounds the record.
pub const MAX_URL_BYTES: usize = 2048;

/// An input is a stored blob or an http(s) URL, never both.
fn check_input(input: &ImageInput) -> Result<(), Error> {
    match (input.blob_id.is_empty(), input.url.is_empty()) {
        (false, true) => pixelmesh_blobs::BlobId::parse(&input.blob_id).map(drop),
        (true, false) => {
            let lower = input.url.get(..8).unwrap_or_default().to_ascii_lowercase();
            if input.url.len() > MAX_URL_BYTES {
                Err(Error::invalid(format!("url is over {MAX_URL_BYTES} bytes")))
            } else if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                Err(Error::invalid("url must be http or https"))
            } else {
                Ok(())
            }
        }
        (false, false) => Err(Error::invalid("an input has a blob id or a url, not both")),
        (true, true) => Err(Error::invalid("an input needs a blob id or a url")),
    }
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, Error> {
    M::decode(bytes).map_err(|err| Error::internal(format!("corrupt metadata record: {err}")))
}

/// Blob ids must be servable and tile lists sane; everything else about an outcome is the
/// worker's word.
fn check_outcome(outcome: Option<&Outcome>) -> Result<(), Error> {
    let blob = |what: &str, id: &str| {
        pixelmesh_blobs::BlobId::parse(id)
            .map(|_| ())
            .map_err(|err| Error::invalid(format!("result {what}: {}", err.message)))
    };
    match outcome {
        None => Err(Error::invalid("result has neither output nor error")),
        Some(Outcome::Output(output)) => {
            let analysis: usize = output.analysis.iter().map(String::len).sum();
            if analysis > MAX_ANALYSIS_BYTES {
                return Err(Error::invalid(format!(
                    "result analysis is {analysis} bytes, over {MAX_ANALYSIS_BYTES}"
                )));
            }
            blob("output", &output.blob_id)
        }
        Some(Outcome::Error(_)) => Ok(()),
        Some(Outcome::Split(TileSplit { tiles, .. })) => {
            if tiles.is_empty() || tiles.len() > MAX_TILES as usize {
                return Err(Error::invalid(format!(
                    "a split needs 1 to {MAX_TILES} tiles, got {}",
                    tiles.len()
                )));
            }
            if tiles.iter().enumerate().any(|(i, t)| t.tile as usize != i) {
                return Err(Error::invalid("split tiles must be numbered 0, 1, 2…"));
            }
            tiles
                .iter()
                .try_for_each(|t| blob("tile input", &t.blob_id))
        }
        Some(Outcome::Tile(TileOutput { blob_id, .. })) => blob("tile", blob_id),
    }
}

/// How long `open` waits for a previous holder's file lock: sled 0.34 releases it from a
/// background thread some moments after the old `Db` is dropped, or after a killed
/// process's descriptors are reaped (sled#1234).
const LOCK_WAIT: Duration = Duration::from_secs(5);

fn open_db(dir: &Path, wait: Duration) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + wait;
    let mut backoff = Duration::from_millis(5);
    loop {
        // No background flusher: the writer thread flushes after every group of changes,
        // and a second flusher is what deadlocked against transactions (see store.rs).
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            // sled reports lock contention only through its message (kind Other).
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}

impl Meta {
    pub fn open(dir: &Path, max_images_per_job: u32) -> Result<Meta, Error> {
        let db = open_db(dir, LOCK_WAIT).map_err(db_error)?;
        let meta = Meta {
            jobs: db.open_tree("jobs").map_err(db_error)?,
            images: db.open_tree("images").map_err(db_error)?,
            unfinished: db.open_tree("unfinished").map_err(db_error)?,
            tiles: db.open_tree("tiles").map_err(db_error)?,
            batches: db.open_tree("batches").map_err(db_error)?,
            counts: db.open_tree("counts").map_err(db_error)?,
            owners: db.open_tree("owners").map_err(db_error)?,
            blob_info: db.open_tree("blob_info").map_err(db_error)?,
            by_state: db.open_tree("by_state").map_err(db_error)?,
            db,
            max_images_per_job,
        };
        if meta.counts.get(COUNTS_READY).map_err(db_error)?.is_none() {
            meta.recount()?;
        }
        if meta.by_state.get(INDEX_READY).map_err(db_error)?.is_none() {
            meta.reindex()?;
        }
        Ok(meta)
    }

    /// Rebuilds the `by_state` index from every job header: once, for a database written
    /// before the index existed. Runs before the store serves anything, like [`Meta::recount`].
    fn reindex(&self) -> Result<(), Error> {
        // Written in bounded batches; the mark goes last, so a crash part-way rebuilds again.
        const BATCH: usize = 10_000;
        self.by_state.clear().map_err(db_error)?;
        let mut batch = sled::Batch::default();
        let mut batched = 0;
        for entry in self.jobs.iter() {
            let (id, value) = entry.map_err(db_error)?;
            let job: Job = decode(&value)?;
            let id = String::from_utf8_lossy(&id);
            for key in state_keys(owner_of(&job), state_of(&job), &id) {
                batch.insert(key, &[]);
            }
            batched += 1;
            if batched == BATCH {
                self.by_state
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(db_error)?;
                batched = 0;
            }
        }
        batch.insert(INDEX_READY, &[]);
        self.by_state.apply_batch(batch).map_err(db_error)?;
        tracing::info!(jobs = self.jobs.len(), "job state index rebuilt");
        Ok(())
    }

    /// Rebuilds the `counts` tree from every job header: once, for a database written
    /// before the counters existed. Runs before the store serves anything.
    fn recount(&self) -> Result<(), Error> {
        let tally = self.tally()?;
        self.counts.clear().map_err(db_error)?;
        for (key, n) in &tally {
            self.counts
                .insert(key.as_slice(), &n.to_be_bytes())
                .map_err(db_error)?;
        }
        self.counts.insert(COUNTS_READY, &[]).map_err(db_error)?;
        tracing::info!(jobs = self.jobs.len(), "job counters rebuilt");
        Ok(())
    }

    /// The counters as a scan of every job header would set them.
    fn tally(&self) -> Result<std::collections::BTreeMap<Vec<u8>, u64>, Error> {
        let mut tally = std::collections::BTreeMap::new();
        for value in self.jobs.iter().values() {
            let job: Job = decode(&value.map_err(db_error)?)?;
            for key in counter_keys(owner_of(&job), state_of(&job)) {
                *tally.entry(key).or_insert(0) += 1;
            }
        }
        Ok(tally)
    }

    /// Makes every change so far durable. Only the writer thread calls it (see store.rs).
    pub fn flush(&self) -> Result<(), Error> {
        self.db.flush().map(drop).map_err(db_error)
    }

    pub fn create(&self, request: CreateJobRequest) -> Result<Job, Error> {
        let tiling = request.tiling();
        let CreateJobRequest {
            id,
            pipeline,
            inputs,
            parent_id,
            owner,
            ..
        } = request;
        let id = id.as_str();
        check_job_id(id)?;
        if !parent_id.is_empty() {
            check_job_id(&parent_id)
                .map_err(|err| Error::invalid(format!("parent id: {}", err.message)))?;
        }
        if owner.len() > MAX_OWNER_BYTES {
            return Err(Error::invalid(format!(
                "owner is over {MAX_OWNER_BYTES} bytes"
            )));
        }
        if inputs.is_empty() {
            return Err(Error::invalid("a job needs at least one input image"));
        }
        if inputs.len() > self.max_images_per_job as usize {
            return Err(Error::too_large(format!(
                "{} images in one job, over the limit of {}",
                inputs.len(),
                self.max_images_per_job
            )));
        }
        for (i, input) in inputs.iter().enumerate() {
            check_input(input)
                .map_err(|err| Error::invalid(format!("input {i}: {}", err.message)))?;
        }
        let now = now_ms();
        let summary = JobSummary {
            id: id.to_string(),
            state: JobState::Queued as i32,
            total: inputs.len() as u32,
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
            parent_id: parent_id.clone(),
            owner,
            ..Default::default()
        };
        let images: Vec<Image> = inputs
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
            .collect();
        let header = Job {
            summary: Some(summary),
            pipeline,
            images: Vec::new(),
            tiling: tiling as i32,
            generation: 0,
            provisional: true,
        };
        (
            &self.jobs,
            &self.images,
            &self.unfinished,
            &self.batches,
            &self.counts,
            &self.by_state,
        )
            .transaction(|(jobs, tx_images, unfinished, batches, counts, by_state)| {
                if jobs.get(id)?.is_some() {
                    return Err(abort(Error::new(
                        ErrorCode::AlreadyExists,
                        format!("job {id} already exists"),
                    )));
                }
                put_job(jobs, counts, by_state, id, None, &header)?;
                unfinished.insert(id.as_bytes(), &[])?;
                if !parent_id.is_empty() {
                    batches.insert(batch_key(&parent_id, id), &[])?;
                }
                for image in &images {
                    tx_images.insert(image_key(id, image.index), image.encode_to_vec())?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        tracing::info!(job = %id, images = images.len(), "job stored");
        Ok(Job { images, ..header })
    }

    fn header(&self, id: &str) -> Result<Job, Error> {
        check_job_id(id)?;
        let bytes = self
            .jobs
            .get(id)
            .map_err(db_error)?
            .ok_or_else(|| Error::not_found(format!("job {id} not found")))?;
        decode(&bytes)
    }

    pub fn summary(&self, id: &str) -> Result<JobSummary, Error> {
        Ok(self.header(id)?.summary.unwrap_or_default())
    }

    /// One image of job `id` and the job's summary, reading that image's record only: by
    /// `index`, or when `name` is not empty the first image of that name (a scan of this
    /// job's images, none of another job's). `None` for an image the job does not have: the
    /// summary still comes back, so the caller checks access before saying so. The two are
    /// read apart, not as of one moment; what callers use of the summary (id, owner) never
    /// changes.
    pub fn image(
        &self,
        id: &str,
        index: u32,
        name: &str,
    ) -> Result<(JobSummary, Option<Image>), Error> {
        let summary = self.summary(id)?;
        let image = if name.is_empty() {
            if index >= summary.total {
                return Ok((summary, None));
            }
            self.images
                .get(image_key(id, index))
                .map_err(db_error)?
                .map(|bytes| decode(&bytes))
                .transpose()?
        } else {
            let mut found = None;
            // Image keys end in the index big-endian: this is index order.
            let mut prefix = id.as_bytes().to_vec();
            prefix.push(b'/');
            for value in self.images.scan_prefix(prefix).values() {
                let image: Image = decode(&value.map_err(db_error)?)?;
                if image.name == name {
                    found = Some(image);
                    break;
                }
            }
            found
        };
        Ok((summary, image))
    }

    /// The whole job: header and images, as of one moment. Read without a transaction (a
    /// read transaction takes sled's write lock, see store.rs): every change to a job's images
    /// also counts up its header's version in the same transaction, so images read between
    /// two reads of the same header version belong together; otherwise read again.
    pub fn job(&self, id: &str) -> Result<Job, Error> {
        check_job_id(id)?;
        let mut attempts = 0;
        loop {
            let mut job = self.header(id)?;
            let summary = job.summary.clone().unwrap_or_default();
            job.images = (0..summary.total)
                .map(|index| {
                    let bytes = self
                        .images
                        .get(image_key(id, index))
                        .map_err(db_error)?
                        .ok_or_else(|| Error::not_found(format!("job {id} not found")))?;
                    decode(&bytes)
                })
                .collect::<Result<_, _>>()?;
            let again = self.header(id)?.summary.unwrap_or_default();
            if again.version == summary.version {
                return Ok(job);
            }
            attempts += 1;
            if attempts >= MAX_JOB_READS {
                return Err(Error::unavailable(format!(
                    "job {id} changes too fast to read, retry"
                )));
            }
        }
    }

    /// Newest first, filtered by the query's batch, states and owner; `before` is an
    /// exclusive upper bound (the last id of the previous page). A batch is read from its
    /// index; states and owner from `by_state` (one range per state, merged newest first);
    /// no filter reads jobs newest first. Each read stops once the page is full.
    pub fn list(&self, query: &ListJobsQuery) -> Result<Vec<JobSummary>, Error> {
        let limit = match query.limit {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        } as usize;
        if !query.before.is_empty() {
            check_job_id(&query.before)?;
        }
        let states: Vec<JobState> = query.states().collect();
        let wanted = |summary: &JobSummary| {
            (states.is_empty() || states.contains(&summary.state()))
                && (query.owner.is_empty() || summary.owner == query.owner)
        };
        let mut jobs = Vec::new();
        if query.parent_id.is_empty() && !(states.is_empty() && query.owner.is_empty()) {
            let chosen = if states.is_empty() {
                JobState::ALL.to_vec()
            } else {
                states.clone()
            };
            let mut prefixes: Vec<Vec<u8>> = chosen
                .into_iter()
                .map(|state| state_prefix(&query.owner, state))
                .collect();
            prefixes.sort();
            prefixes.dedup();
            let mut ranges: Vec<_> = prefixes
                .into_iter()
                .map(|start| {
                    let len = start.len();
                    let mut end = start.clone();
                    if query.before.is_empty() {
                        // Above every id: ids are ASCII.
                        end.push(0xff);
                    } else {
                        end.extend_from_slice(query.before.as_bytes());
                    }
                    self.by_state
                        .range(start..end)
                        .keys()
                        .rev()
                        .map(move |key| key.map(|key| key[len..].to_vec()).map_err(db_error))
                })
                .collect();
            let mut heads = ranges
                .iter_mut()
                .map(|range| range.next().transpose())
                .collect::<Result<Vec<_>, _>>()?;
            let mut last: Option<Vec<u8>> = None;
            // The newest head of all ranges, each time: their merge, newest first.
            while let Some(at) = (0..heads.len())
                .filter(|&at| heads[at].is_some())
                .max_by(|&a, &b| heads[a].cmp(&heads[b]))
            {
                let Some(id) = heads[at].take() else { break };
                heads[at] = ranges[at].next().transpose()?;
                // A job that changed state during the read can show up in two ranges; the
                // merge makes those neighbours.
                if last.as_ref() == Some(&id) {
                    continue;
                }
                let id = String::from_utf8_lossy(&id).into_owned();
                last = Some(id.clone().into_bytes());
                // The header decides: a job deleted or moved meanwhile is left out.
                let summary = match self.summary(&id) {
                    Ok(summary) => summary,
                    Err(err) if err.code == ErrorCode::NotFound => continue,
                    Err(err) => return Err(err),
                };
                if wanted(&summary) {
                    jobs.push(summary);
                    if jobs.len() == limit {
                        break;
                    }
                }
            }
        } else if query.parent_id.is_empty() {
            let range = if query.before.is_empty() {
                self.jobs.iter()
            } else {
                self.jobs.range(..query.before.as_bytes())
            };
            for value in range.values().rev() {
                let job: Job = decode(&value.map_err(db_error)?)?;
                let summary = job.summary.unwrap_or_default();
                if wanted(&summary) {
                    jobs.push(summary);
                    if jobs.len() == limit {
                        break;
                    }
                }
            }
        } else {
            check_job_id(&query.parent_id)?;
            let start = batch_key(&query.parent_id, "");
            let end = if query.before.is_empty() {
                batch_key(&query.parent_id, "\u{7f}")
            } else {
                batch_key(&query.parent_id, &query.before)
            };
            for key in self.batches.range(start..end).keys().rev() {
                let key = key.map_err(db_error)?;
                let id = String::from_utf8_lossy(&key[query.parent_id.len() + 1..]).into_owned();
                // A job deleted meanwhile is left out.
                let summary = match self.summary(&id) {
                    Ok(summary) => summary,
                    Err(err) if err.code == ErrorCode::NotFound => continue,
                    Err(err) => return Err(err),
                };
                if wanted(&summary) {
                    jobs.push(summary);
                    if jobs.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(jobs)
    }

    /// How many jobs are in each state, among those `owner` made (all when empty): read
    /// from counters kept in the same transactions as the jobs, so no scan.
    pub fn counts(&self, owner: &str) -> Result<JobCounts, Error> {
        let mut counts = JobCounts::default();
        for state in JobState::ALL {
            let n = match self
                .counts
                .get(counter_key(owner, state))
                .map_err(db_error)?
            {
                Some(bytes) => read_counter(&bytes),
                None => 0,
            } as u32;
            counts.total += n;
            *match state {
                JobState::Unspecified | JobState::Queued => &mut counts.queued,
                JobState::Running => &mut counts.running,
                JobState::Completed => &mut counts.completed,
                JobState::CompletedWithErrors => &mut counts.completed_with_errors,
                JobState::Failed => &mut counts.failed,
                JobState::Cancelled => &mut counts.cancelled,
                JobState::Paused => &mut counts.paused,
            } += n;
        }
        Ok(counts)
    }

    /// Every blob a job refers to: its images' inputs and outputs, and its watermarks' logos.
    pub fn referenced_blobs(&self) -> Result<std::collections::HashSet<String>, Error> {
        let mut ids = std::collections::HashSet::new();
        for value in self.jobs.iter().values() {
            let job: Job = decode(&value.map_err(db_error)?)?;
            ids.extend(job.pipeline.into_iter().filter_map(|op| match op.op {
                Some(operation::Op::Watermark(watermark)) => Some(watermark.logo),
                _ => None,
            }));
        }
        for value in self.images.iter().values() {
            let image: Image = decode(&value.map_err(db_error)?)?;
            if let Some(output) = image.output {
                ids.insert(output.blob_id);
            }
            if !image.input_blob_id.is_empty() {
                ids.insert(image.input_blob_id);
            }
        }
        Ok(ids)
    }

    /// Jobs not in a final state, oldest first.
    pub fn unfinished(&self) -> Result<Vec<JobSummary>, Error> {
        let mut summaries = Vec::new();
        for key in self.unfinished.iter().keys() {
            let summary = self.summary(&String::from_utf8_lossy(&key.map_err(db_error)?))?;
            // A job that ended between reading the index and reading the job is left out.
            if !summary.state().is_final() {
                summaries.push(summary);
            }
        }
        Ok(summaries)
    }

    /// Queued → running, and the job is no longer provisional (its submit is confirmed);
    /// other states are left as they are.
    pub fn mark_running(&self, id: &str) -> Result<JobSummary, Error> {
        check_job_id(id)?;
        // A transaction, so a result recorded meanwhile (which may have finished the job) is
        // never overwritten.
        (&self.jobs, &self.counts, &self.by_state)
            .transaction(|(jobs, counts, by_state)| {
                let mut job = tx_job(jobs, id)?;
                let was = state_of(&job);
                let confirmed = std::mem::take(&mut job.provisional);
                let summary = job.summary.get_or_insert_default();
                if summary.state() == JobState::Queued {
                    summary.state = JobState::Running as i32;
                    bump(summary);
                    put_job(jobs, counts, by_state, id, Some(was), &job)?;
                } else if confirmed {
                    put_job(jobs, counts, by_state, id, Some(was), &job)?;
                }
                Ok(job.summary.unwrap_or_default())
            })
            .map_err(tx_error)
    }

    /// Records one image's outcome if the image is still pending and the job not ended;
    /// finalises the job when it was the last image. A tiled image's split and tile results
    /// are recorded the same way but leave it pending; each is applied once.
    pub fn record(&self, result: &TaskResult) -> Result<Recorded, Error> {
        let id = result.job_id.as_str();
        // Anything the gateway or a worker could not read back is refused before any change.
        check_outcome(result.outcome.as_ref())?;
        let header = self.header(id)?;
        let total = header.summary.as_ref().map_or(0, |s| s.total);
        if result.index >= total {
            return Err(Error::invalid(format!(
                "job {id} has no image {} (it has {total})",
                result.index
            )));
        }
        let key = image_key(id, result.index);
        (
            &self.jobs,
            &self.images,
            &self.unfinished,
            &self.tiles,
            &self.counts,
            &self.by_state,
            &self.owners,
        )
            .transaction(
                |(jobs, images, unfinished, tiles, counts, by_state, owners)| {
                    let mut job = tx_job(jobs, id)?;
                    let was = state_of(&job);
                    let mut image: Image = decode(
                        &images
                            .get(&key)?
                            .ok_or_else(|| abort(Error::internal("image record missing")))?,
                    )
                    .map_err(abort)?;
                    let summary = job.summary.get_or_insert_default();
                    if summary.state().is_final() || image.state() != ImageState::Pending {
                        return Ok(Recorded {
                            applied: false,
                            summary: summary.clone(),
                            image: Some(image),
                            assemble: None,
                            pipeline: Vec::new(),
                            generation: job.generation,
                        });
                    }
                    let pipeline = job.pipeline.clone();
                    let generation = job.generation;
                    let unchanged = |summary: &JobSummary, image: Image, assemble| Recorded {
                        applied: false,
                        summary: summary.clone(),
                        image: Some(image),
                        assemble,
                        pipeline: pipeline.clone(),
                        generation,
                    };
                    match &result.outcome {
                        Some(Outcome::Split(split)) => {
                            if image.tiles_total > 0 {
                                return Ok(unchanged(summary, image, None));
                            }
                            image.tiles_total = split.tiles.len() as u32;
                            image.duration_ms = result.duration_ms;
                            image.version = bump(summary);
                            let plan = TileAssembly {
                                width: split.width,
                                height: split.height,
                                input_format: split.input_format,
                                tiles: Vec::new(),
                            };
                            tiles.insert(key.clone(), plan.encode_to_vec())?;
                            images.insert(key.clone(), image.encode_to_vec())?;
                            let summary = summary.clone();
                            put_job(jobs, counts, by_state, id, Some(was), &job)?;
                            return Ok(Recorded {
                                applied: true,
                                summary,
                                image: Some(image),
                                assemble: None,
                                pipeline,
                                generation,
                            });
                        }
                        Some(Outcome::Tile(tile)) => {
                            let mut plan: TileAssembly =
                                decode(&tiles.get(&key)?.ok_or_else(|| {
                                    abort(Error::invalid(format!(
                                        "image {} of job {id} was not split into tiles",
                                        result.index
                                    )))
                                })?)
                                .map_err(abort)?;
                            if tile.tile >= image.tiles_total {
                                return Err(abort(Error::invalid(format!(
                                    "tile {} of image {} is out of range (it has {})",
                                    tile.tile, result.index, image.tiles_total
                                ))));
                            }
                            let complete = |plan: &TileAssembly, image: &Image| {
                                (plan.tiles.len() as u32 == image.tiles_total).then(|| plan.clone())
                            };
                            if plan.tiles.iter().any(|done| done.tile == tile.tile) {
                                let assemble = complete(&plan, &image);
                                return Ok(unchanged(summary, image, assemble));
                            }
                            plan.tiles.push(tile.clone());
                            plan.tiles.sort_by_key(|done| done.tile);
                            image.tiles_done = plan.tiles.len() as u32;
                            image.duration_ms += result.duration_ms;
                            image.version = bump(summary);
                            tiles.insert(key.clone(), plan.encode_to_vec())?;
                            images.insert(key.clone(), image.encode_to_vec())?;
                            let summary = summary.clone();
                            put_job(jobs, counts, by_state, id, Some(was), &job)?;
                            return Ok(Recorded {
                                applied: true,
                                summary,
                                assemble: complete(&plan, &image),
                                image: Some(image),
                                pipeline,
                                generation,
                            });
                        }
                        Some(Outcome::Output(output)) => {
                            image.state = ImageState::Done as i32;
                            image.output = Some(output.clone());
                            summary.done += 1;
                            // The job's key may download its output, and use it as an input.
                            if !summary.owner.is_empty() {
                                owners.insert(owner_key(&output.blob_id, &summary.owner), &[])?;
                            }
                        }
                        Some(Outcome::Error(error)) => {
                            image.state = ImageState::Failed as i32;
                            image.error.clone_from(error);
                            summary.failed += 1;
                        }
                        None => unreachable!("checked before the transaction"),
                    }
                    tiles.remove(key.clone())?;
                    image.worker_id.clone_from(&result.worker_id);
                    image.attempts = result.attempts;
                    if image.tiles_total > 0 {
                        image.duration_ms += result.duration_ms;
                    } else {
                        image.duration_ms = result.duration_ms;
                    }
                    image.version = bump(summary);
                    let now = summary.updated_at_ms;
                    if summary.done + summary.failed + summary.cancelled >= summary.total {
                        summary.state = if summary.failed == 0 {
                            JobState::Completed
                        } else if summary.done == 0 {
                            JobState::Failed
                        } else {
                            JobState::CompletedWithErrors
                        } as i32;
                        summary.finished_at_ms = now;
                        unfinished.remove(id.as_bytes())?;
                    }
                    let summary = summary.clone();
                    put_job(jobs, counts, by_state, id, Some(was), &job)?;
                    images.insert(key.clone(), image.encode_to_vec())?;
                    Ok(Recorded {
                        applied: true,
                        summary,
                        image: Some(image),
                        assemble: None,
                        pipeline: Vec::new(),
                        generation,
                    })
                },
            )
            .map_err(tx_error)
    }

    /// Cancels the job and its pending images, unless it already ended.
    pub fn cancel(&self, id: &str) -> Result<Job, Error> {
        let current = self.job(id)?;
        let state = current
            .summary
            .as_ref()
            .map_or(JobState::Unspecified, |s| s.state());
        if state == JobState::Cancelled {
            return Ok(current);
        }
        if state.is_final() {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("job {id} already ended ({})", state.label()),
            ));
        }
        let keys: Vec<Vec<u8>> = current
            .images
            .iter()
            .map(|image| image_key(id, image.index))
            .collect();
        (
            &self.jobs,
            &self.images,
            &self.unfinished,
            &self.counts,
            &self.by_state,
        )
            .transaction(|(jobs, images, unfinished, counts, by_state)| {
                let mut job = tx_job(jobs, id)?;
                let was = state_of(&job);
                let summary = job.summary.get_or_insert_default();
                if summary.state().is_final() {
                    return Err(abort(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!("job {id} already ended ({})", summary.state().label()),
                    )));
                }
                let version = bump(summary);
                for key in &keys {
                    let Some(bytes) = images.get(key)? else {
                        continue;
                    };
                    let mut image: Image = decode(&bytes).map_err(abort)?;
                    if image.state() == ImageState::Pending {
                        image.state = ImageState::Cancelled as i32;
                        image.version = version;
                        summary.cancelled += 1;
                        images.insert(key.clone(), image.encode_to_vec())?;
                    }
                }
                summary.state = JobState::Cancelled as i32;
                summary.finished_at_ms = summary.updated_at_ms;
                unfinished.remove(id.as_bytes())?;
                put_job(jobs, counts, by_state, id, Some(was), &job)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.job(id)
    }

    /// Puts an ended job's failed images back to pending (their outcome, tiles and counters
    /// cleared) and the job back to queued with its generation counted up, so the scheduler
    /// dispatches them again under new task ids.
    pub fn retry(&self, id: &str) -> Result<Job, Error> {
        let current = self.job(id)?;
        let keys: Vec<Vec<u8>> = current
            .images
            .iter()
            .filter(|image| image.state() == ImageState::Failed)
            .map(|image| image_key(id, image.index))
            .collect();
        (
            &self.jobs,
            &self.images,
            &self.unfinished,
            &self.tiles,
            &self.counts,
            &self.by_state,
        )
            .transaction(|(jobs, images, unfinished, tiles, counts, by_state)| {
                let mut job = tx_job(jobs, id)?;
                let was = state_of(&job);
                let summary = job.summary.get_or_insert_default();
                let state = summary.state();
                let refuse = |why: String| abort(Error::new(ErrorCode::FailedPrecondition, why));
                if !state.is_final() {
                    return Err(refuse(format!("job {id} is still {}", state.label())));
                }
                if state == JobState::Cancelled {
                    return Err(refuse(format!("job {id} was cancelled")));
                }
                if keys.is_empty() || summary.failed == 0 {
                    return Err(refuse(format!("job {id} has no failed images")));
                }
                let version = bump(summary);
                for key in &keys {
                    let Some(bytes) = images.get(key)? else {
                        continue;
                    };
                    let image: Image = decode(&bytes).map_err(abort)?;
                    if image.state() != ImageState::Failed {
                        continue;
                    }
                    let retried = Image {
                        index: image.index,
                        name: image.name,
                        input_blob_id: image.input_blob_id,
                        url: image.url,
                        state: ImageState::Pending as i32,
                        version,
                        ..Default::default()
                    };
                    summary.failed -= 1;
                    images.insert(key.clone(), retried.encode_to_vec())?;
                    tiles.remove(key.clone())?;
                }
                summary.state = JobState::Queued as i32;
                summary.finished_at_ms = 0;
                job.generation += 1;
                unfinished.insert(id.as_bytes(), &[])?;
                put_job(jobs, counts, by_state, id, Some(was), &job)?;
                Ok(())
            })
            .map_err(tx_error)?;
        tracing::info!(job = %id, images = keys.len(), "failed images queued again");
        self.job(id)
    }

    /// Pauses a queued or running job: workers skip its tasks until it is resumed. Results of
    /// tasks already running are still recorded, and may finish the job.
    pub fn pause(&self, id: &str) -> Result<Job, Error> {
        check_job_id(id)?;
        (&self.jobs, &self.counts, &self.by_state)
            .transaction(|(jobs, counts, by_state)| {
                let mut job = tx_job(jobs, id)?;
                let was = state_of(&job);
                let summary = job.summary.get_or_insert_default();
                match summary.state() {
                    JobState::Paused => return Ok(()),
                    JobState::Queued | JobState::Running => {}
                    state => {
                        return Err(abort(Error::new(
                            ErrorCode::FailedPrecondition,
                            format!("job {id} already ended ({})", state.label()),
                        )));
                    }
                }
                summary.state = JobState::Paused as i32;
                bump(summary);
                put_job(jobs, counts, by_state, id, Some(was), &job)?;
                Ok(())
            })
            .map_err(tx_error)?;
        tracing::info!(job = %id, "job paused");
        self.job(id)
    }

    /// Puts a paused job back to queued under a new generation, for its pending images to be
    /// dispatched again. A pending tiled image starts over from its split: the tile tasks
    /// skipped while paused are not stored, only their results.
    pub fn resume(&self, id: &str) -> Result<Job, Error> {
        let current = self.job(id)?;
        let keys: Vec<Vec<u8>> = current
            .images
            .iter()
            .filter(|image| image.state() == ImageState::Pending && image.tiles_total > 0)
            .map(|image| image_key(id, image.index))
            .collect();
        (
            &self.jobs,
            &self.images,
            &self.tiles,
            &self.counts,
            &self.by_state,
        )
            .transaction(|(jobs, images, tiles, counts, by_state)| {
                let mut job = tx_job(jobs, id)?;
                let was = state_of(&job);
                let summary = job.summary.get_or_insert_default();
                if summary.state() != JobState::Paused {
                    return Err(abort(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!("job {id} is {}, not paused", summary.state().label()),
                    )));
                }
                let version = bump(summary);
                for key in &keys {
                    let Some(bytes) = images.get(key)? else {
                        continue;
                    };
                    let mut image: Image = decode(&bytes).map_err(abort)?;
                    if image.state() != ImageState::Pending {
                        continue;
                    }
                    image.tiles_total = 0;
                    image.tiles_done = 0;
                    image.duration_ms = 0;
                    image.version = version;
                    images.insert(key.clone(), image.encode_to_vec())?;
                    tiles.remove(key.clone())?;
                }
                summary.state = JobState::Queued as i32;
                job.generation += 1;
                put_job(jobs, counts, by_state, id, Some(was), &job)?;
                Ok(())
            })
            .map_err(tx_error)?;
        tracing::info!(job = %id, "job resumed");
        self.job(id)
    }

    /// Deletes an ended job's records; returns what it was, for its blobs.
    pub fn delete(&self, id: &str) -> Result<Job, Error> {
        let job = self.job(id)?;
        let state = job
            .summary
            .as_ref()
            .map_or(JobState::Unspecified, |s| s.state());
        if !state.is_final() {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("job {id} is {}: cancel it before deleting", state.label()),
            ));
        }
        self.remove_records(id, &job)?;
        tracing::info!(job = %id, images = job.images.len(), "job deleted");
        Ok(job)
    }

    /// Removes a job whose submit was answered with an error or never answered, whatever its
    /// state: nothing of it may run later. Returns what it was, for its blobs; `None` when
    /// it was never stored.
    pub fn abandon(&self, id: &str) -> Result<Option<Job>, Error> {
        let job = match self.job(id) {
            Ok(job) => job,
            Err(err) if err.code == ErrorCode::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        self.remove_records(id, &job)?;
        tracing::info!(job = %id, images = job.images.len(), "job abandoned");
        Ok(Some(job))
    }

    /// Every record of job `id` (as read in `job`) in one transaction, counters moved.
    fn remove_records(&self, id: &str, job: &Job) -> Result<(), Error> {
        let keys: Vec<Vec<u8>> = job
            .images
            .iter()
            .map(|image| image_key(id, image.index))
            .collect();
        let parent_id = job
            .summary
            .as_ref()
            .map(|s| s.parent_id.clone())
            .unwrap_or_default();
        (
            &self.jobs,
            &self.images,
            &self.unfinished,
            &self.tiles,
            &self.batches,
            &self.counts,
            &self.by_state,
        )
            .transaction(
                |(jobs, images, unfinished, tiles, batches, counts, by_state)| {
                    if let Some(old) = jobs.remove(id.as_bytes())? {
                        let old: Job = decode(&old).map_err(abort)?;
                        count(counts, owner_of(&old), state_of(&old), -1)?;
                        for key in state_keys(owner_of(&old), state_of(&old), id) {
                            by_state.remove(key)?;
                        }
                    }
                    unfinished.remove(id.as_bytes())?;
                    if !parent_id.is_empty() {
                        batches.remove(batch_key(&parent_id, id))?;
                    }
                    for key in &keys {
                        images.remove(key.clone())?;
                        tiles.remove(key.clone())?;
                    }
                    Ok(())
                },
            )
            .map_err(tx_error)
    }

    /// Puts the pending images among `indexes` back to the start, as if just submitted: a
    /// tiled one forgets its split and tiles. For images whose task was lost; images that
    /// are not pending (recorded meanwhile) are left alone. Returns the job.
    pub fn requeue(&self, id: &str, indexes: &[u32]) -> Result<Job, Error> {
        check_job_id(id)?;
        (
            &self.jobs,
            &self.images,
            &self.tiles,
            &self.counts,
            &self.by_state,
        )
            .transaction(|(jobs, images, tiles, counts, by_state)| {
                let mut job = tx_job(jobs, id)?;
                let was = state_of(&job);
                let summary = job.summary.get_or_insert_default();
                if summary.state().is_final() {
                    return Ok(());
                }
                let mut version = None;
                for &index in indexes {
                    let key = image_key(id, index);
                    let Some(bytes) = images.get(&key)? else {
                        continue;
                    };
                    let mut image: Image = decode(&bytes).map_err(abort)?;
                    if image.state() != ImageState::Pending {
                        continue;
                    }
                    let version = *version.get_or_insert_with(|| bump(summary));
                    image.tiles_total = 0;
                    image.tiles_done = 0;
                    image.duration_ms = 0;
                    image.version = version;
                    images.insert(key.clone(), image.encode_to_vec())?;
                    tiles.remove(key)?;
                }
                if version.is_some() {
                    put_job(jobs, counts, by_state, id, Some(was), &job)?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        self.job(id)
    }

    /// Records that `owner` stored the blob `info` describes (an upload), with its size and
    /// image header. An empty owner records only the header.
    pub fn add_blob(&self, info: &BlobInfo, owner: &str) -> Result<(), Error> {
        if owner.len() > MAX_OWNER_BYTES {
            return Err(Error::invalid(format!(
                "owner is over {MAX_OWNER_BYTES} bytes"
            )));
        }
        (&self.owners, &self.blob_info)
            .transaction(|(owners, blob_info)| {
                blob_info.insert(info.id.as_bytes(), info.encode_to_vec())?;
                if !owner.is_empty() {
                    owners.insert(owner_key(&info.id, owner), &[])?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    /// Whether `owner` uploaded blob `id` or a job of theirs produced it.
    pub fn owns(&self, id: &str, owner: &str) -> Result<bool, Error> {
        if owner.is_empty() {
            return Ok(false);
        }
        Ok(self
            .owners
            .get(owner_key(id, owner))
            .map_err(db_error)?
            .is_some())
    }

    /// What an upload recorded of blob `id` (size, image header), if it was recorded.
    pub fn blob_info(&self, id: &str) -> Result<Option<BlobInfo>, Error> {
        self.blob_info
            .get(id.as_bytes())
            .map_err(db_error)?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    /// Every blob id with an owner or header record: what [`Meta::forget_blobs`] may need to
    /// clean up after the blobs themselves are gone.
    pub fn recorded_blobs(&self) -> Result<std::collections::BTreeSet<String>, Error> {
        let mut ids = std::collections::BTreeSet::new();
        for key in self.blob_info.iter().keys() {
            ids.insert(String::from_utf8_lossy(&key.map_err(db_error)?).into_owned());
        }
        for key in self.owners.iter().keys() {
            let key = key.map_err(db_error)?;
            let id = key.split(|b| *b == b'/').next().unwrap_or_default();
            ids.insert(String::from_utf8_lossy(id).into_owned());
        }
        Ok(ids)
    }

    /// Drops the owner and header records of blobs that were removed.
    pub fn forget_blobs(&self, ids: &[String]) -> Result<(), Error> {
        let mut keys = Vec::new();
        for id in ids {
            for key in self.owners.scan_prefix(format!("{id}/")).keys() {
                keys.push(key.map_err(db_error)?);
            }
        }
        (&self.owners, &self.blob_info)
            .transaction(|(owners, blob_info)| {
                for key in &keys {
                    owners.remove(key.clone())?;
                }
                for id in ids {
                    blob_info.remove(id.as_bytes())?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }
}

/// Counts one change of the job; returns the new version, which the changed images carry.
fn bump(summary: &mut JobSummary) -> u64 {
    summary.version += 1;
    summary.updated_at_ms = now_ms();
    summary.version
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelmesh_proto::v1::{Output, Tiling};

    const BLOB: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn new_job(
        id: &str,
        pipeline: Vec<Operation>,
        inputs: Vec<ImageInput>,
        tiling: Tiling,
    ) -> CreateJobRequest {
        CreateJobRequest {
            id: id.to_string(),
            pipeline,
            inputs,
            tiling: tiling as i32,
            ..Default::default()
        }
    }

    fn query(limit: u32, before: &str) -> ListJobsQuery {
        ListJobsQuery {
            limit,
            before: before.to_string(),
            ..Default::default()
        }
    }

    fn meta() -> (tempfile::TempDir, Meta) {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Meta::open(dir.path(), 100).expect("open");
        (dir, meta)
    }

    fn inputs(n: usize) -> Vec<ImageInput> {
        (0..n)
            .map(|i| ImageInput {
                blob_id: BLOB.into(),
                name: format!("{i}.jpg"),
                ..Default::default()
            })
            .collect()
    }

    fn ok(id: &str, index: u32) -> TaskResult {
        TaskResult {
            job_id: id.into(),
            index,
            outcome: Some(Outcome::Output(Output {
                blob_id: BLOB.into(),
                ..Default::default()
            })),
            worker_id: "w".into(),
            attempts: 1,
            duration_ms: 5,
        }
    }

    fn failed(id: &str, index: u32) -> TaskResult {
        TaskResult {
            outcome: Some(Outcome::Error("bad".into())),
            ..ok(id, index)
        }
    }

    fn new_id() -> String {
        ulid::Ulid::new().to_string()
    }

    fn split(id: &str, index: u32, tiles: u32) -> TaskResult {
        TaskResult {
            outcome: Some(Outcome::Split(TileSplit {
                width: 100,
                height: 50,
                input_format: 1,
                tiles: (0..tiles)
                    .map(|tile| pixelmesh_proto::v1::TileInput {
                        tile,
                        blob_id: BLOB.into(),
                        ..Default::default()
                    })
                    .collect(),
            })),
            ..ok(id, index)
        }
    }

    fn tile(id: &str, index: u32, tile: u32) -> TaskResult {
        TaskResult {
            outcome: Some(Outcome::Tile(TileOutput {
                tile,
                core: None,
                blob_id: BLOB.into(),
            })),
            ..ok(id, index)
        }
    }

    #[test]
    fn retry_puts_failed_images_back_and_counts_the_generation() {
        let (_dir, meta) = meta();
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(3), Tiling::Auto))
            .expect("create");
        meta.record(&ok(&id, 0)).expect("ok");
        meta.record(&failed(&id, 1)).expect("failed");
        assert_eq!(
            meta.retry(&id).expect_err("running").code,
            ErrorCode::FailedPrecondition
        );
        meta.record(&failed(&id, 2)).expect("failed");
        let before = meta.summary(&id).expect("summary");
        assert_eq!(before.state(), JobState::CompletedWithErrors);
        let job = meta.retry(&id).expect("retry");
        let summary = job.summary.clone().expect("summary");
        assert_eq!(
            (
                summary.state(),
                summary.done,
                summary.failed,
                summary.finished_at_ms
            ),
            (JobState::Queued, 1, 0, 0)
        );
        assert_eq!(summary.version, before.version + 1);
        assert_eq!(job.generation, 1);
        let states: Vec<ImageState> = job.images.iter().map(|i| i.state()).collect();
        assert_eq!(
            states,
            [ImageState::Done, ImageState::Pending, ImageState::Pending]
        );
        assert!(job.images[1].error.is_empty() && job.images[1].attempts == 0);
        assert_eq!(meta.unfinished().expect("unfinished").len(), 1);
        // The retried images' results count again, and the job ends again.
        meta.record(&ok(&id, 1)).expect("ok");
        let last = meta.record(&failed(&id, 2)).expect("failed");
        assert_eq!(last.summary.state(), JobState::CompletedWithErrors);
        assert_eq!((last.summary.done, last.summary.failed), (2, 1));
        assert_eq!(meta.retry(&id).expect("again").generation, 2);
        meta.record(&ok(&id, 2)).expect("ok");
        assert_eq!(
            meta.retry(&id).expect_err("nothing failed").code,
            ErrorCode::FailedPrecondition
        );
    }

    #[test]
    fn delete_refuses_a_running_job_and_removes_every_record_of_an_ended_one() {
        let (_dir, meta) = meta();
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(2), Tiling::Auto))
            .expect("create");
        meta.record(&split(&id, 0, 2)).expect("split");
        assert_eq!(
            meta.delete(&id).expect_err("running").code,
            ErrorCode::FailedPrecondition
        );
        meta.cancel(&id).expect("cancel");
        let deleted = meta.delete(&id).expect("delete");
        assert_eq!(deleted.images.len(), 2);
        assert_eq!(meta.job(&id).expect_err("gone").code, ErrorCode::NotFound);
        assert!(meta.jobs.is_empty() && meta.images.is_empty() && meta.tiles.is_empty());
        assert!(meta.unfinished.is_empty());
    }

    #[test]
    fn every_change_bumps_the_version_and_stamps_the_changed_images() {
        let (_dir, meta) = meta();
        let id = new_id();
        let created = meta
            .create(new_job(&id, vec![], inputs(4), Tiling::Auto))
            .expect("create");
        let version = |meta: &Meta| meta.summary(&id).expect("summary").version;
        assert_eq!(created.summary.as_ref().map(|s| s.version), Some(1));
        assert_eq!(meta.mark_running(&id).expect("running").version, 2);
        // A call that changes nothing counts nothing.
        assert_eq!(meta.mark_running(&id).expect("again").version, 2);
        let recorded = meta.record(&ok(&id, 2)).expect("ok");
        assert_eq!(recorded.summary.version, 3);
        assert_eq!(recorded.image.as_ref().map(|i| i.version), Some(3));
        assert!(!meta.record(&ok(&id, 2)).expect("duplicate").applied);
        assert_eq!(version(&meta), 3);
        let split = meta.record(&split(&id, 0, 2)).expect("split");
        assert_eq!(split.summary.version, 4);
        let tile = meta.record(&tile(&id, 0, 1)).expect("tile");
        assert_eq!(
            (tile.summary.version, tile.image.map(|i| i.version)),
            (5, Some(5))
        );
        meta.record(&failed(&id, 1)).expect("failed");
        let cancelled = meta.cancel(&id).expect("cancel");
        let versions: Vec<u64> = cancelled.images.iter().map(|i| i.version).collect();
        // Image 0 (tiled, pending) and 3 are cancelled together in change 7.
        assert_eq!(versions, [7, 6, 3, 7]);
        assert_eq!(cancelled.summary.map(|s| s.version), Some(7));
    }

    #[test]
    fn a_tiled_image_counts_its_tiles_once_and_hands_back_the_assembly() {
        let (_dir, meta) = meta();
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(2), Tiling::Always))
            .expect("create");
        assert_eq!(
            meta.record(&tile(&id, 0, 0))
                .expect_err("before split")
                .code,
            ErrorCode::InvalidArgument
        );
        let recorded = meta.record(&split(&id, 0, 3)).expect("split");
        assert!(recorded.applied);
        assert_eq!(recorded.image.as_ref().map(|i| i.tiles_total), Some(3));
        assert!(!meta.record(&split(&id, 0, 3)).expect("again").applied);

        for t in [2, 0] {
            let recorded = meta.record(&tile(&id, 0, t)).expect("tile");
            assert!(recorded.applied && recorded.assemble.is_none());
        }
        let duplicate = meta.record(&tile(&id, 0, 2)).expect("duplicate");
        assert!(!duplicate.applied && duplicate.assemble.is_none());
        assert_eq!(
            meta.record(&tile(&id, 0, 3))
                .expect_err("out of range")
                .code,
            ErrorCode::InvalidArgument
        );
        let last = meta.record(&tile(&id, 0, 1)).expect("last tile");
        let image = last.image.expect("image");
        assert_eq!((image.tiles_done, image.state()), (3, ImageState::Pending));
        let assemble = last.assemble.expect("assembly when complete");
        assert_eq!((assemble.width, assemble.height), (100, 50));
        let order: Vec<u32> = assemble.tiles.iter().map(|t| t.tile).collect();
        assert_eq!(order, [0, 1, 2]);
        // A redelivered last tile hands the assembly back again, for a scheduler that
        // crashed before publishing it.
        assert!(
            meta.record(&tile(&id, 0, 1))
                .expect("again")
                .assemble
                .is_some()
        );
        assert_eq!(meta.summary(&id).expect("summary").done, 0);

        assert!(meta.record(&ok(&id, 0)).expect("output").applied);
        // Every result takes 5 ms: the split, three tiles and the assembly, duplicates not
        // counted.
        assert_eq!(meta.job(&id).expect("job").images[0].duration_ms, 25);
        assert!(
            meta.tiles.is_empty(),
            "the tile record goes with the outcome"
        );
        assert_eq!(meta.job(&id).expect("job").tiling(), Tiling::Always);
        assert_eq!(
            meta.record(&split(&id, 1, 0)).expect_err("no tiles").code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn a_result_is_recorded_once() {
        let (_dir, meta) = meta();
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(2), Tiling::Auto))
            .expect("create");
        assert!(meta.record(&ok(&id, 0)).expect("record").applied);
        let again = meta.record(&failed(&id, 0)).expect("record");
        assert!(!again.applied);
        assert_eq!(again.summary.done, 1);
        assert_eq!(again.summary.failed, 0);
        assert_eq!(
            meta.job(&id).expect("job").images[0].state(),
            ImageState::Done
        );
    }

    #[test]
    fn final_states_follow_the_outcomes() {
        let (_dir, meta) = meta();
        for (outcomes, state) in [
            (vec![true, true], JobState::Completed),
            (vec![true, false], JobState::CompletedWithErrors),
            (vec![false, false], JobState::Failed),
        ] {
            let id = new_id();
            meta.create(new_job(&id, vec![], inputs(2), Tiling::Auto))
                .expect("create");
            for (i, good) in outcomes.iter().enumerate() {
                let result = if *good {
                    ok(&id, i as u32)
                } else {
                    failed(&id, i as u32)
                };
                meta.record(&result).expect("record");
            }
            let summary = meta.summary(&id).expect("summary");
            assert_eq!(summary.state(), state);
            assert!(summary.finished_at_ms > 0);
        }
        assert!(meta.unfinished().expect("unfinished").is_empty());
    }

    #[test]
    fn cancel_marks_pending_images_and_refuses_later_results() {
        let (_dir, meta) = meta();
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(3), Tiling::Auto))
            .expect("create");
        meta.record(&ok(&id, 0)).expect("record");
        let job = meta.cancel(&id).expect("cancel");
        let summary = job.summary.expect("summary");
        assert_eq!(summary.state(), JobState::Cancelled);
        assert_eq!((summary.done, summary.cancelled), (1, 2));
        assert!(!meta.record(&ok(&id, 1)).expect("record").applied);
        assert!(meta.cancel(&id).is_ok(), "cancel is idempotent");

        let done = new_id();
        meta.create(new_job(&done, vec![], inputs(1), Tiling::Auto))
            .expect("create");
        meta.record(&ok(&done, 0)).expect("record");
        assert_eq!(
            meta.cancel(&done).expect_err("ended").code,
            ErrorCode::FailedPrecondition
        );
    }

    #[test]
    fn lists_newest_first_with_paging_and_tracks_unfinished() {
        let (_dir, meta) = meta();
        // Monotonic, so ids made within one millisecond still sort in creation order.
        let mut ulids = ulid::Generator::new();
        let ids: Vec<String> = (0..5)
            .map(|_| {
                let id = ulids.generate().expect("ulid").to_string();
                meta.create(new_job(&id, vec![], inputs(1), Tiling::Auto))
                    .expect("create");
                id
            })
            .collect();
        let page = meta.list(&query(2, "")).expect("list");
        assert_eq!(
            page.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            [&ids[4], &ids[3]]
        );
        let next = meta.list(&query(2, &page[1].id)).expect("list");
        assert_eq!(
            next.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            [&ids[2], &ids[1]]
        );
        let last = meta.list(&query(2, &next[1].id)).expect("list");
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].id, ids[0]);
        assert!(meta.list(&query(2, &ids[0])).expect("list").is_empty());
        assert_eq!(meta.list(&query(0, "")).expect("default page").len(), 5);
        meta.record(&ok(&ids[0], 0)).expect("record");
        let unfinished = meta.unfinished().expect("unfinished");
        assert_eq!(unfinished.len(), 4);
        assert_eq!(unfinished[0].id, ids[1]);
    }

    #[test]
    fn pause_holds_a_job_and_resume_requeues_its_pending_images_from_scratch() {
        let (_dir, meta) = meta();
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(3), Tiling::Auto))
            .expect("create");
        meta.mark_running(&id).expect("running");
        meta.record(&ok(&id, 0)).expect("record");
        meta.record(&split(&id, 1, 4)).expect("split");
        meta.record(&tile(&id, 1, 0)).expect("tile");

        let paused = meta.pause(&id).expect("pause");
        let summary = paused.summary.clone().expect("summary");
        assert_eq!(summary.state(), JobState::Paused);
        assert!(!summary.state().is_final());
        assert_eq!(meta.pause(&id).expect("again").summary, paused.summary);
        assert_eq!(meta.counts("").expect("counts").paused, 1);

        // A task that was running when the job paused still lands.
        meta.record(&ok(&id, 2)).expect("late result");
        let resumed = meta.resume(&id).expect("resume");
        let summary = resumed.summary.clone().expect("summary");
        assert_eq!(summary.state(), JobState::Queued);
        assert_eq!(summary.done, 2);
        assert_eq!(resumed.generation, 1);
        let tiled = &resumed.images[1];
        assert_eq!(tiled.state(), ImageState::Pending);
        assert_eq!((tiled.tiles_total, tiled.tiles_done), (0, 0));
        assert_eq!(tiled.version, summary.version);
        // Its split is gone, so the new split is recorded afresh.
        assert!(meta.record(&split(&id, 1, 2)).expect("new split").applied);

        let err = meta.resume(&id).expect_err("not paused");
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        meta.cancel(&id).expect("cancel");
        let err = meta.pause(&id).expect_err("ended");
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
    }

    #[test]
    fn lists_filter_by_batch_state_and_owner_and_counts_follow() {
        let (_dir, meta) = meta();
        let mut ulids = ulid::Generator::new();
        let mut next = || ulids.generate().expect("ulid").to_string();
        let parent = next();
        let mut make = |parent_id: &str, owner: &str| {
            let id = next();
            meta.create(CreateJobRequest {
                parent_id: parent_id.into(),
                owner: owner.into(),
                ..new_job(&id, vec![], inputs(1), Tiling::Auto)
            })
            .expect("create");
            id
        };
        let first = make(&parent, "alice");
        let loner = make("", "bob");
        let second = make(&parent, "alice");
        let third = make(&parent, "alice");
        meta.record(&ok(&second, 0)).expect("record");
        let ids = |jobs: Vec<JobSummary>| jobs.into_iter().map(|s| s.id).collect::<Vec<String>>();

        let batch = ListJobsQuery {
            parent_id: parent.clone(),
            ..query(0, "")
        };
        assert_eq!(
            ids(meta.list(&batch).expect("batch")),
            [third.clone(), second.clone(), first.clone()]
        );
        let paged = ListJobsQuery {
            limit: 1,
            before: third.clone(),
            ..batch.clone()
        };
        assert_eq!(
            ids(meta.list(&paged).expect("batch page")),
            std::slice::from_ref(&second)
        );
        let mut queued = query(0, "");
        queued.states = vec![JobState::Queued as i32];
        assert_eq!(
            ids(meta.list(&queued).expect("queued")),
            [third.clone(), loner.clone(), first.clone()]
        );
        let bobs = ListJobsQuery {
            owner: "bob".into(),
            ..query(0, "")
        };
        assert_eq!(
            ids(meta.list(&bobs).expect("owner")),
            std::slice::from_ref(&loner)
        );
        assert_eq!(meta.summary(&first).expect("summary").parent_id, parent);

        let all = meta.counts("").expect("counts");
        assert_eq!((all.total, all.queued, all.completed), (4, 3, 1));
        let alice = meta.counts("alice").expect("counts");
        assert_eq!((alice.total, alice.queued, alice.completed), (3, 2, 1));

        // A deleted job leaves its batch.
        meta.delete(&second).expect("delete");
        assert_eq!(
            ids(meta.list(&batch).expect("batch")),
            [third.clone(), first.clone()]
        );
    }

    /// The kept counters are what a scan of every job would count (zeros aside).
    fn assert_counters_agree(meta: &Meta) {
        let kept: std::collections::BTreeMap<Vec<u8>, u64> = meta
            .counts
            .iter()
            .map(|entry| entry.expect("counter"))
            .filter(|(key, _)| key.as_ref() != COUNTS_READY)
            .map(|(key, value)| (key.to_vec(), read_counter(&value)))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(kept, meta.tally().expect("tally"));
    }

    #[test]
    fn counters_follow_every_change_and_are_rebuilt_for_an_old_database() {
        let (dir, meta) = meta();
        let make = |owner: &str, images: usize| {
            let id = new_id();
            meta.create(CreateJobRequest {
                owner: owner.into(),
                ..new_job(&id, vec![], inputs(images), Tiling::Auto)
            })
            .expect("create");
            id
        };
        let done = make("alice", 1);
        let failing = make("alice", 2);
        let cancelled = make("bob", 1);
        let paused = make("", 1);
        assert_counters_agree(&meta);
        meta.record(&ok(&done, 0)).expect("record");
        meta.mark_running(&failing).expect("running");
        meta.record(&ok(&failing, 0)).expect("record");
        meta.record(&failed(&failing, 1)).expect("record");
        meta.cancel(&cancelled).expect("cancel");
        meta.pause(&paused).expect("pause");
        assert_counters_agree(&meta);
        let all = meta.counts("").expect("counts");
        assert_eq!(
            (
                all.total,
                all.completed,
                all.completed_with_errors,
                all.cancelled,
                all.paused
            ),
            (4, 1, 1, 1, 1)
        );
        let alice = meta.counts("alice").expect("counts");
        assert_eq!((alice.total, alice.completed), (2, 1));
        assert_eq!(meta.counts("carol").expect("counts"), JobCounts::default());

        meta.resume(&paused).expect("resume");
        meta.retry(&failing).expect("retry");
        assert_eq!(meta.counts("alice").expect("counts").queued, 1);
        meta.delete(&done).expect("delete");
        assert_counters_agree(&meta);
        let alice = meta.counts("alice").expect("counts");
        assert_eq!((alice.total, alice.queued, alice.completed), (1, 1, 0));

        // A database from before the counters: rebuilt on open.
        meta.counts.clear().expect("clear");
        drop(meta);
        let meta = Meta::open(dir.path(), 100).expect("reopen");
        assert_counters_agree(&meta);
        assert_eq!(meta.counts("").expect("counts").total, 3);
    }

    /// The `by_state` entries are what a scan of every job header would write.
    fn assert_index_agrees(meta: &Meta) {
        let kept: std::collections::BTreeSet<Vec<u8>> = meta
            .by_state
            .iter()
            .keys()
            .map(|key| key.expect("index key").to_vec())
            .filter(|key| key.as_slice() != INDEX_READY)
            .collect();
        let mut scanned = std::collections::BTreeSet::new();
        for entry in meta.jobs.iter() {
            let (id, value) = entry.expect("job");
            let job: Job = decode(&value).expect("header");
            let id = String::from_utf8_lossy(&id).into_owned();
            scanned.extend(state_keys(owner_of(&job), state_of(&job), &id));
        }
        assert_eq!(kept, scanned);
    }

    /// What `list` answered before the index: every job header newest first, filtered.
    fn scan_list(meta: &Meta, query: &ListJobsQuery) -> Vec<String> {
        let limit = match query.limit {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        } as usize;
        let states: Vec<JobState> = query.states().collect();
        let range = if query.before.is_empty() {
            meta.jobs.iter()
        } else {
            meta.jobs.range(..query.before.as_bytes())
        };
        range
            .values()
            .rev()
            .map(|value| decode::<Job>(&value.expect("job")).expect("header"))
            .filter_map(|job| job.summary)
            .filter(|summary| {
                (states.is_empty() || states.contains(&summary.state()))
                    && (query.owner.is_empty() || summary.owner == query.owner)
            })
            .take(limit)
            .map(|summary| summary.id)
            .collect()
    }

    /// Filtered lists through the index answer what the scan answered: every state alone,
    /// pairs of states, each owner with and without states, pages and limits.
    fn assert_lists_match_scan(meta: &Meta, owners: &[&str]) {
        let mut queries = Vec::new();
        for owner in owners.iter().chain([&""]) {
            let mut state_sets: Vec<Vec<JobState>> = vec![vec![]];
            state_sets.extend(JobState::ALL.iter().map(|state| vec![*state]));
            state_sets.push(vec![JobState::Cancelled, JobState::Queued]);
            state_sets.push(vec![JobState::Running, JobState::Running, JobState::Paused]);
            state_sets.push(JobState::ALL.to_vec());
            for states in state_sets {
                for limit in [0, 1, 2] {
                    queries.push(ListJobsQuery {
                        limit,
                        owner: owner.to_string(),
                        states: states.iter().map(|state| *state as i32).collect(),
                        ..Default::default()
                    });
                }
            }
        }
        for query in queries {
            let mut query = query;
            // Page through to the end, as a client does, comparing every page.
            loop {
                let indexed: Vec<String> = meta
                    .list(&query)
                    .expect("list")
                    .into_iter()
                    .map(|summary| summary.id)
                    .collect();
                assert_eq!(indexed, scan_list(meta, &query), "{query:?}");
                match indexed.last() {
                    Some(last) if query.limit > 0 => query.before = last.clone(),
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn the_state_index_follows_every_change_and_is_rebuilt_for_an_old_database() {
        let (dir, meta) = meta();
        // "a" and "a/b": an owner that is another's prefix, and one with the separator
        // the counters use.
        let owners = ["alice", "bob", "a", "a/b"];
        let mut ulids = ulid::Generator::new();
        let mut make = |owner: &str, images: usize| {
            let id = ulids.generate().expect("ulid").to_string();
            meta.create(CreateJobRequest {
                owner: owner.into(),
                ..new_job(&id, vec![], inputs(images), Tiling::Auto)
            })
            .expect("create");
            id
        };
        let done = make("alice", 1);
        let failing = make("alice", 2);
        let cancelled = make("bob", 1);
        let paused = make("", 1);
        let running = make("a", 2);
        let other = make("a/b", 1);
        let abandoned = make("bob", 1);
        let queued = make("alice", 1);
        assert_index_agrees(&meta);
        assert_lists_match_scan(&meta, &owners);

        meta.record(&ok(&done, 0)).expect("record");
        meta.mark_running(&failing).expect("running");
        meta.record(&ok(&failing, 0)).expect("record");
        meta.record(&failed(&failing, 1)).expect("record");
        meta.cancel(&cancelled).expect("cancel");
        meta.pause(&paused).expect("pause");
        meta.mark_running(&running).expect("running");
        meta.record(&split(&running, 0, 2)).expect("split");
        meta.requeue(&running, &[0]).expect("requeue");
        meta.record(&failed(&other, 0)).expect("record");
        assert_index_agrees(&meta);
        assert_lists_match_scan(&meta, &owners);
        let in_state = |meta: &Meta, owner: &str, state: JobState| {
            let query = ListJobsQuery {
                owner: owner.into(),
                states: vec![state as i32],
                ..Default::default()
            };
            let jobs = meta.list(&query).expect("list");
            jobs.into_iter().map(|s| s.id).collect::<Vec<_>>()
        };
        assert_eq!(
            in_state(&meta, "", JobState::Running),
            std::slice::from_ref(&running)
        );
        assert_eq!(
            in_state(&meta, "a", JobState::Running),
            std::slice::from_ref(&running)
        );
        assert!(in_state(&meta, "a/b", JobState::Running).is_empty());
        assert_eq!(
            in_state(&meta, "a/b", JobState::Failed),
            std::slice::from_ref(&other)
        );
        assert_eq!(
            in_state(&meta, "alice", JobState::Queued),
            std::slice::from_ref(&queued)
        );

        meta.resume(&paused).expect("resume");
        meta.retry(&failing).expect("retry");
        meta.abandon(&abandoned).expect("abandon");
        meta.delete(&done).expect("delete");
        assert_index_agrees(&meta);
        assert_lists_match_scan(&meta, &owners);
        assert_eq!(
            in_state(&meta, "alice", JobState::Queued),
            [queued.clone(), failing.clone()]
        );
        assert!(in_state(&meta, "alice", JobState::Completed).is_empty());
        assert!(in_state(&meta, "bob", JobState::Queued).is_empty());

        // Reopened as it is, the index is kept (not rebuilt) and still agrees.
        let kept = meta.by_state.len();
        drop(meta);
        let meta = Meta::open(dir.path(), 100).expect("reopen");
        assert_eq!(meta.by_state.len(), kept);
        assert_index_agrees(&meta);
        assert_lists_match_scan(&meta, &owners);

        // A database from before the index: rebuilt on open, with the same answers.
        meta.by_state.clear().expect("clear");
        drop(meta);
        let meta = Meta::open(dir.path(), 100).expect("reopen");
        assert_eq!(meta.by_state.len(), kept);
        assert_index_agrees(&meta);
        assert_lists_match_scan(&meta, &owners);
        assert_eq!(in_state(&meta, "", JobState::Running), [running]);
    }

    #[test]
    fn an_image_is_read_by_index_or_name_with_its_jobs_summary() {
        let (_dir, meta) = meta();
        let id = new_id();
        let named = ["a.jpg", "b.jpg", "a.jpg"]
            .map(|name| ImageInput {
                blob_id: BLOB.into(),
                name: name.into(),
                ..Default::default()
            })
            .to_vec();
        meta.create(CreateJobRequest {
            owner: "alice".into(),
            ..new_job(&id, vec![], named, Tiling::Auto)
        })
        .expect("create");
        meta.record(&ok(&id, 2)).expect("record");
        let (summary, image) = meta.image(&id, 1, "").expect("by index");
        assert_eq!(
            (summary.id.as_str(), summary.owner.as_str()),
            (id.as_str(), "alice")
        );
        assert_eq!(image.map(|i| (i.index, i.name)), Some((1, "b.jpg".into())));
        let (_, image) = meta.image(&id, 2, "").expect("done image");
        let image = image.expect("image 2");
        assert_eq!(image.state(), ImageState::Done);
        assert_eq!(image.output.map(|o| o.blob_id), Some(BLOB.to_string()));
        // The first of that name, whatever the index says.
        let (_, image) = meta.image(&id, 7, "a.jpg").expect("by name");
        assert_eq!(image.map(|i| i.index), Some(0));
        // No such image: the summary comes back for the caller's access check.
        let (summary, image) = meta.image(&id, 3, "").expect("past the end");
        assert_eq!((summary.owner.as_str(), image), ("alice", None));
        assert_eq!(meta.image(&id, 0, "c.jpg").expect("no such name").1, None);
        assert_eq!(
            meta.image(&new_id(), 0, "").expect_err("no such job").code,
            ErrorCode::NotFound
        );
        assert_eq!(
            meta.image("nope", 0, "").expect_err("bad id").code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn an_input_is_a_blob_or_an_http_url() {
        let (_dir, meta) = meta();
        let url = |url: &str| ImageInput {
            url: url.into(),
            name: "x".into(),
            ..Default::default()
        };
        let id = new_id();
        let job = meta
            .create(new_job(
                &id,
                vec![],
                vec![url("https://example.com/a.jpg")],
                Tiling::Auto,
            ))
            .expect("url input");
        assert_eq!(job.images[0].url, "https://example.com/a.jpg");
        assert!(job.images[0].input_blob_id.is_empty());
        let both = ImageInput {
            blob_id: BLOB.into(),
            ..url("http://example.com/")
        };
        for bad in [
            url("file:///etc/passwd"),
            url(""),
            both,
            url(&format!("http://x/{}", "a".repeat(MAX_URL_BYTES))),
        ] {
            let err = meta
                .create(new_job(&new_id(), vec![], vec![bad], Tiling::Auto))
                .expect_err("refused");
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
        }
    }

    #[test]
    fn refuses_bad_ids_duplicates_and_too_many_images() {
        let (_dir, meta) = meta();
        assert_eq!(
            meta.job("../etc").expect_err("bad id").code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            meta.job(&new_id()).expect_err("unknown").code,
            ErrorCode::NotFound
        );
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(1), Tiling::Auto))
            .expect("create");
        assert_eq!(
            meta.create(new_job(&id, vec![], inputs(1), Tiling::Auto))
                .expect_err("dup")
                .code,
            ErrorCode::AlreadyExists
        );
        assert_eq!(
            meta.create(new_job(&new_id(), vec![], inputs(101), Tiling::Auto))
                .expect_err("too many")
                .code,
            ErrorCode::ResourceExhausted
        );
        assert_eq!(
            meta.record(&ok(&id, 7)).expect_err("index").code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn the_unfinished_index_follows_every_change() {
        let (_dir, meta) = meta();
        let mut ulids = ulid::Generator::new();
        let ids: Vec<String> = (0..4)
            .map(|_| ulids.generate().expect("ulid").to_string())
            .collect();
        for id in &ids {
            meta.create(new_job(id, vec![], inputs(2), Tiling::Auto))
                .expect("create");
        }
        meta.record(&ok(&ids[0], 0)).expect("record");
        meta.record(&failed(&ids[0], 1)).expect("record");
        meta.cancel(&ids[1]).expect("cancel");
        let running = meta.mark_running(&ids[2]).expect("running");
        assert_eq!(running.state(), JobState::Running);
        meta.record(&ok(&ids[3], 1)).expect("record");

        let unfinished = meta.unfinished().expect("unfinished");
        let unfinished: Vec<&str> = unfinished.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(unfinished, [&ids[2], &ids[3]]);
        assert_eq!(meta.unfinished.len(), 2, "finished jobs leave the index");
    }

    #[test]
    fn a_job_is_provisional_until_marked_running_and_abandon_removes_it_whatever_its_state() {
        let (_dir, meta) = meta();
        let id = new_id();
        let created = meta
            .create(CreateJobRequest {
                owner: "alice".into(),
                ..new_job(&id, vec![], inputs(2), Tiling::Auto)
            })
            .expect("create");
        assert!(
            created.provisional,
            "a new job waits for its submit to finish"
        );
        meta.mark_running(&id).expect("running");
        assert!(!meta.job(&id).expect("job").provisional);
        meta.record(&ok(&id, 0)).expect("record");

        let abandoned = meta.abandon(&id).expect("abandon").expect("it existed");
        assert_eq!(abandoned.images.len(), 2);
        assert_eq!(meta.job(&id).expect_err("gone").code, ErrorCode::NotFound);
        assert!(meta.unfinished().expect("unfinished").is_empty());
        assert_eq!(meta.counts("alice").expect("counts"), JobCounts::default());
        assert_counters_agree(&meta);
        assert!(meta.abandon(&id).expect("again").is_none(), "idempotent");
    }

    #[test]
    fn requeue_resets_pending_images_only() {
        let (_dir, meta) = meta();
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(3), Tiling::Auto))
            .expect("create");
        meta.mark_running(&id).expect("running");
        meta.record(&ok(&id, 0)).expect("done");
        meta.record(&split(&id, 1, 4)).expect("split");
        meta.record(&tile(&id, 1, 0)).expect("tile");
        let before = meta.summary(&id).expect("summary").version;

        let job = meta.requeue(&id, &[0, 1, 2]).expect("requeue");
        let summary = job.summary.clone().expect("summary");
        assert_eq!(summary.version, before + 1, "one change");
        assert_eq!(
            job.images[0].state(),
            ImageState::Done,
            "a done image stays done"
        );
        assert_eq!(
            (job.images[1].tiles_total, job.images[1].tiles_done),
            (0, 0)
        );
        assert_eq!(job.images[1].version, summary.version);
        assert_eq!(job.images[2].version, summary.version);
        // The tiled image starts over: a new split is recorded afresh.
        assert!(meta.record(&split(&id, 1, 2)).expect("new split").applied);
        let done = meta.requeue(&id, &[0]).expect("nothing pending");
        assert_eq!(done.summary.expect("summary").version, summary.version + 1);
    }

    #[test]
    fn blobs_belong_to_their_uploaders_and_to_the_owner_of_the_job_that_made_them() {
        let (_dir, meta) = meta();
        let upload = BlobInfo {
            id: BLOB.into(),
            size_bytes: 10,
            width: 3,
            height: 2,
            bytes_per_pixel: 3,
            frames: 1,
        };
        meta.add_blob(&upload, "alice").expect("alice uploads");
        assert!(meta.owns(BLOB, "alice").expect("owns"));
        assert!(!meta.owns(BLOB, "bob").expect("owns"));
        assert!(
            !meta.owns(BLOB, "").expect("owns"),
            "no key owns by default"
        );
        // The same bytes uploaded by a second key: a second owner.
        meta.add_blob(&upload, "bob").expect("bob uploads");
        assert!(meta.owns(BLOB, "bob").expect("owns"));
        assert_eq!(meta.blob_info(BLOB).expect("info"), Some(upload));

        let output = "b".repeat(64);
        let id = new_id();
        meta.create(CreateJobRequest {
            owner: "carol".into(),
            ..new_job(&id, vec![], inputs(1), Tiling::Auto)
        })
        .expect("create");
        let mut result = ok(&id, 0);
        if let Some(Outcome::Output(out)) = &mut result.outcome {
            out.blob_id.clone_from(&output);
        }
        meta.record(&result).expect("record");
        assert!(
            meta.owns(&output, "carol").expect("owns"),
            "the job's key owns its output"
        );
        assert!(!meta.owns(&output, "alice").expect("owns"));

        meta.forget_blobs(&[BLOB.to_string(), output.clone()])
            .expect("forget");
        assert!(!meta.owns(BLOB, "alice").expect("owns"));
        assert!(!meta.owns(&output, "carol").expect("owns"));
        assert_eq!(meta.blob_info(BLOB).expect("info"), None);
        assert!(meta.recorded_blobs().expect("ids").is_empty());
    }

    #[test]
    fn mark_running_only_moves_queued_jobs() {
        let (_dir, meta) = meta();
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(1), Tiling::Auto))
            .expect("create");
        assert_eq!(
            meta.mark_running(&id).expect("running").state(),
            JobState::Running
        );
        assert_eq!(
            meta.mark_running(&id).expect("again").state(),
            JobState::Running
        );
        meta.record(&ok(&id, 0)).expect("record");
        assert_eq!(
            meta.mark_running(&id).expect("finished").state(),
            JobState::Completed
        );
    }

    #[test]
    fn open_waits_for_a_lock_released_meanwhile_and_gives_up_after_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = sled::open(dir.path()).expect("open");
        let err = open_db(dir.path(), Duration::from_millis(30)).expect_err("lock held");
        assert!(err.to_string().contains("could not acquire lock"), "{err}");
        let path = dir.path().to_owned();
        let opener = std::thread::spawn(move || open_db(&path, Duration::from_secs(60)).map(drop));
        drop(held);
        opener
            .join()
            .expect("opener thread")
            .expect("opens once the lock is released");
    }

    #[test]
    fn a_job_reads_back_whole_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = new_id();
        let pipeline = vec![Operation {
            op: Some(pixelmesh_proto::v1::operation::Op::Grayscale(
                Default::default(),
            )),
        }];
        let recorded = {
            let meta = Meta::open(dir.path(), 100).expect("open");
            let created = meta
                .create(new_job(&id, pipeline.clone(), inputs(3), Tiling::Auto))
                .expect("create");
            assert_eq!(meta.job(&id).expect("job"), created);
            let recorded = meta.record(&failed(&id, 2)).expect("record");
            assert_eq!(
                recorded.image.as_ref().map(|i| i.error.as_str()),
                Some("bad")
            );
            recorded
        };
        let meta = Meta::open(dir.path(), 100).expect("reopen");
        let job = meta.job(&id).expect("job");
        assert_eq!(job.pipeline, pipeline);
        assert_eq!(job.summary, Some(recorded.summary));
        let states: Vec<ImageState> = job.images.iter().map(|i| i.state()).collect();
        assert_eq!(
            states,
            [ImageState::Pending, ImageState::Pending, ImageState::Failed]
        );
        assert_eq!(job.images[2], recorded.image.expect("image"));
    }

    #[test]
    fn refuses_malformed_results_and_ids() {
        let (_dir, meta) = meta();
        let id = new_id();
        meta.create(new_job(&id, vec![], inputs(1), Tiling::Auto))
            .expect("create");
        let mut bad_output = ok(&id, 0);
        if let Some(Outcome::Output(output)) = &mut bad_output.outcome {
            output.blob_id = "../x".into();
        }
        let no_outcome = TaskResult {
            outcome: None,
            ..ok(&id, 0)
        };
        for result in [bad_output, no_outcome] {
            assert_eq!(
                meta.record(&result).expect_err("refused").code,
                ErrorCode::InvalidArgument
            );
        }
        assert_eq!(meta.summary(&id).expect("summary").done, 0);
        assert_eq!(
            meta.record(&ok(&new_id(), 0)).expect_err("unknown").code,
            ErrorCode::NotFound
        );
        for bad in [
            "",
            "01jq8z6w4v3t2s1r0p9n8m7k6j",
            "81JQ8Z6W4V3T2S1R0P9N8M7K6J",
            "01JQ8Z6W4V3T2S1R0P9N8M7K6I",
        ] {
            assert_eq!(
                meta.summary(bad).expect_err("bad id").code,
                ErrorCode::InvalidArgument,
                "{bad:?}"
            );
        }
        let mut bad_input = inputs(1);
        bad_input[0].blob_id.clear();
        assert_eq!(
            meta.create(new_job(&new_id(), vec![], bad_input, Tiling::Auto))
                .expect_err("no blob")
                .code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            meta.create(new_job(&new_id(), vec![], vec![], Tiling::Auto))
                .expect_err("no inputs")
                .code,
            ErrorCode::InvalidArgument
        );
    }
}
