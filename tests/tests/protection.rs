//! The gateway's protection against a real mesh: over its concurrency limit it sheds load
//! at once (503 + Retry-After, gRPC UNAVAILABLE) instead of queueing, health still answers,
//! and it serves again when the load is gone.

use std::time::Duration;

use bytes::Bytes;
use pixelmesh_proto::v1::ListJobsRequest;
use pixelmesh_tests::{Cluster, ClusterOptions};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_pixelmesh-node");

/// An upload whose body arrives only as the test sends it: it holds a request slot.
struct HeldUpload {
    body: mpsc::Sender<Result<Bytes, std::io::Error>>,
    response: tokio::task::JoinHandle<reqwest::Response>,
}

async fn hold_upload(http: &reqwest::Client, base: &str) -> HeldUpload {
    let (tx, rx) = mpsc::channel(1);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request = http.post(format!("{base}/api/v1/uploads")).body(body);
    let response = tokio::spawn(async move { request.send().await.expect("upload") });
    // The first bytes are read by the handler only once it runs, i.e. holds its slot.
    tx.send(Ok(Bytes::from_static(b"\x89PNG")))
        .await
        .expect("send");
    HeldUpload { body: tx, response }
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_concurrency_limit_requests_are_shed_not_queued() {
    let cluster = Cluster::start(
        BIN,
        ClusterOptions {
            gateway_args: vec!["--max-concurrent-requests".into(), "2".into()],
            ..Default::default()
        },
    )
    .await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();
    let list = format!("{base}/api/v1/jobs");

    // Both slots are taken once a list call is refused. Until then an upload may itself be
    // shed (a list call held the other slot as it arrived): start it again.
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let refused = loop {
        assert!(tokio::time::Instant::now() < deadline, "never shed");
        let mut live = Vec::new();
        for upload in held.drain(..) {
            let upload: HeldUpload = upload;
            if upload.response.is_finished() {
                let response = upload.response.await.expect("upload task");
                assert_eq!(
                    response.status().as_u16(),
                    503,
                    "only shedding ends a held upload"
                );
            } else {
                live.push(upload);
            }
        }
        held = live;
        while held.len() < 2 {
            held.push(hold_upload(&http, &base).await);
        }
        let response = http.get(&list).send().await.expect("list");
        if response.status().as_u16() == 503 {
            break response;
        }
        assert_eq!(response.status().as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "unavailable", "{body}");
    // Refused at once every time, not after a wait in a queue.
    for _ in 0..20 {
        let response = tokio::time::timeout(Duration::from_secs(5), http.get(&list).send())
            .await
            .expect("a shed request is answered at once")
            .expect("list");
        assert_eq!(response.status().as_u16(), 503);
    }
    let mut grpc = cluster.gateway_client().await;
    let status = grpc
        .list_jobs(ListJobsRequest::default())
        .await
        .expect_err("shed");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("health");
    assert_eq!(
        health.status().as_u16(),
        200,
        "health checks are never shed"
    );

    // The uploads end; their slots come back.
    for upload in held {
        drop(upload.body);
        let response = upload.response.await.expect("upload task");
        assert_eq!(response.status().as_u16(), 201, "the held upload completes");
    }
    let response = http.get(&list).send().await.expect("list");
    assert_eq!(response.status().as_u16(), 200);
}
