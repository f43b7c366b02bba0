//! Every NATS name pixelmesh uses, in one place, and the JetStream setup all roles share.
//!
//! * stream `TASKS` (work queue): `pixelmesh.task.<job>.<index>`, deduplicated by
//!   `Nats-Msg-Id` = task id, so a scheduler that re-publishes after a crash adds nothing;
//! * stream `RESULTS` (work queue): `pixelmesh.result.<job>.<index>`, consumed durably by the
//!   scheduler, so no result is lost while it is down;
//! * core subject `pixelmesh.progress.<job>`: progress events for gateways to relay;
//! * KV bucket `pixelmesh-workers`: worker heartbeats that expire;
//! * KV bucket `pixelmesh-leases`: the scheduler lease for reconciliation;
//! * stream `LIVE` (work queue, in memory): `pixelmesh.live.<request>`, on-the-fly image
//!   requests (`GET /img/…`), pulled by the filters through a consumer of their own before
//!   any batch task, so a page load never waits behind a batch; the answer goes to the
//!   reply subject in the task's `Pixelmesh-Reply` header (NATS core);
//! * KV bucket `pixelmesh-image-cache`: on-the-fly results, by source content and pipeline;
//! * stream `ADVISORIES`: JetStream's max-deliveries advisories for `TASKS`, kept until the
//!   scheduler's durable consumer has handled them, so a task that ran out of deliveries
//!   while no scheduler was up still fails its image.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, stream};

pub const TASKS_STREAM: &str = "TASKS";
pub const RESULTS_STREAM: &str = "RESULTS";
pub const FILTER_CONSUMER: &str = "filter";
/// On-the-fly image requests: their own stream and consumer, so they never queue behind
/// batch tasks.
pub const LIVE_STREAM: &str = "LIVE";
pub const LIVE_CONSUMER: &str = "filter-live";
/// The header of a live task naming the subject its answer goes to.
pub const REPLY_HEADER: &str = "Pixelmesh-Reply";
/// A live task nobody took within this long is dropped: its requester gave up already.
pub const LIVE_MAX_AGE: Duration = Duration::from_secs(60);
/// On-the-fly results: request key to output blob.
pub const IMAGE_CACHE_BUCKET: &str = "pixelmesh-image-cache";
pub const SCHEDULER_CONSUMER: &str = "scheduler";
pub const WORKERS_BUCKET: &str = "pixelmesh-workers";
pub const ADVISORIES_STREAM: &str = "ADVISORIES";
pub const ADVISORIES_CONSUMER: &str = "scheduler-advisories";
/// KV bucket of leases: work one scheduler of several does at a time.
pub const LEASES_BUCKET: &str = "pixelmesh-leases";

/// The advisory JetStream publishes when a task of `TASKS` ran out of deliveries.
pub fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASKS_STREAM}.{FILTER_CONSUMER}")
}

/// Advisories older than this are dropped unhandled: a scheduler down for a week finds the
/// affected jobs through its start-up reconciliation instead.
const ADVISORY_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A re-published task within this window is dropped by JetStream; past it, storage's
/// record-once rule still keeps the image to one outcome.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(10 * 60);

/// A worker missing this long is gone from the worker list.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

pub fn task_subject(job_id: &str, index: u32) -> String {
    format!("pixelmesh.task.{job_id}.{index}")
}

pub fn job_tasks_filter(job_id: &str) -> String {
    format!("pixelmesh.task.{job_id}.>")
}

pub fn live_subject(request: &str) -> String {
    format!("pixelmesh.live.{request}")
}

pub fn result_subject(job_id: &str, index: u32) -> String {
    format!("pixelmesh.result.{job_id}.{index}")
}

/// Every job's progress, for feeds.
pub const ALL_PROGRESS: &str = "pixelmesh.progress.>";

pub fn progress_subject(job_id: &str) -> String {
    format!("pixelmesh.progress.{job_id}")
}

/// The id JetStream deduplicates a task by.
/// Retried images get new ids (`generation` counts a job's retries): JetStream would drop
/// a task whose id it saw within its dedup window.
pub fn task_id(job_id: &str, index: u32, generation: u32) -> String {
    match generation {
        0 => format!("{job_id}.{index}"),
        g => format!("{job_id}.{index}.g{g}"),
    }
}

/// The dedup id of tile `tile` of a tiled image.
pub fn tile_task_id(job_id: &str, index: u32, tile: u32, generation: u32) -> String {
    format!("{}.t{tile}", task_id(job_id, index, generation))
}

