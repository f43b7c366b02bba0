//! The scheduler role: owns every job's lifecycle and keeps no state of its own.
//!
//! * [`jobs`] — submit (validate, persist, publish one task per image; all or nothing),
//!   cancel, pause, retry;
//! * [`store`] — [`store::JobStore`], the storage calls [`jobs`] makes, over gRPC;
//! * [`queue`] — [`queue::TaskQueue`], what [`jobs`] asks of NATS: tasks, purges, progress,
//!   reconciliation's lookups;
//! * [`reconcile`] — every unfinished job checked against the queue at start and
//!   periodically: lost tasks queued again, exhausted ones failed, half-submitted jobs
//!   abandoned;
//! * [`results`] — the durable consumers of `RESULTS` and of the max-deliveries advisories
//!   (stream `ADVISORIES`): records each outcome once and publishes progress;
//! * [`lease`] — the NATS KV lease that lets one scheduler of several reconcile at a time;
//!   the rest of their work is shared;
//! * [`grpc`] — `pixelmesh.v1.Scheduler`, translating wire types at the edge;
//! * `fakes` (tests only) — in-memory [`store::JobStore`] and [`queue::TaskQueue`] that keep
//!   storage's state rules and JetStream's dedup, for unit tests of [`jobs`].

#[cfg(test)]
mod fakes;
pub mod grpc;
pub mod jobs;
pub mod lease;
pub mod queue;
pub mod reconcile;
pub mod results;
pub mod store;

use std::future::Future;

use anyhow::Context as _;
use pixelmesh_common::{grpc::Server, nats};
use pixelmesh_proto::v1::scheduler_server::SchedulerServer;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Config {
    pub nats: pixelmesh_common::config::NatsConfig,
    /// gRPC URL of the storage role.
    pub storage_url: String,
    pub settings: Settings,
}

/// How large images are cut into tiles that several workers process at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Settings {
    /// Images above this many pixels are tiled when their pipeline allows it (jobs may say
    /// `tiling: always` or `never` instead).
    #[arg(
        long,
        env = "PIXELMESH_TILE_ABOVE_PIXELS",
        default_value_t = 40_000_000
    )]
    pub tile_above_pixels: u64,
    /// Side of a tile in pixels, halo not included: 2048 makes a 100-megapixel image 24
    /// tiles of about 12 MB of pixels each.
    #[arg(
        long,
        env = "PIXELMESH_TILE_SIZE",
        default_value_t = 2048,
        value_parser = clap::value_parser!(u32).range(64..=4096)
    )]
    pub tile_size: u32,
    /// Most memory one image's pipeline may need, in bytes, as estimated from the image's
    /// size (its header) and the ops: a submit over it is refused, naming the image; a URL
    /// input over it fails when its worker reads its header. 0: no limit.
    #[arg(
        long,
        env = "PIXELMESH_MAX_IMAGE_MEMORY_BYTES",
        default_value_t = Settings::default().max_image_memory_bytes
    )]
    pub max_image_memory_bytes: u64,
    /// Most CPU one image's pipeline may need, in estimated seconds of one core (upscaled
    /// area, blur radius x area, ...), checked like --max-image-memory-bytes. 0: no limit.
    #[arg(
        long,
        env = "PIXELMESH_MAX_IMAGE_CPU_SECS",
        default_value_t = Settings::default().max_image_cpu_secs
    )]
    pub max_image_cpu_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tile_above_pixels: 40_000_000,
            tile_size: 2048,
            max_image_memory_bytes: pixelmesh_pipeline::budget::DEFAULT_MAX_MEMORY_BYTES,
            max_image_cpu_secs: pixelmesh_pipeline::budget::DEFAULT_MAX_CPU_MS / 1000,
        }
    }
}

/// The scheduler's metrics, at zero from the start so rates over them are defined.
fn describe_metrics() {
    use metrics::{counter, describe_counter, describe_gauge, gauge};
    describe_counter!(
        "pixelmesh_results_recorded_total",
        "task outcomes this scheduler recorded (several schedulers share the results)"
    );
    counter!("pixelmesh_results_recorded_total").absolute(0);
    describe_gauge!(
        "pixelmesh_scheduler_reconciler",
        "1 while this scheduler holds the reconciler lease"
    );
    gauge!("pixelmesh_scheduler_reconciler").set(0.0);
    describe_counter!("pixelmesh_jobs_submitted_total", "jobs accepted");
    counter!("pixelmesh_jobs_submitted_total").absolute(0);
    describe_counter!(
        "pixelmesh_images_submitted_total",
        "images in the jobs accepted"
    );
    counter!("pixelmesh_images_submitted_total").absolute(0);
    describe_counter!(
        "pixelmesh_jobs_finished_total",
        "jobs ended, by final state (completed, completed_with_errors, failed, cancelled)"
    );
    for state in ["completed", "completed_with_errors", "failed", "cancelled"] {
        counter!("pixelmesh_jobs_finished_total", "state" => state).absolute(0);
    }
}

/// Runs the scheduler until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    describe_metrics();
    let client = nats::connect(&config.nats.url, "pixelmesh-scheduler").await?;
    let js = async_nats::jetstream::new(client.clone());
    nats::ensure_streams(&js, config.nats.replicas).await?;
    let storage = pixelmesh_proto::v1::storage_client::StorageClient::new(
        pixelmesh_common::grpc::channel(&config.storage_url)?,
    )
    .max_decoding_message_size(pixelmesh_common::grpc::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(pixelmesh_common::grpc::MAX_MESSAGE_BYTES);
    let jobs = jobs::Jobs::new(
        store::GrpcStore(storage),
        queue::JetStreamQueue::new(client, js.clone()),
        config.settings,
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (held_tx, held_rx) = tokio::sync::watch::channel(false);
    let lease = tokio::spawn(lease::hold_reconciler(
        js.clone(),
        config.nats.replicas,
        holder_id(&listener)?,
        held_tx,
        stop_rx.clone(),
    ));
    let reconciler = tokio::spawn({
        let (jobs, stop) = (jobs.clone(), stop_rx.clone());
        async move { jobs.reconcile_forever(stop, held_rx).await }
    });
    let consumer = tokio::spawn(results::run(jobs.clone(), stop_rx.clone()));
    let advisories = tokio::spawn(results::run_advisories(jobs.clone(), stop_rx));

    let server = Server::new("scheduler")?
        .trusted_peers()
        .add_service(
            SchedulerServer::new(grpc::SchedulerService::new(jobs))
                .max_decoding_message_size(pixelmesh_common::grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(pixelmesh_common::grpc::MAX_MESSAGE_BYTES),
        )
        .await;
    tracing::info!(addr = %listener.local_addr()?, "scheduler listening");
    let served = server.serve(listener, shutdown).await;
    let _ = stop_tx.send(true);
    consumer.await.context("results consumer panicked")??;
    advisories.await.context("advisory listener panicked")??;
    reconciler.abort();
    lease.await.context("lease holder panicked")?;
    served
}

/// Who holds the reconciler lease: host name and listening port, the same after a restart
/// (so a restarted scheduler takes its lease back at once) and unique among schedulers.
fn holder_id(listener: &TcpListener) -> anyhow::Result<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "scheduler".into());
    Ok(format!("{host}:{}", listener.local_addr()?.port()))
}
