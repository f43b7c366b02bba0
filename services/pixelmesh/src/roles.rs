//! The role table: each role is a start function taking its config, a bound listener and a
//! stop signal. `all` starts every entry; no component knows which mode it runs in.

use std::{future::Future, net::SocketAddr, pin::Pin};

use anyhow::Context as _;
use futures::future::select_all;
use pixelmesh_common::shutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{BlobStoreArgs, Command, FilterArgs, GatewayArgs, Peers, SchedulerArgs, StorageArgs},
    nats_server,
};

type Started = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn bind(addr: SocketAddr, role: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{role}: cannot listen on {addr}"))
}

async fn gateway(args: GatewayArgs, stop: Stop) -> anyhow::Result<()> {
    let listener = bind(args.gateway_listen, "gateway").await?;
    let config = pixelmesh_gateway::Config {
        nats: args.nats,
        storage_url: args.peers.storage_url,
        scheduler_url: args.peers.scheduler_url,
        blob_store: args.blobs.url(),
        settings: args.settings,
    };
    pixelmesh_gateway::run(config, listener, stop).await
}

async fn scheduler(args: SchedulerArgs, stop: Stop) -> anyhow::Result<()> {
    let listener = bind(args.scheduler_listen, "scheduler").await?;
    let config = pixelmesh_scheduler::Config {
        nats: args.nats,
        storage_url: args.peers.storage_url,
        settings: args.settings,
    };
    pixelmesh_scheduler::run(config, listener, stop).await
}

async fn filter(args: FilterArgs, stop: Stop) -> anyhow::Result<()> {
    let listener = bind(args.filter_listen, "filter").await?;
    let config = pixelmesh_filter::Config {
        nats: args.nats,
        storage_url: args.peers.storage_url,
        blob_store: args.blobs.url(),
        settings: args.settings,
    };
    pixelmesh_filter::run(config, listener, stop).await
}

async fn storage(args: StorageArgs, stop: Stop) -> anyhow::Result<()> {
    let listener = bind(args.storage_listen, "storage").await?;
    let config = pixelmesh_storage::Config {
        blob_store: args.blobs.url(),
        ..args.config
    };
    pixelmesh_storage::run(config, listener, stop).await
}

/// Runs one role, or all of them, until SIGTERM/Ctrl-C.
pub async fn run(command: Command) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown::signal().await;
            stop.cancel();
        }
    });
    let signal = |stop: &CancellationToken| -> Stop { Box::pin(stop.clone().cancelled_owned()) };
    match command {
        Command::Gateway(args) => gateway(args, signal(&stop)).await,
        Command::Scheduler(args) => scheduler(args, signal(&stop)).await,
        Command::Filter(args) => filter(args, signal(&stop)).await,
        Command::Storage(args) => storage(args, signal(&stop)).await,
        Command::Health(args) => crate::health::run(args).await,
        // cli::main runs these itself, without a role's signal handling and telemetry.
        Command::Client(_) => anyhow::bail!("a client command is not a role"),
        Command::All(args) => {
            // Stopped once every role has stopped.
            let nats = nats_server::ensure(&args.nats.url, &args.nats_dir).await?;
            let peers: Peers = args.peers();
            // Every role of one process shares storage's store: bytes never cross gRPC.
            let blobs = BlobStoreArgs {
                blob_store: Some(match args.blobs.url() {
                    Some(url) => url,
                    None => args.storage.blob_store_url()?,
                }),
            };
            let roles: Vec<(&str, Started)> = vec![
                (
                    "storage",
                    Box::pin(storage(
                        StorageArgs {
                            storage_listen: args.storage_listen,
                            blobs: blobs.clone(),
                            config: args.storage.clone(),
                        },
                        signal(&stop),
                    )),
                ),
                (
                    "scheduler",
                    Box::pin(scheduler(
                        SchedulerArgs {
                            scheduler_listen: args.scheduler_listen,
                            nats: args.nats.clone(),
                            peers: peers.clone(),
                            settings: args.scheduler,
                        },
                        signal(&stop),
                    )),
                ),
                (
                    "filter",
                    Box::pin(filter(
                        FilterArgs {
                            filter_listen: args.filter_listen,
                            nats: args.nats.clone(),
                            peers: peers.clone(),
                            blobs: blobs.clone(),
                            settings: args.filter.clone(),
                        },
                        signal(&stop),
                    )),
                ),
                (
                    "gateway",
                    Box::pin(gateway(
                        GatewayArgs {
                            gateway_listen: args.gateway_listen,
                            nats: args.nats.clone(),
                            peers,
                            blobs,
                            settings: args.gateway.clone(),
                        },
                        signal(&stop),
                    )),
                ),
            ];
            let result = run_together(roles, stop).await;
            if let Some(nats) = nats {
                nats.stop().await;
            }
            result
        }
    }
}

/// Runs roles side by side. The first to stop — failed or not — stops the others.
async fn run_together(roles: Vec<(&str, Started)>, stop: CancellationToken) -> anyhow::Result<()> {
    let (names, futures): (Vec<&str>, Vec<Started>) = roles.into_iter().unzip();
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let (first, index, rest) = select_all(handles).await;
    stop.cancel();
    let mut result = first
        .with_context(|| format!("{} panicked", names[index]))
        .and_then(|r| r.with_context(|| format!("{} failed", names[index])));
    for handle in rest {
        let outcome = handle.await.context("role panicked").and_then(|r| r);
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}
