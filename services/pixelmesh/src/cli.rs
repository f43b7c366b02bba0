//! Flags for every role. Each flag has a `PIXELMESH_*` environment variable and a default
//! that works on one machine: `pixelmesh all` needs no flags at all.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use pixelmesh_common::config::{NatsConfig, grpc_url};

use crate::{health, roles};

#[derive(Debug, Parser)]
#[command(
    name = "pixelmesh",
    version,
    about = "distributed image processing over gRPC and NATS JetStream"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The public edge: gRPC, REST and the UI on one port.
    Gateway(GatewayArgs),
    /// Job lifecycle: validates, queues tasks, records results.
    Scheduler(SchedulerArgs),
    /// A worker: pulls tasks and runs image pipelines. Run as many as you like.
    Filter(FilterArgs),
    /// Job metadata in sled; keeper of the blob store.
    Storage(StorageArgs),
    /// Every role in one process, each on its own port; starts a local nats-server if none
    /// answers and one is on PATH.
    // Boxed: it holds every role's settings.
    All(Box<AllArgs>),
    /// Probes the roles listening on this host through `grpc.health.v1`: exit 0 when all
    /// serve. The container image's HEALTHCHECK.
    Health(health::HealthArgs),
    /// The client: `process`, `jobs`, `watch`, `download`, `cancel`, `retry`, `pause`,
    /// `resume`, `delete`, against a gateway (--gateway, --api-key).
    #[command(flatten)]
    Client(pixelmesh_cli::Command),
}

/// Where blob bytes live. Every role that moves bytes (storage, gateway, filter) takes it.
#[derive(Debug, Clone, Args)]
pub struct BlobStoreArgs {
    /// The blob store: `file:///path` (a directory) or `s3://bucket[/prefix]` (any
    /// S3-compatible store, configured by AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ALLOW_HTTP). Storage defaults to
    /// `file://<storage dir>/blobs`. A gateway or filter given one reads and writes bytes
    /// there directly, after checking it is storage's; without one, bytes go through
    /// storage's gRPC. `all` shares storage's store with its roles.
    #[arg(long, env = "PIXELMESH_BLOB_STORE")]
    pub blob_store: Option<String>,
}

impl BlobStoreArgs {
    /// The store's URL; an empty one counts as none, so a compose file can pass
    /// `${PIXELMESH_BLOB_STORE:-}` through and leave the default.
    pub fn url(&self) -> Option<String> {
        self.blob_store.clone().filter(|url| !url.trim().is_empty())
    }
}

/// Where the other roles are.
#[derive(Debug, Clone, Args)]
pub struct Peers {
    /// gRPC address of the storage role.
    #[arg(
        long,
        env = "PIXELMESH_STORAGE_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub storage_url: String,
    /// gRPC address of the scheduler role; several schedulers as a comma-separated list
    /// (the gateway asks each in turn, skipping one that cannot be reached).
    #[arg(
        long,
        env = "PIXELMESH_SCHEDULER_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub scheduler_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Address for gRPC and HTTP.
    #[arg(long, env = "PIXELMESH_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub gateway_listen: SocketAddr,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub peers: Peers,
    #[command(flatten)]
    pub blobs: BlobStoreArgs,
    #[command(flatten)]
    pub settings: pixelmesh_gateway::Settings,
}

#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    #[arg(
        long,
        env = "PIXELMESH_SCHEDULER_LISTEN",
        default_value = "0.0.0.0:50052"
    )]
    pub scheduler_listen: SocketAddr,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub peers: Peers,
    #[command(flatten)]
    pub settings: pixelmesh_scheduler::Settings,
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Address of the worker's health and reflection endpoint.
    #[arg(long, env = "PIXELMESH_FILTER_LISTEN", default_value = "0.0.0.0:50054")]
    pub filter_listen: SocketAddr,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub peers: Peers,
    #[command(flatten)]
    pub blobs: BlobStoreArgs,
    #[command(flatten)]
    pub settings: pixelmesh_filter::Settings,
}

#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    #[arg(
        long,
        env = "PIXELMESH_STORAGE_LISTEN",
        default_value = "0.0.0.0:50053"
    )]
    pub storage_listen: SocketAddr,
    #[command(flatten)]
    pub blobs: BlobStoreArgs,
    #[command(flatten)]
    pub config: pixelmesh_storage::Config,
}

