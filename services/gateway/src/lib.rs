//! The gateway role: the only public edge. One port serves gRPC (`pixelmesh.v1.Gateway`,
//! reflection, health) and HTTP (`/api/v1`, `/healthz`). Stateless: scale it out freely.
//!
//! * [`mesh`] — what both edges do, in domain terms: stream uploads to storage, submit and
//!   cancel through the scheduler, read jobs, relay progress and downloads, list workers;
//! * [`grpc`] — `pixelmesh.v1.Gateway`, translating protobuf at the edge;
//! * [`http`] — the REST API and server-sent events, translating JSON and multipart at the
//!   edge;
//! * [`archive`] — reading a user's ZIP of images safely (names, sizes, ratios, types);
//! * [`bundle`] — writing a ZIP of a job's outputs as a stream, with its manifests;
//! * [`export`] — a job's analysis reports as CSV, JSON and XLSX;
//! * [`auth`] — API keys: who is calling;
//! * [`protect`] — the tower layers in front of everything: limits, timeouts, load shedding.

pub mod archive;
pub mod auth;
pub mod bundle;
pub mod export;
pub mod protect;
pub mod grpc;
pub mod http;
pub mod mesh;

use std::future::Future;

use clap::Args;
use pixelmesh_common::grpc::{MAX_MESSAGE_BYTES, Server, channel};
use pixelmesh_proto::v1::{
    gateway_server::GatewayServer, scheduler_client::SchedulerClient, storage_client::StorageClient,
};
use tokio::net::TcpListener;

/// Limits on what clients may send. They are enforced while streaming, never after buffering.
#[derive(Debug, Clone, Args)]
#[group(id = "gateway_settings")]
pub struct Settings {
    /// Largest single uploaded image, in bytes.
    #[arg(long, env = "PIXELMESH_MAX_UPLOAD_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Largest whole HTTP request body (all files of one multipart submit), in bytes.
    #[arg(long, env = "PIXELMESH_MAX_REQUEST_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_request_bytes: u64,
    /// Most images in one multipart submit, files and ZIP entries together.
    #[arg(long, env = "PIXELMESH_MAX_FILES_PER_JOB", default_value_t = 1000)]
    pub max_files_per_job: usize,
    /// Most bytes a ZIP's entries may hold uncompressed, together.
    #[arg(long, env = "PIXELMESH_MAX_ZIP_TOTAL_BYTES", default_value_t = 4 * 1024 * 1024 * 1024)]
    pub max_zip_total_bytes: u64,
    /// Highest compression ratio (uncompressed / compressed) of a ZIP entry over 1 MiB:
    /// photos barely compress, so a high ratio means a zip bomb.
    #[arg(long, env = "PIXELMESH_MAX_ZIP_RATIO", default_value_t = 100)]
    pub max_zip_ratio: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_upload_bytes: 256 * 1024 * 1024,
            max_request_bytes: 2 * 1024 * 1024 * 1024,
            max_files_per_job: 1000,
            max_zip_total_bytes: 4 * 1024 * 1024 * 1024,
            max_zip_ratio: 100,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub storage_url: String,
    pub scheduler_url: String,
    pub settings: Settings,
}

/// Serves the public API until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let nats = pixelmesh_common::nats::connect(&config.nats_url, "pixelmesh-gateway").await?;
    let storage = StorageClient::new(channel(&config.storage_url)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let scheduler = SchedulerClient::new(channel(&config.scheduler_url)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mesh = mesh::Mesh::new(storage, scheduler, nats, config.settings);

    let server = Server::new()?
        .add_service(
            GatewayServer::new(grpc::GatewayService::new(mesh.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .await
        .http(http::router(mesh));
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    server.serve(listener, shutdown).await
}
