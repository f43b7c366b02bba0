//! Tenants against a real mesh: a second API key cannot read, use or learn the first key's
//! blobs, jobs, URLs or errors, through any REST route, event stream or gRPC method that
//! takes an id or returns one. Admins see everything.

use std::time::Duration;

use pixelmesh_proto::v1::{
    CancelJobRequest, DeleteJobRequest, DownloadOutputRequest, DownloadOutputsRequest,
    ExportAnalysisRequest, GetBatchRequest, GetJobRequest, ImageInput, ListJobsRequest,
    ListWorkersRequest, Operation, PauseJobRequest, ResumeJobRequest, RetryJobRequest,
    SubmitJobRequest, WatchJobRequest, gateway_client::GatewayClient, operation::Op,
};
use pixelmesh_tests::{
    Cluster, ClusterOptions, api::keyed, png, poll, rest, serve_http, sse::SseStream,
};
use reqwest::Method;
use serde_json::Value;
use tonic::{Code, transport::Channel};

const TIMEOUT: Duration = Duration::from_secs(120);
const ALICE: &str = "alice-secret-0123456789";
const BOB: &str = "bob-secret-0123456789";
const ROOT: &str = "root-secret-0123456789";
/// What Alice's failed URL carries: a presigned URL's secret, as a user would have it.
const URL_SECRET: &str = "X-Amz-Signature=alice0secret0signature";

async fn upload(http: &reqwest::Client, base: &str, bytes: Vec<u8>) -> String {
    let response = http
        .post(format!("{base}/api/v1/uploads"))
        .body(bytes)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status().as_u16(), 201);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").to_string()
}

fn grayscale() -> Vec<Operation> {
    vec![Operation {
        op: Some(Op::Grayscale(Default::default())),
    }]
}

