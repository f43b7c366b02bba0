//! A test cluster for end-to-end tests: a private `nats-server` (JetStream on, free port,
//! fresh store) and every pixelmesh role as a real child process on its own loopback port,
//! each waited for through its gRPC health check — never a sleep.
//!
//! * [`NatsServer`] — the private broker;
//! * [`Cluster`] / [`ClusterOptions`] — the roles, with kill and restart per role;
//! * [`corpus`] — the shared test photographs;
//! * [`browser`] — headless Chromium through chromedriver, for the web UI;
//! * [`otlp`] — an in-process OTLP trace collector, to read back what the roles export;
//! * [`garage`] — a real Garage object store, one node or a replicated cluster.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pixelmesh_proto::v1::gateway_client::GatewayClient;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub mod browser;
pub mod compose;
pub mod garage;
pub mod otlp;

/// How long a process may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks `probe` every `every` until it answers `Ok`, and returns that; after `timeout`, fails
/// the test naming `what` and the last `Err` it gave (what it saw instead).
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

pub use nix::sys::signal::Signal;

/// Sends `signal` to process `pid`, as `kill` would.
pub fn send_signal(pid: u32, signal: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

/// A port nothing listens on right now, and that no other caller got, in this process or in
/// another test process (nextest runs every test in its own, several at once): the next port
/// to try is kept in a file under the temporary directory, read and advanced under an
/// exclusive lock. Taken below Linux's ephemeral range (32768–60999): a port the kernel hands
/// out for `bind(0)` can meanwhile become the source port of some outgoing connection, and the
/// role meant to listen on it then fails to start.
pub fn free_port() -> u16 {
    use std::io::{Read as _, Seek as _, Write as _};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let path = std::env::temp_dir().join("pixelmesh-test-ports");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    file.lock().expect("locking the port counter");
    let mut text = String::new();
    file.read_to_string(&mut text)
        .expect("reading the port counter");
    // A fresh counter starts somewhere by process id, so runs rarely meet TIME_WAITs.
    let mut next = text
        .trim()
        .parse::<u32>()
        .unwrap_or_else(|_| std::process::id().wrapping_mul(7919))
        % SPAN;
    for _ in 0..SPAN {
        let port = (FIRST + next) as u16;
        next = (next + 1) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            file.set_len(0).expect("port counter");
            file.rewind().expect("port counter");
            write!(file, "{next}").expect("writing the port counter");
            // Unlocked when the file closes.
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// The workspace root, for tools installed under `.tools/`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent")
        .to_path_buf()
}

/// Finds a tool: `$PIXELMESH_<NAME>` first, then where scripts/tools.sh installs it
/// (`.tools/venv/bin` for PyPI's, `.tools/<name>/bin` for a crate built from source), then PATH.
pub fn tool(name: &str) -> PathBuf {
    let var = format!("PIXELMESH_{}", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let tools = workspace_root().join(".tools");
    for local in [
        tools.join("venv/bin").join(name),
        tools.join(name).join("bin").join(name),
    ] {
        if local.is_file() {
            return local;
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} not found: run scripts/test.sh (it installs it) or set ${var}")
        })
}

/// Every file under `dir`, recursively; none when it cannot be read.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|entry| entry.path()) {
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// The files under `dir` (recursively) named like a blob.
pub fn blob_files(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| pixelmesh_blobs::BlobId::parse(name).is_ok())
        })
        .map(|path| path.display().to_string())
        .collect()
}

/// The shared test photographs in `../shared/corpus`.
pub mod corpus {
    use std::path::PathBuf;

    pub fn dir() -> PathBuf {
        super::workspace_root().join("../shared/corpus")
    }

    pub fn read(name: &str) -> Vec<u8> {
        let path = dir().join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Every image of the corpus, sorted by name.
    pub fn all() -> Vec<(String, Vec<u8>)> {
        let mut names: Vec<String> = std::fs::read_dir(dir())
            .expect("../shared/corpus is missing")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| [".jpg", ".png", ".webp"].iter().any(|ext| n.ends_with(ext)))
            .collect();
        names.sort();
        names.into_iter().map(|n| (n.clone(), read(&n))).collect()
    }
}

