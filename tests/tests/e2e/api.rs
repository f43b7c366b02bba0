//! The public API's edges: bad input, submit-time validation, REST, reflection.

use std::time::Duration;

use pixelmesh_proto::v1::{
    Blur, GetJobRequest, ImageInput, ImageState, JobState, Operation, Resize, SubmitJobRequest,
    operation::Op,
};
use pixelmesh_tests::{Cluster, ClusterOptions, api, corpus, rest, tool};

const JOB_TIMEOUT: Duration = Duration::from_secs(240);

fn resize(width: u32) -> Operation {
    Operation {
        op: Some(Op::Resize(Resize {
            width,
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_images_fail_alone_and_the_mesh_keeps_serving() {
    let cluster = Cluster::start(ClusterOptions {
        // safe-landing (5120x2880, 14.7 MP) is over this; kite (2560x1600) is not.
        max_pixels: 10_000_000,
        ..Default::default()
    })
    .await;
    let mut client = cluster.gateway_client().await;
    let kite = corpus::read("kite-2560x1600.jpg");
    let truncated = kite[..kite.len() / 3].to_vec();
    let images = vec![
        (
            "notes.txt".to_string(),
            b"these bytes are not an image".to_vec(),
        ),
        ("truncated.jpg".to_string(), truncated),
        (
            "huge.jpg".to_string(),
            corpus::read("safe-landing-5120x2880.jpg"),
        ),
        ("kite.jpg".to_string(), kite.clone()),
    ];
    let job = api::submit(&mut client, &images, vec![resize(320)]).await;
    let id = job.summary.expect("summary").id;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    let summary = job.summary.clone().expect("summary");
    assert_eq!(summary.state(), JobState::CompletedWithErrors, "{job:?}");
    assert_eq!((summary.done, summary.failed), (1, 3));

    let errors: Vec<(ImageState, String)> = job
        .images
        .iter()
        .map(|i| (i.state(), i.error.to_lowercase()))
        .collect();
    assert_eq!(errors[0].0, ImageState::Failed);
    assert!(
        errors[0].1.contains("not a supported image"),
        "{}",
        errors[0].1
    );
    assert_eq!(errors[1].0, ImageState::Failed);
    assert!(
        ["truncat", "corrupt", "eof", "end of"]
            .iter()
            .any(|w| errors[1].1.contains(w)),
        "truncated jpeg error does not say so: {}",
        errors[1].1
    );
    assert_eq!(errors[2].0, ImageState::Failed);
    assert!(errors[2].1.contains("limit"), "{}", errors[2].1);
    assert_eq!(errors[3].0, ImageState::Done);
    // A failure is final at once: bad input is never retried.
    for image in &job.images[..3] {
        assert_eq!(image.attempts, 1, "{image:?}");
    }

    // The mesh still serves other jobs.
    let job = api::submit(
        &mut client,
        &[("kite.jpg".to_string(), kite)],
        vec![resize(200)],
    )
    .await;
    let id = job.summary.expect("summary").id;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(job.summary.expect("summary").state(), JobState::Completed);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_pipelines_are_refused_at_submit() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let mut client = cluster.gateway_client().await;
    let blob = api::upload(&mut client, "kite.jpg", &corpus::read("kite-2560x1600.jpg")).await;
    let inputs = vec![ImageInput {
        blob_id: blob,
        name: "kite.jpg".into(),
        ..Default::default()
    }];

    // gRPC: a negative sigma names the op and the field.
    let status = client
        .submit_job(SubmitJobRequest {
            pipeline: vec![Operation {
                op: Some(Op::Blur(Blur { sigma: -1.0 })),
            }],
            inputs: inputs.clone(),
            ..Default::default()
        })
        .await
        .expect_err("negative sigma accepted");
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{status:?}\n{}",
        cluster.logs()
    );
    assert!(
        status.message().contains("blur") && status.message().contains("sigma"),
        "{}",
        status.message()
    );

    // gRPC: an input blob that does not exist.
    let status = client
        .submit_job(SubmitJobRequest {
            pipeline: vec![resize(100)],
            inputs: vec![ImageInput {
                blob_id: "0".repeat(64),
                name: "ghost.jpg".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("missing blob accepted");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // HTTP: an unknown op is a 400 with a JSON body naming it.
    let http = reqwest::Client::new();
    let form = reqwest::multipart::Form::new()
        .text("pipeline", r#"[{"op":"sharpenn","sigma":1}]"#)
        .part(
            "file",
            reqwest::multipart::Part::bytes(corpus::read("kite-2560x1600.jpg"))
                .file_name("kite.jpg"),
        );
    let response = http
        .post(format!("{}/api/v1/jobs", cluster.http_url()))
        .multipart(form)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.expect("json error body");
    assert_eq!(body["code"], "invalid_argument");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("sharpenn"),
        "{body}"
    );

    // HTTP: negative sigma too, in JSON and in the text form, with the same message.
    for pipeline in [r#"[{"op":"blur","sigma":-2}]"#, "resize:w=100/blur:-2"] {
        let form = reqwest::multipart::Form::new()
            .text("pipeline", pipeline)
            .part(
                "file",
                reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("x.jpg"),
            );
        let response = http
            .post(format!("{}/api/v1/jobs", cluster.http_url()))
            .multipart(form)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 400, "{pipeline}");
        let body: serde_json::Value = response.json().await.expect("json error body");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .ends_with("(blur): sigma must be > 0 and <= 100, got -2"),
            "{pipeline}: {body}"
        );
    }

    // Nothing was queued: no job exists.
    let jobs = client
        .list_jobs(pixelmesh_proto::v1::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_submit_status_and_download() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();

    let health: serde_json::Value = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");

    let form = reqwest::multipart::Form::new()
        .text(
            "pipeline",
            r#"[{"op":"resize","width":300},{"op":"brightness","factor":1.1},{"op":"format","format":"png"}]"#,
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(corpus::read("autumn-2560x1600.jpg"))
                .file_name("photos/autumn.jpg"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(corpus::read("wood-4096x4096.webp"))
                .file_name("wood.webp"),
        );
    let id = rest::accepted(rest::post_job(&http, &base, form).await).await;

    let mut client = cluster.gateway_client().await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(job.summary.expect("summary").state(), JobState::Completed);

    let status = rest::get_json(&http, &format!("{base}/api/v1/jobs/{id}")).await;
    assert_eq!(status["state"], "completed");
    assert_eq!(status["done"], 2);
    assert_eq!(status["images"][0]["name"], "autumn.jpg");
    assert_eq!(status["images"][1]["output"]["width"], 300);
    assert_eq!(status["images"][1]["output"]["height"], 300);

    let response = http
        .get(format!("{base}/api/v1/jobs/{id}/outputs/0"))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let bytes = response.bytes().await.expect("body");
    let image = image::load_from_memory(&bytes).expect("png decodes");
    assert_eq!((image.width(), image.height()), (300, 188));

    let missing = http
        .get(format!("{base}/api/v1/jobs/{id}/outputs/7"))
        .send()
        .await
        .expect("download");
    assert_eq!(missing.status().as_u16(), 404);
    let unknown = http
        .get(format!("{base}/api/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        .send()
        .await
        .expect("get");
    assert_eq!(unknown.status().as_u16(), 404);

    // The same job over gRPC.
    let job = client
        .get_job(GetJobRequest { id: id.clone() })
        .await
        .expect("get job")
        .into_inner();
    assert_eq!(job.images.len(), 2);
}

/// AVIF in and out over REST: an AVIF with alpha (made by libvips) and a JPEG, resized and
/// written as AVIF; the outputs are AVIFs of the right size, alpha kept where there was some.
#[tokio::test(flavor = "multi_thread")]
async fn avif_in_and_out_through_the_mesh() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let avif = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/filter/tests/data/kite-rgba-320x200.avif"
    ))
    .expect("fixture");
    let form = reqwest::multipart::Form::new()
        .text("pipeline", "resize:w=160/format:avif,q=60,effort=6")
        .part(
            "file",
            reqwest::multipart::Part::bytes(avif).file_name("kite.avif"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(corpus::read("autumn-2560x1600.jpg"))
                .file_name("autumn.jpg"),
        );
    let id = rest::accepted(rest::post_job(&http, &base, form).await).await;
    let mut client = cluster.gateway_client().await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(job.summary.expect("summary").state(), JobState::Completed);
    for (index, height, alpha) in [(0, 100, true), (1, 100, false)] {
        let response = http
            .get(format!("{base}/api/v1/jobs/{id}/outputs/{index}"))
            .send()
            .await
            .expect("download");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "image/avif");
        let bytes = response.bytes().await.expect("body");
        let decoded = pixelmesh_filter::codec::decode(&bytes, &Default::default())
            .expect("the output is an AVIF we read");
        assert_eq!(
            (decoded.image.width(), decoded.image.height()),
            (160, height)
        );
        assert_eq!(decoded.image.has_alpha(), alpha, "output {index}");
    }
}

/// Metadata on request through the mesh: a camera JPEG with EXIF and XMP keeps both with
/// `strip=false`, and nothing without it; a CMYK JPEG with its profile comes out in sRGB.
#[tokio::test(flavor = "multi_thread")]
async fn an_animation_keeps_every_frame_through_the_mesh_and_an_op_that_cannot_animate_is_refused()
{
    use pixelmesh_filter::animation;
    use pixelmesh_filter::ops::FileFormat;
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    // A 4-frame 80x50 GIF made by libvips, 100-400 ms a frame, played 3 times.
    let gif = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/filter/tests/data/kite-4-frames.gif"
    ))
    .expect("fixture");
    let files = [("spin.gif", gif.clone())];

    // Refused at submit, naming the input and the op, before anything is queued.
    let form = reqwest::multipart::Form::new()
        .text("pipeline", "resize:w=40/analyze")
        .part(
            "file",
            reqwest::multipart::Part::bytes(gif.clone()).file_name("spin.gif"),
        );
    let refused = rest::post_job(&http, &base, form).await;
    assert_eq!(refused.status().as_u16(), 400);
    let body: serde_json::Value = refused.json().await.expect("json");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "input 0 (spin.gif): the input is an animation of 4 frames and op 2 (analyze) cannot animate"
        ) && message.ends_with("add frame=0 to the format op to use one frame"),
        "{message}"
    );

    let mut client = cluster.gateway_client().await;
    for (pipeline, format) in [
        (
            "resize:w=40/flip/grayscale/format:webp,quality=80",
            FileFormat::Webp,
        ),
        ("resize:w=40/format:gif", FileFormat::Gif),
        ("resize:w=40/analyze/format:png,frame=2", FileFormat::Png),
    ] {
        let id = rest::submit(&http, &base, pipeline, &files).await;
        let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
        assert_eq!(
            job.summary.expect("summary").state(),
            JobState::Completed,
            "{pipeline}"
        );
        let url = format!("{base}/api/v1/jobs/{id}/outputs/0");
        let bytes = http.get(url).send().await.expect("download");
        let bytes = bytes.bytes().await.expect("body").to_vec();
        assert_eq!(
            pixelmesh_filter::codec::detect_format(&bytes),
            Some(format),
            "{pipeline}"
        );
        let count = animation::frame_count(&bytes, format);
        if format == FileFormat::Png {
            assert_eq!(count.frames, 1, "{pipeline}: one frame picked");
            continue;
        }
        assert_eq!(count.frames, 4, "{pipeline}: every frame kept");
        let mut sizes = Vec::new();
        let timing = animation::open(&bytes, format, 4, &Default::default())
            .expect("the output opens")
            .decode_each(|frame, _| {
                sizes.push((frame.width(), frame.height()));
                Ok::<_, pixelmesh_filter::codec::DecodeError>(())
            })
            .expect("the output decodes");
        assert_eq!(sizes, vec![(40, 25); 4], "{pipeline}");
        assert_eq!(timing.delays_ms, [100, 200, 300, 400], "{pipeline}");
        assert_eq!(timing.loops, 3, "{pipeline}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_kept_on_request_and_cmyk_converted_through_the_mesh() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let camera = corpus::read("kite-2560x1600.jpg");
    let original = pixelmesh_filter::codec::decode(&camera, &Default::default()).expect("kite");
    assert!(
        !original.exif.is_empty() && !original.xmp.is_empty(),
        "the corpus kite has both"
    );
    let cmyk = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/filter/tests/data/kite-cmyk-320x200.jpg"
    ))
    .expect("fixture");
    let reference = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/filter/tests/data/kite-cmyk-320x200.png"
    ))
    .expect("fixture");
    let reference = pixelmesh_filter::codec::decode(&reference, &Default::default())
        .expect("png")
        .image;
    let mean_rgb = |image: &pixelmesh_filter::ops::Bitmap| {
        let pixels = image.data().chunks_exact(3);
        let n = pixels.len() as f64;
        let mut sum = [0.0; 3];
        for pixel in pixels {
            for (s, &c) in sum.iter_mut().zip(pixel) {
                *s += f64::from(c);
            }
        }
        sum.map(|s| s / n)
    };
    let mut client = cluster.gateway_client().await;
    for (pipeline, kept) in [
        ("resize:w=160/format:jpeg,strip=false", true),
        ("resize:w=160/format:jpeg", false),
    ] {
        let form = reqwest::multipart::Form::new()
            .text("pipeline", pipeline)
            .part(
                "file",
                reqwest::multipart::Part::bytes(camera.clone()).file_name("kite.jpg"),
            )
            .part(
                "file",
                reqwest::multipart::Part::bytes(cmyk.clone()).file_name("cmyk.jpg"),
            );
        let id = rest::accepted(rest::post_job(&http, &base, form).await).await;
        let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
        assert_eq!(job.summary.expect("summary").state(), JobState::Completed);
        let output = |index| {
            let url = format!("{base}/api/v1/jobs/{id}/outputs/{index}");
            let http = http.clone();
            async move {
                let bytes = http.get(url).send().await.expect("download");
                let bytes = bytes.bytes().await.expect("body");
                pixelmesh_filter::codec::decode(&bytes, &Default::default()).expect("a JPEG")
            }
        };
        let photo = output(0).await;
        assert_eq!(photo.xmp == original.xmp, kept, "{pipeline}: xmp");
        assert_eq!(!photo.exif.is_empty(), kept, "{pipeline}: exif");
        // Its mean colour is libvips' conversion's, through the profile.
        let converted = output(1).await;
        assert_eq!(converted.image.width(), 160);
        let (ours, theirs) = (mean_rgb(&converted.image), mean_rgb(&reference));
        let off = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            off < 2.0,
            "{pipeline}: mean colour {ours:?}, libvips {theirs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_describes_submits_and_watches() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let expect = |addr: &str, services: &[&str]| {
        let output = std::process::Command::new(tool("grpcurl"))
            .args(["-plaintext", addr, "list"])
            .output()
            .expect("running grpcurl");
        let listed = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "grpcurl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for service in services {
            assert!(
                listed.lines().any(|l| l == *service),
                "{service} not in {listed}"
            );
        }
    };
    let with_common = |name: &str| vec![name.to_string(), "grpc.health.v1.Health".to_string()];
    for (port, service) in [
        (cluster.gateway.port, "pixelmesh.v1.Gateway"),
        (cluster.scheduler.port, "pixelmesh.v1.Scheduler"),
        (cluster.storage.port, "pixelmesh.v1.Storage"),
    ] {
        let names = with_common(service);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        expect(&format!("127.0.0.1:{port}"), &names);
    }
    expect(
        &format!("127.0.0.1:{}", cluster.filters[0].port),
        &["grpc.health.v1.Health"],
    );

    // Real calls through reflection, the way the README shows them.
    let grpcurl = |args: &[&str]| -> String {
        let output = std::process::Command::new(tool("grpcurl"))
            .args(["-plaintext", "-max-time", "120"])
            .args(args)
            .output()
            .expect("running grpcurl");
        assert!(
            output.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let addr = cluster.grpc_addr();
    grpcurl(&["-d", "{}", &addr, "pixelmesh.v1.Gateway/ListJobs"]);
    let described = grpcurl(&[&addr, "describe", "pixelmesh.v1.Gateway"]);
    assert!(
        described.contains("pixelmesh.v1.Gateway is a service"),
        "{described}"
    );
    for rpc in [
        "rpc SubmitJob",
        "rpc WatchJob",
        "rpc UploadImage",
        "stream .pixelmesh.v1.JobEvent",
    ] {
        assert!(described.contains(rpc), "{rpc} not in {described}");
    }
    for role in [
        &cluster.gateway,
        &cluster.scheduler,
        &cluster.storage,
        &cluster.filters[0],
    ] {
        let health = grpcurl(&[
            &format!("127.0.0.1:{}", role.port),
            "grpc.health.v1.Health/Check",
        ]);
        let health: serde_json::Value = serde_json::from_str(&health).expect("json");
        assert_eq!(health["status"], "SERVING", "{}", role.name);
    }

    // Upload-free: the input is a blob storage already holds (here put by REST). The only
    // worker is stopped first, so the watch below sees the job run, not just its end.
    assert!(cluster.filters[0].terminate());
    let http = reqwest::Client::new();
    let uploaded = http
        .post(format!("{}/api/v1/uploads", cluster.http_url()))
        .body(corpus::read("kite-2560x1600.jpg"))
        .send()
        .await
        .expect("upload");
    assert_eq!(uploaded.status().as_u16(), 201);
    let blob: serde_json::Value = uploaded.json().await.expect("json");
    let body = serde_json::json!({
        "pipeline": [{"resize": {"width": 640}}, {"grayscale": {}}],
        "inputs": [{"blobId": blob["id"], "name": "kite.jpg"}],
    })
    .to_string();
    let submitted = grpcurl(&["-d", &body, &addr, "pixelmesh.v1.Gateway/SubmitJob"]);
    let job: serde_json::Value = serde_json::from_str(&submitted).expect("job json");
    let id = job["summary"]["id"].as_str().expect("job id").to_string();

    // WatchJob streams events until the job ends; grpcurl prints one JSON object per event.
    let mut watch = std::process::Command::new(tool("grpcurl"))
        .args(["-plaintext", "-max-time", "120", "-d"])
        .arg(serde_json::json!({"id": id}).to_string())
        .args([addr.as_str(), "pixelmesh.v1.Gateway/WatchJob"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running grpcurl");
    // The first event (the job as it stands) is out once the stream is open.
    let mut stdout = std::io::BufReader::new(watch.stdout.take().expect("stdout"));
    let mut watched = String::new();
    while !watched.ends_with("\n}\n") {
        let read = std::io::BufRead::read_line(&mut stdout, &mut watched).expect("read");
        assert!(read > 0, "the watch ended before the job ran: {watched}");
    }
    assert!(watched.contains("JOB_STATE_RUNNING"), "{watched}");
    cluster.restart("filter-0").await;
    std::io::Read::read_to_string(&mut stdout, &mut watched).expect("read");
    assert!(watch.wait().expect("grpcurl").success(), "{watched}");
    let events: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&watched)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("a stream of JSON events");
    assert!(events.len() >= 2, "{watched}");
    let last = events.last().expect("an event");
    assert_eq!(last["summary"]["state"], "JOB_STATE_COMPLETED", "{watched}");
    assert!(
        events
            .iter()
            .any(|e| e["image"]["state"] == "IMAGE_STATE_DONE"),
        "{watched}"
    );
    let fetched = grpcurl(&[
        "-d",
        &serde_json::json!({"id": id}).to_string(),
        &addr,
        "pixelmesh.v1.Gateway/GetJob",
    ]);
    let fetched: serde_json::Value = serde_json::from_str(&fetched).expect("json");
    assert_eq!(fetched["images"][0]["output"]["width"], 640, "{fetched}");
}

/// A logo uploaded over REST, stamped by a watermark, and an analysis report delivered with the
/// output; a missing logo is refused at submit, one that is not an image fails its images.
#[tokio::test(flavor = "multi_thread")]
async fn watermark_and_analyze_through_the_mesh() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let upload = |bytes: Vec<u8>| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let response = http
                .post(format!("{base}/api/v1/uploads"))
                .body(bytes)
                .send()
                .await
                .expect("upload");
            assert_eq!(response.status().as_u16(), 201);
            let blob: serde_json::Value = response.json().await.expect("json");
            blob["id"].as_str().expect("id").to_string()
        }
    };
    // An opaque red 200x100 logo.
    let red = image::RgbImage::from_pixel(200, 100, image::Rgb([255, 0, 0]));
    let mut png = Vec::new();
    red.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    let logo = upload(png).await;
    let not_an_image = upload(b"this is not a logo".to_vec()).await;

    let submit = |pipeline: String, file: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let form = reqwest::multipart::Form::new()
                .text("pipeline", pipeline)
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(corpus::read(file)).file_name(file),
                );
            rest::post_job(&http, &base, form).await
        }
    };
    let response = submit(
        format!("resize:w=800/watermark:logo={logo},gravity=south_west/analyze/format:png"),
        "safe-landing-exif-1622x2880.jpg",
    )
    .await;
    let id = rest::accepted(response).await;
    let mut client = cluster.gateway_client().await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(job.summary.expect("summary").state(), JobState::Completed);

    let status = rest::get_json(&http, &format!("{base}/api/v1/jobs/{id}")).await;
    let output = &status["images"][0]["output"];
    let (width, height) = (800, 800 * 2880 / 1622);
    assert_eq!(
        (output["width"].clone(), output["height"].clone()),
        (width.into(), height.into())
    );
    let report = &output["analysis"][0];
    assert_eq!(report["width"], width, "{report}");
    assert_eq!(report["input"]["format"], "jpeg");
    assert_eq!(report["input"]["width"], 1622);
    assert_eq!(report["input"]["height"], 2880);
    assert_eq!(
        report["histogram"].as_array().expect("histogram").len(),
        256
    );
    let pixels: u64 = report["histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|n| n.as_u64().expect("count"))
        .sum();
    assert_eq!(pixels, u64::from(width) * u64::from(height));
    assert_eq!(report["phash"].as_str().expect("phash").len(), 16);
    assert!(report["sharpness"].as_f64().expect("sharpness") > 0.0);
    assert!(
        report["input"]["exif"]
            .as_object()
            .is_some_and(|exif| !exif.is_empty()),
        "the photo's EXIF is summarised: {report}"
    );

    // The logo, 20 % of 800 = 160x80, sits 10 px from the bottom-left corner.
    let bytes = http
        .get(format!("{base}/api/v1/jobs/{id}/outputs/0"))
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("body");
    let out = image::load_from_memory(&bytes).expect("png").to_rgb8();
    assert_eq!(out.get_pixel(10 + 80, height - 10 - 40).0, [255, 0, 0]);
    assert_eq!(out.get_pixel(10 + 2, height - 10 - 2).0, [255, 0, 0]);
    assert_ne!(out.get_pixel(width - 50, 50).0, [255, 0, 0]);
    assert_ne!(out.get_pixel(10 + 170, height - 10 - 40).0, [255, 0, 0]);

    // A logo id that storage does not have: refused at submit, naming the op.
    let missing = "0".repeat(64);
    let response = submit(format!("watermark:logo={missing}"), "kite-2560x1600.jpg").await;
    assert_eq!(response.status().as_u16(), 404);
    let body: serde_json::Value = response.json().await.expect("json");
    let message = body["error"].as_str().expect("error");
    assert!(message.contains("op 1 (watermark)"), "{message}");

    // A logo that is not an image: the job runs, its image fails with the reason.
    let response = submit(
        format!("watermark:logo={not_an_image}"),
        "kite-2560x1600.jpg",
    )
    .await;
    let id = rest::accepted(response).await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    let image = &job.images[0];
    assert_eq!(image.state(), ImageState::Failed);
    assert!(
        image
            .error
            .contains(&format!("watermark logo {not_an_image}"))
            && image.error.contains("not a supported image"),
        "{}",
        image.error
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn analysis_exports_as_csv_json_and_xlsx() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let files = [
        ("=one.png", pixelmesh_tests::png(40, 30, 1)),
        ("two.png", pixelmesh_tests::png(20, 10, 2)),
        ("broken.png", b"not a png".to_vec()),
    ];
    let id = rest::submit(&http, &base, "analyze/grayscale/analyze", &files).await;
    let mut client = cluster.gateway_client().await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(
        job.summary.expect("summary").state(),
        JobState::CompletedWithErrors
    );

    let get = |ext: &'static str| {
        let url = format!("{base}/api/v1/jobs/{id}/analysis.{ext}");
        let http = http.clone();
        async move {
            let response = http.get(url).send().await.expect("export");
            assert_eq!(response.status().as_u16(), 200, "{ext}");
            let content_type = response.headers()["content-type"]
                .to_str()
                .expect("type")
                .to_string();
            (content_type, response.bytes().await.expect("body").to_vec())
        }
    };
    // Two reports for each good image, one row for the broken one.
    let (content_type, csv) = get("csv").await;
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let csv = String::from_utf8(csv).expect("utf-8");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("index,name,state,report,width,height"),
        "{}",
        lines[0]
    );
    assert_eq!(lines.len(), 1 + 2 + 2 + 1, "{csv}");
    assert!(
        lines[1].starts_with("0,'=one.png,done,0,40,30,"),
        "{}",
        lines[1]
    );
    assert!(lines[5].starts_with("2,broken.png,failed,"), "{}", lines[5]);

    let (_, json) = get("json").await;
    let json: serde_json::Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(json["job"], id.as_str());
    let reports = json["images"][1]["reports"].as_array().expect("reports");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["histogram"].as_array().map(Vec::len), Some(256));
    assert!(
        json["images"][2]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );

    let (content_type, xlsx) = get("xlsx").await;
    assert!(content_type.contains("spreadsheetml"), "{content_type}");
    let mut workbook = zip::ZipArchive::new(std::io::Cursor::new(xlsx)).expect("xlsx is a zip");
    let mut sheet = String::new();
    std::io::Read::read_to_string(
        &mut workbook.by_name("xl/worksheets/sheet1.xml").expect("sheet"),
        &mut sheet,
    )
    .expect("sheet text");
    assert_eq!(sheet.matches("<row ").count(), 6, "{sheet}");
    let mut strings = String::new();
    std::io::Read::read_to_string(
        &mut workbook
            .by_name("xl/sharedStrings.xml")
            .expect("shared strings"),
        &mut strings,
    )
    .expect("shared strings text");
    // The name that looks like a formula is kept as text, never as a formula.
    assert!(strings.contains("=one.png"), "{strings}");
    assert!(!sheet.contains("<f>"), "{sheet}");

    let missing = http
        .get(format!(
            "{base}/api/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/analysis.csv"
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status().as_u16(), 404);
}

