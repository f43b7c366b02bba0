//! Past one machine's single points: a 3-node NATS cluster with the streams at 3 replicas,
//! and two schedulers sharing the work. In each, a node dies in the middle of a 200-image
//! batch; nothing is lost, no role restarts, and no task is dispatched twice.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use pixelmesh_proto::v1::{ImageState, Job, JobState, Operation, Resize, operation::Op};
use pixelmesh_tests::{Cluster, ClusterOptions, api, png, poll};

const JOB_TIMEOUT: Duration = Duration::from_secs(300);
const IMAGES: u32 = 200;

fn resize(width: u32) -> Vec<Operation> {
    vec![Operation {
        op: Some(Op::Resize(Resize {
            width,
            ..Default::default()
        })),
    }]
}

fn batch(seed: u32, count: u32) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            (
                format!("image-{seed}-{i}.png"),
                png(96, 64, (seed + i) as u8),
            )
        })
        .collect()
}

/// Every image done, each output downloads and decodes at 48x32, and no two are the same.
async fn assert_all_done(cluster: &Cluster, job: &Job, images: usize) {
    api::assert_completed(job, || cluster.logs());
    assert_eq!(job.images.len(), images);
    let mut client = cluster.gateway_client().await;
    api::assert_distinct_outputs(&mut client, job, (48, 32)).await;
}

/// Submits a batch and returns its id once `done` images of it have finished.
async fn submit_and_wait_for(cluster: &Cluster, seed: u32, done: u32) -> String {
    let mut client = cluster.gateway_client().await;
    let job = api::submit(&mut client, &batch(seed, IMAGES), resize(48)).await;
    let id = job.summary.expect("summary").id;
    api::watch_until(&mut client, &id, JOB_TIMEOUT, |event| {
        event.summary.as_ref().is_some_and(|s| s.done >= done)
    })
    .await;
    id
}