#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    #[arg(long, env = "PIXELMESH_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub gateway_listen: SocketAddr,
    #[arg(
        long,
        env = "PIXELMESH_SCHEDULER_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub scheduler_listen: SocketAddr,
    #[arg(
        long,
        env = "PIXELMESH_STORAGE_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    pub storage_listen: SocketAddr,
    #[arg(
        long,
        env = "PIXELMESH_FILTER_LISTEN",
        default_value = "127.0.0.1:50054"
    )]
    pub filter_listen: SocketAddr,
    /// Store of the nats-server that `all` starts when none answers.
    #[arg(
        long,
        env = "PIXELMESH_NATS_DIR",
        default_value = "./pixelmesh-data/nats"
    )]
    pub nats_dir: PathBuf,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub blobs: BlobStoreArgs,
    #[command(flatten)]
    pub storage: pixelmesh_storage::Config,
    #[command(flatten)]
    pub scheduler: pixelmesh_scheduler::Settings,
    #[command(flatten)]
    pub filter: pixelmesh_filter::Settings,
    #[command(flatten)]
    pub gateway: pixelmesh_gateway::Settings,
}

impl AllArgs {
    /// The peers as `all` wires them: every role talks to its siblings over loopback.
    pub fn peers(&self) -> Peers {
        Peers {
            storage_url: grpc_url(&loopback(self.storage_listen).to_string()),
            scheduler_url: grpc_url(&loopback(self.scheduler_listen).to_string()),
        }
    }
}

/// An address to connect to for one bound on all interfaces.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Client(command) = cli.command {
        // A client: no telemetry, no role; errors print as one line and exit 2.
        return match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(pixelmesh_cli::run(command)),
            Err(err) => {
                eprintln!("pixelmesh: cannot start the async runtime: {err}");
                ExitCode::from(2)
            }
        };
    }
    use pixelmesh_common::telemetry::Services;
    let service = match &cli.command {
        Command::Gateway(_) => Some(Services::One("pixelmesh-gateway")),
        Command::Scheduler(_) => Some(Services::One("pixelmesh-scheduler")),
        Command::Filter(_) => Some(Services::One("pixelmesh-filter")),
        Command::Storage(_) => Some(Services::One("pixelmesh-storage")),
        Command::All(_) => Some(Services::PerRole),
        // The probe runs every few seconds in each container: no telemetry for it.
        Command::Health(_) | Command::Client(_) => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("pixelmesh: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _telemetry = service.map(pixelmesh_common::telemetry::init).transpose()?;
        roles::run(cli.command).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "pixelmesh stopped");
            eprintln!("pixelmesh: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_role_parses_with_defaults() {
        Cli::command().debug_assert();
        for role in [
            "gateway",
            "scheduler",
            "filter",
            "storage",
            "all",
            "health",
            "jobs",
        ] {
            Cli::try_parse_from(["pixelmesh", role]).expect(role);
        }
        for client in [
            &["process", "photos", "-p", "resize:w=100", "-o", "out"][..],
            &["watch", "01J"],
            &["download", "01J", "--out", "x"],
            &["cancel", "01J", "--gateway", "http://example.com:8080"],
        ] {
            let args = std::iter::once("pixelmesh").chain(client.iter().copied());
            let parsed = Cli::try_parse_from(args).expect(client[0]);
            assert!(matches!(parsed.command, Command::Client(_)), "{client:?}");
        }
    }

    #[test]
    fn health_probes_each_role_on_its_default_port() {
        for (role, _, port) in health::ROLES {
            let listen = match Cli::try_parse_from(["pixelmesh", role]).unwrap().command {
                Command::Gateway(args) => args.gateway_listen,
                Command::Scheduler(args) => args.scheduler_listen,
                Command::Storage(args) => args.storage_listen,
                Command::Filter(args) => args.filter_listen,
                other => panic!("{role} parsed as {other:?}"),
            };
            assert_eq!(listen.port(), port, "{role}");
        }
    }

    #[test]
    fn an_empty_blob_store_is_the_default() {
        let url = |value: &str| {
            let args = BlobStoreArgs {
                blob_store: Some(value.to_string()),
            };
            args.url()
        };
        assert_eq!(url(""), None);
        assert_eq!(url("  "), None);
        assert_eq!(url("s3://pixelmesh").as_deref(), Some("s3://pixelmesh"));
    }
}
