//! What the gateway does, in domain terms, shared by the gRPC and HTTP edges.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use pixelmesh_common::{grpc::Channel, nats};
use pixelmesh_proto::{
    Error,
    v1::{
        BlobInfo, BlobMeta, GetBlobRequest, ImageState, Job, JobEvent, JobRequest, JobSummary,
        ListJobsQuery, Output, PutBlobRequest, SubmitJobRequest, Worker, put_blob_request::Part,
        scheduler_client::SchedulerClient, storage_client::StorageClient,
    },
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::Settings;

/// A watcher that heard nothing for this long re-reads the job from storage: progress goes
/// over NATS core, which may drop an event, and the final state must never be missed.
const WATCH_RESYNC: Duration = Duration::from_secs(5);
/// Most jobs in one list page.
pub const MAX_LIST_LIMIT: u32 = 1000;

#[derive(Clone)]
pub struct Mesh {
    storage: StorageClient<Channel>,
    scheduler: SchedulerClient<Channel>,
    nats: async_nats::Client,
    settings: Settings,
}

impl Mesh {
    pub fn new(
        storage: StorageClient<Channel>,
        scheduler: SchedulerClient<Channel>,
        nats: async_nats::Client,
        settings: Settings,
    ) -> Self {
        Mesh {
            storage,
            scheduler,
            nats,
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn nats_connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Streams `chunks` into storage. An error from `chunks` cancels the upload, so a
    /// broken client connection never leaves a truncated blob behind.
    pub async fn upload<S>(&self, chunks: S) -> Result<BlobInfo, Error>
    where
        S: Stream<Item = Result<Bytes, Error>> + Send,
    {
        let (tx, rx) = mpsc::channel::<PutBlobRequest>(4);
        let mut storage = self.storage.clone();
        let put = storage.put_blob(ReceiverStream::new(rx));
        let max_bytes = self.settings.max_upload_bytes;
        let feed = async move {
            let meta = PutBlobRequest {
                part: Some(Part::Meta(BlobMeta { max_bytes })),
            };
            tx.send(meta)
                .await
                .map_err(|_| Error::unavailable("storage closed the upload"))?;
            futures::pin_mut!(chunks);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                if chunk.is_empty() {
                    continue;
                }
                let part = PutBlobRequest {
                    part: Some(Part::Chunk(chunk.to_vec())),
                };
                if tx.send(part).await.is_err() {
                    // Storage ended the call (e.g. over the size limit); its answer says why.
                    return Ok(());
                }
            }
            Ok::<(), Error>(())
        };
        tokio::pin!(put, feed);
        tokio::select! {
            fed = &mut feed => {
                fed?;
                Ok(put.await?.into_inner())
            }
            put = &mut put => Ok(put?.into_inner()),
        }
    }

    pub async fn submit(&self, request: SubmitJobRequest) -> Result<Job, Error> {
        Ok(self
            .scheduler
            .clone()
            .submit_job(request)
            .await?
            .into_inner())
    }

    pub async fn cancel(&self, id: &str) -> Result<Job, Error> {
        let request = pixelmesh_proto::v1::CancelJobRequest { id: id.to_string() };
        Ok(self
            .scheduler
            .clone()
            .cancel_job(request)
            .await?
            .into_inner())
    }

    pub async fn job(&self, id: &str) -> Result<Job, Error> {
        let request = JobRequest { id: id.to_string() };
        Ok(self.storage.clone().get_job(request).await?.into_inner())
    }

    pub async fn list(&self, limit: u32, before: String) -> Result<Vec<JobSummary>, Error> {
        let query = ListJobsQuery {
            limit: limit.min(MAX_LIST_LIMIT),
            before,
        };
        Ok(self
            .storage
            .clone()
            .list_jobs(query)
            .await?
            .into_inner()
            .jobs)
    }

    /// The job's current state first, then one event per change, ending after the event
    /// that reports a final state. Dropping the stream stops the relay.
    pub async fn watch(&self, id: &str) -> Result<ReceiverStream<Result<JobEvent, Error>>, Error> {
        // Subscribe before reading the snapshot, so no change falls between the two.
        let mut events = self
            .nats
            .subscribe(nats::progress_subject(id))
            .await
            .map_err(|err| Error::unavailable(format!("subscribing to progress: {err}")))?;
        let mut storage = self.storage.clone();
        let request = JobRequest { id: id.to_string() };
        let snapshot = storage.get_job_summary(request.clone()).await?.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut seen = progress(&snapshot);
            let mut last_state = snapshot.state();
            let finished = last_state.is_final();
            let first = JobEvent {
                summary: Some(snapshot),
                image: None,
            };
            if tx.send(Ok(first)).await.is_err() || finished {
                return;
            }
            loop {
                let event = match tokio::time::timeout(WATCH_RESYNC, events.next()).await {
                    Ok(Some(message)) => match JobEvent::decode(message.payload) {
                        Ok(event) => event,
                        Err(err) => {
                            tracing::warn!(error = %err, "undecodable progress event");
                            continue;
                        }
                    },
                    Ok(None) => return,
                    Err(_) => match storage.get_job_summary(request.clone()).await {
                        Ok(summary) => JobEvent {
                            summary: Some(summary.into_inner()),
                            image: None,
                        },
                        Err(status) => {
                            let _ = tx.send(Err(Error::from(status))).await;
                            return;
                        }
                    },
                };
                let Some(summary) = &event.summary else {
                    continue;
                };
                // Events older than what the watcher already has carry nothing new.
                let step = progress(summary);
                if step < seen
                    || (step == seen && summary.state() == last_state && event.image.is_none())
                {
                    continue;
                }
                seen = step;
                last_state = summary.state();
                let finished = last_state.is_final();
                if tx.send(Ok(event)).await.is_err() || finished {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// One output image: its description, the image's name, and its bytes in chunks.
    pub async fn download(
        &self,
        job_id: &str,
        index: u32,
    ) -> Result<
        (
            Output,
            String,
            impl Stream<Item = Result<Bytes, Error>> + use<>,
        ),
        Error,
    > {
        let job = self.job(job_id).await?;
        let image = job
            .images
            .get(index as usize)
            .ok_or_else(|| Error::not_found(format!("job {job_id} has no image {index}")))?;
        let output = match (image.state(), &image.output) {
            (ImageState::Done, Some(output)) => output.clone(),
            (ImageState::Failed, _) => {
                return Err(Error::not_found(format!(
                    "image {index} of job {job_id} failed: {}",
                    image.error
                )));
            }
            (state, _) => {
                return Err(Error::not_found(format!(
                    "image {index} of job {job_id} has no output ({})",
                    state.label()
                )));
            }
        };
        let chunks = self
            .storage
            .clone()
            .get_blob(GetBlobRequest {
                id: output.blob_id.clone(),
            })
            .await?
            .into_inner()
            .map(|chunk| chunk.map(|c| Bytes::from(c.chunk)).map_err(Error::from));
        Ok((output, image.name.clone(), chunks))
    }

    /// Live workers, from their heartbeats.
    pub async fn workers(&self) -> Result<Vec<Worker>, Error> {
        let js = async_nats::jetstream::new(self.nats.clone());
        let bucket = nats::workers_bucket(&js)
            .await
            .map_err(|err| Error::unavailable(format!("{err:#}")))?;
        let mut keys = bucket
            .keys()
            .await
            .map_err(|err| Error::unavailable(format!("listing workers: {err}")))?;
        let mut workers = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(Some(value)) = bucket.get(&key).await
                && let Ok(worker) = Worker::decode(value)
            {
                workers.push(worker);
            }
        }
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }
}

/// How far a job has got: counts only grow, so this orders its events.
fn progress(summary: &JobSummary) -> u32 {
    summary.done + summary.failed + summary.cancelled
}