async fn metrics(port: u16) -> HashMap<String, f64> {
    let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return HashMap::new();
    };
    let body = response.text().await.unwrap_or_default();
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn metric(port: u16, series: &str) -> f64 {
    metrics(port).await.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_node_dies_mid_batch_and_the_mesh_goes_on() {
    let mut cluster = Cluster::start(ClusterOptions {
        filters: 2,
        nats_nodes: 3,
        ..Default::default()
    })
    .await;
    let nats = async_nats::connect(cluster.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(nats);
    let mut leaders = HashSet::new();
    for name in ["TASKS", "RESULTS"] {
        let info = js
            .get_stream(name)
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{name} at 3 replicas");
        let placement = info.cluster.expect("clustered");
        assert_eq!(
            placement.replicas.len(),
            2,
            "{name}: a leader and 2 replicas"
        );
        leaders.insert(placement.leader.expect("a leader"));
    }
    // The worst node to lose: the one leading the task stream.
    let tasks_leader = js
        .get_stream("TASKS")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("a leader");

    let id = submit_and_wait_for(&cluster, 0, 30).await;
    let node = std::iter::once(&mut cluster.nats)
        .chain(cluster.nats_peers.iter_mut())
        .find(|node| node.name == tasks_leader)
        .expect("the leader is one of ours");
    node.kill();
    let killed_at = Instant::now();

    let mut client = cluster.gateway_client().await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    eprintln!(
        "batch finished {:.1}s after nats node {tasks_leader} was killed",
        killed_at.elapsed().as_secs_f64()
    );
    assert_all_done(&cluster, &job, IMAGES as usize).await;
    // A new job after the loss runs too: the remaining two nodes keep a quorum.
    let mut client = cluster.gateway_client().await;
    let after = api::submit(&mut client, &batch(1, 8), resize(48)).await;
    let (_, after) = api::watch_to_end(
        &mut client,
        &after.summary.expect("summary").id,
        JOB_TIMEOUT,
    )
    .await;
    assert_all_done(&cluster, &after, 8).await;
    for role in [
        &mut cluster.storage,
        &mut cluster.scheduler,
        &mut cluster.gateway,
    ]
    .into_iter()
    .chain(cluster.filters.iter_mut())
    {
        assert!(role.is_running(), "{} was not restarted", role.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_schedulers_share_the_work_and_the_reconciler_fails_over() {
    let mut cluster = Cluster::start(ClusterOptions {
        filters: 2,
        schedulers: 2,
        ..Default::default()
    })
    .await;
    let ports = [cluster.scheduler.port, cluster.more_schedulers[0].port];
    // Exactly one holds the reconciler lease.
    let holder = poll(
        "one scheduler holding the reconciler lease",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let mut held = Vec::new();
            for (i, port) in ports.iter().enumerate() {
                if metric(*port, "pixelmesh_scheduler_reconciler").await == 1.0 {
                    held.push(i);
                }
            }
            match held[..] {
                [one] => Ok(one),
                _ => Err(format!("held by {held:?}")),
            }
        },
    )
    .await;

    let id = submit_and_wait_for(&cluster, 0, 30).await;
    // Both record results: the results consumer is shared.
    let recorded = poll(
        "both schedulers recording results",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let mut counts = Vec::new();
            for port in ports {
                counts.push(metric(port, "pixelmesh_results_recorded_total").await);
            }
            if counts.iter().all(|&count| count > 0.0) {
                Ok(counts)
            } else {
                Err(format!("recorded {counts:?}"))
            }
        },
    )
    .await;
    eprintln!("results recorded per scheduler before the kill: {recorded:?}");

    // Kill the lease holder mid-batch: the other takes the lease within seconds.
    let (dead, alive) = if holder == 0 {
        (cluster.scheduler.name.clone(), ports[1])
    } else {
        (cluster.more_schedulers[0].name.clone(), ports[0])
    };
    cluster.kill(&dead);
    let killed_at = Instant::now();
    poll(
        "the surviving scheduler taking the reconciler lease",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            match metric(alive, "pixelmesh_scheduler_reconciler").await {
                1.0 => Ok(()),
                held => Err(format!("gauge {held}")),
            }
        },
    )
    .await;
    eprintln!(
        "reconciler lease failed over {:.1}s after the holder was killed",
        killed_at.elapsed().as_secs_f64()
    );

    // Submits go on: the gateway skips the dead scheduler.
    let mut client = cluster.gateway_client().await;
    let second = api::submit(&mut client, &batch(1, 8), resize(48)).await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_all_done(&cluster, &job, IMAGES as usize).await;
    let (_, second) = api::watch_to_end(
        &mut client,
        &second.summary.expect("summary").id,
        JOB_TIMEOUT,
    )
    .await;
    assert_all_done(&cluster, &second, 8).await;

    // No task was dispatched twice: the stream took exactly one message per image.
    let nats = async_nats::connect(cluster.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(nats);
    let tasks = js
        .get_stream("TASKS")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .last_sequence;
    assert_eq!(tasks, u64::from(IMAGES) + 8, "one task per image");
}

/// What the gateway does when the scheduler it asked dies mid-submit: it sends the same
/// submit, with the job id it chose, to the next scheduler. Both real schedulers get it here;
/// there is one job, each image is processed once, and both answer with its id.
#[tokio::test(flavor = "multi_thread")]
async fn a_submit_sent_to_a_second_scheduler_makes_the_same_job() {
    use pixelmesh_proto::v1::{
        ImageInput, ListJobsRequest, SubmitJobRequest, scheduler_client::SchedulerClient,
    };
    let cluster = Cluster::start(ClusterOptions {
        schedulers: 2,
        ..Default::default()
    })
    .await;
    let mut gateway = cluster.gateway_client().await;
    let mut inputs = Vec::new();
    for (name, bytes) in batch(77, 3) {
        inputs.push(ImageInput {
            blob_id: api::upload(&mut gateway, &name, &bytes).await,
            name,
            ..Default::default()
        });
    }
    let request = SubmitJobRequest {
        pipeline: resize(48),
        inputs,
        job_id: ulid::Ulid::new().to_string(),
        // Running open, the gateway submits as an admin.
        admin: true,
        ..Default::default()
    };
    let mut answers = Vec::new();
    for port in [cluster.scheduler.port, cluster.more_schedulers[0].port] {
        let mut scheduler = SchedulerClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("scheduler");
        let job = scheduler
            .submit_job(request.clone())
            .await
            .expect("submit")
            .into_inner();
        answers.push(job.summary.expect("summary").id);
    }
    assert_eq!(answers, [request.job_id.clone(), request.job_id.clone()]);
    let (_, job) = api::watch_to_end(&mut gateway, &request.job_id, JOB_TIMEOUT).await;
    assert_eq!(
        job.summary.as_ref().map(|s| (s.state(), s.done)),
        Some((JobState::Completed, 3)),
        "{job:?}"
    );
    for image in &job.images {
        assert_eq!(
            (image.state(), image.attempts),
            (ImageState::Done, 1),
            "each image processed once: {image:?}"
        );
    }
    let listed = gateway
        .list_jobs(ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 1, "one job: {listed:?}");
}
