//! The storage role: job metadata in sled, and the blob store's keeper.
//!
//! Blob bytes live in a [`pixelmesh_blobs::BlobStore`] (a directory or an S3 bucket); storage
//! serves them over gRPC to roles that do not reach the store themselves, records who owns
//! each upload, and is the only role that deletes blobs.
//!
//! * [`meta`] — jobs, images, the unfinished and by-state indexes and blob owners in sled,
//!   changed in transactions;
//! * [`store`] — the only way into sled from async code: one writer thread that applies and
//!   flushes every change, reads on a bounded pool of blocking threads (why: its docs);
//! * [`grpc`] — `pixelmesh.v1.Storage`, translating wire types at the edge;
//! * [`gc`] — the periodic sweep of blobs no job refers to.

pub mod gc;
pub mod grpc;
pub mod meta;
pub mod store;

use std::{future::Future, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use pixelmesh_common::grpc::{MAX_MESSAGE_BYTES, Server};
use pixelmesh_proto::v1::storage_server::StorageServer;
use tokio::net::TcpListener;

/// The storage role's settings.
#[derive(Debug, Clone, Args)]
// Unique among the Args structs `pixelmesh all` flattens side by side.
#[group(id = "storage_config")]
pub struct Config {
    /// Directory for the sled database, and for blobs unless the blob store is elsewhere.
    #[arg(
        long = "storage-dir",
        env = "PIXELMESH_STORAGE_DIR",
        default_value = "./pixelmesh-data/storage"
    )]
    pub dir: PathBuf,
    /// Largest blob accepted, in bytes.
    #[arg(long, env = "PIXELMESH_MAX_BLOB_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_blob_bytes: u64,
    /// Most images in one job.
    #[arg(long, env = "PIXELMESH_MAX_IMAGES_PER_JOB", default_value_t = 10_000)]
    pub max_images_per_job: u32,
    /// Blobs no job refers to (uploads never submitted) are deleted this many seconds after
    /// they were last written; 0 keeps them forever.
    #[arg(long, env = "PIXELMESH_ORPHAN_BLOB_TTL_SECS", default_value_t = 24 * 3600)]
    pub orphan_blob_ttl_secs: u64,
    /// Seconds to wait at start for a blob store that does not answer yet, such as an object
    /// store started beside storage (compose's garage profile sets 90); 0 fails at once, so a
    /// wrong endpoint or key is reported straight away.
    #[arg(long, env = "PIXELMESH_BLOB_STORE_WAIT_SECS", default_value_t = 0)]
    pub blob_store_wait_secs: u64,
    /// The blob store's URL (`--blob-store`, shared with the other roles, so set by the
    /// command line's own argument group); `None`: `file://<storage dir>/blobs`.
    #[arg(skip)]
    pub blob_store: Option<String>,
}

impl Config {
    /// The blob store's URL, as given or the default under the storage directory.
    pub fn blob_store_url(&self) -> anyhow::Result<String> {
        match &self.blob_store {
            Some(url) => Ok(url.clone()),
            None => Ok(pixelmesh_blobs::file_url(&self.dir.join("blobs"))?),
        }
    }
}

/// Storage's metrics, at zero from the start so rates over them are defined.
fn describe_metrics() {
    use metrics::{Unit, counter, describe_counter};
    describe_counter!(
        "pixelmesh_storage_bytes_written_total",
        Unit::Bytes,
        "blob bytes stored: uploads, outputs, tiles"
    );
    counter!("pixelmesh_storage_bytes_written_total").absolute(0);
    describe_counter!(
        "pixelmesh_storage_bytes_read_total",
        Unit::Bytes,
        "blob bytes served: to workers, downloads"
    );
    counter!("pixelmesh_storage_bytes_read_total").absolute(0);
}

/// Opens the blob store at `url` and reads or writes its marker
/// ([`pixelmesh_blobs::BlobStore::claim`]): the store and its id. While the store is
/// unavailable it waits, up to `wait`, here rather than through a container's restarts: a
/// process that exits at once restarts under a back-off that grows to minutes and passes for
/// unhealthy meanwhile. A missing bucket or refused key is waited out too, since a store
/// started beside storage makes them as it starts; each wait logs the reason. A foreign
/// marker fails at once.
async fn open_store(
    url: &str,
    max_blob_bytes: u64,
    wait: Duration,
) -> Result<(pixelmesh_blobs::BlobStore, String), pixelmesh_proto::Error> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        let opened = match pixelmesh_blobs::BlobStore::open(url, max_blob_bytes).await {
            Ok(blobs) => blobs.claim().await.map(|id| (blobs, id)),
            Err(err) => Err(err),
        };
        match opened {
            Err(err) if err.code.is_transient() && started.elapsed() < wait => {
                tracing::info!(
                    store = %url,
                    error = %err.message,
                    retry_ms = pause.as_millis() as u64,
                    "blob store not ready, waiting"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            opened => return opened,
        }
    }
}

/// Serves storage until `shutdown` resolves, then flushes the metadata.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    describe_metrics();
    let url = config.blob_store_url()?;
    let wait = Duration::from_secs(config.blob_store_wait_secs);
    let (blobs, store_id) = open_store(&url, config.max_blob_bytes, wait)
        .await
        .with_context(|| format!("opening the blob store {url}"))?;
    // Opening reads and may rebuild counters: blocking work, before anything is served.
    let dir = config.dir.join("meta");
    let max_images = config.max_images_per_job;
    let meta = tokio::task::spawn_blocking(move || meta::Meta::open(&dir, max_images))
        .await
        .context("opening metadata")??;
    let store = store::Store::start(meta)?;
    let server = Server::new("storage")?
        .trusted_peers()
        .add_service(
            StorageServer::new(grpc::StorageService::new(
                blobs.clone(),
                store_id,
                store.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .await;
    tracing::info!(addr = %listener.local_addr()?, dir = %config.dir.display(), blob_store = %url, "storage listening");
    let stop_sweeping = tokio_util::sync::CancellationToken::new();
    let sweeper = (config.orphan_blob_ttl_secs > 0).then(|| {
        tokio::spawn(gc::run(
            blobs.clone(),
            store.clone(),
            Duration::from_secs(config.orphan_blob_ttl_secs),
            stop_sweeping.clone(),
        ))
    });
    let served = server.serve(listener, shutdown).await;
    stop_sweeping.cancel();
    if let Some(sweeper) = sweeper {
        let _ = sweeper.await;
    }
    store.flush().await.context("flushing metadata")?;
    served
}