/// A test's child process (or none yet), killed with SIGKILL and reaped when dropped: no
/// server outlives its test.
#[derive(Default)]
pub struct Process(Option<Child>);

impl Process {
    /// SIGKILL, then wait for the exit; nothing when no process runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl std::ops::Deref for Process {
    type Target = Option<Child>;

    fn deref(&self) -> &Option<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Option<Child> {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private nats-server with JetStream and its HTTP monitoring endpoint, killed on drop.
pub struct NatsServer {
    child: Process,
    pub port: u16,
    /// `/varz`, `/connz?subs=1` …: what the server sees of its clients (see
    /// [`NatsServer::monitor_url`]).
    pub monitor_port: u16,
    /// The server's name: in a cluster, what stream infos name as leader and replicas.
    pub name: String,
    /// `--cluster`, `--routes` … for a node of [`NatsServer::cluster`].
    cluster_args: Vec<String>,
    dir: TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let mut server = Self::configured("nats-0".into(), Vec::new());
        server.start_again();
        server
    }

    /// `nodes` servers routed to each other on loopback as one JetStream cluster, returned
    /// once it has a JetStream meta leader (every node's `/healthz` is ok).
    pub fn cluster(nodes: usize) -> Vec<Self> {
        let route_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<Self> = route_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let args = [
                    "--cluster_name",
                    "pixelmesh",
                    "--cluster",
                    &format!("nats://127.0.0.1:{port}"),
                    "--routes",
                    &routes,
                ];
                Self::configured(
                    format!("nats-{i}"),
                    args.iter().map(|arg| arg.to_string()).collect(),
                )
            })
            .collect();
        for server in &mut servers {
            server.start_again();
        }
        for server in &servers {
            wait_until("the nats cluster has a jetstream meta leader", || {
                server.healthy()
            });
        }
        servers
    }

    fn configured(name: String, cluster_args: Vec<String>) -> Self {
        NatsServer {
            child: Process::default(),
            port: free_port(),
            monitor_port: free_port(),
            name,
            cluster_args,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Whether `/healthz` answers 200: JetStream up, and in a cluster, its meta leader known.
    pub fn healthy(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.monitor_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
    }

    /// SIGKILL: clients see the connection drop.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts the server again on the same port and store (after [`NatsServer::kill`]).
    pub fn start_again(&mut self) {
        let port = self.port;
        let monitor = self.monitor_port.to_string();
        let child = Command::new(tool("nats-server"))
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &monitor,
            ])
            .args(["-n", &self.name])
            .args(&self.cluster_args)
            .arg("-sd")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        *self.child = Some(child);
        wait_until("nats-server accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The monitoring endpoint's base URL (`http://127.0.0.1:<port>`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub filters: usize,
    /// Tasks each filter runs at once.
    pub filter_concurrency: usize,
    pub ack_wait_secs: u64,
    pub max_deliver: i64,
    pub max_pixels: u64,
    /// The scheduler's `--tile-size` and `--tile-above-pixels`; `None` keeps its defaults.
    pub tile_size: Option<u32>,
    pub tile_above_pixels: Option<u64>,
    /// More gateway flags, e.g. lower limits.
    pub gateway_args: Vec<String>,
    /// More flags for every filter, e.g. what URL inputs may be fetched from.
    pub filter_args: Vec<String>,
    /// More scheduler flags, e.g. per-image budgets.
    pub scheduler_args: Vec<String>,
    /// More environment for every role, e.g. `OTEL_EXPORTER_OTLP_ENDPOINT` (which roles
    /// otherwise never inherit from the test's environment).
    pub env: Vec<(String, String)>,
    /// NATS servers: 1, or a cluster of 3 with the mesh's streams at 3 replicas.
    pub nats_nodes: usize,
    /// Schedulers side by side, sharing the work; the gateway is given every one's URL.
    pub schedulers: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            filters: 1,
            filter_concurrency: 1,
            // Short, so a killed worker's tasks come back quickly.
            ack_wait_secs: 3,
            max_deliver: 5,
            max_pixels: 100_000_000,
            tile_size: None,
            tile_above_pixels: None,
            gateway_args: Vec::new(),
            filter_args: Vec::new(),
            scheduler_args: Vec::new(),
            env: Vec::new(),
            nats_nodes: 1,
            schedulers: 1,
        }
    }
}

