//! One scheduler at a time reconciles: the holder of a lease in NATS KV.
//!
//! Everything else is shared by every scheduler that runs. Each result and advisory goes to
//! one of them (shared durable consumers), gRPC calls go to any, and storage records each
//! outcome once. Reconciliation is the one pass that must not run twice at once: two passes
//! would both requeue a lost task under new ids, and it would run twice.
//!
//! The lease is key `reconciler` of bucket [`nats::LEASES_BUCKET`], whose entries expire
//! after [`TTL`]. The holder renews it every [`RENEW_EVERY`] with a compare-and-set on the
//! revision it wrote; a scheduler that dies stops renewing, and another takes the lease
//! once the entry expires. One that stops cleanly deletes it, so the next takes over at once.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use pixelmesh_common::nats;
use tokio::{sync::watch, time::Instant};

/// An unrenewed lease expires after this: a killed holder's work moves within it.
pub const TTL: Duration = Duration::from_secs(6);
/// How often the holder renews, and others try to take it.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A holder that could not renew for this long stops acting as holder, before the entry
/// can expire and another take it.
const TRUST_FOR: Duration = Duration::from_secs(4);

/// What a lease bucket must offer: the compare-and-set operations of a NATS KV store.
/// A trait so the renewal rules are unit-tested without a server.
trait Bucket {
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, String>;
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, String>;
    /// The live entry's value and revision.
    async fn current(&self, key: &str) -> Result<Option<(Bytes, u64)>, String>;
    async fn delete(&self, key: &str, revision: u64) -> Result<(), String>;
}

impl Bucket for kv::Store {
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, String> {
        kv::Store::create(self, key, value)
            .await
            .map_err(|err| err.to_string())
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, String> {
        kv::Store::update(self, key, value, revision)
            .await
            .map_err(|err| err.to_string())
    }

    async fn current(&self, key: &str) -> Result<Option<(Bytes, u64)>, String> {
        let entry = self.entry(key).await.map_err(|err| err.to_string())?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .map(|entry| (entry.value, entry.revision)))
    }

    async fn delete(&self, key: &str, revision: u64) -> Result<(), String> {
        self.delete_expect_revision(key, Some(revision))
            .await
            .map_err(|err| err.to_string())
    }
}

/// One contender's view of the lease.
struct Lease {
    key: &'static str,
    holder: Bytes,
    /// The revision this holder last wrote, while it believes it holds the lease.
    revision: Option<u64>,
    renewed_at: Instant,
}

impl Lease {
    fn new(key: &'static str, holder: &str) -> Self {
        Lease {
            key,
            holder: Bytes::from(holder.to_string()),
            revision: None,
            renewed_at: Instant::now(),
        }
    }

    /// Takes or renews the lease; whether this holder may act on it now.
    async fn step(&mut self, bucket: &impl Bucket) -> bool {
        match self.revision {
            Some(revision) => match bucket.update(self.key, self.holder.clone(), revision).await {
                Ok(next) => {
                    self.revision = Some(next);
                    self.renewed_at = Instant::now();
                }
                Err(error) if self.renewed_at.elapsed() >= TRUST_FOR => {
                    tracing::warn!(lease = self.key, %error, "lease lost");
                    self.revision = None;
                }
                // Maybe NATS is between leaders: keep trying while the lease cannot have
                // expired yet.
                Err(error) => tracing::debug!(lease = self.key, %error, "renewing lease failed"),
            },
            None => {
                if let Ok(revision) = bucket.create(self.key, self.holder.clone()).await {
                    self.acquired(revision);
                } else if let Ok(Some((value, revision))) = bucket.current(self.key).await
                    && value == self.holder
                    && let Ok(revision) =
                        bucket.update(self.key, self.holder.clone(), revision).await
                {
                    // This holder's own entry from before a restart.
                    self.acquired(revision);
                }
            }
        }
        self.revision.is_some()
    }

    fn acquired(&mut self, revision: u64) {
        tracing::info!(lease = self.key, holder = %String::from_utf8_lossy(&self.holder), "lease acquired");
        self.revision = Some(revision);
        self.renewed_at = Instant::now();
    }

    /// Gives the lease up, so another contender need not wait for it to expire.
    async fn release(&mut self, bucket: &impl Bucket) {
        if let Some(revision) = self.revision.take()
            && let Err(error) = bucket.delete(self.key, revision).await
        {
            tracing::warn!(lease = self.key, %error, "releasing lease failed; it expires instead");
        }
    }
}