/// A public-domain photo from the pipeline crate's test data (see its SOURCES.md).
fn face_photo(name: &str) -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/pipeline/tests/data/"
    );
    std::fs::read(format!("{path}{name}")).unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// Crops placed by the faces and by content, `blur_faces` and the faces in `analyze`, through
/// the mesh and into the analysis export.
#[tokio::test(flavor = "multi_thread")]
async fn face_crops_blur_faces_and_reports_through_the_mesh() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let mut client = cluster.gateway_client().await;
    // Submits `files` through `pipeline` and waits for every image to be done.
    let mut completed = async |pipeline: &str, files: &[(&str, Vec<u8>)]| {
        let id = rest::submit(&http, &base, pipeline, files).await;
        let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
        assert_eq!(job.summary.expect("summary").state(), JobState::Completed);
        id
    };
    let files = [
        ("astronaut.jpg", face_photo("astronaut-512x512.jpg")),
        ("rocket.jpg", face_photo("rocket-640x427.jpg")),
    ];
    let id = completed("crop:w=200,h=200,g=face/analyze/format:png", &files).await;
    let status = rest::get_json(&http, &format!("{base}/api/v1/jobs/{id}")).await;
    // The face is in the crop, whole; the rocket has none and is cut by `smart` instead.
    for (i, faces) in [(0, 1), (1, 0)] {
        let output = &status["images"][i]["output"];
        assert_eq!(
            (output["width"].clone(), output["height"].clone()),
            (200.into(), 200.into())
        );
        let report = &output["analysis"][0];
        assert_eq!(
            report["faces"].as_array().map(Vec::len),
            Some(faces),
            "{report}"
        );
    }

    // Three faces found, then covered: the second report finds none.
    let files = [("three.jpg", face_photo("three-portraits-1125x432.jpg"))];
    let id = completed("analyze/blur_faces/analyze/format:png", &files).await;
    let csv = rest::get_text(&http, &format!("{base}/api/v1/jobs/{id}/analysis.csv")).await;
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let faces = header
        .iter()
        .position(|c| *c == "faces")
        .expect("a faces column");
    let cell = |line: &str| line.split(',').nth(faces).map(str::to_owned);
    assert_eq!(cell(lines[1]).as_deref(), Some("3"), "{csv}");
    assert_eq!(cell(lines[2]).as_deref(), Some("0"), "{csv}");

    // A crop placed by content on an animation is refused at submit, naming the op.
    let gif = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/filter/tests/data/kite-4-frames.gif"
    ))
    .expect("gif");
    let message = rest::refused(&http, &base, "crop:w=20,h=20,g=smart", ("kite.gif", gif)).await;
    assert!(message.contains("op 1 (crop) cannot animate"), "{message}");

    // No filter here has an AI endpoint: `describe` is refused at submit, naming the op.
    let rocket = ("rocket.jpg", face_photo("rocket-640x427.jpg"));
    let message = rest::refused(&http, &base, "analyze/describe", rocket).await;
    assert!(
        message.contains("op 2 (describe): no running filter has an AI endpoint"),
        "{message}"
    );
}

