//! The mesh end to end: every role a real process, a real nats-server, real gRPC and HTTP.

use std::{collections::HashMap, time::Duration};

use pixelmesh_filter::{codec::Limits, engine, ops::Pipeline};
use pixelmesh_proto::v1::{
    Blur, Grayscale, ImageState, Job, JobEvent, JobState, Operation, Resize, operation::Op,
};
use pixelmesh_tests::{Cluster, ClusterOptions, api, corpus, poll};

const JOB_TIMEOUT: Duration = Duration::from_secs(240);

fn pipeline() -> Vec<Operation> {
    vec![
        Operation {
            op: Some(Op::Resize(Resize {
                width: 640,
                ..Default::default()
            })),
        },
        Operation {
            op: Some(Op::Blur(Blur { sigma: 1.5 })),
        },
        Operation {
            op: Some(Op::Grayscale(Grayscale {})),
        },
    ]
}

/// Progress was reported, and each image index appears in at most one progress event:
/// results are recorded once.
fn assert_each_image_reported_once(events: &[JobEvent], total: usize) {
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for event in events {
        if let Some(image) = &event.image {
            *seen.entry(image.index).or_default() += 1;
        }
    }
    for (index, count) in &seen {
        assert_eq!(*count, 1, "image {index} was reported {count} times");
    }
    assert!(!seen.is_empty(), "no progress events among {events:?}");
    assert!(seen.len() <= total);
}

fn first_image(event: &JobEvent) -> bool {
    event.image.is_some()
}

