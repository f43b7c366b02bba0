//! Batch inputs through a real mesh: ZIP archives of images, and every archive attack refused
//! before anything is queued.

use std::{
    io::{Cursor, Write as _},
    time::Duration,
};

use pixelmesh_proto::v1::{ImageState, JobState};
use pixelmesh_tests::{Cluster, ClusterOptions, api, png, rest};
use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

fn options(method: CompressionMethod) -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(method)
}

/// A ZIP of `(name, bytes)` files, each compressed with `method`.
fn zip_of(files: &[(&str, Vec<u8>)], method: CompressionMethod) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in files {
        writer
            .start_file(*name, options(method))
            .expect("start file");
        writer.write_all(bytes).expect("write");
    }
    writer.finish().expect("finish").into_inner()
}

async fn submit_archive(
    http: &reqwest::Client,
    base: &str,
    archive: Vec<u8>,
    extra_file: Option<(&str, Vec<u8>)>,
) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new()
        .text("pipeline", "resize:w=40")
        .part(
            "archive",
            reqwest::multipart::Part::bytes(archive).file_name("photos.zip"),
        );
    if let Some((name, bytes)) = extra_file {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
        );
    }
    rest::post_job(http, base, form).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zip_of_images_becomes_a_job_with_flattened_unique_names() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let archive = zip_of(
        &[
            ("holiday/beach/one.png", png(80, 60, 1)),
            ("work/ONE.png", png(80, 60, 2)),
            ("holiday/two.png", png(80, 60, 3)),
            ("readme.txt", b"not an image at all".to_vec()),
            ("__MACOSX/holiday/._two.png", b"resource fork".to_vec()),
            (".DS_Store", b"finder".to_vec()),
        ],
        CompressionMethod::Deflated,
    );
    let response = submit_archive(&http, &base, archive, Some(("loose.png", png(80, 60, 4)))).await;
    let id = rest::accepted(response).await;

    let mut client = cluster.gateway_client().await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    let summary = job.summary.clone().expect("summary");
    assert_eq!(summary.state(), JobState::CompletedWithErrors, "{job:?}");
    let images: Vec<(&str, ImageState)> = job
        .images
        .iter()
        .map(|image| (image.name.as_str(), image.state()))
        .collect();
    assert_eq!(
        images,
        [
            ("one.png", ImageState::Done),
            ("ONE-2.png", ImageState::Done),
            ("two.png", ImageState::Done),
            ("readme.txt", ImageState::Failed),
            ("loose.png", ImageState::Done),
        ]
    );
    assert!(
        job.images[3].error.contains("not a supported image"),
        "{}",
        job.images[3].error
    );
    // The entries are the images themselves: resized to 40 wide.
    for image in job.images.iter().filter(|i| i.state() == ImageState::Done) {
        assert_eq!(
            image.output.as_ref().map(|o| (o.width, o.height)),
            Some((40, 30))
        );
    }

    // One output by the input's name.
    let by_name = http
        .get(format!("{base}/api/v1/jobs/{id}/outputs/two.png"))
        .send()
        .await
        .expect("download by name");
    assert_eq!(by_name.status().as_u16(), 200);
    let bytes = by_name.bytes().await.expect("body");
    let decoded = image::load_from_memory(&bytes).expect("a png");
    assert_eq!((decoded.width(), decoded.height()), (40, 30));
    let missing = http
        .get(format!("{base}/api/v1/jobs/{id}/outputs/nope.png"))
        .send()
        .await
        .expect("download");
    assert_eq!(missing.status().as_u16(), 404);

    // Every output in one ZIP, with the manifests.
    let response = http
        .get(format!("{base}/api/v1/jobs/{id}/outputs.zip"))
        .send()
        .await
        .expect("bundle");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("application/zip")
    );
    let bytes = response.bytes().await.expect("bundle body");
    let mut bundle = zip::ZipArchive::new(Cursor::new(bytes.to_vec())).expect("a valid zip");
    let mut names: Vec<String> = bundle
        .file_names()
        .map(|name| name.expect("entry name").into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ONE-2.png",
            "loose.png",
            "manifest.csv",
            "manifest.json",
            "one.png",
            "two.png"
        ]
    );
    for (i, image) in job.images.iter().enumerate() {
        let Some(output) = &image.output else {
            continue;
        };
        let entry = ["one.png", "ONE-2.png", "two.png", "", "loose.png"][i];
        let mut file = bundle.by_name(entry).expect("entry");
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut content).expect("read entry");
        assert_eq!(content.len() as u64, output.size_bytes, "{entry}");
        let decoded = image::load_from_memory(&content).expect("entry decodes");
        assert_eq!((decoded.width(), decoded.height()), (40, 30));
    }
    let mut manifest = String::new();
    std::io::Read::read_to_string(
        &mut bundle.by_name("manifest.json").expect("manifest"),
        &mut manifest,
    )
    .expect("read manifest");
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("json manifest");
    let rows = manifest.as_array().expect("rows");
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[3]["input_name"], "readme.txt");
    assert_eq!(rows[3]["state"], "failed");
    assert_eq!(rows[3]["output_name"], "");
    assert!(
        rows[3]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a supported image"))
    );
    assert_eq!(rows[1]["output_name"], "ONE-2.png");
    assert_eq!(rows[1]["width"], 40);
    let mut csv = String::new();
    std::io::Read::read_to_string(&mut bundle.by_name("manifest.csv").expect("csv"), &mut csv)
        .expect("read csv");
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert!(csv.starts_with("index,input_name,output_name,"), "{csv}");
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_attacks_are_refused_before_anything_is_queued() {
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: [
            "--max-files-per-job",
            "4",
            "--max-zip-total-bytes",
            "3000000",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();

    let mut symlink = ZipWriter::new(Cursor::new(Vec::new()));
    symlink
        .add_symlink(
            "photo.png",
            "/etc/passwd",
            options(CompressionMethod::Stored),
        )
        .expect("symlink");
    let symlink = symlink.finish().expect("finish").into_inner();
    let pseudo_random: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "traversal",
            zip_of(
                &[("../../etc/cron.d/x.png", png(80, 60, 1))],
                CompressionMethod::Stored,
            ),
            400,
            "leaves the archive",
        ),
        (
            "absolute path",
            zip_of(&[("/etc/x.png", png(80, 60, 1))], CompressionMethod::Stored),
            400,
            "absolute",
        ),
        ("symlink", symlink, 400, "symbolic link"),
        (
            "too many entries",
            zip_of(
                &(0..5)
                    .map(|i| {
                        (
                            ["a.png", "b.png", "c.png", "d.png", "e.png"][i],
                            png(80, 60, i as u8),
                        )
                    })
                    .collect::<Vec<_>>(),
                CompressionMethod::Stored,
            ),
            413,
            "more than 4 files",
        ),
        (
            "too many bytes",
            zip_of(
                &[("a.png", pseudo_random.clone()), ("b.png", pseudo_random)],
                CompressionMethod::Stored,
            ),
            413,
            "bytes",
        ),
        (
            "zip bomb",
            zip_of(
                &[("bomb.png", vec![0; 2_500_000])],
                CompressionMethod::Deflated,
            ),
            400,
            "zip bomb",
        ),
        (
            "not a zip",
            b"PK but not really".to_vec(),
            400,
            "not a zip archive",
        ),
    ];
    for (what, archive, status, says) in cases {
        let response = submit_archive(&http, &base, archive, None).await;
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: serde_json::Value = response.json().await.expect("json error");
        let error = body["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(error.contains(says), "{what}: {body}");
    }

    // Nothing was queued, and the gateway still takes a good archive.
    let jobs = rest::get_json(&http, &format!("{base}/api/v1/jobs")).await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");
    let good = zip_of(&[("fine.png", png(80, 60, 9))], CompressionMethod::Deflated);
    rest::accepted(submit_archive(&http, &base, good, None).await).await;
}
