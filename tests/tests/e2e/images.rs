//! On-the-fly image URLs (`GET /img/<signature>/<pipeline>/<source>`) through a real mesh:
//! signed with rotating keys, made once and cached (ETag, 304, one miss for many identical
//! requests), `format:auto` from `Accept`, URL sources fetched once, clear refusals, a live
//! lane that does not wait behind a batch, and the README's signing code in Rust, Python and
//! JavaScript.

use std::time::Duration;

use axum::{Router, http::header, response::IntoResponse, routing};
use pixelmesh_tests::{Cluster, ClusterOptions, corpus, png, rest, serve_http, workspace_root};

// The README's Rust signing code, compiled here as it is shown there.
mod sign {
    include!("../../../examples/image-urls/sign.rs");
}

const NEW_KEY: &str = "the-new-signing-key-0123456789";
const OLD_KEY: &str = "an-old-signing-key-0123456789";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Uploads `bytes` as a blob; its id.
async fn upload(http: &reqwest::Client, base: &str, bytes: Vec<u8>) -> String {
    let uploaded = http
        .post(format!("{base}/api/v1/uploads"))
        .body(bytes)
        .send()
        .await
        .expect("upload");
    assert_eq!(uploaded.status().as_u16(), 201);
    let blob: serde_json::Value = uploaded.json().await.expect("json");
    blob["id"].as_str().expect("blob id").to_string()
}

