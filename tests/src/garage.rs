//! A real Garage (the distributed S3-compatible object store) on loopback: one node, or a
//! cluster of several with every object on each of them, set up the way an operator does
//! with the `garage` CLI: layout, bucket, key.
//!
//! The binary is `$PIXELMESH_GARAGE`, else `.tools/garage/bin/garage` (which
//! `scripts/tools.sh` installs), else `garage` on PATH.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{Process, free_port, tool, wait_until};

/// The bucket every test store uses.
pub const BUCKET: &str = "pixelmesh";
/// Garage checks the region a request is signed for.
const REGION: &str = "garage";

/// One Garage server process.
pub struct GarageNode {
    config: PathBuf,
    pub s3_port: u16,
    rpc_port: u16,
    log: PathBuf,
    child: Process,
}

impl GarageNode {
    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("garage log");
        let child = Command::new(tool("garage"))
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting garage");
        *self.child = Some(child);
        let (s3, rpc) = (self.s3_port, self.rpc_port);
        wait_until("garage listens", || {
            std::net::TcpStream::connect(("127.0.0.1", s3)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", rpc)).is_ok()
        });
    }

    /// Runs a `garage` CLI command against this node: what it printed, as `Err` when it
    /// failed.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(tool("garage"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("running the garage cli");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// [`GarageNode::run`], panicking with its output on failure.
    fn cli(&self, args: &[&str]) -> String {
        self.run(args)
            .unwrap_or_else(|text| panic!("garage {args:?} failed: {text}"))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A Garage cluster with one bucket and a key that may read and write it.
pub struct Garage {
    pub nodes: Vec<GarageNode>,
    pub key_id: String,
    pub secret: String,
    _dir: TempDir,
}

impl Garage {
    /// One node, every object stored once.
    pub fn single() -> Garage {
        Garage::start(1)
    }

    /// `nodes` nodes, each object on every one of them (replication factor = `nodes`).
    pub fn cluster(nodes: usize) -> Garage {
        Garage::start(nodes)
    }

    fn start(count: usize) -> Garage {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
            .collect();
        let mut nodes: Vec<GarageNode> = (0..count)
            .map(|i| {
                let root = dir.path().join(format!("node{i}"));
                std::fs::create_dir_all(&root).expect("node dir");
                let (s3_port, rpc_port) = (free_port(), free_port());
                let config = root.join("garage.toml");
                std::fs::write(
                    &config,
                    format!(
                        "metadata_dir = \"{meta}\"\n\
                         data_dir = \"{data}\"\n\
                         db_engine = \"sqlite\"\n\
                         replication_factor = {count}\n\
                         rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                         rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                         rpc_secret = \"{secret}\"\n\
                         [s3_api]\n\
                         s3_region = \"{REGION}\"\n\
                         api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                         root_domain = \".s3.garage.localhost\"\n",
                        meta = root.join("meta").display(),
                        data = root.join("data").display(),
                    ),
                )
                .expect("garage config");
                GarageNode {
                    config,
                    s3_port,
                    rpc_port,
                    log: root.join("garage.log"),
                    child: Process::default(),
                }
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        let ids: Vec<String> = nodes
            .iter()
            .map(|node| node.cli(&["node", "id", "-q"]).trim().to_string())
            .collect();
        for id in &ids[1..] {
            nodes[0].cli(&["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().expect("node id");
            // Until the nodes have met, the first does not know the others' ids.
            poll_cli(
                &nodes[0],
                &["layout", "assign", "-z", "dc1", "-c", "1G", short],
            );
        }
        nodes[0].cli(&["layout", "apply", "--version", "1"]);
        poll_cli(&nodes[0], &["bucket", "create", BUCKET]);
        let key = nodes[0].cli(&["key", "create", "pixelmesh-tests"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in: {key}"))
        };
        let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
        nodes[0].cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", &key_id,
        ]);
        Garage {
            nodes,
            key_id,
            secret,
            _dir: dir,
        }
    }

    /// Multipart uploads of the bucket begun and neither finished nor aborted, as Garage
    /// counts them (its counters follow the writes within moments).
    pub fn unfinished_uploads(&self) -> usize {
        let info = self.nodes[0].cli(&["bucket", "info", BUCKET]);
        // The line is printed only while there are some: "Unfinished uploads: N multipart uploads".
        info.lines()
            .find_map(|line| line.trim().strip_prefix("Unfinished uploads:"))
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no count in: {info}"))
            })
            .unwrap_or(0)
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// The `AWS_*` settings that reach the bucket through node `i`.
    pub fn env(&self, i: usize) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint(i)),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Every node's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| format!("--- garage node {i}\n{}", node.logs()))
            .collect()
    }
}

/// Runs a CLI command until it succeeds (the cluster is still converging), for a few
/// seconds at most.
fn poll_cli(node: &GarageNode, args: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let Err(text) = node.run(args) else {
            return;
        };
        assert!(
            std::time::Instant::now() < deadline,
            "garage {args:?} kept failing: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
