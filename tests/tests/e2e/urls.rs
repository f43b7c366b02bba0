//! URL inputs through a real mesh: lists fetched by the filter workers from an HTTP server
//! the test runs, long lists split into linked jobs, and private targets refused.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use pixelmesh_proto::v1::{ImageState, JobState};
use pixelmesh_tests::{Cluster, ClusterOptions, api, png, rest};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// What the image server was asked for: path → user agents.
type Seen = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// An HTTP server on loopback: `/img/{seed}.png` (a 64x48 PNG), `/page` (HTML) and
/// `/missing` (404). Records every request.
async fn image_server() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = |seen: &Seen, path: String, headers: &HeaderMap| {
        let agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        seen.lock()
            .expect("seen")
            .entry(path)
            .or_default()
            .push(agent);
    };
    let app =
        Router::new()
            .route(
                "/img/{name}",
                get(
                    move |State(seen): State<Seen>,
                          Path(name): Path<String>,
                          headers: HeaderMap| async move {
                        record(&seen, format!("/img/{name}"), &headers);
                        let seed = name.trim_end_matches(".png").parse::<u8>().unwrap_or(0);
                        ([(header::CONTENT_TYPE, "image/png")], png(64, 48, seed)).into_response()
                    },
                ),
            )
            .route(
                "/page",
                get(
                    move |State(seen): State<Seen>, headers: HeaderMap| async move {
                        record(&seen, "/page".into(), &headers);
                        (
                            [(header::CONTENT_TYPE, "text/html")],
                            "<html>not an image</html>",
                        )
                            .into_response()
                    },
                ),
            )
            .route(
                "/missing",
                get(
                    move |State(seen): State<Seen>, headers: HeaderMap| async move {
                        record(&seen, "/missing".into(), &headers);
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(axum::body::Body::from("gone"))
                            .expect("response")
                    },
                ),
            )
            .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