/// The leases bucket, created with `replicas` copies if missing.
async fn bucket(js: &jetstream::Context, replicas: u16) -> anyhow::Result<kv::Store> {
    nats::kv_bucket(
        js,
        kv::Config {
            bucket: nats::LEASES_BUCKET.into(),
            history: 1,
            max_age: TTL,
            storage: jetstream::stream::StorageType::File,
            num_replicas: usize::from(replicas),
            ..Default::default()
        },
    )
    .await
}

/// Contends for the reconciler lease as `holder` until `stop`, telling `held` whether this
/// scheduler holds it; releases it on stop.
pub async fn hold_reconciler(
    js: jetstream::Context,
    replicas: u16,
    holder: String,
    held: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut lease = Lease::new("reconciler", &holder);
    let mut store = None;
    loop {
        if store.is_none() {
            match bucket(&js, replicas).await {
                Ok(bucket) => store = Some(bucket),
                Err(error) => tracing::warn!(%error, "opening the leases bucket failed"),
            }
        }
        let holds = match &store {
            Some(bucket) => lease.step(bucket).await,
            None => false,
        };
        held.send_if_modified(|was| std::mem::replace(was, holds) != holds);
        metrics::gauge!("pixelmesh_scheduler_reconciler").set(if holds { 1.0 } else { 0.0 });
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
    held.send_replace(false);
    metrics::gauge!("pixelmesh_scheduler_reconciler").set(0.0);
    if let Some(bucket) = &store {
        lease.release(bucket).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Mutex};

    use super::*;

    /// A KV bucket's compare-and-set rules, with a switch for an unreachable server.
    #[derive(Default)]
    struct Memory {
        entries: Mutex<HashMap<String, (Bytes, u64)>>,
        revision: Mutex<u64>,
        down: Mutex<bool>,
    }

    impl Memory {
        fn write(&self, key: &str, value: Bytes, expect: Option<u64>) -> Result<u64, String> {
            if *self.down.lock().unwrap() {
                return Err("no responders".into());
            }
            let mut entries = self.entries.lock().unwrap();
            if entries.get(key).map(|(_, revision)| *revision) != expect {
                return Err("wrong last sequence".into());
            }
            let mut revision = self.revision.lock().unwrap();
            *revision += 1;
            entries.insert(key.to_string(), (value, *revision));
            Ok(*revision)
        }

        fn expire(&self, key: &str) {
            self.entries.lock().unwrap().remove(key);
        }
    }

    impl Bucket for Memory {
        async fn create(&self, key: &str, value: Bytes) -> Result<u64, String> {
            self.write(key, value, None)
        }
        async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, String> {
            self.write(key, value, Some(revision))
        }
        async fn current(&self, key: &str) -> Result<Option<(Bytes, u64)>, String> {
            Ok(self.entries.lock().unwrap().get(key).cloned())
        }
        async fn delete(&self, key: &str, revision: u64) -> Result<(), String> {
            let mut entries = self.entries.lock().unwrap();
            if entries.get(key).map(|(_, r)| *r) != Some(revision) {
                return Err("wrong last sequence".into());
            }
            entries.remove(key);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_holder_at_a_time_and_the_next_takes_over_when_it_expires_or_is_released() {
        let bucket = Memory::default();
        let (mut a, mut b) = (Lease::new("r", "a"), Lease::new("r", "b"));
        assert!(a.step(&bucket).await);
        assert!(!b.step(&bucket).await);
        assert!(a.step(&bucket).await, "the holder renews");
        assert!(!b.step(&bucket).await);

        // a dies: its entry expires and b takes the lease; a, come back, cannot renew.
        bucket.expire("r");
        assert!(b.step(&bucket).await);
        tokio::time::advance(TRUST_FOR).await;
        assert!(!a.step(&bucket).await, "a's revision is stale");
        assert!(!a.step(&bucket).await);

        // b stops cleanly: a takes over without waiting for an expiry.
        b.release(&bucket).await;
        assert!(a.step(&bucket).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_cut_off_from_nats_stops_acting_before_its_lease_can_expire() {
        let bucket = Memory::default();
        let mut a = Lease::new("r", "a");
        assert!(a.step(&bucket).await);
        *bucket.down.lock().unwrap() = true;
        tokio::time::advance(RENEW_EVERY).await;
        assert!(
            a.step(&bucket).await,
            "one missed renewal is within the lease"
        );
        tokio::time::advance(TRUST_FOR).await;
        assert!(!a.step(&bucket).await);
        assert!(
            TRUST_FOR < TTL,
            "it gives up before another may take the lease"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_holder_takes_back_its_own_lease() {
        let bucket = Memory::default();
        let mut before = Lease::new("r", "host:50052");
        assert!(before.step(&bucket).await);
        let mut after = Lease::new("r", "host:50052");
        assert!(after.step(&bucket).await);
        assert!(!Lease::new("r", "other:50052").step(&bucket).await);
    }
}
