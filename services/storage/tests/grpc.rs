//! The storage role over real gRPC on loopback: blobs and jobs go in, the server stops, a new
//! one starts on the same directory, and everything acknowledged is still there.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use pixelmesh_proto::v1::{
    self as pb, BlobMeta, CreateJobRequest, GetBlobRequest, ImageInput, ImageState, JobRequest,
    JobState, PutBlobRequest, RecordResultRequest, TaskResult, put_blob_request::Part,
    storage_client::StorageClient, task_result::Outcome,
};
use pixelmesh_storage::{Config, run};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const CHUNK: usize = 64 * 1024;
const JOB: &str = "01JQ8Z6W4V3T2S1R0P9N8M7K6J";

/// A storage server running in this process until [`Running::stop`].
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(dir: &Path) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = Config {
            dir: dir.to_path_buf(),
            max_blob_bytes: 16 * 1024 * 1024,
            max_images_per_job: 100,
            orphan_blob_ttl_secs: 0,
            blob_store_wait_secs: 0,
            blob_store: None,
        };
        let task = tokio::spawn(run(config, listener, async move {
            let _ = stopped.await;
        }));
        let running = Running { addr, stop, task };
        running.wait_ready().await;
        running
    }

    /// Polls the health check until storage reports SERVING: no fixed sleeps.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(!self.task.is_finished(), "storage exited while starting");
            if let Ok(channel) = Channel::from_shared(self.url())
                .expect("url")
                .connect()
                .await
            {
                let request = HealthCheckRequest {
                    service: "pixelmesh.v1.Storage".into(),
                };
                if let Ok(response) = HealthClient::new(channel).check(request).await
                    && response.into_inner().status() == ServingStatus::Serving
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "storage did not become ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self) -> StorageClient<Channel> {
        StorageClient::connect(self.url()).await.expect("connect")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("storage task panicked")
            .expect("storage failed");
    }
}

