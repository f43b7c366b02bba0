//! [`TaskQueue`]: what the scheduler asks of NATS, and nothing else.
//!
//! Tasks go to JetStream stream `TASKS`, published with a dedup id so that a repeat within
//! the dedup window is dropped (a scheduler that publishes again after a crash, or a
//! reconciliation that re-dispatches, makes no duplicate); a paused, cancelled or abandoned
//! job's queued tasks are purged; progress goes over NATS core; and reconciliation asks what
//! `TASKS` and `RESULTS` hold for an image ([`reconcile::Queue`]).
//!
//! [`JetStreamQueue`] is the thin adapter over the NATS client and JetStream context; unit
//! tests use an in-memory queue that records what was published.

use std::{future::Future, time::Duration};

use async_nats::jetstream;
use pixelmesh_common::{nats, telemetry};
use pixelmesh_proto::{
    Error,
    v1::{JobEvent, Task},
};
use prost::Message as _;
use tracing::Instrument as _;

use crate::reconcile::{self, Queued};

/// How long a task publish is retried while NATS is connected but no stream answers (a
/// cluster electing a stream leader after a node died; seconds in practice). Below the
/// submit timeout.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(20);

pub trait TaskQueue: Clone + Send + Sync + 'static {
    /// Answers reconciliation's questions for one pass.
    type Lookup: reconcile::Queue + Send + Sync;

    /// Whether the queue can be reached now: a submit is refused before anything is stored
    /// when it cannot.
    fn is_connected(&self) -> bool;
    /// Publishes `task` with `id` as its dedup id; resolves once the queue has stored it (or
    /// dropped it as a repeat of `id`).
    fn publish_task(
        &self,
        task: Task,
        id: String,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Removes job `job`'s queued tasks. Tasks a worker already holds are not recalled.
    fn purge_tasks(&self, job: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Tells watchers of job `job` about `event`, at most once: none may be listening.
    fn publish_progress(
        &self,
        job: &str,
        event: JobEvent,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Opens the queue for one reconciliation pass.
    fn lookup(&self) -> impl Future<Output = Result<Self::Lookup, Error>> + Send;
}

/// NATS core for progress, JetStream for tasks.
#[derive(Clone)]
pub struct JetStreamQueue {
    nats: async_nats::Client,
    js: jetstream::Context,
}

impl JetStreamQueue {
    pub fn new(nats: async_nats::Client, js: jetstream::Context) -> Self {
        JetStreamQueue { nats, js }
    }

    /// For the result and advisory consumers, which are NATS through and through.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

impl TaskQueue for JetStreamQueue {
    type Lookup = StreamLookup;

    fn is_connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// The trace context in the headers is the caller's (the submit, or the recording of a
    /// split), so a job's tasks, and an image's tiles, are sibling spans in its trace.
    async fn publish_task(&self, task: Task, id: String) -> Result<(), Error> {
        let subject = nats::task_subject(&task.job_id, task.index);
        let mut headers = telemetry::nats_headers();
        let span = tracing::info_span!(
            "publish_task",
            otel.name = "publish task",
            otel.kind = "producer",
            subject = %subject,
        );
        async {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let payload: bytes::Bytes = task.encode_to_vec().into();
            let started = tokio::time::Instant::now();
            let mut delay = Duration::from_millis(100);
            loop {
                let published = async {
                    self.js
                        .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                        .await?
                        .await
                }
                .await;
                match published {
                    Ok(_) => return Ok(()),
                    // Connected, yet no stream answers: a NATS cluster electing the stream's
                    // new leader after a node died. The message id makes a retry safe.
                    Err(err) if self.is_connected() && started.elapsed() < PUBLISH_RETRY_FOR => {
                        tracing::warn!(error = %err, "publishing task failed, retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                    Err(err) => return Err(Error::unavailable(format!("publishing task: {err}"))),
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn purge_tasks(&self, job: &str) -> Result<(), Error> {
        let stream = self
            .js
            .get_stream(nats::TASKS_STREAM)
            .await
            .map_err(|err| Error::unavailable(format!("tasks stream unavailable: {err}")))?;
        stream
            .purge()
            .filter(nats::job_tasks_filter(job))
            .await
            .map_err(|err| Error::unavailable(format!("purging tasks: {err}")))?;
        Ok(())
    }

    async fn publish_progress(&self, job: &str, event: JobEvent) -> Result<(), Error> {
        self.nats
            .publish_with_headers(
                nats::progress_subject(job),
                telemetry::nats_headers(),
                event.encode_to_vec().into(),
            )
            .await
            .map_err(|err| Error::unavailable(format!("publishing progress: {err}")))
    }

    async fn lookup(&self) -> Result<StreamLookup, Error> {
        StreamLookup::new(&self.js).await
    }
}

/// What JetStream holds for a job's images: [`reconcile::Queue`] over `TASKS` and `RESULTS`.
pub struct StreamLookup {
    tasks: jetstream::stream::Stream,
    results: jetstream::stream::Stream,
}

impl StreamLookup {
    async fn new(js: &jetstream::Context) -> Result<Self, Error> {
        let stream = |name: &'static str| async move {
            js.get_stream(name)
                .await
                .map_err(|err| Error::unavailable(format!("stream {name}: {err}")))
        };
        Ok(StreamLookup {
            tasks: stream(nats::TASKS_STREAM).await?,
            results: stream(nats::RESULTS_STREAM).await?,
        })
    }

    /// The sequence of the last message on `subject`, if there is one.
    async fn last(stream: &jetstream::stream::Stream, subject: &str) -> Result<Option<u64>, Error> {
        use jetstream::stream::LastRawMessageErrorKind;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(message.sequence)),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(Error::unavailable(format!("reading {subject}: {err}"))),
        }
    }
}

impl reconcile::Queue for StreamLookup {
    /// Checks `TASKS` before `RESULTS`: a worker publishes its result before it acks the
    /// task, so an image that has neither, read in this order, has neither for real (or
    /// has been recorded meanwhile, which storage's requeue checks).
    async fn look(&self, job: &str, index: u32) -> Result<Queued, Error> {
        if let Some(seq) = Self::last(&self.tasks, &nats::task_subject(job, index)).await? {
            // A task delivered, unacked and not pending with any worker ran out of
            // deliveries: JetStream keeps it but never delivers it again.
            let info = self.tasks.consumer_info(nats::FILTER_CONSUMER).await;
            return Ok(match info {
                Ok(info) if info.num_ack_pending == 0 && info.delivered.stream_sequence >= seq => {
                    Queued::Exhausted {
                        deliveries: info.config.max_deliver.max(1) as u64,
                    }
                }
                _ => Queued::Task,
            });
        }
        match Self::last(&self.results, &nats::result_subject(job, index)).await? {
            Some(_) => Ok(Queued::Result),
            None => Ok(Queued::Nothing),
        }
    }
}
