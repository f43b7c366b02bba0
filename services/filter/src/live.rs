//! The live lane: on-the-fly image requests (`GET /img/…` at the gateway), pulled from the
//! `LIVE` stream by a consumer of their own and run on CPU slots of their own, so a page load
//! never waits behind a batch: at worst it shares a core with a batch image for a moment.
//!
//! A live task is tried once. Its requester is waiting, and the gateway answers it from the
//! [`LiveResult`] published to the task's reply subject, so a failure is reported at once
//! (with the HTTP status that names it) and never retried through JetStream.

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use pixelmesh_blobs::BlobId;
use pixelmesh_common::nats;
use pixelmesh_proto::v1::{LiveError, LiveOutput, LiveResult, LiveTask, live_result, live_task};
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    budget::{self, Deadline},
    codec::Limits,
    engine::{self, ProcessError},
    fetch::FetchError,
    ops::Pipeline,
    worker::{self, PULL_EXPIRES, TaskError, Worker},
};

/// Pulls and runs live tasks, at most `slots` at once, each on one of `cpu`'s permits, until
/// `stop` is cancelled; then waits for the ones running.
pub(crate) async fn consume(
    worker: Arc<Worker>,
    cpu: Arc<Semaphore>,
    slots: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let consumer = loop {
        match open_consumer(&worker.js).await {
            Ok(consumer) => break consumer,
            Err(err) => {
                tracing::warn!(error = %err, "opening the live consumer failed, retrying");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(PULL_EXPIRES) => {}
                }
            }
        }
    };
    let slots = Arc::new(Semaphore::new(slots.max(1)));
    let mut running = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot?,
        };
        while running.try_join_next().is_some() {}
        // A pull per free slot, as the batch lane does, so an idle replica takes the next
        // request rather than a busy one holding it.
        match worker::pull_one(&consumer, "live tasks").await {
            Some(message) => {
                let (worker, cpu) = (worker.clone(), cpu.clone());
                running.spawn(async move {
                    handle(&worker, &cpu, message).await;
                    drop(slot);
                });
            }
            None => drop(slot),
        }
    }
    while running.join_next().await.is_some() {}
    Ok(())
}

async fn open_consumer(
    js: &jetstream::Context,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = js.get_stream(nats::LIVE_STREAM).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(nats::LIVE_CONSUMER.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            // Tried once: a worker that dies mid-request leaves it to the requester's
            // time-out rather than to a second worker the requester no longer waits for.
            max_deliver: 1,
            ..Default::default()
        })
        .await?;
    Ok(consumer)
}

/// Runs one live task and publishes its answer, then acks it.
async fn handle(worker: &Worker, cpu: &Arc<Semaphore>, message: jetstream::Message) {
    let reply = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(nats::REPLY_HEADER))
        .map(|reply| reply.as_str().to_string());
    let span = tracing::info_span!("live", subject = %message.subject);
    async {
        let started = std::time::Instant::now();
        let outcome = match LiveTask::decode(message.payload.clone()) {
            Ok(task) => run(worker, cpu, task).await,
            Err(err) => Err(failure(500, format!("undecodable live task: {err}"))),
        };
        let (outcome, store) = match outcome {
            Ok((output, store)) => (Ok(output), store),
            Err(error) => (Err(error), None),
        };
        let result = LiveResult {
            outcome: Some(match outcome {
                Ok(output) => live_result::Outcome::Output(output),
                Err(error) => {
                    tracing::info!(status = error.status, error = %error.message, "live image failed");
                    live_result::Outcome::Error(error)
                }
            }),
        };
        let kind = match &result.outcome {
            Some(live_result::Outcome::Output(_)) => "done",
            _ => "failed",
        };
        metrics::counter!("pixelmesh_live_images_total", "outcome" => kind).increment(1);
        metrics::histogram!("pixelmesh_live_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match reply {
            Some(reply) => {
                if let Err(err) = worker
                    .js
                    .client()
                    .publish(reply, result.encode_to_vec().into())
                    .await
                {
                    tracing::warn!(error = %err, "publishing a live answer failed");
                }
            }
            None => tracing::warn!("live task without a reply subject dropped"),
        }
        if let Some(bytes) = store {
            let mut storage = worker.storage.clone();
            if let Err(err) = worker::put_blob(worker, &mut storage, bytes).await {
                // The record points at nothing: the next request makes the image again.
                tracing::warn!(error = ?err, "storing a live output failed");
            }
        }
        worker::ack(&message, AckKind::Ack).await;
    }
    .instrument(span)
    .await;
}

fn failure(status: u32, message: impl Into<String>) -> LiveError {
    LiveError {
        status,
        message: message.into(),
    }
}

/// A worker-side failure as a status: what the input did wrong, or that the mesh failed.
fn task_failure(err: TaskError) -> LiveError {
    match err {
        TaskError::Permanent(message) if message.contains("not found") => failure(404, message),
        TaskError::Permanent(message) if message.contains("over the limit") => {
            failure(413, message)
        }
        TaskError::Permanent(message) => failure(422, message),
        TaskError::Skipped => failure(500, "skipped"),
        TaskError::Transient(message) | TaskError::Infrastructure(message) => failure(503, message),
    }
}

