//! Tiling through a real mesh: a 100-megapixel image split over several filter processes
//! comes back byte-identical to the same image processed whole.

use std::time::Duration;

use pixelmesh_filter::{
    codec::{self, Limits},
    ops::{Bitmap, FileFormat, Pipeline},
    tiles,
};
use pixelmesh_proto::v1::{ImageState, JobState, SubmitJobRequest, Tiling};
use pixelmesh_tests::{Cluster, ClusterOptions, api, corpus};

const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// A real photo repeated (mirrored, so there are no seams) over `width` x `height`.
fn big_photo(width: u32, height: u32) -> Vec<u8> {
    let photo = codec::decode(&corpus::read("kite-2560x1600.jpg"), &Limits::default())
        .expect("corpus photo")
        .image;
    let (pw, ph) = (photo.width() as usize, photo.height() as usize);
    let fold = |v: usize, n: usize| {
        let v = v % (2 * n);
        if v < n { v } else { 2 * n - 1 - v }
    };
    // Each source row widened once, then copied per output row: quick even unoptimised.
    let wide_rows: Vec<Vec<u8>> = photo
        .data()
        .chunks_exact(pw * 3)
        .map(|row| {
            (0..width as usize)
                .flat_map(|x| row[fold(x, pw) * 3..][..3].to_vec())
                .collect()
        })
        .collect();
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height as usize {
        data.extend_from_slice(&wide_rows[fold(y, ph)]);
    }
    let image = Bitmap::new(width, height, false, data).expect("bitmap");
    codec::encode(&image, FileFormat::Jpeg, 90).expect("encode")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_megapixel_image_tiled_over_three_filters_matches_whole() {
    let (width, height) = (12_500, 8_000);
    let tile_size = 2048;
    let mut cluster = Cluster::start(ClusterOptions {
        filters: 3,
        ack_wait_secs: 30,
        tile_size: Some(tile_size),
        ..ClusterOptions::default()
    })
    .await;
    let mut client = cluster.gateway_client().await;
    let input = big_photo(width, height);
    let images = vec![("huge.jpg".to_string(), input)];
    let text = "blur:sigma=2/brightness:1.1/format:jpeg,q=85";
    let pipeline = Pipeline::from_text(text).expect("pipeline").to_proto();

    // 100 megapixels is over the default threshold of 40: auto mode tiles it.
    let tiled = api::submit_tiled(&mut client, &images, pipeline.clone(), Tiling::Auto).await;
    let id = tiled.summary.expect("summary").id;
    let (events, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    let image = &job.images[0];
    assert_eq!(
        image.state(),
        ImageState::Done,
        "{image:?}\n{}",
        cluster.logs()
    );
    let expected_tiles = tiles::plan(width, height, tile_size, 6).len() as u32;
    assert_eq!(expected_tiles, 28);
    assert_eq!((image.tiles_total, image.tiles_done), (28, 28));
    // Progress reports tiles as they finish, not only the end.
    let mut tiles_seen: Vec<u32> = events
        .iter()
        .filter_map(|event| event.image.as_ref())
        .map(|image| image.tiles_done)
        .collect();
    tiles_seen.dedup();
    assert!(
        tiles_seen.len() >= 10 && tiles_seen.windows(2).all(|w| w[0] <= w[1]),
        "tile progress: {tiles_seen:?}"
    );
    // The tiles spread over the filters.
    let tile_workers = cluster
        .filters
        .iter()
        .filter(|filter| filter.logs().contains("tile done"))
        .count();
    assert!(
        tile_workers >= 2,
        "only {tile_workers} filter(s) processed tiles"
    );
    let tiled_bytes = api::download(&mut client, &id, 0).await;

    let whole = api::submit_tiled(&mut client, &images, pipeline, Tiling::Never).await;
    let whole_id = whole.summary.expect("summary").id;
    let (_, whole_job) = api::watch_to_end(&mut client, &whole_id, JOB_TIMEOUT).await;
    let whole_image = &whole_job.images[0];
    assert_eq!(whole_image.state(), ImageState::Done, "{whole_image:?}");
    assert_eq!(whole_image.tiles_total, 0, "tiling never still tiled");
    let whole_bytes = api::download(&mut client, &whole_id, 0).await;

    assert_eq!(
        tiled_bytes.len(),
        whole_bytes.len(),
        "tiled and whole outputs differ in size"
    );
    assert!(
        tiled_bytes == whole_bytes,
        "tiled output differs from whole"
    );
    let decoded = codec::decode(&tiled_bytes, &Limits::default()).expect("output decodes");
    assert_eq!(
        (decoded.image.width(), decoded.image.height()),
        (width, height)
    );
    cluster.filters.clear();
}

#[tokio::test(flavor = "multi_thread")]
async fn tiling_modes_are_validated_and_always_tiles_small_images() {
    let cluster = Cluster::start(ClusterOptions {
        filters: 2,
        tile_size: Some(256),
        ..ClusterOptions::default()
    })
    .await;
    let mut client = cluster.gateway_client().await;
    let photo = corpus::read("autumn-2560x1600.jpg");
    let blob = api::upload(&mut client, "autumn.jpg", &photo).await;
    let inputs = vec![pixelmesh_proto::v1::ImageInput {
        blob_id: blob,
        name: "autumn.jpg".into(),
        ..Default::default()
    }];

    // Always with an op that cannot run on tiles is refused, naming the op.
    let status = client
        .submit_job(SubmitJobRequest {
            pipeline: Pipeline::from_text("blur:1/resize:w=100")
                .expect("pipeline")
                .to_proto(),
            inputs: inputs.clone(),
            tiling: Tiling::Always as i32,
            ..Default::default()
        })
        .await
        .expect_err("always with resize accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("op 2 (resize)"),
        "{}",
        status.message()
    );

    // The photo submitted over HTTP with a pipeline and a tiling part.
    let post = |pipeline: &'static str, tiling: &'static str| {
        let form = reqwest::multipart::Form::new()
            .text("pipeline", pipeline)
            .text("tiling", tiling)
            .part(
                "file",
                reqwest::multipart::Part::bytes(photo.clone()).file_name("autumn.jpg"),
            );
        reqwest::Client::new()
            .post(format!("{}/api/v1/jobs", cluster.http_url()))
            .multipart(form)
            .send()
    };

    // HTTP: an unknown mode is a 400 naming the part.
    let response = post("grayscale", "sometimes").await.expect("post");
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("tiling"),
        "{body}"
    );

    // HTTP: always tiles a 4-megapixel photo into 256-pixel tiles, and the image reports
    // its tiles.
    let response = post("grayscale/blur:1.2/format:png", "always")
        .await
        .expect("post");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let body: serde_json::Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id").to_string();
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(
        job.summary.as_ref().map(|s| s.state()),
        Some(JobState::Completed),
        "{job:?}\n{}",
        cluster.logs()
    );
    let view: serde_json::Value = reqwest::get(format!("{}/api/v1/jobs/{id}", cluster.http_url()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let tiles = &view["images"][0]["tiles"];
    assert_eq!(tiles["total"], 70, "{view}");
    assert_eq!(tiles["done"], 70, "{view}");

    // The PNG output is the whole-image result, pixel for pixel.
    let output = api::download(&mut client, &id, 0).await;
    let pipeline = Pipeline::from_text("grayscale/blur:1.2/format:png").expect("pipeline");
    let whole =
        pixelmesh_filter::engine::process(&photo, &pipeline, &Limits::default()).expect("whole");
    assert!(output == whole.bytes, "tiled png differs from whole");
}
