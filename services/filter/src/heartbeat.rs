//! Heartbeats into the `pixelmesh-workers` KV bucket. Entries expire after a few missed
//! beats, so a worker that dies without saying goodbye leaves the list by itself.

use std::{sync::Arc, sync::atomic::Ordering::Relaxed, time::Duration};

use async_nats::jetstream::kv;
use pixelmesh_proto::v1::Worker;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::worker::Stats;

/// Three beats fit in the bucket's TTL, so one lost beat does not drop the worker.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Tasks starting and ending within this window share one beat, so a busy worker writes at
/// most a few entries a second.
const COALESCE: Duration = Duration::from_millis(200);

/// Beats every [`INTERVAL`] and soon after a task starts or ends, until `stop`; then removes
/// the entry.
pub async fn run(bucket: kv::Store, mut info: Worker, stats: Arc<Stats>, stop: CancellationToken) {
    loop {
        info.in_flight = stats.in_flight.load(Relaxed);
        info.done = stats.done.load(Relaxed);
        info.failed = stats.failed.load(Relaxed);
        if let Ok(last) = stats.last_error.lock() {
            info.last_error.clone_from(&last);
        }
        info.seen_at_ms = pixelmesh_common::time::now_ms();
        if let Err(err) = bucket.put(&info.id, info.encode_to_vec().into()).await {
            tracing::warn!(worker = %info.id, error = %err, "heartbeat failed");
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(INTERVAL) => {}
            () = stats.changed.notified() => tokio::time::sleep(COALESCE).await,
        }
    }
    if let Err(err) = bucket.delete(&info.id).await {
        tracing::debug!(worker = %info.id, error = %err, "removing heartbeat failed");
    }
}

/// A worker id that is a valid KV key and unique per process: host name and a random suffix.
pub fn worker_id(host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let suffix = ulid::Ulid::new().to_string().to_lowercase();
    format!("{host}-{}", &suffix[suffix.len() - 6..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_kv_safe_and_distinct() {
        let a = worker_id("my host.example");
        let b = worker_id("my host.example");
        assert!(a.starts_with("my-host-example-"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_ne!(a, b);
    }
}