fn blob_input(blob_id: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        pipeline: grayscale(),
        inputs: vec![ImageInput {
            blob_id: blob_id.to_string(),
            name: "x.png".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A unary gRPC call must fail NOT_FOUND.
macro_rules! not_found {
    ($call:expr, $what:expr) => {
        let status = $call.await.expect_err($what);
        assert_eq!(status.code(), Code::NotFound, "{}: {status:?}", $what);
    };
}

/// A streaming gRPC call must fail NOT_FOUND, at once or as the stream's first message.
macro_rules! not_found_stream {
    ($call:expr, $what:expr) => {
        match $call.await {
            Err(status) => assert_eq!(status.code(), Code::NotFound, "{}: {status:?}", $what),
            Ok(response) => {
                let mut stream = response.into_inner();
                let status = stream.message().await.expect_err($what);
                assert_eq!(status.code(), Code::NotFound, "{}: {status:?}", $what);
            }
        }
    };
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_key_cannot_read_use_or_learn_the_first_keys_data() {
    // Where Alice's URL inputs point: 404 for everything.
    let origin =
        serve_http(axum::Router::new().fallback(|| async { axum::http::StatusCode::NOT_FOUND }))
            .await;
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: vec![
            "--api-keys".into(),
            format!("alice:{ALICE},bob:{BOB}"),
            "--admin-keys".into(),
            format!("root:{ROOT}"),
            "--max-files-per-job".into(),
            "2".into(),
        ],
        filter_args: vec!["--fetch-allow-private".into()],
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let (alice, bob, root) = (
        rest::keyed_client(ALICE),
        rest::keyed_client(BOB),
        rest::keyed_client(ROOT),
    );
    let mut bob_feed = SseStream::open(&bob, &format!("{base}/api/v1/events"), None).await;

    // Alice: a batch from a URL list (3 URLs, 2 per job), whose images all fail...
    let list = format!("{origin}/a.png\n{origin}/b.png\n{origin}/c.png");
    let form = reqwest::multipart::Form::new()
        .text("pipeline", "grayscale")
        .text("urls", list);
    let response = rest::post_job(&alice, &base, form).await;
    assert_eq!(response.status().as_u16(), 202);
    let batch: Value = response.json().await.expect("json");
    let parent = batch["parent_id"].as_str().expect("parent id").to_string();
    // ... first, so the worker's last error is then that of Alice's secret URL, below.
    let url = format!("{base}/api/v1/batches/{parent}");
    poll(
        "the batch failed",
        TIMEOUT,
        Duration::from_millis(50),
        || async {
            let batch = rest::get_json(&alice, &url).await;
            if batch["state"] == "failed" {
                Ok(())
            } else {
                Err(batch.to_string())
            }
        },
    )
    .await;

    // Then a logo, and a job with a file and a URL that fails (its error carries the URL
    // and its secret).
    let logo_bytes = png(8, 8, 200);
    let logo = upload(&alice, &base, logo_bytes.clone()).await;
    let secret_url = format!("{origin}/alice.png?{URL_SECRET}");
    let form = reqwest::multipart::Form::new()
        .text("pipeline", format!("watermark:logo={logo}/format:png"))
        .part(
            "file",
            reqwest::multipart::Part::bytes(png(40, 30, 1)).file_name("alice-photo.png"),
        )
        .text("urls", secret_url.clone());
    let job_id = rest::accepted(rest::post_job(&alice, &base, form).await).await;
    let job = rest::wait_ended(&alice, &base, &job_id, TIMEOUT).await;
    assert_eq!(job["state"], "completed_with_errors", "{job}");
    assert!(
        job["images"][1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains(URL_SECRET),
        "the owner sees her own error whole: {job}"
    );
    let mut grpc: GatewayClient<Channel> = cluster.gateway_client().await;
    let full = grpc
        .get_job(keyed(ALICE, GetJobRequest { id: job_id.clone() }))
        .await
        .expect("alice's job")
        .into_inner();
    let input_blob = full.images[0].input_blob_id.clone();
    let output_blob = full.images[0]
        .output
        .as_ref()
        .expect("an output")
        .blob_id
        .clone();

    // REST: every route with Alice's job or batch id is not found for Bob.
    let job_url = format!("{base}/api/v1/jobs/{job_id}");
    for (method, path) in [
        (Method::GET, ""),
        (Method::GET, "/events"),
        (Method::GET, "/outputs/0"),
        (Method::GET, "/outputs/alice-photo.png"),
        (Method::GET, "/outputs.zip"),
        (Method::GET, "/inputs/0"),
        (Method::GET, "/analysis.csv"),
        (Method::GET, "/analysis.json"),
        (Method::GET, "/analysis.xlsx"),
        (Method::POST, "/cancel"),
        (Method::POST, "/retry"),
        (Method::POST, "/pause"),
        (Method::POST, "/resume"),
        (Method::DELETE, ""),
    ] {
        let response = bob
            .request(method.clone(), format!("{job_url}{path}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 404, "{method} {path}");
        let body = response.text().await.expect("body");
        assert!(!body.contains(URL_SECRET), "{method} {path}: {body}");
    }
    // Single images are read alone (storage's GetImage), and still answer as a job that
    // does not exist, whether or not the image does.
    for path in [
        "/outputs/0",
        "/outputs/99",
        "/outputs/nope.png",
        "/inputs/0",
        "/inputs/99",
    ] {
        let body = rest::get_json(&bob, &format!("{job_url}{path}")).await;
        assert_eq!(body["error"], format!("job {job_id} not found"), "{path}");
    }
    let response = bob
        .get(format!("{base}/api/v1/batches/{parent}"))
        .send()
        .await
        .expect("batch");
    assert_eq!(response.status().as_u16(), 404);
    let listed = rest::get_json(&bob, &format!("{base}/api/v1/jobs?parent={parent}")).await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(0), "{listed}");
    let listed = rest::get_json(&bob, &format!("{base}/api/v1/jobs")).await;
    assert_eq!(listed["counts"]["total"], 0, "{listed}");

    // Bob cannot use Alice's blobs: her logo, her input, her output.
    let form = reqwest::multipart::Form::new()
        .text("pipeline", format!("watermark:logo={logo}"))
        .part(
            "file",
            reqwest::multipart::Part::bytes(png(20, 20, 2)).file_name("b.png"),
        );
    let response = rest::post_job(&bob, &base, form).await;
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("logo"),
        "{body}"
    );
    for blob in [&input_blob, &output_blob, &logo] {
        let status = grpc
            .submit_job(keyed(BOB, blob_input(blob)))
            .await
            .expect_err("someone else's blob");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    // A client cannot claim to be an admin or another owner.
    let claimed = SubmitJobRequest {
        owner: "alice".into(),
        admin: true,
        ..blob_input(&input_blob)
    };
    let status = grpc
        .submit_job(keyed(BOB, claimed))
        .await
        .expect_err("claims are ignored");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        rest::get_json(&bob, &format!("{base}/api/v1/jobs")).await["counts"]["total"],
        0,
        "refused submits left nothing"
    );
    // Alice may chain her own output; an admin may use any blob; Bob, having uploaded the
    // same bytes as Alice's logo, owns that blob too.
    grpc.submit_job(keyed(ALICE, blob_input(&output_blob)))
        .await
        .expect("alice uses her output");
    grpc.submit_job(keyed(ROOT, blob_input(&input_blob)))
        .await
        .expect("an admin uses any blob");
    assert_eq!(upload(&bob, &base, logo_bytes).await, logo);
    let form = reqwest::multipart::Form::new()
        .text("pipeline", format!("watermark:logo={logo}"))
        .part(
            "file",
            reqwest::multipart::Part::bytes(png(20, 20, 3)).file_name("b.png"),
        );
    rest::accepted(rest::post_job(&bob, &base, form).await).await;

    // gRPC: every method with Alice's ids is not found for Bob.
    let id = || job_id.clone();
    not_found!(
        grpc.get_job(keyed(BOB, GetJobRequest { id: id() })),
        "GetJob"
    );
    not_found_stream!(
        grpc.watch_job(keyed(
            BOB,
            WatchJobRequest {
                id: id(),
                after_version: 0
            }
        )),
        "WatchJob"
    );
    not_found!(
        grpc.cancel_job(keyed(BOB, CancelJobRequest { id: id() })),
        "CancelJob"
    );
    not_found!(
        grpc.retry_job(keyed(BOB, RetryJobRequest { id: id() })),
        "RetryJob"
    );
    not_found!(
        grpc.pause_job(keyed(BOB, PauseJobRequest { id: id() })),
        "PauseJob"
    );
    not_found!(
        grpc.resume_job(keyed(BOB, ResumeJobRequest { id: id() })),
        "ResumeJob"
    );
    not_found!(
        grpc.delete_job(keyed(BOB, DeleteJobRequest { id: id() })),
        "DeleteJob"
    );
    not_found_stream!(
        grpc.download_output(keyed(
            BOB,
            DownloadOutputRequest {
                job_id: id(),
                index: 0,
                name: String::new()
            }
        )),
        "DownloadOutput"
    );
    not_found_stream!(
        grpc.download_outputs(keyed(BOB, DownloadOutputsRequest { job_id: id() })),
        "DownloadOutputs"
    );
    not_found!(
        grpc.export_analysis(keyed(
            BOB,
            ExportAnalysisRequest {
                job_id: id(),
                format: "json".into()
            }
        )),
        "ExportAnalysis"
    );
    not_found!(
        grpc.get_batch(keyed(BOB, GetBatchRequest { id: parent.clone() })),
        "GetBatch"
    );
    let listed = grpc
        .list_jobs(keyed(
            BOB,
            ListJobsRequest {
                parent_id: parent.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.jobs.is_empty());

    // The shared worker view: counts and states, never another key's URLs or errors. The
    // admin sees the last error (once the worker's next heartbeat carries it).
    let url = format!("{base}/api/v1/workers");
    poll(
        "the admin saw the error",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let workers = rest::get_json(&root, &url).await.to_string();
            if workers.contains(URL_SECRET) {
                Ok(())
            } else {
                Err(workers)
            }
        },
    )
    .await;
    let workers = rest::get_json(&bob, &format!("{base}/api/v1/workers")).await;
    assert!(!workers.to_string().contains(URL_SECRET), "{workers}");
    assert!(
        workers["workers"][0]["failed"].as_u64() >= Some(1),
        "counts stay: {workers}"
    );
    assert!(
        workers["workers"][0].get("last_error").is_none(),
        "{workers}"
    );
    for (secret, sees) in [(BOB, false), (ROOT, true)] {
        let listed = grpc
            .list_workers(keyed(secret, ListWorkersRequest::default()))
            .await
            .expect("workers")
            .into_inner();
        let shown = listed
            .workers
            .iter()
            .any(|w| w.last_error.contains(URL_SECRET));
        assert_eq!(shown, sees, "ListWorkers for {secret}");
    }
    // Bob's feed: his own job's events and worker beats, nothing of Alice's. Read until a
    // worker beat that counts Alice's failure has gone by.
    loop {
        let event = bob_feed.next(TIMEOUT).await.expect("feed event");
        let data = event.data.to_string();
        assert!(!data.contains(URL_SECRET), "{} event: {data}", event.event);
        assert!(!data.contains(&job_id), "{} event: {data}", event.event);
        if event.event == "worker" {
            assert!(event.data.get("last_error").is_none(), "{data}");
            if event.data["failed"].as_u64() >= Some(4) {
                break;
            }
        }
    }
}
