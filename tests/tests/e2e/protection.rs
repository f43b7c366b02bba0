//! The gateway's protection against a real mesh. Uploads and submits have a pool of slots of
//! their own: held uploads fill it and a further upload is shed at once (503 + Retry-After,
//! gRPC UNAVAILABLE) while reads, event streams and downloads are still answered. A key over
//! its own upload limit gets 429 while other keys upload. An upload whose body stalls fails
//! with 408 (gRPC DEADLINE_EXCEEDED) and costs no one else anything.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use pixelmesh_proto::v1::{GetJobRequest, JobState, ListJobsRequest, UploadImageRequest};
use pixelmesh_tests::{Cluster, ClusterOptions, api, png, poll, rest, sse::SseStream};
use tokio::sync::mpsc;
use tonic::{Code, metadata::MetadataValue};

const TIMEOUT: Duration = Duration::from_secs(120);
const ALICE: &str = "alice-secret-0123456789";
const BOB: &str = "bob-secret-0123456789";

/// An upload whose body arrives only as the test sends it: it holds its slots.
struct HeldUpload {
    body: mpsc::Sender<Result<Bytes, std::io::Error>>,
    response: tokio::task::JoinHandle<reqwest::Response>,
}

/// Starts an upload that sends its first bytes, then waits for the test.
async fn hold_upload(http: &reqwest::Client, base: &str) -> HeldUpload {
    let (tx, rx) = mpsc::channel(1);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request = http.post(format!("{base}/api/v1/uploads")).body(body);
    let response = tokio::spawn(async move { request.send().await.expect("upload") });
    tx.send(Ok(Bytes::from_static(b"\x89PNG")))
        .await
        .expect("send");
    HeldUpload { body: tx, response }
}

/// A whole small upload.
async fn upload(http: &reqwest::Client, base: &str) -> reqwest::Response {
    let request = http
        .post(format!("{base}/api/v1/uploads"))
        .body(png(8, 8, 7))
        .send();
    tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("an upload is answered at once")
        .expect("upload")
}

/// Holds `holders` uploads until a further upload is refused with `refused`; that refusal.
/// Until the held uploads are in their handlers, a probing upload may take a slot itself
/// (and succeed), and a held upload may be the one refused: it is started again.
async fn fill(
    http: &reqwest::Client,
    base: &str,
    holders: usize,
    refused: u16,
) -> (Vec<HeldUpload>, reqwest::Response) {
    // The probe keeps the held uploads from one try to the next; a lock lets it have them.
    let held: tokio::sync::Mutex<Vec<HeldUpload>> = tokio::sync::Mutex::default();
    let what = format!("an upload refused with {refused}");
    let probe = poll(
        &what,
        Duration::from_secs(60),
        Duration::from_millis(10),
        || async {
            let mut held = held.lock().await;
            let mut live = Vec::new();
            for upload in held.drain(..) {
                if upload.response.is_finished() {
                    let response = upload.response.await.expect("upload task");
                    assert_eq!(
                        response.status().as_u16(),
                        refused,
                        "only a refusal ends a held upload"
                    );
                } else {
                    live.push(upload);
                }
            }
            *held = live;
            while held.len() < holders {
                held.push(hold_upload(http, base).await);
            }
            let probe = upload(http, base).await;
            match probe.status().as_u16() {
                status if status == refused => Ok(probe),
                status => {
                    assert_eq!(status, 201);
                    Err(format!("upload {status} with {} held", held.len()))
                }
            }
        },
    )
    .await;
    (held.into_inner(), probe)
}

/// Ends the held uploads' bodies: each is stored.
async fn release(held: Vec<HeldUpload>) {
    for upload in held {
        drop(upload.body);
        let response = upload.response.await.expect("upload task");
        assert_eq!(response.status().as_u16(), 201, "the held upload completes");
    }
}

