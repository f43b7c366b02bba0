//! The web UI in a real headless Chromium against a real mesh: submit three photos through
//! the new-job page, watch the job finish live, download its ZIP, follow it on the jobs page,
//! and watch the dashboard see a worker go, across a gateway restart. All of it in one page
//! load: a marker set on the window at the start must survive to the end.
//!
//! Screenshots of every page land in `target/screenshots/browser/`.

use std::io::Read as _;

use fantoccini::{Locator, key::Key};
use pixelmesh_tests::{Cluster, ClusterOptions, browser::Browser, corpus};
use serde_json::json;

const PHOTOS: [&str; 3] = [
    "autumn-2560x1600.jpg",
    "colorful-cups-2560x1600.jpg",
    "kite-2560x1600.jpg",
];

/// chromedriver takes only canonical paths for file inputs.
fn canonical(path: &std::path::Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_submits_watches_downloads_and_sees_workers_come_and_go() {
    // The UI compiled into the binary (the keys test below serves --web-dir).
    let mut cluster = Cluster::start(ClusterOptions {
        filters: 2,
        ..ClusterOptions::default()
    })
    .await;
    let base = cluster.http_url();
    let browser = Browser::start("browser").await;
    let page = browser.client();

    // New job: three photos, a pipeline built by hand from a preset.
    page.goto(&format!("{base}/")).await.expect("opening /");
    let files = browser.wait_for("#files").await;
    browser.eval("window.__same_page = true").await;
    let paths: Vec<String> = PHOTOS
        .iter()
        .map(|name| canonical(&corpus::dir().join(name)))
        .collect();
    files
        .send_keys(&paths.join("\n"))
        .await
        .expect("choosing files");
    browser
        .wait_until(
            "three files listed with previews",
            "document.querySelectorAll('li.file img.thumb').length === 3 && \
             [...document.querySelectorAll('li.file img.thumb')].every(i => i.complete && i.naturalWidth > 0)",
        )
        .await;
    browser.click("button[data-preset='web']").await;
    let width = browser
        .wait_for("li.step[data-op='resize'] input[id$='-width']")
        .await;
    width.clear().await.expect("clearing width");
    width.send_keys("640").await.expect("typing width");
    for op in ["grayscale", "analyze"] {
        browser.select("#add-op", op).await;
        browser.click("#add-op-button").await;
    }
    // Format stays last: the added ops went in before it.
    let steps = browser
        .eval("[...document.querySelectorAll('li.step')].map(s => s.dataset.op)")
        .await;
    assert_eq!(steps, json!(["resize", "grayscale", "analyze", "format"]));
    let pipeline: serde_json::Value = serde_json::from_str(
        browser
            .eval("document.querySelector('details.json pre').textContent")
            .await
            .as_str()
            .expect("pipeline text"),
    )
    .expect("the pipeline preview is JSON");
    assert_eq!(
        pipeline,
        json!([
            {"op": "resize", "width": 640, "fit": "inside", "filter": "lanczos3"},
            {"op": "grayscale"},
            {"op": "analyze"},
            {"op": "format", "format": "webp", "quality": 82},
        ])
    );
    browser.screenshot("1-new-job").await;

    // Submit: the app moves to the job's page and its bar reaches 100 % by itself.
    browser.click("#submit").await;
    browser
        .wait_until(
            "the job page opens",
            "location.pathname.startsWith('/jobs/')",
        )
        .await;
    let path = browser.eval("location.pathname").await;
    let id = path
        .as_str()
        .unwrap()
        .trim_start_matches("/jobs/")
        .to_string();
    assert_eq!(id.len(), 26, "a job id in {path}");
    browser
        .wait_for("[role='progressbar'][aria-label='job progress'][aria-valuenow='100']")
        .await;
    browser
        .wait_for(".summary-row [data-state='completed']")
        .await;
    browser
        .wait_until(
            "three after-thumbnails, as image urls at most 160 px wide",
            "document.querySelectorAll('img.thumb.after').length === 3 && \
             [...document.querySelectorAll('img.thumb.after')].every(i => i.complete && \
               new URL(i.src).pathname.startsWith('/img/unsafe/thumbnail:') && i.naturalWidth > 0 && i.naturalWidth <= 160)",
        )
        .await;
    browser
        .wait_until(
            "three before-thumbnails, as image urls",
            "[...document.querySelectorAll('img.thumb.before')].filter(i => i.complete && \
               new URL(i.src).pathname.startsWith('/img/') && i.naturalWidth > 0 && i.naturalWidth <= 160).length === 3",
        )
        .await;
    let counts = browser
        .eval("document.querySelector('#job-counts').textContent")
        .await;
    assert_eq!(counts, json!("3 of 3 done"));
    browser
        .wait_until(
            "an analysis row per image",
            "document.querySelectorAll('table.analysis-table tbody tr').length === 3",
        )
        .await;
    browser.screenshot("2-job").await;

    // The outputs ZIP, downloaded by the browser.
    browser.click("#download-zip").await;
    let zip_path = browser.downloaded(".zip").await;
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(&zip_path).expect("zip file")).expect("a zip");
    let mut names: Vec<String> = archive
        .file_names()
        .map(|name| name.expect("entry name").to_string())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(names.contains(&"manifest.json".to_string()), "{names:?}");
    assert!(names.contains(&"manifest.csv".to_string()), "{names:?}");
    let images: Vec<String> = names
        .iter()
        .filter(|n| n.ends_with(".webp"))
        .cloned()
        .collect();
    assert_eq!(images.len(), 3, "{names:?}");
    for name in &images {
        let mut bytes = Vec::new();
        archive
            .by_name(name)
            .expect("entry")
            .read_to_end(&mut bytes)
            .expect("reading entry");
        let image = image::load_from_memory(&bytes).expect("a webp").to_rgb8();
        assert_eq!(image.width(), 640, "{name}");
        // Lossy WebP stores colour as YUV: grey comes back within a level or two.
        let spread = image
            .pixels()
            .map(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap())
            .max()
            .unwrap();
        assert!(
            spread <= 3,
            "{name} is not grey: channels differ by {spread}"
        );
    }

    // The jobs page lists it, finished, reached by the app's own navigation.
    browser.click_link("Jobs").await;
    browser
        .wait_for(&format!("tr.job[data-job='{id}'] [data-state='completed']"))
        .await;
    browser
        .wait_for(&format!(
            "tr.job[data-job='{id}'] [role='progressbar'][aria-valuenow='100']"
        ))
        .await;
    browser.screenshot("3-jobs").await;
    // Filters: the finished job is not among the failed ones, and is among the completed.
    browser.click("a.filter[data-filter='failed']").await;
    browser
        .wait_until(
            "the failed filter shows no jobs",
            "location.search === '?state=failed' && document.querySelectorAll('tr.job').length === 0 \
             && document.querySelector('p.empty') !== null",
        )
        .await;
    browser.click("a.filter[data-filter='completed']").await;
    browser.wait_for(&format!("tr.job[data-job='{id}']")).await;
    let completed = browser
        .eval("document.querySelector(\"a.filter[data-filter='completed'] .count\").textContent")
        .await;
    assert_eq!(completed, json!("1"));

    // The dashboard: both workers, then one stopped.
    browser.click_link("Dashboard").await;
    for worker in ["filter-0", "filter-1"] {
        browser
            .wait_until(
                &format!("{worker} listed online"),
                &format!(
                    "(r => r && r.dataset.status !== 'offline')(document.querySelector(\"tr.worker[data-worker='{worker}']\"))"
                ),
            )
            .await;
    }
    browser
        .wait_until(
            "the cards count the finished job",
            "document.querySelector(\"[data-card='Completed'] .card-value\").textContent === '1' && \
             document.querySelector(\"[data-card='Workers online'] .card-value\").textContent === '2'",
        )
        .await;
    browser
        .wait_until(
            "the throughput chart counts three images",
            "document.querySelector('.chart svg').getAttribute('aria-label').startsWith('3 images done')",
        )
        .await;
    browser.screenshot("4-dashboard").await;

    // The gateway restarts under the page: its event stream comes back by itself.
    cluster.restart("gateway").await;
    browser
        .wait_until(
            "the feed is live again",
            "document.querySelector(\"[data-live='live']\") !== null",
        )
        .await;
    assert!(
        cluster.filters[1].terminate(),
        "filter-1 did not stop cleanly"
    );
    browser
        .wait_for("tr.worker[data-worker='filter-1'][data-status='offline']")
        .await;
    let others = browser
        .eval("document.querySelector(\"tr.worker[data-worker='filter-0']\").dataset.status")
        .await;
    assert_ne!(others, json!("offline"));
    browser
        .wait_until(
            "the activity feed says so",
            "document.querySelector('.activity').textContent.includes('worker filter-1 went offline')",
        )
        .await;
    browser
        .wait_until(
            "one worker online",
            "document.querySelector(\"[data-card='Workers online'] .card-value\").textContent === '1'",
        )
        .await;
    browser.screenshot("5-worker-offline").await;

    assert_eq!(
        browser.eval("window.__same_page === true").await,
        json!(true),
        "the page reloaded"
    );

    // At a phone's width every page fits: nothing scrolls sideways but inside its table.
    page.set_window_size(390, 844).await.expect("resizing");
    for (name, path) in [
        ("phone-dashboard", "/dashboard".to_string()),
        ("phone-job", format!("/jobs/{id}")),
        ("phone-jobs", "/jobs".to_string()),
        ("phone-new-job", "/".to_string()),
    ] {
        page.goto(&format!("{base}{path}"))
            .await
            .expect("opening a page");
        browser.wait_for("main h1").await;
        browser.screenshot(name).await;
        // What sticks out past the viewport, if anything (scrolling tables excepted).
        let overflow = browser
            .eval(
                "[window.innerWidth, document.documentElement.scrollWidth, \
                 [...document.querySelectorAll('body *')] \
                   .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('table')) \
                   .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))]",
            )
            .await;
        assert!(overflow[0].as_u64().unwrap() <= 400, "{overflow}");
        assert!(
            overflow[1].as_u64() <= overflow[0].as_u64(),
            "{path} is wider than a phone: {overflow}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_alone_and_tiled_images_show_their_tiles() {
    let cluster = Cluster::start(ClusterOptions {
        // 2560x1600 in 512 px tiles: 5 x 4.
        tile_size: Some(512),
        ..ClusterOptions::default()
    })
    .await;
    let base = cluster.http_url();
    let browser = Browser::start("browser-errors").await;
    let page = browser.client();
    page.goto(&format!("{base}/")).await.expect("opening /");

    // An out-of-range value is named in the page and submit is held back.
    let quality = browser
        .wait_for("li.step[data-op='format'] input[id$='-quality']")
        .await;
    quality.clear().await.expect("clearing");
    quality.send_keys("101").await.expect("typing");
    browser
        .wait_until(
            "the error is shown",
            "document.querySelector('ul.errors').textContent.includes('op 2 (format): quality must be between 1 and 100, got 101')",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#submit').disabled")
            .await,
        json!(true)
    );
    quality.clear().await.expect("clearing");
    quality.send_keys("80").await.expect("typing");
    browser
        .wait_until(
            "submit is enabled",
            "!document.querySelector('#submit').disabled",
        )
        .await;

    // The builder works from the keyboard: pick an op by typing, Tab to Add, Enter.
    let ops = page.find(Locator::Css("#add-op")).await.expect("op list");
    ops.send_keys("Sharpen").await.expect("typing an op name");
    page.active_element()
        .await
        .expect("focus")
        .send_keys(&Key::Tab.to_string())
        .await
        .expect("tab");
    let focused = browser.eval("document.activeElement.id").await;
    assert_eq!(focused, json!("add-op-button"));
    page.active_element()
        .await
        .expect("focus")
        .send_keys(&Key::Enter.to_string())
        .await
        .expect("enter");
    browser.wait_for("li.step[data-op='sharpen']").await;
    browser.click("button[aria-label='Remove Sharpen']").await;

    // A pipeline that tiles (resize does not): blur, then WebP; tiling forced.
    browser.click("button[aria-label='Remove Resize']").await;
    browser.select("#add-op", "blur").await;
    browser.click("#add-op-button").await;
    let steps = browser
        .eval("[...document.querySelectorAll('li.step')].map(s => s.dataset.op)")
        .await;
    assert_eq!(steps, json!(["blur", "format"]));
    browser.select("#tiling", "always").await;

    // A file that is not an image fails as that image, with the gateway's words on its row.
    let junk = tempfile::Builder::new()
        .suffix(".png")
        .tempfile()
        .expect("temp file");
    std::fs::write(junk.path(), b"this is not a png").expect("writing junk");
    let good = canonical(&corpus::dir().join(PHOTOS[0]));
    page.find(Locator::Css("#files"))
        .await
        .expect("file input")
        .send_keys(&format!("{good}\n{}", canonical(junk.path())))
        .await
        .expect("choosing files");
    browser
        .wait_until(
            "two files listed",
            "document.querySelectorAll('li.file').length === 2",
        )
        .await;
    browser.click("#submit").await;
    browser
        .wait_for(".summary-row [data-state='completed_with_errors']")
        .await;
    browser
        .wait_until(
            "the bad image's row says why",
            "(r => r && r.querySelector('.image-error') && r.querySelector('.image-error').textContent.length > 0)\
             (document.querySelector(\"tr.image[data-state='failed']\"))",
        )
        .await;
    let tiles = browser
        .eval("document.querySelector(\"tr.image[data-state='done'] .tiles\").textContent.trim()")
        .await;
    assert_eq!(tiles, json!("tiles 20 / 20"));
    browser.screenshot("failed-image-and-tiles").await;

    // A job id that does not exist: the page says so instead of spinning.
    page.goto(&format!("{base}/jobs/01JZZZZZZZZZZZZZZZZZZZZZZZ"))
        .await
        .expect("opening a missing job");
    browser
        .wait_until(
            "not found is shown",
            "document.querySelector('.job-detail .error') !== null && document.querySelector('.job-detail .error').textContent.includes('404')",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_the_page_takes_a_key_and_every_call_carries_it() {
    const KEY: &str = "ui-test-key-0123456789abcdef";
    let web = Browser::web_dir();
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: vec![
            "--web-dir".into(),
            web.display().to_string(),
            "--api-keys".into(),
            format!("ui:{KEY}"),
        ],
        ..ClusterOptions::default()
    })
    .await;
    let base = cluster.http_url();
    let browser = Browser::start("browser-keys").await;
    let page = browser.client();

    // The page itself is open; the API refuses it until it has a key, and says so.
    page.goto(&format!("{base}/jobs"))
        .await
        .expect("opening /jobs");
    browser
        .wait_until(
            "the refusal is shown",
            "(e => e && e.textContent.includes('(401)'))(document.querySelector('.jobs .error'))",
        )
        .await;
    browser
        .wait_for("#api-key")
        .await
        .send_keys(KEY)
        .await
        .expect("typing the key");
    browser.click("form.api-key button[type='submit']").await;
    browser.wait_for(".key-set").await;
    browser
        .wait_until(
            "the list loads",
            "document.querySelector('p.empty') !== null && document.querySelector('.jobs .error') === null",
        )
        .await;

    // Upload (header), thumbnails (access_token) and the event stream (access_token) work.
    page.goto(&format!("{base}/")).await.expect("opening /");
    browser
        .wait_for("#files")
        .await
        .send_keys(&canonical(&corpus::dir().join(PHOTOS[1])))
        .await
        .expect("choosing a file");
    browser
        .wait_until(
            "the file is listed",
            "document.querySelectorAll('li.file').length === 1",
        )
        .await;
    browser.click("#submit").await;
    browser
        .wait_until(
            "the job page opens",
            "location.pathname.startsWith('/jobs/')",
        )
        .await;
    // `finished` only follows the stream's own job_done event.
    browser.wait_for("[data-live='finished']").await;
    browser
        .wait_until(
            "before and after thumbnails load",
            "[...document.querySelectorAll('img.thumb')].filter(i => i.complete && i.naturalWidth > 0).length === 2",
        )
        .await;
    browser.screenshot("job-with-key").await;
}