fn assert_all_done(job: &Job, cluster: &Cluster) {
    let summary = job.summary.as_ref().expect("summary");
    assert_eq!(
        summary.state(),
        JobState::Completed,
        "job did not complete: {job:?}\n{}",
        cluster.logs()
    );
    assert_eq!(summary.done as usize, job.images.len());
    for image in &job.images {
        assert_eq!(image.state(), ImageState::Done, "{image:?}");
        assert!(image.output.is_some());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corpus_through_two_filters_matches_in_process() {
    let cluster = Cluster::start(ClusterOptions {
        filters: 2,
        ..Default::default()
    })
    .await;
    let mut client = cluster.gateway_client().await;
    let images = corpus::all();
    assert_eq!(images.len(), 8, "the corpus has 8 photographs");

    let job = api::submit(&mut client, &images, pipeline()).await;
    let id = job.summary.expect("summary").id;
    let (events, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_all_done(&job, &cluster);
    assert_each_image_reported_once(&events, images.len());

    // Both replicas of the one durable consumer did part of the work.
    let workers: std::collections::HashSet<&str> =
        job.images.iter().map(|i| i.worker_id.as_str()).collect();
    assert_eq!(workers.len(), 2, "work was not shared: {workers:?}");

    let local = Pipeline::from_proto(&pipeline()).expect("valid pipeline");
    for (image, (name, input)) in job.images.iter().zip(&images) {
        assert_eq!(&image.name, name);
        let output = image.output.as_ref().expect("output");
        let bytes = api::download(&mut client, &id, image.index).await;
        assert_eq!(bytes.len() as u64, output.size_bytes);

        let decoded = image::load_from_memory(&bytes).expect("output decodes");
        let original = image::load_from_memory(input).expect("input decodes");
        assert_eq!(decoded.width(), 640, "{name}");
        let expected_height =
            (f64::from(original.height()) * 640.0 / f64::from(original.width())).round() as u32;
        assert!(
            decoded.height().abs_diff(expected_height) <= 1,
            "{name}: height {} not {expected_height}",
            decoded.height()
        );
        assert_eq!(
            (output.width, output.height),
            (decoded.width(), decoded.height())
        );

        let in_process = engine::process(input, &local, &Limits::default()).expect("in-process");
        assert!(
            bytes == in_process.bytes,
            "{name}: mesh output differs from in-process output"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_filter_mid_batch_loses_nothing() {
    let mut cluster = Cluster::start(ClusterOptions {
        filters: 2,
        ack_wait_secs: 2,
        ..Default::default()
    })
    .await;
    let mut client = cluster.gateway_client().await;
    let images: Vec<_> = corpus::all().into_iter().take(6).collect();
    let job = api::submit(&mut client, &images, pipeline()).await;
    let id = job.summary.expect("summary").id;

    // Kill filter-0 as soon as it has finished one image: it is then holding its next task.
    let mut events = api::watch_until(&mut client, &id, JOB_TIMEOUT, |event| {
        event
            .image
            .as_ref()
            .is_some_and(|i| i.worker_id == "filter-0")
    })
    .await;
    cluster.filters[0].kill();

    let (more, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    events.extend(more);
    assert_all_done(&job, &cluster);
    assert_each_image_reported_once(&events, images.len());
    assert!(
        job.images.iter().any(|i| i.worker_id == "filter-1"),
        "the surviving filter took over"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_restart_mid_job_finishes_the_job() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let mut client = cluster.gateway_client().await;
    let images: Vec<_> = corpus::all().into_iter().take(5).collect();
    let job = api::submit(&mut client, &images, pipeline()).await;
    let id = job.summary.expect("summary").id;

    api::watch_until(&mut client, &id, JOB_TIMEOUT, first_image).await;
    cluster.restart("scheduler").await;

    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_all_done(&job, &cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_restart_keeps_jobs_and_blobs() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let mut client = cluster.gateway_client().await;
    let images: Vec<_> = corpus::all().into_iter().take(4).collect();
    let job = api::submit(&mut client, &images, pipeline()).await;
    let id = job.summary.expect("summary").id;

    // Restart storage while the job runs: workers retry, nothing acknowledged is lost.
    api::watch_until(&mut client, &id, JOB_TIMEOUT, first_image).await;
    cluster.restart("storage").await;
    let (_, before) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_all_done(&before, &cluster);
    let mut outputs = Vec::new();
    for image in &before.images {
        outputs.push(api::download(&mut client, &id, image.index).await);
    }

    // And once more after the job: the job and every output survive.
    cluster.restart("storage").await;
    let after = client
        .get_job(pixelmesh_proto::v1::GetJobRequest { id: id.clone() })
        .await
        .expect("job survives restart")
        .into_inner();
    assert_eq!(after, before);
    for (image, bytes) in after.images.iter().zip(&outputs) {
        assert_eq!(&api::download(&mut client, &id, image.index).await, bytes);
    }
}

/// Slow enough that a SIGTERM lands while the task runs: several wide blurs of a 5K photo.
fn slow_pipeline() -> Vec<Operation> {
    (0..6)
        .map(|_| Operation {
            op: Some(Op::Blur(Blur { sigma: 30.0 })),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_filter_finishes_its_task_first() {
    let mut cluster = Cluster::start(ClusterOptions {
        filters: 2,
        ..Default::default()
    })
    .await;
    let mut client = cluster.gateway_client().await;
    let largest = corpus::all()
        .into_iter()
        .max_by_key(|(_, bytes)| bytes.len())
        .expect("corpus");
    let images = vec![largest; 3];
    let job = api::submit(&mut client, &images, slow_pipeline()).await;
    let id = job.summary.expect("summary").id;
    // Watched from the start, so every image's progress is seen, whatever the stop takes.
    let watcher = {
        let (mut client, id) = (client.clone(), id.clone());
        tokio::spawn(async move { api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await })
    };

    // The worker list shows filter-0 busy: that is the moment to ask it to stop.
    poll(
        "filter-0 taking a task",
        JOB_TIMEOUT,
        Duration::from_millis(20),
        || {
            let mut client = client.clone();
            let cluster = &cluster;
            async move {
                let workers = client
                    .list_workers(pixelmesh_proto::v1::ListWorkersRequest {})
                    .await
                    .expect("list workers")
                    .into_inner()
                    .workers;
                let busy: Vec<(&str, u32)> = workers
                    .iter()
                    .map(|w| (w.id.as_str(), w.in_flight))
                    .collect();
                if busy
                    .iter()
                    .any(|&(id, in_flight)| id == "filter-0" && in_flight > 0)
                {
                    Ok(())
                } else {
                    // The logs go with what was seen: they explain a worker that never takes a task.
                    Err(format!("in flight {busy:?}\n{}", cluster.logs()))
                }
            }
        },
    )
    .await;
    assert!(
        cluster.filters[0].terminate(),
        "filter-0 did not exit cleanly:\n{}",
        cluster.filters[0].logs()
    );
    let log = cluster.filters[0].logs();
    let stop_line = log
        .lines()
        .find(|line| line.contains("stopped fetching"))
        .unwrap_or_default();
    let in_flight: u32 = stop_line
        .split("in_flight=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        in_flight > 0,
        "filter-0 was not mid-task when it stopped:\n{log}"
    );

    let (events, job) = watcher.await.expect("watcher");
    assert_all_done(&job, &cluster);
    assert_each_image_reported_once(&events, images.len());
    let by_victim: Vec<_> = job
        .images
        .iter()
        .filter(|i| i.worker_id == "filter-0")
        .collect();
    assert!(!by_victim.is_empty(), "filter-0 finished the task it held");
    for image in &job.images {
        assert_eq!(image.attempts, 1, "no task was delivered twice: {image:?}");
    }
}
