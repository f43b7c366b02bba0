//! The client commands of the `pixelmesh` binary against a real mesh, run as a user runs
//! them: `process` with `--json` and on a pseudo-terminal, resuming, Ctrl-C, and `jobs`,
//! `watch`, `download`, `pause`, `resume`, `cancel`, `delete`.

use std::{path::Path, process::Stdio, time::Duration};

use pixelmesh_proto::v1::{GetJobRequest, JobState};
use pixelmesh_tests::{Cluster, ClusterOptions, Signal, free_port, node_bin, png, send_signal};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::Command,
};

const PIPELINE: &str = "resize:w=32/format:webp";

/// What one run printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON lines of a `--json` run.
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect()
    }

    fn of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|event| event["event"] == kind)
            .collect()
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn cli(gateway: &str, args: &[&str]) -> Command {
    let mut command = Command::new(node_bin());
    command
        .args(args)
        .env("PIXELMESH_GATEWAY", gateway)
        .env_remove("PIXELMESH_API_KEY")
        .kill_on_drop(true);
    command
}

/// How long one command may take here: far more than any needs, so a hang fails the test
/// naming the command instead of stalling the suite.
const LIMIT: Duration = Duration::from_secs(120);

async fn run(gateway: &str, args: &[&str]) -> Run {
    let output = tokio::time::timeout(LIMIT, cli(gateway, args).stdin(Stdio::null()).output())
        .await
        .unwrap_or_else(|_| panic!("pixelmesh {args:?} still running after {LIMIT:?}"))
        .expect("running pixelmesh");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn webp_width(path: &Path) -> u32 {
    let image = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    image.width()
}

fn names(events: &[Value], field: &str) -> Vec<String> {
    let mut names: Vec<String> = events
        .iter()
        .map(|event| event[field].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_mirrors_the_tree_resumes_and_reports_failures() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let gateway = cluster.http_url();
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    write(&photos.join("a.png"), &png(64, 48, 1));
    write(&photos.join("trip/b.png"), &png(64, 48, 2));
    write(&photos.join("trip/day 2/c.png"), &png(48, 64, 3));
    write(&photos.join("broken.png"), b"not an image at all");
    write(&photos.join("notes.txt"), b"not an input");
    let out = dir.path().join("out");
    let out_arg = out.display().to_string();
    let photos_arg = photos.display().to_string();
    let process = [
        "process",
        &photos_arg,
        "--pipeline",
        PIPELINE,
        "--out",
        &out_arg,
    ];

    // --json: one line per event; a failed image makes exit 1, the rest land in the tree.
    let first = run(&gateway, &[&process[..], &["--json"]].concat()).await;
    assert_eq!(first.code, 1, "{first:?}");
    assert_eq!(first.of("submitted").len(), 1, "{first:?}");
    let images = first.of("image");
    let done: Vec<Value> = images
        .iter()
        .filter(|e| e["state"] == "done")
        .cloned()
        .collect();
    assert_eq!(
        names(&done, "output"),
        ["a.webp", "trip/b.webp", "trip/day 2/c.webp"],
        "{first:?}"
    );
    let failed: Vec<&Value> = images.iter().filter(|e| e["state"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{first:?}");
    assert_eq!(failed[0]["image"], "broken.png");
    assert!(
        !failed[0]["error"].as_str().unwrap_or_default().is_empty(),
        "{first:?}"
    );
    for output in ["a.webp", "trip/b.webp", "trip/day 2/c.webp"] {
        assert_eq!(webp_width(&out.join(output)), 32, "{output}");
    }
    let end = &first.of("end")[0];
    assert_eq!(
        (end["done"].as_u64(), end["failed"].as_u64()),
        (Some(3), Some(1))
    );

    // Again: what is done is skipped without an upload; only the failed image runs.
    let again = run(&gateway, &[&process[..], &["--json"]].concat()).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert_eq!(
        names(&again.of("skipped"), "input"),
        ["a.png", "trip/b.png", "trip/day 2/c.png"],
        "{again:?}"
    );
    assert_eq!(again.of("submitted")[0]["images"], 1, "{again:?}");

    // An output edited since, and the bad input gone: only that image runs again, exit 0.
    std::fs::remove_file(photos.join("broken.png")).unwrap();
    std::fs::write(out.join("trip/b.webp"), b"edited").unwrap();
    let mended = run(&gateway, &[&process[..], &["--json"]].concat()).await;
    assert_eq!(mended.code, 0, "{mended:?}");
    assert_eq!(mended.of("skipped").len(), 2, "{mended:?}");
    assert_eq!(names(&mended.of("image"), "image"), ["trip/b.png"]);
    assert_eq!(webp_width(&out.join("trip/b.webp")), 32);

    // Under a terminal: the bars draw, with the rate and ETA, and a failure's line.
    write(&photos.join("d.png"), &png(64, 48, 4));
    write(&photos.join("worse.png"), b"\x89PNG but not really");
    let (code, screen) = on_terminal(&gateway, &process).await;
    assert_eq!(code, Some(1), "{screen}");
    for expected in [
        "images ·",
        "images/s",
        "ETA",
        "uploading",
        "✗ worse.png:",
        "1 done, 1 failed, 3 skipped",
    ] {
        assert!(
            screen.contains(expected),
            "{expected:?} not on the terminal:\n{screen}"
        );
    }
    assert!(
        !screen.contains("\"event\""),
        "JSON lines on a terminal:\n{screen}"
    );
    assert_eq!(webp_width(&out.join("d.webp")), 32);

    // The other commands, on the job of the first run.
    let job = first.of("submitted")[0]["job"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = run(
        &gateway,
        &["jobs", "--json", "--state", "completed-with-errors"],
    )
    .await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(
        listed.events().iter().any(|j| j["id"] == job.as_str()),
        "{listed:?}"
    );
    let watched = run(&gateway, &["watch", &job, "--json"]).await;
    assert_eq!(watched.code, 1, "{watched:?}");
    assert_eq!(watched.of("end")[0]["done"], 3, "{watched:?}");
    let downloads = dir.path().join("downloads");
    let downloaded = run(
        &gateway,
        &["download", &job, "--out", &downloads.display().to_string()],
    )
    .await;
    assert_eq!(downloaded.code, 1, "{downloaded:?}");
    assert_eq!(webp_width(&downloads.join("trip/day 2/c.webp")), 32);

    // With no filter running, a job waits: Ctrl-C cancels it, unless --detach.
    cluster.kill("filter-0");
    let pending = dir.path().join("pending");
    write(&pending.join("e.png"), &png(64, 48, 5));
    let pending_arg = pending.display().to_string();
    let interrupted = interrupt(&gateway, &pending_arg, &out_arg, false).await;
    let client = cluster.gateway_client().await;
    let state = |id: String| {
        let mut client = client.clone();
        async move {
            client
                .get_job(GetJobRequest { id })
                .await
                .expect("get job")
                .into_inner()
                .summary
                .unwrap()
                .state()
        }
    };
    assert_eq!(state(interrupted.clone()).await, JobState::Cancelled);
    let detached = interrupt(&gateway, &pending_arg, &out_arg, true).await;
    let left = state(detached.clone()).await;
    assert!(
        matches!(left, JobState::Queued | JobState::Running),
        "a detached job was {left:?}"
    );

    let paused = run(&gateway, &["pause", &detached, "--json"]).await;
    assert_eq!(paused.events()[0]["state"], "paused", "{paused:?}");
    let resumed = run(&gateway, &["resume", &detached]).await;
    assert!(resumed.stdout.contains(&detached), "{resumed:?}");
    let cancelled = run(&gateway, &["cancel", &detached]).await;
    assert_eq!(
        cancelled.stdout.trim(),
        format!("{detached} cancelled"),
        "{cancelled:?}"
    );
    let deleted = run(&gateway, &["delete", &detached]).await;
    assert_eq!(deleted.code, 0, "{deleted:?}");
    let gone = client
        .clone()
        .get_job(GetJobRequest {
            id: detached.clone(),
        })
        .await
        .expect_err("a deleted job");
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

/// Runs `process` on `inputs` until it says it submitted, then sends SIGINT; the job's id.
async fn interrupt(gateway: &str, inputs: &str, out: &str, detach: bool) -> String {
    let mut args = vec![
        "process",
        inputs,
        "--pipeline",
        PIPELINE,
        "--out",
        out,
        "--json",
    ];
    if detach {
        args.push("--detach");
    }
    let mut child = cli(gateway, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pixelmesh process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let job = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("no submitted event in a minute")
            .expect("reading stdout")
            .expect("process ended before submitting");
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "submitted" {
            break event["job"].as_str().unwrap().to_string();
        }
    };
    send_signal(child.id().expect("running"), Signal::SIGINT).expect("SIGINT");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("process did not stop on SIGINT")
        .unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let said = if detach {
        "keeps running"
    } else {
        "cancelled job"
    };
    assert!(stderr.contains(said), "{stderr}");
    job
}

/// Runs `pixelmesh args` with stdout and stderr on a pseudo-terminal, as in a terminal
/// window: its exit code and everything the terminal showed. Our own pty, not util-linux
/// `script`: with its output on a pipe, `script` can spin forever after its command exits
/// (util-linux#2562); a CI run once hung in this test for 25 minutes.
async fn on_terminal(gateway: &str, args: &[&str]) -> (Option<i32>, String) {
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).expect("openpty");
    let mut command = cli(gateway, args);
    command
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .stdout(Stdio::from(pty.slave.try_clone().expect("dup")))
        .stderr(Stdio::from(pty.slave));
    let mut child = command.spawn().expect("starting pixelmesh");
    // The command held this side's last copies: once the child exits, reading the terminal
    // ends (EIO), and the child never blocks on a full terminal meanwhile.
    drop(command);
    let mut terminal = std::fs::File::from(pty.master);
    let screen = tokio::task::spawn_blocking(move || {
        let mut screen = Vec::new();
        let mut buffer = [0; 8192];
        loop {
            match std::io::Read::read(&mut terminal, &mut buffer) {
                Ok(0) => break,
                Ok(n) => screen.extend_from_slice(&buffer[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&screen).into_owned()
    });
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("pixelmesh {args:?} on a terminal after {LIMIT:?}"))
        .expect("waiting for pixelmesh");
    let screen = tokio::time::timeout(Duration::from_secs(10), screen)
        .await
        .expect("the terminal still open after pixelmesh exited")
        .expect("reading the terminal");
    (status.code(), screen)
}

#[tokio::test]
async fn usage_and_connection_errors_exit_2() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.png"), &png(8, 8, 1));
    let input = dir.path().join("a.png").display().to_string();
    let out = dir.path().join("out").display().to_string();

    let unreachable = run(&nowhere, &["process", &input, "-p", PIPELINE, "-o", &out]).await;
    assert_eq!(unreachable.code, 2, "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("cannot reach the gateway"),
        "{unreachable:?}"
    );
    let bad_pipeline = run(
        &nowhere,
        &["process", &input, "-p", "resize:w=0", "-o", &out],
    )
    .await;
    assert_eq!(bad_pipeline.code, 2, "{bad_pipeline:?}");
    assert!(
        bad_pipeline.stderr.contains("--pipeline: op 1 (resize)"),
        "{bad_pipeline:?}"
    );
    let missing = run(
        &nowhere,
        &["process", "/nonexistent/x.png", "-p", PIPELINE, "-o", &out],
    )
    .await;
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("/nonexistent/x.png"), "{missing:?}");
    let usage = run(&nowhere, &["process", &input]).await;
    assert_eq!(usage.code, 2, "{usage:?}");
}
