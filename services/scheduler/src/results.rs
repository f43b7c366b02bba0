//! Consuming outcomes: the durable `scheduler` consumer of `RESULTS`, and the durable
//! consumer of JetStream's max-deliveries advisories (captured by stream `ADVISORIES`, so
//! none is lost while no scheduler runs) for tasks whose worker died on every attempt.

use std::time::Duration;

use async_nats::jetstream::{AckKind, consumer};
use futures::StreamExt;
use pixelmesh_common::{nats, telemetry};
use pixelmesh_proto::v1::{Task, TaskResult, task_result::Outcome};
use prost::Message as _;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::jobs::Jobs;

/// How long a result whose recording failed (storage down) waits before redelivery.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Records every result published to `RESULTS` until `stop` turns true.
pub async fn run(jobs: Jobs, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let js = jobs.jetstream().clone();
    let stream = js.get_stream(nats::RESULTS_STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(nats::SCHEDULER_CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let message = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
            next = messages.next() => next,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "results consumer error");
                continue;
            }
            None => anyhow::bail!("results consumer ended"),
        };
        let span = tracing::info_span!(
            "record_result",
            otel.name = "record result",
            otel.kind = "consumer",
            subject = %message.subject,
            job = tracing::field::Empty,
            index = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        telemetry::set_parent_from_nats(&span, message.headers.as_ref());
        async {
            let ack = match TaskResult::decode(message.payload.clone()) {
                Err(err) => {
                    tracing::error!(error = %err, "undecodable result dropped");
                    AckKind::Term
                }
                Ok(result) => {
                    let current = tracing::Span::current();
                    current.record("job", result.job_id.as_str());
                    current.record("index", result.index);
                    match jobs.record(result).await {
                        Ok(_) => AckKind::Ack,
                        Err(err) if err.code.is_transient() => {
                            tracing::warn!(error = %err, "recording result failed, will retry");
                            AckKind::Nak(Some(RETRY_DELAY))
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "result refused by storage");
                            AckKind::Term
                        }
                    }
                }
            };
            if let Err(err) = message.ack_with(ack).await {
                tracing::warn!(error = %err, "acking result failed");
            }
        }
        .instrument(span)
        .await;
    }
}

/// JetStream's advisory when a task ran out of deliveries without any worker publishing a
/// result (every worker that took it crashed or hung). Only the fields we read.
#[derive(Debug, serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// Fails images whose task exhausted its deliveries, so the job still finishes. The
/// advisories wait in stream `ADVISORIES` until handled, so one that fires while no scheduler
/// runs is handled by the next.
pub async fn run_advisories(jobs: Jobs, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let js = jobs.jetstream().clone();
    let stream = js.get_stream(nats::ADVISORIES_STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(nats::ADVISORIES_CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let message = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
            next = messages.next() => next,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "advisory consumer error");
                continue;
            }
            None => anyhow::bail!("advisory consumer ended"),
        };
        let ack = match serde_json::from_slice::<MaxDeliveries>(&message.payload) {
            Err(err) => {
                tracing::warn!(error = %err, "unreadable max-deliveries advisory dropped");
                AckKind::Term
            }
            Ok(advisory) => match fail_exhausted_task(&jobs, &advisory).await {
                Ok(()) => AckKind::Ack,
                Err(err) => {
                    tracing::warn!(seq = advisory.stream_seq, error = %err, "failing exhausted task failed, will retry");
                    AckKind::Nak(Some(RETRY_DELAY))
                }
            },
        };
        if let Err(err) = message.ack_with(ack).await {
            tracing::warn!(error = %err, "acking advisory failed");
        }
    }
}

async fn fail_exhausted_task(jobs: &Jobs, advisory: &MaxDeliveries) -> anyhow::Result<()> {
    let stream = jobs.jetstream().get_stream(nats::TASKS_STREAM).await?;
    // A worker may have published a result on its last attempt after all; storage's
    // record-once rule makes this failure a no-op then.
    let message = match stream.get_raw_message(advisory.stream_seq).await {
        Ok(message) => message,
        // Handled already (a redelivered advisory), or purged with its job.
        Err(err)
            if err.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
        {
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    };
    let task = Task::decode(message.payload.clone())?;
    tracing::warn!(job = %task.job_id, index = task.index, deliveries = advisory.deliveries, "task exhausted its deliveries");
    jobs.record(TaskResult {
        job_id: task.job_id.clone(),
        index: task.index,
        outcome: Some(Outcome::Error(format!(
            "gave up after {} deliveries: no worker finished the task (worker crashed or timed out)",
            advisory.deliveries
        ))),
        worker_id: String::new(),
        attempts: advisory.deliveries as u32,
        duration_ms: 0,
    })
    .await?;
    stream.delete_message(advisory.stream_seq).await?;
    Ok(())
}