/// One role's child process, with what it takes to start it again.
pub struct Role {
    pub name: String,
    pub port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Process,
}

impl Role {
    /// The most memory the running process has held (Linux `VmHWM`), in bytes.
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    fn spawn(&mut self, binary: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("role log");
        let child = Command::new(binary)
            .args(&self.args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("PIXELMESH_LOG_FORMAT")
            .env("PIXELMESH_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        *self.child = Some(child);
    }

    /// Whether the process started last is still running (never restarted, never exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILL: no goodbye, no flush, no ack.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// SIGTERM, then wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = send_signal(child.id(), Signal::SIGTERM);
        child.wait().map(|s| s.success()).unwrap_or(false)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Every role as a real process against a private nats-server.
pub struct Cluster {
    binary: PathBuf,
    pub storage: Role,
    pub scheduler: Role,
    /// Schedulers after the first ([`ClusterOptions::schedulers`]), named `scheduler-2` …
    pub more_schedulers: Vec<Role>,
    pub filters: Vec<Role>,
    pub gateway: Role,
    /// Gateways started by [`Cluster::add_gateway`].
    pub replicas: Vec<Role>,
    pub nats: NatsServer,
    /// The other nodes of a NATS cluster ([`ClusterOptions::nats_nodes`]).
    pub nats_peers: Vec<NatsServer>,
    pub data: TempDir,
}

/// The `pixelmesh-node` binary Cargo builds for the integration tests, beside their own
/// binaries (`target/<profile>/deps/<test>` → `target/<profile>/pixelmesh-node`): the path
/// `CARGO_BIN_EXE_pixelmesh-node` names, which only a test file itself can read.
pub fn node_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps")
        .join("pixelmesh-node");
    assert!(
        bin.is_file(),
        "{}: not built (cargo builds it for the integration tests of pixelmesh-tests)",
        bin.display()
    );
    bin
}

impl Cluster {
    /// Starts the cluster, every role the [`node_bin`] binary.
    pub async fn start(options: ClusterOptions) -> Self {
        let binary = node_bin();
        let mut nats_peers = match options.nats_nodes {
            0 | 1 => vec![NatsServer::start()],
            nodes => NatsServer::cluster(nodes),
        };
        let nats = nats_peers.remove(0);
        let nats_url = std::iter::once(&nats)
            .chain(&nats_peers)
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        let data = tempfile::tempdir().expect("tempdir");
        let storage_port = free_port();
        let scheduler_ports: Vec<u16> = (0..options.schedulers.max(1))
            .map(|_| free_port())
            .collect();
        let scheduler_urls = scheduler_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut common_env = options.env.clone();
        common_env.extend([
            ("PIXELMESH_NATS_URL".to_string(), nats_url),
            (
                "PIXELMESH_NATS_REPLICAS".to_string(),
                options.nats_nodes.clamp(1, 3).to_string(),
            ),
            (
                "PIXELMESH_STORAGE_URL".to_string(),
                format!("http://127.0.0.1:{storage_port}"),
            ),
            ("PIXELMESH_SCHEDULER_URL".to_string(), scheduler_urls),
        ]);
        let role = |name: &str, port: u16, args: Vec<String>| Role {
            name: name.to_string(),
            port,
            args,
            env: common_env.clone(),
            log: data.path().join(format!("{name}.log")),
            child: Process::default(),
        };
        let storage = role(
            "storage",
            storage_port,
            vec![
                "storage".into(),
                "--storage-listen".into(),
                format!("127.0.0.1:{storage_port}"),
                "--storage-dir".into(),
                data.path().join("storage").display().to_string(),
            ],
        );
        let mut scheduler_args: Vec<String> = vec!["scheduler".into()];
        if let Some(size) = options.tile_size {
            scheduler_args.extend(["--tile-size".into(), size.to_string()]);
        }
        if let Some(pixels) = options.tile_above_pixels {
            scheduler_args.extend(["--tile-above-pixels".into(), pixels.to_string()]);
        }
        scheduler_args.extend(options.scheduler_args.iter().cloned());
        let mut schedulers = scheduler_ports.iter().enumerate().map(|(i, &port)| {
            let mut args = scheduler_args.clone();
            args.extend(["--scheduler-listen".into(), format!("127.0.0.1:{port}")]);
            let name = match i {
                0 => "scheduler".to_string(),
                i => format!("scheduler-{}", i + 1),
            };
            role(&name, port, args)
        });
        let scheduler = schedulers.next().expect("one scheduler");
        let more_schedulers: Vec<Role> = schedulers.collect();
        let filters = (0..options.filters)
            .map(|i| {
                let port = free_port();
                let mut args: Vec<String> = vec![
                    "filter".into(),
                    "--filter-listen".into(),
                    format!("127.0.0.1:{port}"),
                    "--worker-id".into(),
                    format!("filter-{i}"),
                    "--concurrency".into(),
                    options.filter_concurrency.to_string(),
                    "--ack-wait-secs".into(),
                    options.ack_wait_secs.to_string(),
                    "--max-deliver".into(),
                    options.max_deliver.to_string(),
                    "--max-pixels".into(),
                    options.max_pixels.to_string(),
                ];
                args.extend(options.filter_args.iter().cloned());
                role(&format!("filter-{i}"), port, args)
            })
            .collect();
        let gateway_port = free_port();
        let mut gateway_args = vec![
            "gateway".into(),
            "--gateway-listen".into(),
            format!("127.0.0.1:{gateway_port}"),
        ];
        gateway_args.extend(options.gateway_args.iter().cloned());
        let gateway = role("gateway", gateway_port, gateway_args);
        let mut cluster = Cluster {
            binary,
            storage,
            scheduler,
            more_schedulers,
            filters,
            gateway,
            replicas: Vec::new(),
            nats,
            nats_peers,
            data,
        };
        let binary = cluster.binary.clone();
        cluster.storage.spawn(&binary);
        cluster.wait_healthy_storage().await;
        cluster.scheduler.spawn(&binary);
        for scheduler in &mut cluster.more_schedulers {
            scheduler.spawn(&binary);
        }
        for filter in &mut cluster.filters {
            filter.spawn(&binary);
        }
        cluster.gateway.spawn(&binary);
        let ports: Vec<(String, u16)> = std::iter::once(&cluster.scheduler)
            .chain(cluster.more_schedulers.iter())
            .chain(cluster.filters.iter())
            .chain(std::iter::once(&cluster.gateway))
            .map(|r| (r.name.clone(), r.port))
            .collect();
        for (name, port) in ports {
            cluster.wait_healthy(&name, port).await;
        }
        cluster
    }

    async fn wait_healthy_storage(&mut self) {
        let port = self.storage.port;
        self.wait_healthy("storage", port).await;
    }

    /// Polls `grpc.health.v1/Check` until the role says SERVING.
    pub async fn wait_healthy(&mut self, name: &str, port: u16) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(role) = self.role_mut(name)
                && let Some(child) = role.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{name} exited ({status}) while starting:\n{}", role.logs());
            }
            if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("url")
                .connect()
                .await
            {
                let mut health = HealthClient::new(channel);
                if let Ok(response) = health.check(HealthCheckRequest::default()).await
                    && response.into_inner().status == 1
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{name} did not become healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn role_mut(&mut self, name: &str) -> Option<&mut Role> {
        match name {
            "storage" => Some(&mut self.storage),
            "scheduler" => Some(&mut self.scheduler),
            "gateway" => Some(&mut self.gateway),
            _ => self
                .filters
                .iter_mut()
                .chain(self.more_schedulers.iter_mut())
                .chain(self.replicas.iter_mut())
                .find(|role| role.name == name),
        }
    }

    /// SIGKILLs a role and leaves it down (see [`Cluster::start_role`]).
    pub fn kill(&mut self, name: &str) {
        self.role_mut(name).expect("no such role").kill();
    }

    /// Starts a role killed by [`Cluster::kill`] again, on the same port and data, and waits
    /// until it is healthy.
    pub async fn start_role(&mut self, name: &str) {
        let binary = self.binary.clone();
        let role = self.role_mut(name).expect("no such role");
        role.spawn(&binary);
        let port = role.port;
        self.wait_healthy(name, port).await;
    }

    /// SIGKILLs a role and starts it again on the same port and data.
    pub async fn restart(&mut self, name: &str) {
        let binary = self.binary.clone();
        let role = self.role_mut(name).expect("no such role");
        role.kill();
        role.spawn(&binary);
        let port = role.port;
        self.wait_healthy(name, port).await;
    }

    /// Starts another gateway like the first, on its own port; its HTTP base URL.
    pub async fn add_gateway(&mut self) -> String {
        let port = free_port();
        let mut args = self.gateway.args.clone();
        if let Some(at) = args.iter().position(|arg| arg == "--gateway-listen") {
            args[at + 1] = format!("127.0.0.1:{port}");
        }
        let name = format!("gateway-{}", self.replicas.len() + 2);
        let mut role = Role {
            name: name.clone(),
            port,
            args,
            env: self.gateway.env.clone(),
            log: self.data.path().join(format!("{name}.log")),
            child: Process::default(),
        };
        role.spawn(&self.binary);
        self.replicas.push(role);
        self.wait_healthy(&name, port).await;
        format!("http://127.0.0.1:{port}")
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway.port)
    }

    pub fn grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.gateway.port)
    }

    pub async fn gateway_client(&self) -> GatewayClient<Channel> {
        let channel = Channel::from_shared(self.http_url())
            .expect("url")
            .connect()
            .await
            .expect("connecting to the gateway");
        GatewayClient::new(channel).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Every role's log, for assertion messages.
    pub fn logs(&self) -> String {
        std::iter::once(&self.storage)
            .chain(std::iter::once(&self.scheduler))
            .chain(self.more_schedulers.iter())
            .chain(self.filters.iter())
            .chain(std::iter::once(&self.gateway))
            .chain(self.replicas.iter())
            .map(|r| format!("===== {} =====\n{}", r.name, r.logs()))
            .collect()
    }
}

