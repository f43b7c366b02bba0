//! The mesh end to end: every role a real process, a real nats-server, real gRPC and HTTP.

use std::{collections::HashMap, time::Duration};

use pixelmesh_filter::{codec::Limits, engine, ops::Pipeline};
use pixelmesh_proto::v1::{
    Blur, Grayscale, ImageState, Job, JobEvent, JobState, Operation, Resize, operation::Op,
};
use pixelmesh_tests::{Cluster, ClusterOptions, api, corpus};

const BIN: &str = env!("CARGO_BIN_EXE_pixelmesh-node");
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

/// Each image index appears in at most one progress event: results are recorded once.
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
    assert!(seen.len() <= total);
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
    let cluster = Cluster::start(
        BIN,
        ClusterOptions {
            filters: 2,
            ..Default::default()
        },
    )
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
    let mut cluster = Cluster::start(
        BIN,
        ClusterOptions {
            filters: 2,
            ack_wait_secs: 2,
            ..Default::default()
        },
    )
    .await;
    let mut client = cluster.gateway_client().await;
    let images: Vec<_> = corpus::all().into_iter().take(6).collect();
    let job = api::submit(&mut client, &images, pipeline()).await;
    let id = job.summary.expect("summary").id;

    // Kill filter-0 as soon as it has finished one image: it is then holding its next task.
    let mut watch = client
        .watch_job(pixelmesh_proto::v1::WatchJobRequest { id: id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(JOB_TIMEOUT, watch.message())
            .await
            .expect("progress in time")
            .expect("watch")
            .expect("job ended before filter-0 did any work");
        let by_victim = event
            .image
            .as_ref()
            .is_some_and(|i| i.worker_id == "filter-0");
        events.push(event);
        if by_victim {
            break;
        }
    }
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
    let mut cluster = Cluster::start(BIN, ClusterOptions::default()).await;
    let mut client = cluster.gateway_client().await;
    let images: Vec<_> = corpus::all().into_iter().take(5).collect();
    let job = api::submit(&mut client, &images, pipeline()).await;
    let id = job.summary.expect("summary").id;

    let mut watch = client
        .watch_job(pixelmesh_proto::v1::WatchJobRequest { id: id.clone() })
        .await
        .expect("watch")
        .into_inner();
    while let Some(event) = watch.message().await.expect("watch") {
        if event.image.is_some() {
            break;
        }
    }
    cluster.restart("scheduler").await;

    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_all_done(&job, &cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_restart_keeps_jobs_and_blobs() {
    let mut cluster = Cluster::start(BIN, ClusterOptions::default()).await;
    let mut client = cluster.gateway_client().await;
    let images: Vec<_> = corpus::all().into_iter().take(4).collect();
    let job = api::submit(&mut client, &images, pipeline()).await;
    let id = job.summary.expect("summary").id;

    // Restart storage while the job runs: workers retry, nothing acknowledged is lost.
    let mut watch = client
        .watch_job(pixelmesh_proto::v1::WatchJobRequest { id: id.clone() })
        .await
        .expect("watch")
        .into_inner();
    while let Some(event) = watch.message().await.expect("watch") {
        if event.image.is_some() {
            break;
        }
    }
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