async fn submit_urls(http: &reqwest::Client, base: &str, list: String) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .text("pipeline", "resize:w=32")
        .part(
            "urls",
            reqwest::multipart::Part::text(list).file_name("urls.txt"),
        );
    rest::post_job(http, base, form).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_url_list_is_fetched_by_the_workers_as_linked_jobs() {
    let (addr, seen) = image_server().await;
    let cluster = Cluster::start(ClusterOptions {
        filters: 2,
        // The test server's address only: loopback stays refused otherwise.
        filter_args: vec!["--fetch-allow-networks".into(), format!("{}/32", addr.ip())],
        gateway_args: vec!["--max-files-per-job".into(), "4".into()],
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();

    // 7 images, a 404 and a web page: 9 lines, so jobs of 4, 4 and 1.
    let mut list = String::from("# product photos\n");
    for seed in 1..=7 {
        list.push_str(&format!("http://{addr}/img/{seed}.png\n"));
    }
    list.push_str(&format!("http://{addr}/missing\n\nhttp://{addr}/page\n"));
    let response = submit_urls(&http, &base, list).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.expect("json");
    let parent = body["parent_id"].as_str().expect("parent id").to_string();
    assert_eq!(body["images"], 9);
    let jobs: Vec<String> = body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["id"].as_str().expect("id").to_string())
        .collect();
    let sizes: Vec<u64> = body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["images"].as_u64().expect("images"))
        .collect();
    assert_eq!(sizes, [4, 4, 1]);

    let mut client = cluster.gateway_client().await;
    let mut finished = Vec::new();
    for id in &jobs {
        let (_, job) = api::watch_to_end(&mut client, id, JOB_TIMEOUT).await;
        assert_eq!(job.summary.as_ref().expect("summary").parent_id, parent);
        finished.push(job);
    }
    // The second job holds urls 5–8: 5, 6, 7 fetched, 8 is the 404.
    let second = &finished[1];
    assert_eq!(
        second.summary.as_ref().expect("summary").state(),
        JobState::CompletedWithErrors
    );
    let missing = &second.images[3];
    assert_eq!(missing.state(), ImageState::Failed);
    assert!(missing.error.contains("404"), "{}", missing.error);
    assert_eq!(missing.url, format!("http://{addr}/missing"));
    let page = &finished[2].images[0];
    assert_eq!(page.state(), ImageState::Failed);
    assert!(page.error.contains("text/html"), "{}", page.error);
    let first = &finished[0];
    assert_eq!(
        first.summary.as_ref().expect("summary").state(),
        JobState::Completed
    );
    assert_eq!(first.images[0].name, "1.png");
    let output = first.images[0].output.as_ref().expect("output");
    assert_eq!((output.width, output.height), (32, 24));
    let bytes = api::download(&mut client, &jobs[0], 0).await;
    let decoded = image::load_from_memory(&bytes).expect("output decodes");
    assert_eq!((decoded.width(), decoded.height()), (32, 24));

    // The workers fetched, once per image, with their own client.
    {
        let seen = seen.lock().expect("seen");
        for seed in 1..=7 {
            let agents = &seen[&format!("/img/{seed}.png")];
            assert_eq!(agents.len(), 1, "image {seed} fetched {agents:?}");
            assert!(agents[0].starts_with("pixelmesh/"), "{agents:?}");
        }
    }

    // The batch aggregates its jobs.
    let batch = rest::get_json(&http, &format!("{base}/api/v1/batches/{parent}")).await;
    assert_eq!(batch["state"], "completed_with_errors");
    assert_eq!(
        (
            batch["total"].as_u64(),
            batch["done"].as_u64(),
            batch["failed"].as_u64()
        ),
        (Some(9), Some(7), Some(2))
    );
    let listed: Vec<&str> = batch["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, jobs.iter().map(String::as_str).collect::<Vec<_>>());
    let missing_batch = http
        .get(format!("{base}/api/v1/batches/01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing_batch.status().as_u16(), 404);

    // The list filters by batch and by state, and counts every job.
    let by_parent = rest::get_json(&http, &format!("{base}/api/v1/jobs?parent={parent}")).await;
    assert_eq!(by_parent["jobs"].as_array().expect("jobs").len(), 3);
    let completed = rest::get_json(&http, &format!("{base}/api/v1/jobs?state=completed")).await;
    let completed: Vec<&str> = completed["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["id"].as_str().expect("id"))
        .collect();
    assert_eq!(completed, [jobs[0].as_str()]);
    assert_eq!(by_parent["counts"]["total"], 3);
    // First job all done, second with the 404, third only the web page.
    assert_eq!(by_parent["counts"]["completed"], 1);
    assert_eq!(by_parent["counts"]["completed_with_errors"], 1);
    assert_eq!(by_parent["counts"]["failed"], 1);
    let bad_state = http
        .get(format!("{base}/api/v1/jobs?state=finished"))
        .send()
        .await
        .expect("get");
    assert_eq!(bad_state.status().as_u16(), 400);

    // The batch's export: one table, a row per image, each led by its job and URL.
    let csv = http
        .get(format!("{base}/api/v1/batches/{parent}/analysis.csv"))
        .send()
        .await
        .expect("get");
    assert_eq!(csv.status().as_u16(), 200);
    let csv = csv.text().await.expect("csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert!(
        rows[0].starts_with("job,url,index,name,state,"),
        "{}",
        rows[0]
    );
    assert_eq!(rows.len(), 10, "{csv}");
    assert!(
        rows[1].starts_with(&format!(
            "{},http://{addr}/img/1.png,0,1.png,done,",
            jobs[0]
        )),
        "{}",
        rows[1]
    );
    let missing_row = rows[8];
    assert!(
        missing_row.starts_with(&format!("{},http://{addr}/missing,3,", jobs[1]))
            && missing_row.contains(",failed,")
            && missing_row.contains("404"),
        "{missing_row}"
    );
    let jsonl = http
        .get(format!("{base}/api/v1/batches/{parent}/analysis.jsonl"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("jsonl");
    let exported: Vec<String> = jsonl
        .lines()
        .map(|line| {
            let job: serde_json::Value = serde_json::from_str(line).expect("a json line");
            job["job"].as_str().expect("job").to_string()
        })
        .collect();
    assert_eq!(exported, jobs);

    // A list is taken whole or not at all. Streamed in 7-byte pieces, so lines arrive cut:
    // its first 9 lines make two jobs (the second when the 9th arrives) before line 10 is
    // read; line 10 is bad, so those jobs are cancelled and deleted, and the error names it.
    let mut bad_list = String::new();
    for seed in 1..=9 {
        bad_list.push_str(&format!("http://{addr}/img/{seed}.png\n"));
    }
    bad_list.push_str("ftp://example.com/10.png\nhttp://example.com/11.png\n");
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = bad_list
        .as_bytes()
        .chunks(7)
        .map(|piece| Ok(piece.to_vec()))
        .collect();
    let streamed = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
    let form = reqwest::multipart::Form::new()
        .text("pipeline", "resize:w=32")
        .part("urls", reqwest::multipart::Part::stream(streamed));
    let refused = rest::post_job(&http, &base, form).await;
    assert_eq!(refused.status().as_u16(), 400);
    let message = refused.json::<serde_json::Value>().await.expect("json")["error"]
        .as_str()
        .expect("error")
        .to_string();
    assert!(
        message.starts_with("line 10: url \"ftp://example.com/10.png\": only http and https")
            && message
                .contains("the 2 jobs made from its earlier lines were cancelled and deleted"),
        "{message}"
    );
    let listed = rest::get_json(&http, &format!("{base}/api/v1/jobs")).await;
    assert_eq!(listed["counts"]["total"], 3, "{listed}");

    // The pipeline must come first when the list makes more than one job.
    let form = reqwest::multipart::Form::new()
        .text("urls", format!("http://{addr}/img/1.png\n").repeat(5))
        .text("pipeline", "resize:w=32");
    let refused = rest::post_job(&http, &base, form).await;
    assert_eq!(refused.status().as_u16(), 400);
    let message = refused.json::<serde_json::Value>().await.expect("json")["error"].clone();
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.starts_with("the \"pipeline\" part must come before")),
        "{message}"
    );
    let listed = rest::get_json(&http, &format!("{base}/api/v1/jobs")).await;
    assert_eq!(listed["counts"]["total"], 3, "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_targets_are_refused_unless_allowed() {
    let (addr, seen) = image_server().await;
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();

    // A CSV list with names.
    let list = format!(
        "name,url\nlocal,http://{addr}/img/1.png\nby-name,http://localhost:{}/img/2.png\nmetadata,http://169.254.169.254/latest/meta-data/\nten,http://10.0.0.1/a.png\nsix,http://[::1]:{}/img/3.png\n",
        addr.port(),
        addr.port()
    );
    let id = rest::accepted(submit_urls(&http, &base, list).await).await;
    let mut client = cluster.gateway_client().await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(
        job.summary.as_ref().expect("summary").state(),
        JobState::Failed
    );
    let names: Vec<&str> = job.images.iter().map(|image| image.name.as_str()).collect();
    assert_eq!(names, ["local", "by-name", "metadata", "ten", "six"]);
    for (image, kind) in
        job.images
            .iter()
            .zip(["loopback", "loopback", "link-local", "private", "loopback"])
    {
        assert_eq!(image.state(), ImageState::Failed, "{}", image.name);
        assert!(
            image.error.contains(kind) && image.error.contains("refused"),
            "{}: {}",
            image.name,
            image.error
        );
        // Refusals are final: no retries.
        assert_eq!(image.attempts, 1, "{}", image.name);
    }
    assert!(
        seen.lock().expect("seen").is_empty(),
        "a refused url was fetched"
    );

    // A malformed list queues nothing.
    let before =
        rest::get_json(&http, &format!("{base}/api/v1/jobs")).await["counts"]["total"].clone();
    for bad in [
        format!("http://{addr}/img/1.png\nftp://example.com/a.png\n"),
        "https://user:secret@example.com/a.png\n".to_string(),
        "\n# nothing\n".to_string(),
    ] {
        let response = submit_urls(&http, &base, bad.clone()).await;
        assert_eq!(response.status().as_u16(), 400, "{bad:?}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["code"], "invalid_argument", "{body}");
    }
    let after =
        rest::get_json(&http, &format!("{base}/api/v1/jobs")).await["counts"]["total"].clone();
    assert_eq!(before, after);
}