/// A small PNG whose pixels depend on `seed`, so every seed gives a distinct blob.
pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([x as u8 ^ seed, y as u8, seed.wrapping_mul(31)])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("encode png");
    bytes
}

/// Builds the small ONNX segmentation model the background-removal tests run
/// (tests/models/make_segmenter.py, with PyPI's onnx from scripts/tools.sh) as
/// `dir/NAME.onnx`: "foreground" where a pixel is redder than it is green, at `size` square.
pub fn segmentation_model(dir: &Path, name: &str, size: u32) -> PathBuf {
    let out = dir.join(format!("{name}.onnx"));
    let status = Command::new(tool("python3"))
        .arg(workspace_root().join("tests/models/make_segmenter.py"))
        .arg(&out)
        .args(["--size", &size.to_string()])
        .status()
        .expect("running python3");
    assert!(
        status.success(),
        "make_segmenter.py failed: is onnx installed (scripts/tools.sh)?"
    );
    out
}

/// Serves `app` on a loopback port for the roles to reach (a URL input's origin, say); its
/// base URL. The listener is bound before this returns.
pub async fn serve_http(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Client-side helpers over the gateway's REST API.
pub mod rest {
    use std::time::Duration;

    /// An HTTP client that sends `secret` as its bearer token.
    pub fn keyed_client(secret: &str) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {secret}").parse().expect("header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("client")
    }

    /// Polls job `id` until it is in a final state; its JSON. Panics after `timeout`.
    pub async fn wait_ended(
        http: &reqwest::Client,
        base: &str,
        id: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        wait_job(http, base, id, "ended", timeout, |job| {
            let state = job["state"].as_str().unwrap_or_default();
            ["completed", "completed_with_errors", "failed", "cancelled"].contains(&state)
        })
        .await
    }

    /// Polls job `id` until `ready` holds of its JSON, and returns that; panics naming
    /// `what` after `timeout`.
    pub async fn wait_job(
        http: &reqwest::Client,
        base: &str,
        id: &str,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let url = format!("{base}/api/v1/jobs/{id}");
        let what = format!("job {id} {what}");
        crate::poll(&what, timeout, Duration::from_millis(50), || async {
            let job = get_json(http, &url).await;
            if ready(&job) {
                Ok(job)
            } else {
                Err(job.to_string())
            }
        })
        .await
    }

    /// GETs `url` and parses the JSON body, whatever the status.
    pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
        http.get(url)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json body")
    }

    /// The body of a successful GET of `url` as text.
    pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
        let response = http.get(url).send().await.expect("get");
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        response.text().await.expect("text body")
    }

    /// Submits `files` (name, bytes) with a `pipeline` (JSON or text) as multipart; the job
    /// id of the accepted submit.
    pub async fn submit(
        http: &reqwest::Client,
        base: &str,
        pipeline: &str,
        files: &[(&str, Vec<u8>)],
    ) -> String {
        let mut form = reqwest::multipart::Form::new().text("pipeline", pipeline.to_string());
        for (name, bytes) in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
            );
        }
        accepted(post_job(http, base, form).await).await
    }

    /// POSTs a multipart submit, whatever the answer.
    pub async fn post_job(
        http: &reqwest::Client,
        base: &str,
        form: reqwest::multipart::Form,
    ) -> reqwest::Response {
        http.post(format!("{base}/api/v1/jobs"))
            .multipart(form)
            .send()
            .await
            .expect("submit")
    }

    /// The error message of a submit of `pipeline` on one file that must be refused with 400.
    pub async fn refused(
        http: &reqwest::Client,
        base: &str,
        pipeline: &str,
        (name, bytes): (&str, Vec<u8>),
    ) -> String {
        let form = reqwest::multipart::Form::new()
            .text("pipeline", pipeline.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
            );
        let response = post_job(http, base, form).await;
        assert_eq!(response.status().as_u16(), 400, "{pipeline} not refused");
        let body: serde_json::Value = response.json().await.expect("json body");
        body["error"].as_str().expect("an error").to_string()
    }

    /// The job id of a submit that must have been accepted (202).
    pub async fn accepted(response: reqwest::Response) -> String {
        assert_eq!(response.status().as_u16(), 202, "submit not accepted");
        let body: serde_json::Value = response.json().await.expect("json body");
        body["id"].as_str().expect("job id").to_string()
    }
}