/// Incompressible, different on every run: BLAKE3's output stream seeded with the clock.
fn random_bytes(len: usize) -> Vec<u8> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut bytes = vec![0; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

async fn put_blob(
    client: &mut StorageClient<Channel>,
    max_bytes: u64,
    data: &[u8],
) -> Result<pb::BlobInfo, tonic::Status> {
    put_owned(client, max_bytes, data, "").await
}

async fn put_owned(
    client: &mut StorageClient<Channel>,
    max_bytes: u64,
    data: &[u8],
    owner: &str,
) -> Result<pb::BlobInfo, tonic::Status> {
    let mut parts = vec![PutBlobRequest {
        part: Some(Part::Meta(BlobMeta {
            max_bytes,
            owner: owner.into(),
        })),
    }];
    parts.extend(data.chunks(CHUNK).map(|chunk| PutBlobRequest {
        part: Some(Part::Chunk(chunk.to_vec())),
    }));
    client
        .put_blob(tokio_stream::iter(parts))
        .await
        .map(|r| r.into_inner())
}

/// The blob's bytes and how many messages carried them.
async fn get_blob(client: &mut StorageClient<Channel>, id: &str) -> (Vec<u8>, usize) {
    let mut stream = client
        .get_blob(GetBlobRequest { id: id.into() })
        .await
        .expect("get blob")
        .into_inner();
    let mut data = Vec::new();
    let mut messages = 0;
    let mut size = 0;
    while let Some(message) = stream.message().await.expect("blob chunk") {
        if messages == 0 {
            size = message.size_bytes;
        }
        assert!(message.chunk.len() <= CHUNK);
        data.extend_from_slice(&message.chunk);
        messages += 1;
    }
    assert_eq!(
        size,
        data.len() as u64,
        "the first message carries the size"
    );
    (data, messages)
}

#[tokio::test]
async fn blobs_and_jobs_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = random_bytes(5 * 1024 * 1024);
    let expected_id = blake3::hash(&data).to_hex().to_string();

    let server = Running::start(dir.path()).await;
    let mut client = server.client().await;

    let blob = put_blob(&mut client, 0, &data).await.expect("put blob");
    assert_eq!(blob.id, expected_id);
    assert_eq!(blob.size_bytes, data.len() as u64);
    let (back, messages) = get_blob(&mut client, &blob.id).await;
    assert!(messages > 1, "a 5 MiB blob comes back in chunks");
    assert!(back == data, "the blob comes back byte for byte");

    let created = client
        .create_job(CreateJobRequest {
            id: JOB.into(),
            pipeline: vec![pb::Operation {
                op: Some(pb::operation::Op::Grayscale(pb::Grayscale {})),
            }],
            inputs: vec![
                ImageInput {
                    blob_id: blob.id.clone(),
                    name: "a.png".into(),
                    ..Default::default()
                },
                ImageInput {
                    blob_id: blob.id.clone(),
                    name: "b.png".into(),
                    ..Default::default()
                },
            ],
            tiling: pb::Tiling::Never as i32,
            ..Default::default()
        })
        .await
        .expect("create job")
        .into_inner();
    assert_eq!(created.images.len(), 2);
    let output = pb::Output {
        blob_id: blob.id.clone(),
        content_type: "image/png".into(),
        width: 640,
        height: 480,
        size_bytes: blob.size_bytes,
        analysis: Vec::new(),
    };
    let recorded = client
        .record_result(RecordResultRequest {
            result: Some(TaskResult {
                job_id: JOB.into(),
                index: 0,
                outcome: Some(Outcome::Output(output.clone())),
                worker_id: "worker-1".into(),
                attempts: 1,
                duration_ms: 42,
            }),
        })
        .await
        .expect("record result")
        .into_inner();
    assert!(recorded.applied);
    let before = client
        .get_job(JobRequest { id: JOB.into() })
        .await
        .expect("get job")
        .into_inner();

    drop(client);
    server.stop().await;

    let server = Running::start(dir.path()).await;
    let mut client = server.client().await;

    let job = client
        .get_job(JobRequest { id: JOB.into() })
        .await
        .expect("get job after restart")
        .into_inner();
    assert_eq!(job, before);
    let summary = job.summary.clone().expect("summary");
    assert_eq!(summary.state(), JobState::Queued);
    assert_eq!((summary.total, summary.done), (2, 1));
    assert_eq!(job.images[0].state(), ImageState::Done);
    assert_eq!(job.images[0].output.as_ref(), Some(&output));
    assert_eq!(job.images[0].worker_id, "worker-1");
    assert_eq!(job.images[1].state(), ImageState::Pending);
    let unfinished = client
        .list_unfinished_jobs(pb::ListUnfinishedJobsRequest {})
        .await
        .expect("unfinished")
        .into_inner();
    assert_eq!(unfinished.jobs, vec![summary]);

    let stat = client
        .stat_blob(GetBlobRequest {
            id: blob.id.clone(),
        })
        .await
        .expect("stat blob")
        .into_inner();
    assert_eq!(stat.size_bytes, data.len() as u64);
    let (back, _) = get_blob(&mut client, &blob.id).await;
    assert!(back == data, "the blob survives the restart");

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_the_right_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Running::start(dir.path()).await;
    let mut client = server.client().await;

    let too_large = put_blob(&mut client, 1000, &[7; 3000]).await.unwrap_err();
    assert_eq!(too_large.code(), Code::ResourceExhausted);
    assert_eq!(too_large.message(), "blob exceeds the limit of 1000 bytes");
    let entries = std::fs::read_dir(dir.path().join("blobs/tmp"))
        .expect("tmp dir")
        .count();
    assert_eq!(entries, 0, "a refused upload leaves no temp file");

    let empty = put_blob(&mut client, 0, &[]).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    let traversal = client
        .stat_blob(GetBlobRequest {
            id: "../../../etc/passwd".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(traversal.code(), Code::InvalidArgument);
    let missing = client
        .get_blob(GetBlobRequest { id: "0".repeat(64) })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let bad_job = client
        .get_job(JobRequest {
            id: "not-a-ulid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_job.code(), Code::InvalidArgument);
    let unknown = client
        .get_job_summary(JobRequest { id: JOB.into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    drop(client);
    server.stop().await;
}

/// A 3 x 2 RGBA PNG, 8 bits per sample.
fn tiny_png() -> Vec<u8> {
    // Only the header matters here: signature, then IHDR (width, height, depth 8, colour 6).
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&3u32.to_be_bytes());
    png.extend_from_slice(&2u32.to_be_bytes());
    png.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    png
}

#[tokio::test]
async fn a_blob_serves_only_its_owners_and_tells_its_image_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Running::start(dir.path()).await;
    let mut client = server.client().await;
    let png = tiny_png();
    let uploaded = put_owned(&mut client, 0, &png, "alice").await.expect("put");
    assert_eq!((uploaded.width, uploaded.height), (3, 2));
    assert_eq!(uploaded.bytes_per_pixel, 4);
    let unowned = put_blob(&mut client, 0, b"no owner").await.expect("put");

    let check = |owner: &str, admin: bool| pb::CheckBlobsRequest {
        ids: vec![
            uploaded.id.clone(),
            unowned.id.clone(),
            "0".repeat(64),
            "../x".into(),
        ],
        owner: owner.into(),
        admin,
    };
    let ids = |response: pb::CheckBlobsResponse| -> Vec<String> {
        response.blobs.into_iter().map(|blob| blob.id).collect()
    };
    let alice = client
        .check_blobs(check("alice", false))
        .await
        .expect("check");
    let alice = alice.into_inner();
    assert_eq!(alice.blobs[0], uploaded, "size and header as uploaded");
    assert_eq!(
        ids(alice),
        [
            uploaded.id.clone(),
            String::new(),
            String::new(),
            String::new()
        ]
    );
    // Bob may not use Alice's upload: to him it does not exist.
    let bob = client
        .check_blobs(check("bob", false))
        .await
        .expect("check");
    assert!(ids(bob.into_inner()).iter().all(String::is_empty));
    // An admin may use every stored blob, and only stored ones.
    let admin = client
        .check_blobs(check("root", true))
        .await
        .expect("check");
    assert_eq!(
        ids(admin.into_inner()),
        [
            uploaded.id.clone(),
            unowned.id.clone(),
            String::new(),
            String::new()
        ]
    );
    // Bob uploading the same bytes becomes a second owner of the one blob.
    let again = put_owned(&mut client, 0, &png, "bob").await.expect("put");
    assert_eq!(again.id, uploaded.id);
    let bob = client
        .check_blobs(check("bob", false))
        .await
        .expect("check");
    assert_eq!(ids(bob.into_inner())[0], uploaded.id);

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn an_aborted_upload_stores_nothing_and_the_connection_serves_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Running::start(dir.path()).await;
    let mut client = server.client().await;
    let data = random_bytes(200 * 1024);
    for _ in 0..50 {
        let parts = vec![
            PutBlobRequest {
                part: Some(Part::Meta(BlobMeta::default())),
            },
            PutBlobRequest {
                part: Some(Part::Chunk(data[..CHUNK].to_vec())),
            },
            PutBlobRequest {
                part: Some(Part::Abort(pb::BlobAbort {
                    reason: "client went away".into(),
                })),
            },
        ];
        let err = client
            .put_blob(tokio_stream::iter(parts))
            .await
            .expect_err("aborted");
        assert_eq!(err.code(), Code::Cancelled);
        assert!(
            err.message().contains("client went away"),
            "{}",
            err.message()
        );
    }
    let missing = client
        .stat_blob(GetBlobRequest {
            id: blake3::hash(&data[..CHUNK]).to_hex().to_string(),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(missing.code(), Code::NotFound);
    let temp_files = std::fs::read_dir(dir.path().join("blobs/tmp"))
        .expect("tmp dir")
        .count();
    assert_eq!(temp_files, 0, "aborted uploads leave no temp file");
    // The same connection still works.
    put_blob(&mut client, 0, &data)
        .await
        .expect("a whole upload");

    drop(client);
    server.stop().await;
}

/// The deadlock storage had under load: many concurrent job changes and reads over one
/// connection, as the scheduler and gateways make them. Every call must be answered and the
/// health check must answer throughout; before the writer thread, sled's lock cycle hung
/// both runtime threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_and_reads_all_finish_and_health_answers_throughout() {
    const JOBS: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Running::start(dir.path()).await;
    let client = server.client().await;
    let blob = put_blob(&mut client.clone(), 0, b"input")
        .await
        .expect("put");
    let mut ids = ulid::Generator::new();
    let ids: Vec<String> = (0..JOBS)
        .map(|_| ids.generate().expect("ulid").to_string())
        .collect();
    let work = ids.iter().cloned().map(|id| {
        let mut client = client.clone();
        let blob = blob.id.clone();
        tokio::spawn(async move {
            let input = |name: &str| ImageInput {
                blob_id: blob.clone(),
                name: name.into(),
                ..Default::default()
            };
            client
                .create_job(CreateJobRequest {
                    id: id.clone(),
                    inputs: vec![input("a"), input("b")],
                    ..Default::default()
                })
                .await?;
            let request = || JobRequest { id: id.clone() };
            client.get_job_summary(request()).await?;
            client.mark_job_running(request()).await?;
            client.list_jobs(pb::ListJobsQuery::default()).await?;
            for index in 0..2 {
                client
                    .record_result(RecordResultRequest {
                        result: Some(TaskResult {
                            job_id: id.clone(),
                            index,
                            outcome: Some(Outcome::Error("bad".into())),
                            worker_id: "w".into(),
                            attempts: 1,
                            duration_ms: 1,
                        }),
                    })
                    .await?;
                client.get_job(request()).await?;
            }
            let job = client.get_job(request()).await?.into_inner();
            Ok::<_, tonic::Status>(job.summary.unwrap_or_default().state())
        })
    });
    let work: Vec<_> = work.collect();
    let mut health = HealthClient::new(
        Channel::from_shared(server.url())
            .expect("url")
            .connect_lazy(),
    );
    let all = futures::future::join_all(work);
    tokio::pin!(all);
    let mut checks = 0;
    let results = loop {
        tokio::select! {
            results = &mut all => break results,
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                let answered = tokio::time::timeout(
                    Duration::from_secs(5),
                    health.check(HealthCheckRequest::default()),
                )
                .await;
                assert!(
                    matches!(answered, Ok(Ok(_))),
                    "health check unanswered while under load: {answered:?}"
                );
                checks += 1;
            }
        }
    };
    for result in results {
        let state = result.expect("task").expect("every call answered");
        assert_eq!(state, JobState::Failed);
    }
    let counts = client
        .clone()
        .count_jobs(pb::CountJobsRequest::default())
        .await
        .expect("counts")
        .into_inner();
    assert_eq!((counts.total, counts.failed), (JOBS as u32, JOBS as u32));
    eprintln!("{JOBS} jobs, {checks} health checks answered under load");
    drop(client);
    server.stop().await;
}