/// `describe` against a local server speaking OpenAI's chat-completions API (the real one is
/// out of reach here): the throttled first request is retried after its `Retry-After`, the
/// captions and tags reach the CSV export, a second run is answered from the shared cache
/// without a request, a refusal fails only its image with the service's words, and the key
/// appears in no log and no error.
#[tokio::test(flavor = "multi_thread")]
async fn describe_asks_an_ai_service_with_retries_a_cache_and_no_leaked_key() {
    use std::sync::{Arc, Mutex};

    use axum::{Json, extract::State, http::HeaderMap, response::IntoResponse, routing::post};

    const KEY: &str = "sk-pixelmesh-test-7f3a9c";
    #[derive(Default)]
    struct Seen {
        requests: usize,
        keys: Vec<String>,
    }
    async fn answer(
        State(seen): State<Arc<Mutex<Seen>>>,
        headers: HeaderMap,
        Json(body): Json<serde_json::Value>,
    ) -> axum::response::Response {
        let mut seen = seen.lock().unwrap();
        seen.requests += 1;
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        seen.keys.push(auth.unwrap_or_default().to_string());
        if seen.requests == 1 {
            let slow = serde_json::json!({"error": {"message": "rate limit reached"}});
            return (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                Json(slow),
            )
                .into_response();
        }
        let content = &body["messages"][0]["content"];
        let prompt = content[0]["text"].as_str().unwrap_or_default();
        if prompt.contains("at most 2 ") {
            // As OpenAI does with a bad key: the key is quoted back.
            let refusal =
                serde_json::json!({"error": {"message": format!("image refused for key {KEY}")}});
            return (axum::http::StatusCode::BAD_REQUEST, Json(refusal)).into_response();
        }
        // A caption that tells the images apart: the size of the JPEG each was sent as.
        let image = content[1]["image_url"]["url"].as_str().unwrap_or_default();
        let caption = format!("A test card of {} base64 bytes.", image.len());
        let reply = serde_json::json!({"caption": caption, "tags": ["test", "card"]});
        Json(serde_json::json!({
            "model": "stand-in-vision",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.to_string()}}],
        }))
        .into_response()
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let service = pixelmesh_tests::serve_http(
        axum::Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(seen.clone()),
    )
    .await;
    let cluster = Cluster::start(ClusterOptions {
        filter_args: vec![
            "--ai-endpoint".into(),
            format!("{service}/v1"),
            "--ai-model".into(),
            "stand-in-vision".into(),
            "--ai-requests-per-minute".into(),
            "6000".into(),
        ],
        env: vec![("PIXELMESH_AI_API_KEY".into(), KEY.into())],
        ..ClusterOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let mut client = cluster.gateway_client().await;
    let files = [
        ("a.png", pixelmesh_tests::png(320, 200, 1)),
        ("b.png", pixelmesh_tests::png(200, 320, 2)),
    ];
    let mut run = async |pipeline: &str, files: &[(&str, Vec<u8>)]| {
        let id = rest::submit(&http, &base, pipeline, files).await;
        api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
        rest::get_json(&http, &format!("{base}/api/v1/jobs/{id}")).await
    };

    let first = run("describe/format:png", &files).await;
    let captions: Vec<String> = (0..2)
        .map(|i| {
            let report = &first["images"][i]["output"]["analysis"][0];
            assert_eq!(report["op"], "describe", "{first}");
            assert_eq!(report["tags"], serde_json::json!(["test", "card"]));
            assert_eq!(report["cached"], false);
            report["caption"].as_str().expect("a caption").to_string()
        })
        .collect();
    assert_ne!(
        captions[0], captions[1],
        "each image is described on its own"
    );
    // One request throttled and retried, then one per image, each with the key.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.requests, 3);
        assert!(
            seen.keys
                .iter()
                .all(|auth| *auth == format!("Bearer {KEY}"))
        );
    }
    let job_id = first["id"].as_str().expect("id");
    let csv = rest::get_text(&http, &format!("{base}/api/v1/jobs/{job_id}/analysis.csv")).await;
    assert!(
        csv.lines().next().unwrap().contains(",caption,tags,"),
        "{csv}"
    );
    assert!(
        csv.contains(&captions[0]) && csv.contains("test; card"),
        "{csv}"
    );

    // The same images and op again: answered from the cache, no request.
    let again = run("describe/format:png", &files).await;
    for i in 0..2 {
        let report = &again["images"][i]["output"]["analysis"][0];
        assert_eq!(report["cached"], true, "{again}");
        assert_eq!(report["caption"].as_str(), Some(captions[i].as_str()));
    }
    assert_eq!(seen.lock().unwrap().requests, 3);

    // A refusal fails that image at once, in the service's words, without the key.
    let refused = run("describe:tags=2", &files[..1]).await;
    let error = refused["images"][0]["error"].as_str().expect("an error");
    assert!(
        error.contains("op 1 (describe): the AI service refused: 400 Bad Request")
            && error.contains("[redacted]"),
        "{error}"
    );
    assert_eq!(seen.lock().unwrap().requests, 4, "a refusal is not retried");
    let logs = cluster.logs();
    assert!(!logs.contains(KEY), "the key is in the logs");
    assert!(!refused.to_string().contains(KEY));
}