/// GETs `path` under `base` with extra headers.
async fn get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http.get(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("image request")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A refusal: its status, a short text body, never cached.
async fn refused(response: reqwest::Response, status: u16, mentions: &str) {
    assert_eq!(response.status().as_u16(), status, "{}", response.url());
    assert_eq!(header(&response, "cache-control"), "no-store");
    assert!(header(&response, "content-type").starts_with("text/plain"));
    let text = response.text().await.expect("body");
    assert!(
        text.contains(mentions),
        "{text:?} should mention {mentions:?}"
    );
    assert!(text.len() < 400, "a short text: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_urls_are_made_once_cached_and_revalidated() {
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: vec![
            "--url-signing-keys".into(),
            format!("{NEW_KEY},{OLD_KEY}"),
            "--image-max-pixels".into(),
            "3000000".into(),
            "--image-max-ops".into(),
            "4".into(),
        ],
        filter_args: vec!["--fetch-allow-private".into()],
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();
    let photo = corpus::read("kite-2560x1600.jpg");
    let small = {
        let decoded = image::load_from_memory(&photo).expect("kite decodes");
        let mut jpeg = Vec::new();
        decoded
            .resize(1280, 800, image::imageops::FilterType::Triangle)
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .expect("jpeg");
        jpeg
    };
    let blob = upload(&http, &base, small).await;
    let source = format!("blob/{blob}");

    // A miss, signed with the older key (rotation): made by a filter, then cached.
    let path = sign::image_url(OLD_KEY, "resize:w=320/format:webp,q=80", &source);
    let first = get(&http, &base, &path, &[]).await;
    assert_eq!(first.status().as_u16(), 200, "{}", cluster.logs());
    assert_eq!(header(&first, "content-type"), "image/webp");
    assert_eq!(header(&first, "x-pixelmesh-cache"), "miss");
    assert_eq!(header(&first, "cache-control"), "public, max-age=31536000");
    let etag = header(&first, "etag").to_string();
    assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
    let bytes = first.bytes().await.expect("body");
    let made = image::load_from_memory(&bytes).expect("webp decodes");
    assert_eq!((made.width(), made.height()), (320, 200));

    let again = get(&http, &base, &path, &[]).await;
    assert_eq!(header(&again, "x-pixelmesh-cache"), "hit");
    assert_eq!(header(&again, "etag"), etag);
    assert_eq!(again.bytes().await.expect("body"), bytes);
    // The same pipeline written another way, signed with the new key: the same entry.
    let same = sign::image_url(NEW_KEY, "resize:320/format:webp,quality=80", &source);
    let same = get(&http, &base, &same, &[]).await;
    assert_eq!(header(&same, "x-pixelmesh-cache"), "hit");
    assert_eq!(header(&same, "etag"), etag);
    // Revalidation: 304 with no body.
    let revalidated = get(&http, &base, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(revalidated.status().as_u16(), 304);
    assert_eq!(header(&revalidated, "etag"), etag);
    assert!(revalidated.bytes().await.expect("body").is_empty());

    // Identical requests at once: processed once, every one answered with the same image.
    let path = sign::image_url(NEW_KEY, "resize:w=200/grayscale/format:jpeg", &source);
    let answers = futures::future::join_all((0..8).map(|_| async {
        let response = get(&http, &base, &path, &[]).await;
        assert_eq!(response.status().as_u16(), 200);
        let served = header(&response, "x-pixelmesh-cache").to_string();
        (served, response.bytes().await.expect("body"))
    }))
    .await;
    let misses = answers
        .iter()
        .filter(|(served, _)| served == "miss")
        .count();
    assert_eq!(
        misses,
        1,
        "{:?}",
        answers.iter().map(|a| &a.0).collect::<Vec<_>>()
    );
    assert!(answers.iter().all(|(_, body)| body == &answers[0].1));

    // format:auto: AVIF or WebP as the client takes them, else the source's format.
    let auto = sign::image_url(NEW_KEY, "resize:w=160/format:auto", &source);
    for (accept, expected) in [
        (
            "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
            "image/avif",
        ),
        ("image/webp,*/*", "image/webp"),
        ("*/*", "image/jpeg"),
    ] {
        let response = get(&http, &base, &auto, &[("accept", accept)]).await;
        assert_eq!(response.status().as_u16(), 200, "{accept}");
        assert_eq!(header(&response, "content-type"), expected, "{accept}");
        assert_eq!(header(&response, "vary"), "Accept");
        let body = response.bytes().await.expect("body");
        if expected == "image/avif" {
            assert_eq!(&body[4..12], b"ftypavif");
        } else {
            let made = image::load_from_memory(&body).expect("decodes");
            assert_eq!(made.width(), 160);
        }
    }

    // A URL source: fetched once, then answered from the cache by its content.
    let origin = serve_http(Router::new().route(
        "/photo.png",
        routing::get(|| async {
            ([(header::CONTENT_TYPE, "image/png")], png(96, 64, 7)).into_response()
        }),
    ))
    .await;
    let from_url = sign::image_url(
        NEW_KEY,
        "grayscale/format:png",
        &sign::url_source(&format!("{origin}/photo.png")),
    );
    let response = get(&http, &base, &from_url, &[]).await;
    assert_eq!(response.status().as_u16(), 200, "{}", cluster.logs());
    assert_eq!(header(&response, "x-pixelmesh-cache"), "miss");
    let made = image::load_from_memory(&response.bytes().await.unwrap()).expect("png");
    assert_eq!((made.width(), made.height()), (96, 64));
    let response = get(&http, &base, &from_url, &[]).await;
    assert_eq!(header(&response, "x-pixelmesh-cache"), "hit");

    // Refusals, each a status that names the problem and a short text.
    let forged = sign::image_url("not-the-key-0123456789", "grayscale", &source);
    refused(
        get(&http, &base, &forged, &[]).await,
        403,
        "invalid signature",
    )
    .await;
    let unsigned = format!("/img/unsafe/grayscale/{source}");
    refused(get(&http, &base, &unsigned, &[]).await, 403, "signed").await;
    let unknown = sign::image_url(NEW_KEY, "sparkle:3", &source);
    refused(get(&http, &base, &unknown, &[]).await, 400, "sparkle").await;
    let long = sign::image_url(
        NEW_KEY,
        "grayscale/invert/grayscale/invert/grayscale",
        &source,
    );
    refused(get(&http, &base, &long, &[]).await, 413, "limit of 4").await;
    let big = upload(&http, &base, photo).await;
    let big = sign::image_url(NEW_KEY, "grayscale", &format!("blob/{big}"));
    refused(get(&http, &base, &big, &[]).await, 413, "megapixels").await;
    let text = upload(&http, &base, b"just some text, not an image".to_vec()).await;
    let text = sign::image_url(NEW_KEY, "grayscale", &format!("blob/{text}"));
    refused(
        get(&http, &base, &text, &[]).await,
        422,
        "not a supported image",
    )
    .await;
    let missing = sign::image_url(NEW_KEY, "grayscale", &format!("blob/{}", "ab".repeat(32)));
    refused(get(&http, &base, &missing, &[]).await, 404, "not found").await;
    let gone = sign::image_url(
        NEW_KEY,
        "grayscale",
        &sign::url_source(&format!("{origin}/nothing-here.png")),
    );
    refused(get(&http, &base, &gone, &[]).await, 502, "source url").await;
    // The mesh is fine after all of that.
    assert_eq!(get(&http, &base, &path, &[]).await.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_request_does_not_wait_behind_a_batch() {
    // One batch slot: the batch's images run one after the other.
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();
    let photo = corpus::read("kite-2560x1600.jpg");
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("{i}.jpg"), photo.clone()))
        .collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let id = rest::submit(&http, &base, "blur:sigma=6/format:png", &files).await;
    rest::wait_job(&http, &base, &id, "running", TIMEOUT, |job| {
        job["state"] == "running"
    })
    .await;
    let blob = upload(&http, &base, png(640, 480, 3)).await;
    let before = rest::get_json(&http, &format!("{base}/api/v1/jobs/{id}")).await;
    let response = get(
        &http,
        &base,
        &format!("/img/unsafe/resize:w=100/format:webp/blob/{blob}"),
        &[],
    )
    .await;
    assert_eq!(response.status().as_u16(), 200, "{}", cluster.logs());
    let after = rest::get_json(&http, &format!("{base}/api/v1/jobs/{id}")).await;
    // Answered while the batch ran. Behind it in one queue, the request would have waited
    // for every image still queued; the test machine runs other tests at once, so a few may
    // end meanwhile, never most of them.
    let ended =
        |job: &serde_json::Value| job["done"].as_u64().unwrap() + job["failed"].as_u64().unwrap();
    let (before, after) = (ended(&before), ended(&after));
    assert!(
        after - before < (40 - before) / 2,
        "the image url waited for the batch: {before} of 40 images ended before, {after} after"
    );
}

/// The README shows the signing code in Rust, Python and JavaScript: each, as shown, makes
/// URLs the gateway accepts (Python and JavaScript when their interpreters are here).
#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_signing_code_works_in_every_language() {
    let root = workspace_root();
    let dir = root.join("examples/image-urls");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    for file in ["sign.rs", "sign.py", "sign.mjs"] {
        let code = std::fs::read_to_string(dir.join(file)).expect("example");
        assert!(
            readme.contains(code.trim()),
            "the README shows {file} as it is"
        );
    }
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: vec!["--url-signing-keys".into(), NEW_KEY.into()],
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let http = reqwest::Client::new();
    let blob = upload(&http, &base, png(64, 48, 5)).await;
    let (pipeline, source) = ("resize:w=32/format:png", format!("blob/{blob}"));
    let rust = sign::image_url(NEW_KEY, pipeline, &source);
    let mut paths = vec![("rust", rust.clone())];
    for (language, interpreter, script) in [
        ("python", "python3", "sign_cli.py"),
        ("javascript", "node", "sign_cli.mjs"),
    ] {
        let run = std::process::Command::new(interpreter)
            .current_dir(&dir)
            .args([script, NEW_KEY, pipeline, &source])
            .output();
        match run {
            Ok(output) => {
                assert!(output.status.success(), "{language}: {output:?}");
                let path = String::from_utf8(output.stdout).expect("utf-8");
                paths.push((language, path.trim().to_string()));
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("{interpreter} is not installed: the {language} signing code is not run");
            }
            Err(err) => panic!("running {interpreter}: {err}"),
        }
    }
    for (language, path) in &paths {
        assert_eq!(path, &rust, "{language} signs as Rust does");
        let response = get(&http, &base, path, &[]).await;
        assert_eq!(response.status().as_u16(), 200, "{language}: {path}");
        let made = image::load_from_memory(&response.bytes().await.unwrap()).expect("png");
        assert_eq!(made.width(), 32, "{language}");
    }
}
