//! The compose deployment under the real Docker engine: the images built from this tree, the
//! stack up with three filters, 30 corpus photos per job through the gateway's published
//! port, and the stack surviving a killed filter, a restarted scheduler, a scale-down with
//! work queued, and a full stop and start; and two stacks whose gateway and filter move
//! bytes themselves, one on the `garage` profile's bucket, one on compose/shared-blobs.yml's
//! shared volume. `PIXELMESH_NO_DOCKER=1` skips them; without that, no Docker engine is a
//! failure.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use pixelmesh_blobs::BlobId;
use pixelmesh_proto::v1::{
    Format, GetJobRequest, ImageFormat, ImageState, Job, JobEvent, JobState, ListWorkersRequest,
    Operation, Resize, Sharpen, gateway_client::GatewayClient, operation::Op,
};
use pixelmesh_tests::{
    api,
    compose::{self, Stack},
    corpus,
};
use tonic::transport::Channel;

const IMAGES_PER_JOB: usize = 30;
const JOB_TIMEOUT: Duration = Duration::from_secs(300);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(180);

/// Small outputs, quick: a 30-image job takes seconds.
fn quick() -> Vec<Operation> {
    vec![
        Operation {
            op: Some(Op::Resize(Resize {
                width: 1280,
                ..Default::default()
            })),
        },
        sharpen(),
    ]
}

/// Full resolution into WebP: about 1.5 s of one core per corpus photo, so a job outlasts a
/// kill, a restart or a scale-down even on a fast machine.
fn heavy() -> Vec<Operation> {
    vec![
        sharpen(),
        Operation {
            op: Some(Op::Format(Format {
                format: ImageFormat::Webp as i32,
                quality: 90,
                ..Default::default()
            })),
        },
    ]
}

fn sharpen() -> Operation {
    Operation {
        op: Some(Op::Sharpen(Sharpen {
            sigma: 1.0,
            amount: 0.8,
            threshold: 0,
        })),
    }
}

/// 30 images: the corpus over and over, each under its own name.
fn batch(corpus: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    (0..IMAGES_PER_JOB)
        .map(|i| {
            let (name, bytes) = &corpus[i % corpus.len()];
            (format!("{i:02}-{name}"), bytes.clone())
        })
        .collect()
}

async fn connect(stack: &Stack) -> GatewayClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connecting to the published gateway");
    GatewayClient::new(channel).max_decoding_message_size(64 * 1024 * 1024)
}

/// Every image done with an output, and each reported once by the watch.
fn assert_all_done_once(job: &Job, events: &[JobEvent], stack: &Stack) {
    let summary = job.summary.as_ref().expect("summary");
    assert_eq!(
        summary.state(),
        JobState::Completed,
        "job {} did not complete: {job:?}\n{}",
        summary.id,
        stack.logs()
    );
    assert_eq!(job.images.len(), IMAGES_PER_JOB);
    assert_eq!(summary.done as usize, IMAGES_PER_JOB);
    for image in &job.images {
        assert_eq!(image.state(), ImageState::Done, "{image:?}");
        assert!(image.output.is_some(), "{image:?}");
    }
    let mut reported: HashMap<u32, usize> = HashMap::new();
    for image in events.iter().filter_map(|e| e.image.as_ref()) {
        if image.state() == ImageState::Done {
            *reported.entry(image.index).or_default() += 1;
        }
    }
    for (index, count) in &reported {
        assert_eq!(*count, 1, "image {index} was reported done {count} times");
    }
}

/// The container (short id, the worker's host name) a worker id belongs to.
fn host_of<'a>(worker_id: &str, containers: &'a [String]) -> Option<&'a String> {
    containers.iter().find(|c| worker_id.starts_with(&c[..12]))
}

async fn submit(
    client: &mut GatewayClient<Channel>,
    images: &[(String, Vec<u8>)],
    pipeline: Vec<Operation>,
) -> String {
    api::submit(client, images, pipeline)
        .await
        .summary
        .expect("summary")
        .id
}

