//! API keys against a real mesh: every call needs a key, a job belongs to the key that made
//! it, one key never sees another's jobs (REST, events, gRPC), an admin key sees all.

use std::time::Duration;

use pixelmesh_proto::v1::{GetJobRequest, ListJobsRequest};
use pixelmesh_tests::{Cluster, ClusterOptions, png, rest, sse::SseStream};
use tonic::{Code, metadata::MetadataValue};

const TIMEOUT: Duration = Duration::from_secs(120);
const ALICE: &str = "alice-secret-0123456789";
const BOB: &str = "bob-secret-0123456789";
const ROOT: &str = "root-secret-0123456789";

async fn status(http: &reqwest::Client, method: reqwest::Method, url: &str) -> u16 {
    http.request(method, url)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Reads the feed until a `job_done`; that job's id.
async fn next_done(feed: &mut SseStream) -> String {
    loop {
        let event = feed.next(TIMEOUT).await.expect("feed event");
        if event.event == "job_done" {
            return event.data["id"].as_str().expect("id").to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_isolate_jobs_and_an_admin_sees_all() {
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: vec![
            "--api-keys".into(),
            format!("alice:{ALICE},bob:{BOB}"),
            "--admin-keys".into(),
            format!("root:{ROOT}"),
        ],
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let (alice, bob, root) = (
        rest::keyed_client(ALICE),
        rest::keyed_client(BOB),
        rest::keyed_client(ROOT),
    );
    let anonymous = reqwest::Client::new();

    // No key, or a wrong one: 401 with the JSON error; health stays open.
    let response = anonymous
        .get(format!("{base}/api/v1/jobs"))
        .send()
        .await
        .expect("list");
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["code"], "unauthenticated");
    let wrong = rest::keyed_client("not-a-key-0123456789abcdef");
    assert_eq!(
        status(&wrong, reqwest::Method::GET, &format!("{base}/api/v1/jobs")).await,
        401
    );
    assert_eq!(
        status(&anonymous, reqwest::Method::GET, &format!("{base}/healthz")).await,
        200
    );

    // Both feeds open before any job: each must see only its own key's jobs.
    let mut bob_feed = SseStream::open(&bob, &format!("{base}/api/v1/events"), None).await;
    let mut root_feed = SseStream::open(&root, &format!("{base}/api/v1/events"), None).await;

    let alices = rest::submit(&alice, &base, "grayscale", &[("a.png", png(32, 24, 1))]).await;
    // Through ?access_token=, as a browser EventSource would.
    let mut watch = SseStream::open(
        &anonymous,
        &format!("{base}/api/v1/jobs/{alices}/events?access_token={ALICE}"),
        None,
    )
    .await;
    while watch.next(TIMEOUT).await.is_some() {}
    assert_eq!(next_done(&mut root_feed).await, alices);
    let bobs = rest::submit(&bob, &base, "grayscale", &[("b.png", png(32, 24, 2))]).await;
    // Alice's job ended first, yet Bob's feed tells only of his own.
    assert_eq!(next_done(&mut bob_feed).await, bobs);
    assert_eq!(next_done(&mut root_feed).await, bobs);

    let job = rest::get_json(&alice, &format!("{base}/api/v1/jobs/{alices}")).await;
    assert_eq!(job["owner"], "alice");
    assert_eq!(job["state"], "completed");
    // Bob cannot see, watch, download, export, control or delete Alice's job: to him it
    // does not exist.
    let url = format!("{base}/api/v1/jobs/{alices}");
    use reqwest::Method;
    for (method, path) in [
        (Method::GET, ""),
        (Method::GET, "/events"),
        (Method::GET, "/outputs/0"),
        (Method::GET, "/outputs.zip"),
        (Method::GET, "/analysis.csv"),
        (Method::POST, "/cancel"),
        (Method::POST, "/retry"),
        (Method::POST, "/pause"),
        (Method::POST, "/resume"),
        (Method::DELETE, ""),
    ] {
        let got = status(&bob, method.clone(), &format!("{url}{path}")).await;
        assert_eq!(got, 404, "{method} {path}");
    }
    let listed = rest::get_json(&bob, &format!("{base}/api/v1/jobs")).await;
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [bobs.as_str()]);
    assert_eq!(listed["counts"]["total"], 1);
    // The admin sees both, and may act on either.
    let all = rest::get_json(&root, &format!("{base}/api/v1/jobs")).await;
    assert_eq!(all["counts"]["total"], 2);
    assert_eq!(
        status(&root, Method::GET, &format!("{url}/outputs/0")).await,
        200
    );
    assert_eq!(
        status(&alice, Method::GET, &format!("{url}/outputs/0")).await,
        200
    );

    // gRPC: the same key in metadata, the same isolation.
    let mut grpc = cluster.gateway_client().await;
    let with_key = |secret: &str, id: &str| {
        let mut request = tonic::Request::new(GetJobRequest { id: id.to_string() });
        let value: MetadataValue<_> = format!("Bearer {secret}").parse().expect("metadata");
        request.metadata_mut().insert("authorization", value);
        request
    };
    let status = grpc
        .get_job(GetJobRequest { id: alices.clone() })
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = grpc.get_job(with_key(BOB, &alices)).await.expect_err("bob");
    assert_eq!(status.code(), Code::NotFound);
    let job = grpc
        .get_job(with_key(ALICE, &alices))
        .await
        .expect("alice")
        .into_inner();
    assert_eq!(job.summary.expect("summary").owner, "alice");
    let mut list = tonic::Request::new(ListJobsRequest::default());
    let value: MetadataValue<_> = format!("Bearer {BOB}").parse().expect("metadata");
    list.metadata_mut().insert("authorization", value);
    let listed = grpc.list_jobs(list).await.expect("list").into_inner();
    assert_eq!(listed.jobs.len(), 1);
    assert_eq!(listed.jobs[0].id, bobs);
}