/// A gRPC upload of one chunk, with `secret` as its key when given.
fn grpc_upload(
    secret: Option<&str>,
) -> tonic::Request<futures::stream::Iter<std::vec::IntoIter<UploadImageRequest>>> {
    let chunk = UploadImageRequest {
        chunk: png(8, 8, 9),
        ..Default::default()
    };
    let mut request = tonic::Request::new(futures::stream::iter(vec![chunk]));
    if let Some(secret) = secret {
        let value = MetadataValue::try_from(format!("Bearer {secret}")).expect("metadata");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn held_uploads_fill_their_pool_and_reads_are_still_answered() {
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: [
            "--max-concurrent-uploads",
            "2",
            "--max-concurrent-requests",
            "4",
            // The held uploads stall on purpose: not for long enough to be cut off.
            "--body-idle-timeout-secs",
            "600",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();
    let list = format!("{base}/api/v1/jobs");

    // A finished job, to read while the uploads are held.
    let id = rest::submit(&http, &base, "grayscale", &[("a.png", png(32, 32, 1))]).await;
    let mut grpc = cluster.gateway_client().await;
    let (_, job) = api::watch_to_end(&mut grpc, &id, TIMEOUT).await;
    assert_eq!(job.summary.expect("summary").state(), JobState::Completed);

    let (held, refused) = fill(&http, &base, 2, 503).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "unavailable", "{body}");
    let status = grpc
        .upload_image(grpc_upload(None))
        .await
        .expect_err("shed");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Every further upload is refused at once; every read is answered.
    for _ in 0..10 {
        assert_eq!(upload(&http, &base).await.status().as_u16(), 503);
        let response = tokio::time::timeout(Duration::from_secs(10), http.get(&list).send())
            .await
            .expect("a list is answered at once")
            .expect("list");
        assert_eq!(response.status().as_u16(), 200);
    }
    let status = rest::get_json(&http, &format!("{base}/api/v1/jobs/{id}")).await;
    assert_eq!(status["state"], "completed", "{status}");
    let mut events = SseStream::open(&http, &format!("{base}/api/v1/jobs/{id}/events"), None).await;
    let first = events.next(TIMEOUT).await.expect("an event");
    assert_eq!(first.event, "progress");
    let output = http
        .get(format!("{base}/api/v1/jobs/{id}/outputs/0"))
        .send()
        .await
        .expect("download");
    assert_eq!(output.status().as_u16(), 200);
    assert!(!output.bytes().await.expect("output").is_empty());
    grpc.list_jobs(ListJobsRequest::default())
        .await
        .expect("a gRPC read is answered");
    grpc.get_job(GetJobRequest { id: id.clone() })
        .await
        .expect("a gRPC read is answered");
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);

    // The uploads end; their slots come back.
    release(held).await;
    assert_eq!(upload(&http, &base).await.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_over_its_upload_limit_gets_429_and_other_keys_still_upload() {
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: vec![
            "--api-keys".into(),
            format!("alice:{ALICE},bob:{BOB}"),
            "--max-uploads-per-key".into(),
            "1".into(),
            "--body-idle-timeout-secs".into(),
            "600".into(),
        ],
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let (alice, bob) = (rest::keyed_client(ALICE), rest::keyed_client(BOB));

    let (held, limited) = fill(&alice, &base, 1, 429).await;
    assert!(limited.headers().contains_key("retry-after"));
    let body: serde_json::Value = limited.json().await.expect("json");
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(
        body["error"].as_str().expect("error").contains("at most 1"),
        "{body}"
    );
    let mut grpc = cluster.gateway_client().await;
    let status = grpc
        .upload_image(grpc_upload(Some(ALICE)))
        .await
        .expect_err("over the key's limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Only alice is limited, and only her uploads.
    assert_eq!(upload(&bob, &base).await.status().as_u16(), 201);
    grpc.upload_image(grpc_upload(Some(BOB)))
        .await
        .expect("bob uploads");
    let list = alice
        .get(format!("{base}/api/v1/jobs"))
        .send()
        .await
        .expect("list");
    assert_eq!(list.status().as_u16(), 200);

    release(held).await;
    assert_eq!(upload(&alice, &base).await.status().as_u16(), 201);
}

/// A multipart submit whose file part stops after a few bytes and never ends.
fn stalled_submit(
    http: &reqwest::Client,
    base: &str,
) -> (
    mpsc::Sender<Result<Bytes, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Response>,
) {
    let (tx, rx) = mpsc::channel(1);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request = http
        .post(format!("{base}/api/v1/jobs"))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body);
    let response = tokio::spawn(async move { request.send().await.expect("submit") });
    let head = "--XyZ\r\ncontent-disposition: form-data; name=\"pipeline\"\r\n\r\ngrayscale\r\n\
                --XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\
                content-type: image/png\r\n\r\n\x7fPNG";
    let sent = tx.clone();
    tokio::spawn(async move { sent.send(Ok(Bytes::from(head))).await });
    (tx, response)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_gets_408_and_costs_no_one_else() {
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: [
            "--body-idle-timeout-secs",
            "1",
            // Many stalled uploads from one address at once: more than hyper's default
            // guard against reset streams (20) would let through.
            "--max-uploads-per-key",
            "0",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();

    let stalled: Vec<HeldUpload> =
        futures::future::join_all((0..30).map(|_| hold_upload(&http, &base))).await;
    let (submit_body, submit) = stalled_submit(&http, &base);
    for upload in stalled {
        let response = tokio::time::timeout(TIMEOUT, upload.response)
            .await
            .expect("a stalled upload is cut off")
            .expect("upload task");
        assert_eq!(response.status().as_u16(), 408);
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["code"], "request_timeout", "{body}");
        drop(upload.body);
    }
    let response = tokio::time::timeout(TIMEOUT, submit)
        .await
        .expect("a stalled submit is cut off")
        .expect("submit task");
    assert_eq!(response.status().as_u16(), 408);
    drop(submit_body);

    let mut grpc = cluster.gateway_client().await;
    let chunk = UploadImageRequest {
        chunk: b"\x89PNG".to_vec(),
        ..Default::default()
    };
    let stalling = futures::stream::iter([chunk]).chain(futures::stream::pending());
    let status = grpc
        .upload_image(stalling)
        .await
        .expect_err("a stalled gRPC upload is cut off");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // The gateway's link to storage carried on: uploads and jobs work as before.
    assert_eq!(upload(&http, &base).await.status().as_u16(), 201);
    let id = rest::submit(&http, &base, "grayscale", &[("b.png", png(32, 32, 2))]).await;
    let (_, job) = api::watch_to_end(&mut grpc, &id, TIMEOUT).await;
    assert_eq!(
        job.summary.expect("summary").state(),
        JobState::Completed,
        "{}",
        cluster.logs()
    );
}