/// `remove_background` through the mesh with an ONNX model the suite builds
/// (tests/models/make_segmenter.py: red is foreground): the filter loads it from
/// `--model-dir`, and the whole path runs for real: the resize and normalisation into the
/// model's 64x64 input, tract's inference, the mask's upscale and edge refinement, and an RGBA
/// PNG out. A model no filter has is refused at submit.
#[tokio::test(flavor = "multi_thread")]
async fn remove_background_runs_the_filters_onnx_model() {
    let models = tempfile::tempdir().expect("a temp dir");
    pixelmesh_tests::segmentation_model(models.path(), "red", 64);
    let cluster = Cluster::start(ClusterOptions {
        filter_args: vec!["--model-dir".into(), models.path().display().to_string()],
        ..ClusterOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let mut client = cluster.gateway_client().await;

    // A red disc of radius 70 at (200, 150) on green, and a real photo.
    let disc = image::RgbImage::from_fn(400, 300, |x, y| {
        let (dx, dy) = (f64::from(x) + 0.5 - 200.0, f64::from(y) + 0.5 - 150.0);
        if dx.hypot(dy) < 70.0 {
            image::Rgb([210, 40, 30])
        } else {
            image::Rgb([50, 150, 70])
        }
    });
    let mut disc_png = Vec::new();
    disc.write_to(
        &mut std::io::Cursor::new(&mut disc_png),
        image::ImageFormat::Png,
    )
    .expect("png");
    let files = [
        ("disc.png", disc_png),
        ("kite.jpg", corpus::read("kite-2560x1600.jpg")),
    ];
    let id = rest::submit(
        &http,
        &base,
        "remove_background:model=red/format:png",
        &files,
    )
    .await;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(
        job.summary.clone().expect("summary").state(),
        JobState::Completed,
        "{job:?}"
    );

    let out = image::load_from_memory(&api::download(&mut client, &id, 0).await)
        .expect("a png")
        .into_rgba8();
    assert_eq!(out.dimensions(), (400, 300));
    assert!(
        out.pixels().any(|p| p[3] < 255),
        "the output has an alpha channel in use"
    );
    let alpha = |x: u32, y: u32| out.get_pixel(x, y)[3];
    assert_eq!(alpha(200, 150), 255, "the disc's centre is kept");
    assert_eq!(
        out.get_pixel(200, 150).0[..3],
        [210, 40, 30],
        "its colour unchanged"
    );
    assert_eq!(alpha(200, 30), 0, "the background is gone");
    // The model's 3x3 convolution pads its border with zeros: near 0 in the corner.
    assert!(alpha(2, 2) <= 5, "the corner: {}", alpha(2, 2));
    // The edge follows the disc's outline, 70 px from the centre, within a few pixels, on
    // every side, though the model saw the image at 64x64 (a pixel there is 6x5 here).
    for (dx, dy) in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
        let at = |r: i32| alpha((200 + dx * r) as u32, (150 + dy * r) as u32);
        assert!(
            at(64) > 230 && at(76) < 25,
            "edge ({dx}, {dy}): {} {}",
            at(64),
            at(76)
        );
    }

    // The photo: the same size, as RGBA, with both kept and removed pixels.
    let kite = image::load_from_memory(&api::download(&mut client, &id, 1).await).expect("a png");
    assert_eq!(kite.color(), image::ColorType::Rgba8);
    assert_eq!((kite.width(), kite.height()), (2560, 1600));
    let kite = kite.into_rgba8();
    assert!(kite.pixels().any(|p| p[3] == 0) && kite.pixels().any(|p| p[3] == 255));

    // A model no filter has: refused at submit, naming the op and what is offered.
    let pipeline = "resize:w=100/remove_background:model=u2net";
    let message = rest::refused(
        &http,
        &base,
        pipeline,
        ("a.png", pixelmesh_tests::png(32, 32, 1)),
    )
    .await;
    assert!(
        message.contains(
            "op 2 (remove_background): no running filter has the model \"u2net\" (models offered: red)"
        ),
        "{message}"
    );
}
