//! Outages and lost messages against a real mesh: storage down for a minute in the middle of
//! a batch spends no image's attempts; a task that runs out of deliveries while no scheduler
//! runs still fails its image; a task lost from the queue is found and run again; a submit
//! refused while the queue is down leaves nothing that runs later.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use pixelmesh_tests::{Cluster, ClusterOptions, png, poll, rest};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(300);

/// Polls the job until it is in a final state; its JSON, with every role's log on failure.
async fn wait_ended(http: &reqwest::Client, base: &str, id: &str, cluster: &Cluster) -> Value {
    let job = rest::wait_ended(http, base, id, TIMEOUT).await;
    assert_ne!(job["state"], "failed", "{job}\n{}", cluster.logs());
    job
}

fn submit_form(pipeline: &str, images: usize, size: u32) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().text("pipeline", pipeline.to_string());
    for i in 0..images {
        let bytes = png(size, size, i as u8)
            .into_iter()
            .chain((i as u32).to_le_bytes());
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(bytes.collect::<Vec<u8>>())
                .file_name(format!("{i}.png")),
        );
    }
    form
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_down_a_minute_mid_batch_spends_no_attempts() {
    const IMAGES: usize = 200;
    let mut cluster = Cluster::start(ClusterOptions {
        filters: 2,
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();
    let response = rest::post_job(&http, &base, submit_form("blur:sigma=4", IMAGES, 256)).await;
    let id = rest::accepted(response).await;

    // Storage goes down once the batch is under way, and stays down for a minute.
    rest::wait_job(&http, &base, &id, "started", TIMEOUT, |job| {
        job["done"].as_u64() >= Some(10)
    })
    .await;
    cluster.kill("storage");
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    cluster.start_role("storage").await;
    eprintln!("storage was down {:.1} s", down.elapsed().as_secs_f64());

    let job = wait_ended(&http, &base, &id, &cluster).await;
    assert_eq!(job["state"], "completed", "{job}\n{}", cluster.logs());
    let images = job["images"].as_array().expect("images");
    assert_eq!(images.len(), IMAGES);
    let attempts: Vec<u64> = images
        .iter()
        .map(|image| image["attempts"].as_u64().unwrap_or_default())
        .collect();
    let most = attempts.iter().max().copied().unwrap_or_default();
    assert!(most <= 2, "attempts {attempts:?}");
    eprintln!(
        "{IMAGES} images done after the outage; attempts: {} at 1, {} at 2",
        attempts.iter().filter(|a| **a == 1).count(),
        attempts.iter().filter(|a| **a == 2).count()
    );
    assert!(
        cluster.filters[0].logs().contains("holding tasks")
            || cluster.filters[1].logs().contains("holding tasks"),
        "a filter saw the outage and held its tasks"
    );
}

/// A TCP server that accepts connections and never answers: a URL input whose fetch hangs,
/// so its worker holds the task until it is killed. Counts connections.
async fn stall_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (format!("http://{addr}/slow.png"), accepted)
}

async fn wait_count(count: &AtomicUsize, at_least: usize, what: &str) {
    poll(what, TIMEOUT, Duration::from_millis(20), || async {
        let seen = count.load(Ordering::SeqCst);
        if seen >= at_least {
            Ok(())
        } else {
            Err(format!("{seen} of {at_least}"))
        }
    })
    .await;
}

async fn stream_messages(nats: &async_nats::Client, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(nats.clone());
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream.info().await.expect("stream info").state.messages
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_out_of_deliveries_while_no_scheduler_runs_still_fails_its_image() {
    let (url, accepted) = stall_server().await;
    let mut cluster = Cluster::start(ClusterOptions {
        max_deliver: 2,
        ack_wait_secs: 2,
        // Two at once, so the PNG never waits behind the hanging fetch: with one, a worker
        // could hold it unprocessed when killed, and it would run out of deliveries too.
        filter_concurrency: 2,
        filter_args: vec!["--fetch-allow-private".into()],
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();
    let form = submit_form("grayscale", 1, 32).text("urls", url);
    let id = rest::accepted(rest::post_job(&http, &base, form).await).await;
    let job = wait_ended_or_running(&http, &base, &id).await;
    assert_eq!(job["total"], 2);

    // Delivery 1 hangs in its fetch while the PNG is done; the scheduler goes down; the
    // worker dies holding the fetch.
    wait_count(&accepted, 1, "fetched once").await;
    rest::wait_job(&http, &base, &id, "png done", TIMEOUT, |job| {
        job["images"][0]["state"] == "done"
    })
    .await;
    cluster.kill("scheduler");
    cluster.kill("filter-0");
    // Delivery 2, to a new worker, hangs too, and that worker dies as well.
    cluster.start_role("filter-0").await;
    wait_count(&accepted, 2, "fetched twice").await;
    cluster.kill("filter-0");
    cluster.start_role("filter-0").await;
    // JetStream gives up on the task while no scheduler runs: its advisory is kept.
    let nats = async_nats::connect(cluster.nats.url()).await.expect("nats");
    poll(
        "a max-deliveries advisory kept",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            match stream_messages(&nats, "ADVISORIES").await {
                0 => Err("no message in ADVISORIES".to_string()),
                _ => Ok(()),
            }
        },
    )
    .await;

    cluster.start_role("scheduler").await;
    let job = wait_ended(&http, &base, &id, &cluster).await;
    assert_eq!(job["state"], "completed_with_errors", "{job}");
    let failed = &job["images"][1];
    assert_eq!(failed["state"], "failed");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("gave up after 2 deliveries"), "{error}");
    assert_eq!(job["images"][0]["state"], "done");
    // An ended job can be retried (a stuck one answered 409).
    let retried = http
        .post(format!("{base}/api/v1/jobs/{id}/retry"))
        .send()
        .await
        .expect("retry");
    assert_eq!(
        retried.status().as_u16(),
        202,
        "{}",
        retried.text().await.unwrap_or_default()
    );
    assert_eq!(
        stream_messages(&nats, "ADVISORIES").await,
        0,
        "the advisory was handled"
    );
}

/// The job's JSON once it is at least running (or ended).
async fn wait_ended_or_running(http: &reqwest::Client, base: &str, id: &str) -> Value {
    rest::wait_job(http, base, id, "running", TIMEOUT, |job| {
        job["state"] != "queued"
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_whose_tasks_were_lost_is_run_again_by_the_next_scheduler() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();
    // No worker takes the tasks, so they wait in the queue...
    cluster.kill("filter-0");
    let id = rest::accepted(rest::post_job(&http, &base, submit_form("invert", 3, 48)).await).await;
    let job = wait_ended_or_running(&http, &base, &id).await;
    assert_eq!(job["state"], "running");
    // ... until they are lost while no scheduler runs.
    cluster.kill("scheduler");
    let nats = async_nats::connect(cluster.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(nats.clone());
    let tasks = js.get_stream("TASKS").await.expect("tasks stream");
    let purged = tasks
        .purge()
        .filter(format!("pixelmesh.task.{id}.>"))
        .await
        .expect("purge");
    assert_eq!(purged.purged, 3);

    cluster.start_role("filter-0").await;
    cluster.start_role("scheduler").await;
    let job = wait_ended(&http, &base, &id, &cluster).await;
    assert_eq!(job["state"], "completed", "{job}\n{}", cluster.logs());
    assert!(
        cluster.scheduler.logs().contains("had lost their task"),
        "reconciliation found them"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submit_refused_while_the_queue_is_down_leaves_nothing_that_runs_later() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();
    cluster.nats.kill();
    // Until the scheduler notices the connection is gone a submit may still be tried; it
    // must be refused either way.
    let refused = rest::post_job(&http, &base, submit_form("invert", 2, 32)).await;
    let status = refused.status().as_u16();
    let body: Value = refused.json().await.expect("json");
    assert_eq!(status, 503, "{body}");

    cluster.nats.start_again();
    cluster.restart("scheduler").await;
    // The refused job is nowhere, and the mesh works again.
    let listed = rest::get_json(&http, &format!("{base}/api/v1/jobs")).await;
    assert_eq!(listed["counts"]["total"], 0, "{listed}");
    let id = rest::accepted(rest::post_job(&http, &base, submit_form("invert", 1, 32)).await).await;
    let job = wait_ended(&http, &base, &id, &cluster).await;
    assert_eq!(job["state"], "completed");
    let listed = rest::get_json(&http, &format!("{base}/api/v1/jobs")).await;
    assert_eq!(listed["counts"]["total"], 1, "{listed}");
}