fn process_failure(err: &ProcessError) -> LiveError {
    use pixelmesh_proto::ErrorCode;
    let status = match err.code() {
        ErrorCode::ResourceExhausted => 413,
        ErrorCode::DeadlineExceeded => 504,
        _ => 422,
    };
    failure(status, err.message())
}

/// The task's output, and its bytes when they are still to be stored.
type Made = (LiveOutput, Option<Vec<u8>>);

async fn run(worker: &Worker, cpu: &Arc<Semaphore>, task: LiveTask) -> Result<Made, LiveError> {
    let limits = Limits {
        max_pixels: nonzero_min(task.max_pixels, worker.limits.max_pixels),
        max_input_bytes: nonzero_min(task.max_input_bytes, worker.limits.max_input_bytes),
    };
    let pipeline = Pipeline::from_proto(&task.pipeline).map_err(|err| failure(400, err.message))?;
    let mut storage = worker.storage.clone();
    let (input, source_blob_id) = match &task.source {
        Some(live_task::Source::BlobId(id)) => {
            let input = worker::download(worker, &mut storage, id, limits.max_input_bytes)
                .await
                .map_err(task_failure)?;
            (input, id.clone())
        }
        Some(live_task::Source::Url(url)) => {
            let input = worker
                .fetcher
                .fetch(url, limits.max_input_bytes)
                .instrument(engine::stage_span("fetch"))
                .await
                .map_err(|err| match err {
                    FetchError::Permanent(message) if message.contains("over the limit") => {
                        failure(413, message)
                    }
                    FetchError::Permanent(message) | FetchError::Transient(message) => {
                        failure(502, format!("source url: {message}"))
                    }
                })?;
            let id = BlobId::of(&input).as_str().to_string();
            (input, id)
        }
        None => return Err(failure(400, "no source")),
    };
    let mut assets = worker::load_logos(worker, &mut storage, &pipeline)
        .await
        .map_err(task_failure)?;
    if let Some(models) = &worker.models {
        assets.set_segmenter(models.clone());
    }
    let deadline = worker.task_timeout.map(Deadline::after);
    let permit = cpu
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| failure(503, "worker stopping"))?;
    let span = tracing::Span::current();
    let processed = tokio::task::spawn_blocking(move || {
        let result = span.in_scope(|| {
            budget::with_deadline(deadline, || {
                engine::process_with(&input, &pipeline, &limits, &assets)
            })
        });
        drop(permit);
        result
    })
    .await
    .map_err(|err| failure(500, format!("internal error while processing: {err}")))?
    .map_err(|err| process_failure(&err))?;
    let size_bytes = processed.bytes.len() as u64;
    let content_type = processed.content_type.to_string();
    let (width, height) = (processed.width, processed.height);
    // An output that rides in the answer is stored after the answer is sent: its id is its
    // content hash, known now, and a request that finds its record before the bytes land
    // reads nothing and makes it again. A larger one is stored first: the gateway reads it.
    let (blob_id, inline, store) = if size_bytes <= task.max_inline_bytes {
        let id = BlobId::of(&processed.bytes).as_str().to_string();
        (id, processed.bytes.clone(), Some(processed.bytes))
    } else {
        let id = worker::put_blob(worker, &mut storage, processed.bytes)
            .await
            .map_err(task_failure)?;
        (id, Vec::new(), None)
    };
    Ok((
        LiveOutput {
            blob_id,
            content_type,
            size_bytes,
            source_blob_id,
            inline,
            width,
            height,
        },
        store,
    ))
}

/// The smaller of a request's limit and the worker's own; 0 in the request means the
/// worker's.
fn nonzero_min(asked: u64, own: u64) -> u64 {
    if asked == 0 { own } else { asked.min(own) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_cannot_raise_the_workers_limits() {
        assert_eq!(nonzero_min(0, 100), 100);
        assert_eq!(nonzero_min(10, 100), 10);
        assert_eq!(nonzero_min(1000, 100), 100);
    }

    #[test]
    fn failures_name_their_status() {
        assert_eq!(
            task_failure(TaskError::Permanent("blob x not found".into())).status,
            404
        );
        assert_eq!(
            task_failure(TaskError::Permanent(
                "input is over the limit of 5 bytes".into()
            ))
            .status,
            413
        );
        assert_eq!(
            task_failure(TaskError::Transient("busy".into())).status,
            503
        );
        let too_big = ProcessError::Decode(crate::codec::DecodeError::TooManyPixels {
            width: 10,
            height: 10,
            limit: 50,
        });
        assert_eq!(process_failure(&too_big).status, 413);
        assert_eq!(
            process_failure(&ProcessError::Decode(crate::codec::DecodeError::NotAnImage)).status,
            422
        );
    }
}