/// A server-sent events client over reqwest, enough for tests: `event`, `id`, `data`.
pub mod sse {
    use std::time::Duration;

    /// One event; `data` parsed as JSON.
    #[derive(Debug, Clone)]
    pub struct SseEvent {
        pub event: String,
        pub id: String,
        pub data: serde_json::Value,
    }

    pub struct SseStream {
        response: reqwest::Response,
        buffer: Vec<u8>,
    }

    impl SseStream {
        /// Opens `url` (with `Last-Event-ID` when given); the answer must be an event stream.
        pub async fn open(http: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Self {
            let mut request = http.get(url).header("accept", "text/event-stream");
            if let Some(id) = last_event_id {
                request = request.header("last-event-id", id);
            }
            let response = request.send().await.expect("events request");
            assert_eq!(response.status().as_u16(), 200, "events status");
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert!(
                content_type.starts_with("text/event-stream"),
                "{content_type}"
            );
            SseStream {
                response,
                buffer: Vec::new(),
            }
        }

        /// The next event, skipping comments (keep-alives); `None` when the server ends the
        /// stream. Panics if nothing arrives within `timeout`.
        pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
            // One deadline for the event: keep-alive comments do not extend it.
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                    let block = String::from_utf8(block).expect("utf-8 events");
                    let mut event = SseEvent {
                        event: "message".into(),
                        id: String::new(),
                        data: serde_json::Value::Null,
                    };
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(value) = line.strip_prefix("event:") {
                            event.event = value.trim().to_string();
                        } else if let Some(value) = line.strip_prefix("id:") {
                            event.id = value.trim().to_string();
                        } else if let Some(value) = line.strip_prefix("data:") {
                            data.push_str(value.trim_start());
                        }
                    }
                    if data.is_empty() {
                        continue;
                    }
                    event.data = serde_json::from_str(&data).expect("event data is json");
                    return Some(event);
                }
                let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                    .await
                    .expect("no event in time")
                    .expect("reading events");
                match chunk {
                    Some(bytes) => self.buffer.extend_from_slice(&bytes),
                    None => return None,
                }
            }
        }
    }
}

