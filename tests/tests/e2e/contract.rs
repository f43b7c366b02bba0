//! The REST contract: the OpenAPI document at `/api/v1/openapi.json` is served without a key,
//! and schemathesis (from PyPI, installed by `scripts/tools.sh`) fuzzes every operation in it
//! against a real mesh: no 5xx, and every status, content type, header and JSON body as the
//! document says. It runs twice: once on generated ids (mostly refusals), once with every
//! `{id}` pinned to a real finished job, so the answers about real jobs (their images,
//! events, outputs, exports, control calls) are checked against the document every time.

use std::{path::Path, process::Command, time::Duration};

use pixelmesh_tests::{Cluster, ClusterOptions, png, rest, sse::SseStream, tool, workspace_root};

const KEY: &str = "contract-secret-0123456789";
/// Cases per operation and phase: enough to reach every documented status of every
/// operation, bounded so each run takes seconds.
const MAX_EXAMPLES: &str = "100";
/// Fixed unless `PIXELMESH_SCHEMATHESIS_SEED` says otherwise, so a CI failure reproduces.
const DEFAULT_SEED: &str = "20261124";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs schemathesis on the mesh at `base`, from `dir`, with `options` before `run` and
/// `run_options` after it; asserts it generated cases and every one passed.
async fn schemathesis(
    base: &str,
    dir: &Path,
    options: &[&str],
    run_options: &[&str],
    logs: impl Fn() -> String,
) {
    let seed = std::env::var("PIXELMESH_SCHEMATHESIS_SEED").unwrap_or(DEFAULT_SEED.into());
    std::fs::create_dir_all(dir).expect("report dir");
    let mut command = Command::new(tool("st"));
    // Hypothesis keeps its example database in the working directory.
    command.current_dir(dir).env("NO_COLOR", "1");
    command.args(options).args([
        "run",
        &format!("{base}/api/v1/openapi.json"),
        "--url",
        base,
        "--header",
        &format!("Authorization: Bearer {KEY}"),
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,\
         response_headers_conformance,response_schema_conformance",
        // The feed never ends; a job's stream is fuzzed (it ends with its job).
        "--exclude-path",
        "/api/v1/events",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        &seed,
        "--request-timeout",
        "30",
        "--workers",
        "2",
        "--report",
        "junit",
        "--report-dir",
        ".",
    ]);
    command.args(run_options);
    let run = tokio::task::spawn_blocking(move || command.output().expect("run schemathesis"))
        .await
        .expect("schemathesis task");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "schemathesis found problems (seed {seed}):\n{stdout}\n{stderr}\n--- mesh logs ---\n{}",
        logs()
    );
    // It really ran: cases were generated, and every one passed.
    let counts = stdout
        .lines()
        .find_map(|line| {
            let (generated, rest) = line.trim().split_once(" generated, ")?;
            let passed = rest.strip_suffix(" passed")?;
            Some((generated.parse::<u32>().ok()?, passed.parse::<u32>().ok()?))
        })
        .unwrap_or_else(|| panic!("no test case summary from schemathesis:\n{stdout}"));
    assert!(
        counts.0 > 100,
        "schemathesis generated too little: {counts:?}"
    );
    assert_eq!(counts.0, counts.1, "not every case passed");
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_the_api_true_to_its_document() {
    let cluster = Cluster::start(ClusterOptions {
        gateway_args: vec!["--api-keys".into(), format!("contract:{KEY}")],
        // Generated URL lists must never reach past this machine: every other host is
        // refused before any lookup, and this one is loopback, refused as private.
        filter_args: vec!["--fetch-allow-hosts".into(), "127.0.0.1".into()],
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();
    let document_url = format!("{base}/api/v1/openapi.json");

    // The document needs no key, even with keys configured; the API does.
    let open = reqwest::Client::new();
    let response = open.get(&document_url).send().await.expect("get document");
    assert_eq!(response.status(), 200);
    let document: serde_json::Value = response.json().await.expect("document json");
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/api/v1/jobs"]["post"].is_object());
    let jobs = open
        .get(format!("{base}/api/v1/jobs"))
        .send()
        .await
        .expect("list");
    assert_eq!(jobs.status(), 401);

    // A finished job with an output, an analysis and a failed image, for the pinned run.
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {KEY}").parse().expect("header value");
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    let files = [
        ("one.png", png(48, 32, 1)),
        ("broken.png", b"not a png".to_vec()),
    ];
    let id = rest::submit(&http, &base, "analyze/resize:w=16", &files).await;
    let mut events = SseStream::open(&http, &format!("{base}/api/v1/jobs/{id}/events"), None).await;
    while events.next(TIMEOUT).await.expect("job event").event != "job_done" {}

    let reports = workspace_root().join("target/schemathesis");
    let logs = || cluster.logs();
    let config = reports.join("pinned.toml");
    let pinned = format!("[parameters]\n\"path.id\" = \"{id}\"\n\"path.output\" = \"0\"\n");
    std::fs::create_dir_all(&reports).expect("report dir");
    std::fs::write(&config, pinned).expect("write config");
    let config = config.to_string_lossy().into_owned();
    let options = ["--config-file", config.as_str()];
    // Deleting the job would leave the rest of the run nothing real to test.
    let run_options = ["--exclude-method", "DELETE"];
    schemathesis(&base, &reports.join("pinned"), &options, &run_options, logs).await;
    // The pinned run had the real job to the end.
    let job = http
        .get(format!("{base}/api/v1/jobs/{id}"))
        .send()
        .await
        .expect("get job");
    assert_eq!(job.status(), 200);

    schemathesis(&base, &reports.join("generated"), &[], &[], logs).await;
}