/// The dedup id of a tiled image's assembly.
pub fn assemble_task_id(job_id: &str, index: u32, generation: u32) -> String {
    format!("{}.assemble", task_id(job_id, index, generation))
}

/// Connects, retrying for a while so roles can start before the server is up. Given a
/// cluster's URLs, the client moves to another node when its node dies.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut delay = Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .connect(crate::config::url_list(url))
            .await
        {
            Ok(client) => {
                // retry_on_initial_connect returns at once; wait until it is really connected.
                if client.flush().await.is_ok() {
                    return Ok(client);
                }
            }
            Err(err) if tokio::time::Instant::now() >= deadline => {
                return Err(err).with_context(|| format!("cannot connect to nats at {url}"));
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("cannot connect to nats at {url}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Creates the streams if they do not exist yet, with `replicas` copies each; a stream that
/// exists with another count is updated to it. Every role calls it, so start order is free.
pub async fn ensure_streams(js: &jetstream::Context, replicas: u16) -> anyhow::Result<()> {
    let replicas = usize::from(replicas);
    let streams = [
        stream::Config {
            name: TASKS_STREAM.into(),
            subjects: vec!["pixelmesh.task.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DEDUP_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: RESULTS_STREAM.into(),
            subjects: vec!["pixelmesh.result.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: LIVE_STREAM.into(),
            subjects: vec!["pixelmesh.live.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            // A live task is worth nothing once its requester timed out, so a restart may
            // lose it; memory saves the disk write on every page load's miss.
            storage: stream::StorageType::Memory,
            max_age: LIVE_MAX_AGE,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: ADVISORIES_STREAM.into(),
            subjects: vec![max_deliveries_subject()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: ADVISORY_MAX_AGE,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for config in streams {
        // A cluster that is still forming (or electing) times requests out: wait for it.
        let deadline = tokio::time::Instant::now() + STREAMS_READY_WITHIN;
        let mut delay = Duration::from_millis(200);
        loop {
            match ensure_stream(js, &config).await {
                Ok(()) => break,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(stream = %config.name, error = %format!("{err:#}"), "stream not ready, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}

/// How long a role waits at start for JetStream to create or update its streams.
const STREAMS_READY_WITHIN: Duration = Duration::from_secs(60);

async fn ensure_stream(js: &jetstream::Context, config: &stream::Config) -> anyhow::Result<()> {
    let (name, replicas) = (&config.name, config.num_replicas);
    let mut stream = js
        .get_or_create_stream(config.clone())
        .await
        .with_context(|| format!("creating stream {name} with {replicas} replicas"))?;
    let current = stream.info().await?.config.num_replicas;
    if current != replicas {
        tracing::info!(stream = %name, from = current, to = replicas, "changing stream replicas");
        js.update_stream(config.clone())
            .await
            .with_context(|| format!("changing stream {name} to {replicas} replicas"))?;
    }
    Ok(())
}

/// The heartbeat bucket, created with `replicas` copies if missing; entries expire after
/// [`HEARTBEAT_TTL`].
pub async fn workers_bucket(js: &jetstream::Context, replicas: u16) -> anyhow::Result<kv::Store> {
    kv_bucket(
        js,
        kv::Config {
            bucket: WORKERS_BUCKET.into(),
            history: 1,
            max_age: HEARTBEAT_TTL,
            storage: stream::StorageType::Memory,
            num_replicas: usize::from(replicas),
            ..Default::default()
        },
    )
    .await
}

/// The KV bucket `config` names: opened when it exists (whatever its settings, as another
/// process made it), else created with `config`.
pub async fn kv_bucket(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    js.create_key_value(config)
        .await
        .with_context(|| format!("creating kv bucket {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_nest_under_their_streams() {
        assert_eq!(task_subject("01J", 3), "pixelmesh.task.01J.3");
        assert_eq!(job_tasks_filter("01J"), "pixelmesh.task.01J.>");
        assert_eq!(result_subject("01J", 3), "pixelmesh.result.01J.3");
        assert_eq!(progress_subject("01J"), "pixelmesh.progress.01J");
        // A retry's tasks never share an id (JetStream dedup) with the first run's.
        assert_eq!(task_id("01J", 3, 0), "01J.3");
        assert_eq!(task_id("01J", 3, 2), "01J.3.g2");
        assert_eq!(tile_task_id("01J", 3, 7, 0), "01J.3.t7");
        assert_eq!(tile_task_id("01J", 3, 7, 1), "01J.3.g1.t7");
        assert_eq!(assemble_task_id("01J", 3, 1), "01J.3.g1.assemble");
    }
}