/// Client-side helpers over the gateway's gRPC API.
pub mod api {
    use std::time::Duration;

    use futures::StreamExt;
    use pixelmesh_proto::v1::{
        DownloadOutputRequest, DownloadOutputsRequest, GetJobRequest, ImageInput, ImageState, Job,
        JobEvent, JobState, Operation, SubmitJobRequest, Tiling, UploadArchiveRequest,
        UploadImageRequest, WatchJobRequest, gateway_client::GatewayClient,
    };
    use tonic::transport::Channel;

    /// Fails unless `job` completed, naming each image that did not and printing `logs`.
    pub fn assert_completed(job: &Job, logs: impl FnOnce() -> String) {
        let summary = job.summary.as_ref().expect("summary");
        assert_eq!(
            summary.state(),
            JobState::Completed,
            "job did not complete: {:?}\n{}",
            job.images
                .iter()
                .filter(|i| i.state() != ImageState::Done)
                .map(|i| format!("{}: {}", i.index, i.error))
                .collect::<Vec<_>>(),
            logs()
        );
    }

    /// Every output of `job` downloads and decodes at `size`, and no two are the same blob.
    pub async fn assert_distinct_outputs(
        client: &mut GatewayClient<Channel>,
        job: &Job,
        size: (u32, u32),
    ) {
        let id = &job.summary.as_ref().expect("summary").id;
        let mut outputs = std::collections::HashSet::new();
        for image in &job.images {
            let bytes = download(client, id, image.index).await;
            let decoded = image::load_from_memory(&bytes).expect("the output decodes");
            assert_eq!((decoded.width(), decoded.height()), size);
            outputs.insert(image.output.as_ref().expect("output").blob_id.clone());
        }
        let count = job.images.len();
        assert_eq!(outputs.len(), count, "{count} distinct outputs");
    }