/// The images of a job not done yet.
async fn pending(client: &mut GatewayClient<Channel>, id: &str) -> HashSet<u32> {
    client
        .get_job(GetJobRequest { id: id.to_string() })
        .await
        .expect("get job")
        .into_inner()
        .images
        .iter()
        .filter(|i| i.state() != ImageState::Done)
        .map(|i| i.index)
        .collect()
}

fn done_by_a_worker(event: &JobEvent) -> bool {
    event
        .image
        .as_ref()
        .is_some_and(|i| i.state() == ImageState::Done && !i.worker_id.is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_stack_scales_and_survives_container_failures() {
    if compose::skipped() {
        return;
    }
    let started = Instant::now();
    compose::build_images();
    let size = compose::docker(&["image", "inspect", "-f", "{{.Size}}", compose::IMAGE]);
    eprintln!(
        "images built in {:.0?}; {} is {} bytes",
        started.elapsed(),
        compose::IMAGE,
        size.trim()
    );
    // Non-root, with a health check, whatever the role.
    let config = compose::docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.User}} {{json .Config.Healthcheck.Test}}",
        compose::IMAGE,
    ]);
    assert_eq!(config.trim(), r#"10001:10001 ["CMD","pixelmesh","health"]"#);

    let corpus = corpus::all();
    // A short ack wait, so the killed filter's tasks come back in seconds.
    let stack = Stack::new(&[("PIXELMESH_ACK_WAIT_SECS", "5")]);
    let started = Instant::now();
    stack.compose(&["up", "-d", "--scale", "filter=3"]);
    stack.wait_healthy(3, HEALTHY_TIMEOUT).await;
    eprintln!(
        "{}: stack healthy with 3 filters in {:.1?}",
        stack.tool(),
        started.elapsed()
    );
    let filters = stack.containers("filter");
    assert_eq!(filters.len(), 3);
    // The compose file's limits reached the engine.
    let limits = compose::docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
        &filters[0],
    ]);
    assert_eq!(limits.trim(), format!("{} {}", 2u64 << 30, 1_000_000_000));

    // Every role runs as the image's user, and its health check finds it serving.
    for service in ["storage", "scheduler", "gateway", "filter"] {
        let container = &stack.containers(service)[0];
        // `docker top` needs the pid column to tell the container's processes apart.
        let users = compose::docker(&["top", container, "-o", "pid,uid"]);
        let uids: Vec<&str> = users
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().nth(1))
            .collect();
        assert_eq!(uids, ["10001"], "{service} runs as: {users}");
        let health = compose::docker(&["exec", container, "pixelmesh", "health"]);
        assert!(
            health.starts_with(&format!("{service} 127.0.0.1:")) && health.contains(": serving"),
            "{service}: {health}"
        );
    }

    // The UI and the API on the published port.
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.gateway_addr());
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let page = http.get(&base).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains("/assets/app-"),
        "the UI is not served: {page}"
    );

    let mut client = connect(&stack).await;
    let images = batch(&corpus);
    let mut jobs = Vec::new();

    // 1. Thirty images over three filters: every container takes a share.
    let started = Instant::now();
    let id = submit(&mut client, &images, quick()).await;
    let (events, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_all_done_once(&job, &events, &stack);
    eprintln!(
        "job 1: {IMAGES_PER_JOB} images on 3 filters in {:.1?}",
        started.elapsed()
    );
    let mut share: HashMap<&String, usize> = HashMap::new();
    for image in &job.images {
        let host = host_of(&image.worker_id, &filters)
            .unwrap_or_else(|| panic!("{} is no filter container", image.worker_id));
        *share.entry(host).or_default() += 1;
    }
    assert_eq!(
        share.len(),
        3,
        "not every filter processed tasks: {share:?}"
    );
    let workers = client
        .list_workers(ListWorkersRequest::default())
        .await
        .expect("list workers")
        .into_inner()
        .workers;
    for container in &filters {
        let beat = workers
            .iter()
            .find(|w| w.host == container[..12])
            .unwrap_or_else(|| panic!("no heartbeat from {container}: {workers:?}"));
        assert!(beat.done > 0, "{beat:?}");
    }
    jobs.push(id);

    // 2. SIGKILL a filter that has just finished an image (it then holds its next task):
    //    JetStream redelivers that task, and every image still ends once.
    let id = submit(&mut client, &images, heavy()).await;
    let seen = api::watch_until(&mut client, &id, JOB_TIMEOUT, done_by_a_worker).await;
    let victim_worker = seen
        .last()
        .and_then(|e| e.image.as_ref())
        .map(|i| i.worker_id.clone())
        .expect("an image done");
    let victim = host_of(&victim_worker, &filters)
        .expect("the worker's container")
        .clone();
    compose::docker(&["kill", &victim]);
    let started = Instant::now();
    let (events, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_all_done_once(&job, &events, &stack);
    assert!(
        job.images
            .iter()
            .any(|i| !i.worker_id.starts_with(&victim[..12])),
        "the other filters took over"
    );
    let redelivered = job.images.iter().filter(|i| i.attempts > 1).count();
    assert!(
        redelivered > 0,
        "the killed filter held no task: nothing was redelivered"
    );
    let running = stack.containers("filter");
    assert_eq!(
        running.len(),
        2,
        "the killed filter stays down: {running:?}"
    );
    eprintln!(
        "job 2: filter {} killed, {redelivered} of its tasks redelivered, the rest done {:.1?} later",
        &victim[..12],
        started.elapsed()
    );
    jobs.push(id);

    // 3. Restart the scheduler mid-batch: it resumes from storage and JetStream.
    let id = submit(&mut client, &images, heavy()).await;
    api::watch_until(&mut client, &id, JOB_TIMEOUT, done_by_a_worker).await;
    let started = Instant::now();
    stack.compose(&["restart", "scheduler"]);
    let waiting = pending(&mut client, &id).await;
    assert!(
        !waiting.is_empty(),
        "the job finished before the scheduler was back: nothing was pending"
    );
    let (events, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_all_done_once(&job, &events, &stack);
    eprintln!(
        "job 3: scheduler restarted with {} images pending, job done {:.1?} later",
        waiting.len(),
        started.elapsed()
    );
    jobs.push(id);

    // 4. Scale to one filter with work queued: the survivor finishes the rest.
    let id = submit(&mut client, &images, heavy()).await;
    api::watch_until(&mut client, &id, JOB_TIMEOUT, done_by_a_worker).await;
    let started = Instant::now();
    stack.compose(&["up", "-d", "--scale", "filter=1"]);
    let survivor = stack.container("filter");
    let queued = pending(&mut client, &id).await;
    assert!(
        !queued.is_empty(),
        "the job finished before the scale-down: nothing was queued"
    );
    let (events, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_all_done_once(&job, &events, &stack);
    for image in job.images.iter().filter(|i| queued.contains(&i.index)) {
        assert!(
            image.worker_id.starts_with(&survivor[..12]),
            "image {} queued at the scale-down was done by {}, not the survivor {}",
            image.index,
            image.worker_id,
            &survivor[..12]
        );
    }
    eprintln!(
        "job 4: scaled to 1 filter with {} images queued, done {:.1?} later",
        queued.len(),
        started.elapsed()
    );
    jobs.push(id);

    // 5. Stop the whole stack and start it again: jobs and outputs live in the volumes.
    let mut before = Vec::new();
    for id in &jobs {
        let job = client
            .get_job(GetJobRequest { id: id.clone() })
            .await
            .expect("get job")
            .into_inner();
        let output = api::download(&mut client, id, 7).await;
        before.push((job, output));
    }
    drop(client);
    let started = Instant::now();
    stack.compose(&["down", "--timeout", "30"]);
    assert!(stack.containers("gateway").is_empty());
    stack.compose(&["up", "-d", "--scale", "filter=1"]);
    stack.wait_healthy(1, HEALTHY_TIMEOUT).await;
    eprintln!(
        "stack down and up again, healthy in {:.1?}",
        started.elapsed()
    );
    let mut client = connect(&stack).await;
    for (id, (job, output)) in jobs.iter().zip(&before) {
        let after = client
            .get_job(GetJobRequest { id: id.clone() })
            .await
            .expect("the job survives")
            .into_inner();
        assert_eq!(&after, job);
        assert_eq!(&api::download(&mut client, id, 7).await, output);
    }
}

/// Files under `dir` in a container, copied out with `docker cp` (the images have no shell),
/// as paths relative to `dir`'s parent.
fn files_in(container: &str, dir: &str) -> Vec<String> {
    let copy = tempfile::tempdir().expect("tempdir");
    compose::docker(&[
        "cp",
        &format!("{container}:{dir}"),
        &copy.path().display().to_string(),
    ]);
    pixelmesh_tests::files_under(copy.path())
        .iter()
        .map(|path| {
            path.strip_prefix(copy.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect()
}

/// One filter's stack with its blobs in `store`: a three-image job runs and downloads, the
/// gateway and the filter say they use the store directly, and storage's own volume keeps
/// its sled database and not one blob file. The images submitted.
async fn run_on_a_shared_store(stack: &Stack, store: &str) -> usize {
    let started = Instant::now();
    stack.compose(&["up", "-d", "--scale", "filter=1"]);
    stack.wait_healthy(1, HEALTHY_TIMEOUT).await;
    eprintln!("stack on {store} healthy in {:.1?}", started.elapsed());

    let corpus = corpus::all();
    let images: Vec<(String, Vec<u8>)> = corpus.iter().take(3).cloned().collect();
    let mut client = connect(stack).await;
    let id = submit(&mut client, &images, quick()).await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    let summary = job.summary.as_ref().expect("summary");
    assert_eq!(
        summary.state(),
        JobState::Completed,
        "{job:?}\n{}",
        stack.logs()
    );
    for index in 0..images.len() as u32 {
        let output = api::download(&mut client, &id, index).await;
        let decoded = image::load_from_memory(&output).expect("the output decodes");
        assert_eq!(decoded.width(), 1280, "image {index}");
    }

    // The gateway and the filter opened the store themselves, after checking it is storage's.
    for service in ["gateway", "filter"] {
        // The roles log to stderr.
        let out = std::process::Command::new("docker")
            .args(["logs", &stack.container(service)])
            .output()
            .expect("docker logs");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("blob store shared with storage") && log.contains(store),
            "{service} does not use {store} directly: {log}"
        );
    }
    let files = files_in(&stack.container("storage"), "/data/storage");
    assert!(
        files.iter().any(|f| f.starts_with("storage/meta/")),
        "no sled database in storage's volume: {files:?}"
    );
    let blobs: Vec<&String> = files.iter().filter(|f| f.contains("/blobs/")).collect();
    assert!(
        blobs.is_empty(),
        "blob files in storage's volume: {blobs:?}"
    );
    images.len()
}

/// The garage profile: one Garage node in its own container holds every blob; the gateway and
/// the filter read and write the bucket directly.
#[tokio::test(flavor = "multi_thread")]
async fn the_garage_profile_keeps_every_blob_in_garage() {
    if compose::skipped() {
        return;
    }
    compose::build_images();
    let stack = Stack::new(&[
        ("COMPOSE_PROFILES", "garage"),
        ("PIXELMESH_BLOB_STORE", "s3://pixelmesh"),
    ]);
    let images = run_on_a_shared_store(&stack, "s3://pixelmesh").await;
    // In the bucket: storage's marker, the inputs and the outputs (Garage counts them a
    // moment after the writes).
    let garage = stack.container("garage");
    let objects = || -> usize {
        let info = compose::docker(&["exec", &garage, "garage", "bucket", "info", "pixelmesh"]);
        info.lines()
            .find_map(|line| line.trim().strip_prefix("Objects:"))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or_else(|| panic!("no object count in: {info}"))
    };
    let wanted = 1 + 2 * images;
    pixelmesh_tests::poll(
        "garage counting every blob",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let count = objects();
            (count >= wanted)
                .then_some(count)
                .ok_or(format!("{count} of {wanted} objects"))
        },
    )
    .await;
}

/// compose/shared-blobs.yml: one host's volume shared by storage, the gateway and the filters
/// holds every blob, written and read by each role directly.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_volume_holds_every_blob_and_each_role_uses_it() {
    if compose::skipped() {
        return;
    }
    compose::build_images();
    let stack = Stack::new(&[]).with_file("shared-blobs.yml");
    let images = run_on_a_shared_store(&stack, "file:///blobs").await;
    let files = files_in(&stack.container("filter"), "/blobs");
    let blobs = files
        .iter()
        .filter(|f| {
            f.rsplit('/')
                .next()
                .is_some_and(|name| BlobId::parse(name).is_ok())
        })
        .count();
    assert_eq!(
        blobs,
        2 * images,
        "inputs and outputs in the shared volume: {files:?}"
    );
    assert!(
        files.contains(&"blobs/pixelmesh-store".to_string()),
        "{files:?}"
    );
}

/// The tracing profile adds Jaeger, and the one variable points every role's trace export at
/// it. (No Jaeger image here to run: the engine has no registry.)
#[test]
fn tracing_and_monitoring_profiles_add_their_services() {
    if compose::skipped() {
        return;
    }
    let stack = Stack::new(&[]);
    let services = |args: &[&str]| -> Vec<String> {
        let mut names: Vec<String> = stack.compose(args).lines().map(str::to_string).collect();
        names.sort();
        names
    };
    // (Compose v1 lists profiled services in `config --services` even without the profile;
    // that `up` leaves Jaeger, Prometheus and Grafana out is shown by the stack test, whose
    // engine has none of their images.)
    assert_eq!(
        services(&[
            "--profile",
            "tracing",
            "--profile",
            "monitoring",
            "--profile",
            "garage",
            "config",
            "--services"
        ]),
        [
            "filter",
            "garage",
            "gateway",
            "grafana",
            "jaeger",
            "nats",
            "prometheus",
            "scheduler",
            "storage"
        ]
    );
    // The monitoring profile mounts the scrape config and the dashboard from compose/.
    let config = stack.compose(&["--profile", "monitoring", "config"]);
    let compose_dir = pixelmesh_tests::workspace_root().join("compose");
    for (file, target) in [
        (
            "prometheus/prometheus.yml",
            "/etc/prometheus/prometheus.yml",
        ),
        ("grafana/dashboards", "/var/lib/grafana/dashboards"),
        ("grafana/provisioning", "/etc/grafana/provisioning"),
    ] {
        assert!(compose_dir.join(file).exists(), "{file}");
        assert!(
            config.contains(&compose_dir.join(file).display().to_string())
                && config.contains(target),
            "{file} not mounted at {target}: {config}"
        );
    }

    let traced = Stack::new(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317")]);
    let config = traced.compose(&["--profile", "tracing", "config"]);
    let exporting = config
        .lines()
        .filter(|l| l.trim() == "OTEL_EXPORTER_OTLP_ENDPOINT: http://jaeger:4317")
        .count();
    assert_eq!(exporting, 4, "{config}");
    // Off by default.
    let config = stack.compose(&["config"]);
    assert!(
        !config.contains("OTEL_EXPORTER_OTLP_ENDPOINT: http"),
        "{config}"
    );
}
