//! Outages of our own infrastructure are not an image's fault.
//!
//! When a task cannot reach storage, NATS or the shared blob store, retrying it through JetStream would spend one
//! of the image's few deliveries per try: a 20 s storage outage used to fail most of a
//! batch for good ("gave up after 5 attempts: tcp connect error"). Instead the worker holds
//! the task (with in-progress acks, so it is not redelivered), stops pulling new ones, and
//! probes storage's health and the NATS connection with back-off until both answer; then
//! the task runs again on the same delivery. Attempts count only failures of the image
//! itself (a decode error, a fetch error of its URL).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use pixelmesh_common::grpc::Channel;
use tokio::sync::watch;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// First and longest pause between two probes.
const FIRST_PROBE: Duration = Duration::from_millis(100);
const MAX_PROBE: Duration = Duration::from_secs(5);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether storage or NATS is down as this worker sees it, shared by its tasks and its pull
/// loop.
#[derive(Clone)]
pub struct Outage {
    down: Arc<watch::Sender<bool>>,
    probing: Arc<AtomicBool>,
    storage: Channel,
    nats: async_nats::Client,
    /// The shared blob store, when the worker reads and writes it directly.
    blobs: Option<pixelmesh_blobs::BlobStore>,
}

impl Outage {
    pub fn new(
        storage: Channel,
        nats: async_nats::Client,
        blobs: Option<pixelmesh_blobs::BlobStore>,
    ) -> Self {
        Outage {
            down: Arc::new(watch::channel(false).0),
            probing: Arc::new(AtomicBool::new(false)),
            storage,
            nats,
            blobs,
        }
    }

    /// A task could not reach storage or NATS: from now on nothing is pulled until both
    /// answer. One prober runs however many tasks report.
    pub fn report(&self, error: &str) {
        self.down.send_replace(true);
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(error = %error, "storage or nats unreachable: holding tasks, pulling none until they answer");
        metrics::counter!("pixelmesh_filter_outages_total").increment(1);
        let outage = self.clone();
        tokio::spawn(async move {
            let mut pause = FIRST_PROBE;
            let mut probes = 0u32;
            while !outage.healthy().await {
                probes += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PROBE);
            }
            outage.probing.store(false, Ordering::SeqCst);
            outage.down.send_replace(false);
            tracing::info!(probes, "storage and nats answer again, resuming");
        });
    }

    /// Waits until no outage is reported.
    pub async fn wait_clear(&self) {
        let mut down = self.down.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we wait on it.
        let _ = down.wait_for(|down| !*down).await;
    }

    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Storage says SERVING, the NATS connection is up, and a shared blob store answers.
    async fn healthy(&self) -> bool {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return false;
        }
        if let Some(blobs) = &self.blobs {
            let read = tokio::time::timeout(PROBE_TIMEOUT, blobs.identity()).await;
            if !matches!(read, Ok(Ok(Some(_)))) {
                return false;
            }
        }
        let mut health = HealthClient::new(self.storage.clone());
        let request = HealthCheckRequest {
            service: "pixelmesh.v1.Storage".into(),
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, health.check(request)).await,
            Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving
        )
    }
}