    /// A gRPC request carrying `secret` as its bearer token.
    pub fn keyed<T>(secret: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let value: tonic::metadata::MetadataValue<_> =
            format!("Bearer {secret}").parse().expect("metadata");
        request.metadata_mut().insert("authorization", value);
        request
    }

    /// Uploads in 64 KiB chunks; returns the blob id.
    pub async fn upload(client: &mut GatewayClient<Channel>, name: &str, bytes: &[u8]) -> String {
        let name = name.to_string();
        let chunks: Vec<UploadImageRequest> = bytes
            .chunks(64 * 1024)
            .enumerate()
            .map(|(i, chunk)| UploadImageRequest {
                name: if i == 0 { name.clone() } else { String::new() },
                chunk: chunk.to_vec(),
            })
            .collect();
        client
            .upload_image(futures::stream::iter(chunks))
            .await
            .expect("upload")
            .into_inner()
            .blob_id
    }

    /// Uploads every image and submits one job.
    pub async fn submit(
        client: &mut GatewayClient<Channel>,
        images: &[(String, Vec<u8>)],
        pipeline: Vec<Operation>,
    ) -> Job {
        submit_tiled(client, images, pipeline, Tiling::Auto).await
    }

    /// [`submit`] with a tiling mode.
    pub async fn submit_tiled(
        client: &mut GatewayClient<Channel>,
        images: &[(String, Vec<u8>)],
        pipeline: Vec<Operation>,
        tiling: Tiling,
    ) -> Job {
        let mut inputs = Vec::new();
        for (name, bytes) in images {
            inputs.push(ImageInput {
                blob_id: upload(client, name, bytes).await,
                name: name.clone(),
                ..Default::default()
            });
        }
        client
            .submit_job(SubmitJobRequest {
                pipeline,
                inputs,
                tiling: tiling as i32,
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner()
    }

    /// Watches until an event satisfies `stop`; returns the events up to and including it.
    /// Panics if the job ends first or nothing matches within `timeout`.
    pub async fn watch_until(
        client: &mut GatewayClient<Channel>,
        id: &str,
        timeout: Duration,
        mut stop: impl FnMut(&JobEvent) -> bool,
    ) -> Vec<JobEvent> {
        let mut stream = client
            .watch_job(WatchJobRequest {
                id: id.to_string(),
                after_version: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(event))) => {
                    let done = stop(&event);
                    events.push(event);
                    if done {
                        return events;
                    }
                }
                Ok(Some(Err(status))) => panic!("watch failed: {status}"),
                Ok(None) => panic!("job {id} ended before the awaited event; events: {events:?}"),
                Err(_) => panic!("no awaited event for job {id} within {timeout:?}: {events:?}"),
            }
        }
    }

