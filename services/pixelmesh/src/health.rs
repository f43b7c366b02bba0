//! `pixelmesh health`: the container health probe. The image is built `FROM scratch`, with no
//! shell or curl, so the binary probes itself: it asks `grpc.health.v1` on the roles' listen
//! addresses (the same `PIXELMESH_*_LISTEN` variables the role reads) and exits 0 only when
//! every address something listens on answers SERVING, and at least one does. An address
//! nobody listens on is skipped, so one probe fits a container of any role, and `all`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use tokio::net::TcpStream;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Each role's listen variable and its default port, as [`crate::cli`] declares them (a test
/// there holds the two together).
pub const ROLES: [(&str, &str, u16); 4] = [
    ("gateway", "PIXELMESH_GATEWAY_LISTEN", 8080),
    ("scheduler", "PIXELMESH_SCHEDULER_LISTEN", 50052),
    ("storage", "PIXELMESH_STORAGE_LISTEN", 50053),
    ("filter", "PIXELMESH_FILTER_LISTEN", 50054),
];

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Addresses to probe (`host:port`). Without any, every role's listen address on this
    /// host.
    pub addrs: Vec<String>,
    /// Seconds each address may take to answer.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
}

/// What one address answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// Nothing listens there.
    Closed,
    Serving,
    Unhealthy(String),
}

/// Probes and prints one line per address that answered; the error says why it is unhealthy.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let targets = if args.addrs.is_empty() {
        role_addrs(|name| std::env::var(name).ok())?
    } else {
        args.addrs
            .iter()
            .map(|addr| {
                let parsed = addr
                    .parse()
                    .with_context(|| format!("invalid address {addr:?}, want host:port"))?;
                Ok((addr.clone(), parsed))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let mut serving = 0;
    for (name, addr) in &targets {
        match probe(*addr, timeout).await {
            Probe::Closed => {}
            Probe::Serving => {
                println!("{name} {addr}: serving");
                serving += 1;
            }
            Probe::Unhealthy(why) => bail!("{name} {addr}: {why}"),
        }
    }
    if serving == 0 {
        let addrs: Vec<String> = targets.iter().map(|(_, a)| a.to_string()).collect();
        bail!("nothing listens on {}", addrs.join(", "));
    }
    Ok(())
}

/// Every role's address to connect to on this host, from its listen variable or default.
pub fn role_addrs(
    var: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let mut targets: Vec<(String, SocketAddr)> = Vec::new();
    for (role, name, port) in ROLES {
        let mut addr = match var(name) {
            Some(value) => value
                .parse::<SocketAddr>()
                .with_context(|| format!("{name}={value:?} is not host:port"))?,
            None => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        };
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        if !targets.iter().any(|(_, seen)| *seen == addr) {
            targets.push((role.to_string(), addr));
        }
    }
    Ok(targets)
}

/// Asks one address for the overall (`""`) health status.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Probe::Unhealthy(format!("no connection within {timeout:?}")),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Probe::Closed;
        }
        Ok(Err(err)) => return Probe::Unhealthy(format!("cannot connect: {err}")),
        Ok(Ok(_)) => {}
    }
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        anyhow::Ok(answer.into_inner().status())
    };
    match tokio::time::timeout(timeout, check).await {
        Err(_) => Probe::Unhealthy(format!("no health answer within {timeout:?}")),
        Ok(Err(err)) => Probe::Unhealthy(format!("health check failed: {err:#}")),
        Ok(Ok(ServingStatus::Serving)) => Probe::Serving,
        Ok(Ok(status)) => Probe::Unhealthy(format!("status {}", status.as_str_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_addresses_come_from_listen_variables_on_loopback() {
        let addrs = role_addrs(|name| {
            (name == "PIXELMESH_STORAGE_LISTEN").then(|| "0.0.0.0:6000".to_string())
        })
        .unwrap();
        let ports: Vec<(String, u16)> = addrs
            .iter()
            .map(|(role, addr)| {
                assert!(addr.ip().is_loopback(), "{addr}");
                (role.clone(), addr.port())
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("gateway".to_string(), 8080),
                ("scheduler".to_string(), 50052),
                ("storage".to_string(), 6000),
                ("filter".to_string(), 50054),
            ]
        );
        let err = role_addrs(|_| Some("nonsense".to_string())).unwrap_err();
        assert!(err.to_string().contains("is not host:port"), "{err}");
    }

    #[tokio::test]
    async fn probe_tells_closed_serving_and_not_grpc_apart() {
        let timeout = Duration::from_secs(2);
        // A port that was just free: nothing listens.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = free.local_addr().unwrap();
        drop(free);
        assert_eq!(probe(closed, timeout).await, Probe::Closed);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(
            pixelmesh_common::grpc::Server::new("test")
                .unwrap()
                .serve(listener, stop.clone().cancelled_owned()),
        );
        assert_eq!(probe(addr, timeout).await, Probe::Serving);
        stop.cancel();
        server.await.unwrap().unwrap();

        // Something that accepts connections but speaks no gRPC.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        match probe(addr, timeout).await {
            Probe::Unhealthy(why) => assert!(why.contains("health check failed"), "{why}"),
            other => panic!("a non-gRPC port probed as {other:?}"),
        }
    }
}
