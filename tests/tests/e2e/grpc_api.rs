//! The gRPC API's parity with REST through a real mesh, over gRPC only: ZIP inputs, the
//! outputs ZIP, downloads by name, analysis exports, and URL lists split into batches.

use std::{io::Cursor, io::Write as _, net::SocketAddr, time::Duration};

use axum::{Router, extract::Path, http::header, response::IntoResponse, routing::get};
use pixelmesh_filter::ops::Pipeline;
use pixelmesh_proto::v1::{
    DownloadOutputRequest, DownloadOutputsRequest, ExportAnalysisRequest, GetBatchRequest,
    GetJobRequest, JobState, ListJobsRequest, Operation, SubmitJobRequest,
};
use pixelmesh_tests::{Cluster, ClusterOptions, api, png};
use tonic::Code;
use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

fn pipeline(text: &str) -> Vec<Operation> {
    Pipeline::from_text(text).expect("pipeline").to_proto()
}

/// A ZIP of `(name, bytes)` files, deflated.
fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, bytes) in files {
        writer.start_file(*name, options).expect("start file");
        writer.write_all(bytes).expect("write");
    }
    writer.finish().expect("finish").into_inner()
}

fn read_entry(bundle: &mut zip::ZipArchive<Cursor<Vec<u8>>>, name: &str) -> Vec<u8> {
    let mut entry = bundle.by_name(name).expect("entry");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read entry");
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zip_becomes_inputs_and_its_outputs_come_back_zipped_and_exported() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let mut client = cluster.gateway_client().await;

    // One entry leaving the archive refuses the whole archive.
    let evil = zip_of(&[
        ("holiday/one.png", png(80, 60, 1)),
        ("work/two.png", png(80, 60, 2)),
        ("../evil.png", png(80, 60, 3)),
    ]);
    let refused = api::upload_archive(&mut client, &evil)
        .await
        .expect_err("an archive with ../evil.png accepted");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(
        refused.message().contains("leaves the archive"),
        "{refused}"
    );

    let archive = zip_of(&[
        ("holiday/beach/one.png", png(80, 60, 1)),
        ("work/two.png", png(80, 60, 2)),
    ]);
    let inputs = api::upload_archive(&mut client, &archive)
        .await
        .expect("a clean archive");
    let names: Vec<&str> = inputs.iter().map(|input| input.name.as_str()).collect();
    assert_eq!(names, ["one.png", "two.png"]);
    assert!(inputs.iter().all(|input| !input.blob_id.is_empty()));

    let job = client
        .submit_job(SubmitJobRequest {
            pipeline: pipeline("resize:w=40/analyze"),
            inputs,
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    let id = job.summary.expect("summary").id;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(
        job.summary.as_ref().expect("summary").state(),
        JobState::Completed
    );

    // Every output in one ZIP, with the manifests.
    let bytes = api::download_outputs(&mut client, &id).await;
    let mut bundle = zip::ZipArchive::new(Cursor::new(bytes)).expect("a valid zip");
    let mut entries: Vec<String> = bundle
        .file_names()
        .map(|name| name.expect("entry name").into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["manifest.csv", "manifest.json", "one.png", "two.png"]
    );
    for image in &job.images {
        let output = image.output.as_ref().expect("output");
        let content = read_entry(&mut bundle, &image.name);
        assert_eq!(content.len() as u64, output.size_bytes, "{}", image.name);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&read_entry(&mut bundle, "manifest.json")).expect("json manifest");
    assert_eq!(manifest.as_array().map(Vec::len), Some(2), "{manifest}");
    assert_eq!(manifest[1]["output_name"], "two.png");
    let csv = String::from_utf8(read_entry(&mut bundle, "manifest.csv")).expect("utf-8");
    assert_eq!(csv.lines().count(), 3, "{csv}");

    // One output by the input's name: the same bytes as in the ZIP.
    let two = api::download_named(&mut client, &id, "two.png").await;
    assert_eq!(two, read_entry(&mut bundle, "two.png"));
    let decoded = image::load_from_memory(&two).expect("a png");
    assert_eq!((decoded.width(), decoded.height()), (40, 30));
    let missing = client
        .download_output(DownloadOutputRequest {
            job_id: id.clone(),
            name: "nope.png".into(),
            ..Default::default()
        })
        .await
        .expect_err("a missing name downloaded");
    assert_eq!(missing.code(), Code::NotFound, "{missing}");

    // The analysis, as a file.
    let export = |format: &str| ExportAnalysisRequest {
        job_id: id.clone(),
        format: format.into(),
    };
    let csv = client
        .export_analysis(export("csv"))
        .await
        .expect("csv export")
        .into_inner();
    assert!(
        csv.content_type.starts_with("text/csv"),
        "{}",
        csv.content_type
    );
    assert_eq!(csv.file_name, format!("{id}-analysis.csv"));
    let text = String::from_utf8(csv.data).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("index,name,state,report,width,height"),
        "{}",
        lines[0]
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[2].starts_with("1,two.png,done,0,40,30,"),
        "{}",
        lines[2]
    );
    let json = client
        .export_analysis(export("json"))
        .await
        .expect("json export")
        .into_inner();
    assert_eq!(json.content_type, "application/json");
    let json: serde_json::Value = serde_json::from_slice(&json.data).expect("json");
    assert_eq!(json["job"], id.as_str());
    let unknown = client
        .export_analysis(export("pdf"))
        .await
        .expect_err("a pdf export");
    assert_eq!(unknown.code(), Code::InvalidArgument, "{unknown}");
    assert!(unknown.message().contains("csv, json or xlsx"), "{unknown}");

    let gone = client
        .download_outputs(DownloadOutputsRequest {
            job_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        })
        .await
        .expect_err("a missing job's outputs");
    assert_eq!(gone.code(), Code::NotFound, "{gone}");
}

/// An HTTP server on loopback serving `/img/{seed}.png`, a 64x48 PNG.
async fn image_server() -> SocketAddr {
    let app = Router::new().route(
        "/img/{name}",
        get(|Path(name): Path<String>| async move {
            let seed = name.trim_end_matches(".png").parse::<u8>().unwrap_or(0);
            ([(header::CONTENT_TYPE, "image/png")], png(64, 48, seed)).into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_list_over_the_job_size_becomes_a_batch() {
    let addr = image_server().await;
    let cluster = Cluster::start(ClusterOptions {
        // The test server's address only: loopback stays refused otherwise.
        filter_args: vec!["--fetch-allow-networks".into(), format!("{}/32", addr.ip())],
        gateway_args: vec!["--max-files-per-job".into(), "2".into()],
        ..Default::default()
    })
    .await;
    let mut client = cluster.gateway_client().await;

    // 5 urls: jobs of 2, 2 and 1.
    let mut list = String::from("# product photos\n");
    for seed in 1..=5 {
        list.push_str(&format!("http://{addr}/img/{seed}.png\n\n"));
    }
    let request = SubmitJobRequest {
        pipeline: pipeline("resize:w=32"),
        url_list: list,
        ..Default::default()
    };

    // One job may not hold them: nothing is queued.
    let refused = client
        .submit_job(request.clone())
        .await
        .expect_err("5 images in a job of at most 2");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    let listed = client
        .list_jobs(ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.jobs.is_empty(), "{listed:?}");

    let batch = client
        .submit_batch(request)
        .await
        .expect("submit batch")
        .into_inner();
    assert!(!batch.parent_id.is_empty());
    let sizes: Vec<u32> = batch.jobs.iter().map(|job| job.total).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let mut ids = Vec::new();
    for summary in &batch.jobs {
        assert_eq!(summary.parent_id, batch.parent_id);
        ids.push(summary.id.clone());
    }
    let second = client
        .get_job(GetJobRequest { id: ids[1].clone() })
        .await
        .expect("get job")
        .into_inner();
    assert_eq!(second.images[0].name, "3.png");
    assert_eq!(second.images[0].url, format!("http://{addr}/img/3.png"));

    for id in &ids {
        let (_, job) = api::watch_to_end(&mut client, id, JOB_TIMEOUT).await;
        assert_eq!(job.summary.expect("summary").state(), JobState::Completed);
    }
    let view = client
        .get_batch(GetBatchRequest {
            id: batch.parent_id.clone(),
        })
        .await
        .expect("get batch")
        .into_inner();
    assert_eq!(view.id, batch.parent_id);
    assert_eq!(view.state(), JobState::Completed);
    assert_eq!(
        (view.total, view.done, view.failed, view.cancelled),
        (5, 5, 0, 0)
    );
    let listed: Vec<&str> = view.jobs.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let missing = client
        .get_batch(GetBatchRequest {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        })
        .await
        .expect_err("a missing batch");
    assert_eq!(missing.code(), Code::NotFound, "{missing}");

    // A CSV list within one job's size is one job, after the inputs given, names from the list.
    let blob = api::upload(&mut client, "first.png", &png(64, 48, 9)).await;
    let small = client
        .submit_batch(SubmitJobRequest {
            pipeline: pipeline("resize:w=32"),
            inputs: vec![pixelmesh_proto::v1::ImageInput {
                blob_id: blob,
                name: "first.png".into(),
                ..Default::default()
            }],
            url_list: format!("name,url\ncat,http://{addr}/img/7.png\n"),
            ..Default::default()
        })
        .await
        .expect("a one-job batch")
        .into_inner();
    assert!(small.parent_id.is_empty());
    let id = small.jobs[0].id.clone();
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    let names: Vec<&str> = job.images.iter().map(|image| image.name.as_str()).collect();
    assert_eq!(names, ["first.png", "cat"]);
    assert_eq!(job.summary.expect("summary").state(), JobState::Completed);

    // A bad line refuses the whole list.
    let bad = client
        .submit_batch(SubmitJobRequest {
            pipeline: pipeline("resize:w=32"),
            url_list: format!("http://{addr}/img/1.png\nftp://example.com/a.png\n"),
            ..Default::default()
        })
        .await
        .expect_err("an ftp url accepted");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad}");
    assert!(bad.message().contains("line 2"), "{bad}");
}