    /// Watches until the job ends; returns every event and the final job.
    pub async fn watch_to_end(
        client: &mut GatewayClient<Channel>,
        id: &str,
        timeout: Duration,
    ) -> (Vec<JobEvent>, Job) {
        let mut stream = client
            .watch_job(WatchJobRequest {
                id: id.to_string(),
                after_version: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(event))) => events.push(event),
                Ok(Some(Err(status))) => panic!("watch failed: {status}"),
                Ok(None) => break,
                Err(_) => {
                    // Storage's view tells a stuck job from a watcher that missed its end.
                    let stored = client.get_job(GetJobRequest { id: id.to_string() }).await;
                    panic!(
                        "job {id} did not finish within {timeout:?}; events: {events:?}; \
                         stored: {stored:?}"
                    )
                }
            }
        }
        let job = client
            .get_job(GetJobRequest { id: id.to_string() })
            .await
            .expect("get job")
            .into_inner();
        (events, job)
    }

    /// Downloads one output in full.
    pub async fn download(client: &mut GatewayClient<Channel>, id: &str, index: u32) -> Vec<u8> {
        download_by(
            client,
            DownloadOutputRequest {
                job_id: id.to_string(),
                index,
                ..Default::default()
            },
        )
        .await
    }

    /// Downloads in full the output of the first image named `name`.
    pub async fn download_named(
        client: &mut GatewayClient<Channel>,
        id: &str,
        name: &str,
    ) -> Vec<u8> {
        download_by(
            client,
            DownloadOutputRequest {
                job_id: id.to_string(),
                name: name.to_string(),
                ..Default::default()
            },
        )
        .await
    }

    async fn download_by(
        client: &mut GatewayClient<Channel>,
        request: DownloadOutputRequest,
    ) -> Vec<u8> {
        let mut stream = client
            .download_output(request)
            .await
            .expect("download")
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(part) = stream.next().await {
            bytes.extend_from_slice(&part.expect("download chunk").chunk);
        }
        bytes
    }

    /// Streams a ZIP archive in 64 KiB chunks; the inputs it became, or the refusal.
    pub async fn upload_archive(
        client: &mut GatewayClient<Channel>,
        archive: &[u8],
    ) -> Result<Vec<ImageInput>, tonic::Status> {
        let chunks: Vec<UploadArchiveRequest> = archive
            .chunks(64 * 1024)
            .map(|chunk| UploadArchiveRequest {
                chunk: chunk.to_vec(),
            })
            .collect();
        Ok(client
            .upload_archive(futures::stream::iter(chunks))
            .await?
            .into_inner()
            .inputs)
    }

    /// Downloads a job's outputs ZIP (with its manifests) in full.
    pub async fn download_outputs(client: &mut GatewayClient<Channel>, id: &str) -> Vec<u8> {
        let mut stream = client
            .download_outputs(DownloadOutputsRequest {
                job_id: id.to_string(),
            })
            .await
            .expect("download outputs")
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(part) = stream.next().await {
            bytes.extend_from_slice(&part.expect("outputs chunk").chunk);
        }
        bytes
    }
}
