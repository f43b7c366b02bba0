//! Traces, metrics and logs, seen from outside: an in-process OTLP collector receives what
//! every role (each its own process) exports while real jobs run; `/metrics` is scraped on
//! every role's port; the roles' JSON logs are read back.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use pixelmesh_proto::v1::{
    Blur, Brightness, ImageInput, JobState, Operation, Resize, Sharpen, SubmitJobRequest, Tiling,
    operation::Op,
};
use pixelmesh_tests::{
    Cluster, ClusterOptions, api, corpus, free_port,
    otlp::{Collector, SERVICES, Span, Trace},
    poll,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(240);
fn op(op: Op) -> Operation {
    Operation { op: Some(op) }
}

/// Uploads, then submits over gRPC; returns the job id and the trace id the gateway answered
/// with (`x-trace-id`).
async fn submit(
    cluster: &Cluster,
    file: &str,
    pipeline: Vec<Operation>,
    tiling: Tiling,
) -> (String, String) {
    let mut client = cluster.gateway_client().await;
    let blob_id = api::upload(&mut client, file, &corpus::read(file)).await;
    let response = client
        .submit_job(SubmitJobRequest {
            pipeline,
            inputs: vec![ImageInput {
                blob_id,
                name: file.to_string(),
                ..Default::default()
            }],
            tiling: tiling as i32,
            ..Default::default()
        })
        .await
        .expect("submit");
    let trace_id = response
        .metadata()
        .get("x-trace-id")
        .expect("SubmitJob answers with x-trace-id")
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "trace id {trace_id:?}"
    );
    let id = response.into_inner().summary.expect("summary").id;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(
        job.summary.as_ref().map(|s| s.state()),
        Some(JobState::Completed),
        "{job:?}"
    );
    (id, trace_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_job_is_one_trace_across_every_service() {
    let (collector, addr) = Collector::start().await;
    let cluster = Cluster::start(ClusterOptions {
        // 2560x1600 in tiles of about 1024 pixels.
        tile_size: Some(1024),
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{addr}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ("PIXELMESH_LOG_FORMAT".into(), "json".into()),
        ],
        ..Default::default()
    })
    .await;

    // A whole image: fetch, decode, each op, encode, store.
    let (job_id, trace_id) = submit(
        &cluster,
        "kite-2560x1600.jpg",
        vec![
            op(Op::Resize(Resize {
                width: 1280,
                ..Default::default()
            })),
            op(Op::Sharpen(Sharpen::default())),
        ],
        Tiling::Never,
    )
    .await;
    let trace = Trace {
        spans: collector
            .wait_for(
                &trace_id,
                "job complete",
                &[
                    ("pixelmesh.v1.Storage/GetBlob", "fetch"),
                    ("pixelmesh.v1.Storage/PutBlob", "store"),
                ],
            )
            .await,
    };
    let services: BTreeSet<&str> = trace.spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        SERVICES.into_iter().collect(),
        "services in the job's trace"
    );
    // One root, the gateway's request; every other span's parent is in the trace.
    let roots: Vec<&Span> = trace
        .spans
        .iter()
        .filter(|s| s.parent_id.is_empty() || s.parent_id == "0000000000000000")
        .collect();
    assert_eq!(roots.len(), 1, "one root span: {roots:#?}");
    let root = roots[0];
    assert_eq!(root.name, "pixelmesh.v1.Gateway/SubmitJob");
    assert_eq!(root.service, "pixelmesh-gateway");
    for span in &trace.spans {
        if span.span_id != root.span_id {
            trace.parent(span);
        }
    }
    // The chain the job took, each span in its service and under the one before it.
    let scheduler_call = trace.one("pixelmesh.v1.Scheduler/SubmitJob");
    assert_eq!(scheduler_call.service, "pixelmesh-scheduler");
    assert!(trace.descends_from(scheduler_call, root));
    let submitted = trace.one("submit job");
    assert_eq!(submitted.service, "pixelmesh-scheduler");
    assert_eq!(submitted.attributes.get("job"), Some(&job_id));
    assert_eq!(trace.parent(submitted).span_id, scheduler_call.span_id);
    let publish = trace.one("publish task");
    assert_eq!(trace.parent(publish).span_id, submitted.span_id);
    let task = trace.one("task image");
    assert_eq!(task.service, "pixelmesh-filter");
    assert_eq!(
        trace.parent(task).span_id,
        submitted.span_id,
        "the task's context came through the NATS headers from the submit"
    );
    assert_eq!(task.attributes.get("job"), Some(&job_id));
    for stage in ["fetch", "decode", "resize", "sharpen", "encode", "store"] {
        let span = trace.one(stage);
        assert_eq!(span.service, "pixelmesh-filter", "{stage}");
        assert_eq!(trace.parent(span).span_id, task.span_id, "{stage}");
    }
    let get_blob = trace.one("pixelmesh.v1.Storage/GetBlob");
    assert_eq!(get_blob.service, "pixelmesh-storage");
    assert_eq!(trace.parent(get_blob).name, "fetch");
    assert!(
        trace
            .named("pixelmesh.v1.Storage/PutBlob")
            .iter()
            .any(|s| trace.parent(s).name == "store")
    );
    let record = trace.one("record result");
    assert_eq!(record.service, "pixelmesh-scheduler");
    assert_eq!(trace.parent(record).span_id, task.span_id);
    let complete = trace.one("job complete");
    assert!(trace.descends_from(complete, record));
    assert_eq!(
        complete.attributes.get("state").map(String::as_str),
        Some("completed")
    );

    // A tiled image: its tiles run as sibling spans under the recording of the split.
    let (tiled_id, tiled_trace_id) = submit(
        &cluster,
        "autumn-2560x1600.jpg",
        vec![
            op(Op::Blur(Blur { sigma: 2.0 })),
            op(Op::Brightness(Brightness { factor: 1.2 })),
        ],
        Tiling::Always,
    )
    .await;
    assert_ne!(tiled_trace_id, trace_id, "each job is its own trace");
    let tiled = Trace {
        spans: collector
            .wait_for(&tiled_trace_id, "job complete", &[])
            .await,
    };
    let tiles: Vec<&Span> = tiled
        .spans
        .iter()
        .filter(|s| s.name.starts_with("task tile "))
        .collect();
    assert!(tiles.len() >= 2, "tiles: {tiles:?}");
    let split_recorded = tiled.parent(tiles[0]);
    assert_eq!(split_recorded.name, "record result");
    assert!(
        tiles.iter().all(|t| t.parent_id == split_recorded.span_id),
        "tiles are siblings"
    );
    assert_eq!(tiled.parent(split_recorded).name, "task image");
    for tile in &tiles {
        for op in ["blur", "brightness"] {
            assert!(
                tiled.named(op).iter().any(|s| s.parent_id == tile.span_id),
                "{op} under {}",
                tile.name
            );
        }
    }
    let assemble = tiled.one("task assemble");
    assert_eq!(tiled.parent(assemble).name, "record result");
    assert!(
        tiled
            .named("encode")
            .iter()
            .any(|s| s.parent_id == assemble.span_id)
    );

    // Every log line the filter and scheduler wrote inside these jobs names job and trace.
    for (role, logs) in [
        ("filter", cluster.filters[0].logs()),
        ("scheduler", cluster.scheduler.logs()),
    ] {
        let mut inside = 0;
        for line in logs.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                panic!("{role} wrote a line that is not JSON: {line}");
            };
            let spans = event["spans"].as_array().cloned().unwrap_or_default();
            let field = |name: &str| -> Option<String> {
                spans
                    .iter()
                    .rev()
                    .chain(std::iter::once(&event["fields"]))
                    .find_map(|s| s[name].as_str().map(str::to_string))
            };
            let Some(job) = field("job") else { continue };
            if job != job_id && job != tiled_id {
                continue;
            }
            inside += 1;
            let expected = if job == job_id {
                &trace_id
            } else {
                &tiled_trace_id
            };
            assert_eq!(
                field("trace_id").as_deref(),
                Some(expected.as_str()),
                "{role}: a line inside job {job} without its trace id: {line}"
            );
        }
        assert!(inside >= 2, "{role} logged {inside} lines inside the jobs");
    }
    assert!(
        cluster.filters[0]
            .logs()
            .lines()
            .any(|l| l.contains("\"image done\"") && l.contains(&trace_id)),
        "the filter's \"image done\" line carries the trace id"
    );

    // REST answers carry the trace id too.
    let response = reqwest::get(format!("{}/api/v1/jobs/{job_id}", cluster.http_url()))
        .await
        .expect("get job");
    assert_eq!(response.status().as_u16(), 200);
    let header = response
        .headers()
        .get("x-trace-id")
        .expect("x-trace-id on REST");
    assert_eq!(header.len(), 32);
    assert_ne!(header.to_str().unwrap(), trace_id);
}

/// A collector that accepts connections and never answers, and one that is not there at
/// all: jobs run as always, and roles still stop promptly.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_or_absent_collector_never_holds_up_a_job() {
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stuck = black_hole.local_addr().expect("addr");
    // Accepted and held open, never read: the exporter's handshake waits forever.
    let held = Arc::new(Mutex::new(Vec::new()));
    std::thread::spawn({
        let held = held.clone();
        move || {
            for connection in black_hole.incoming().flatten() {
                held.lock().unwrap().push(connection);
            }
        }
    });
    for endpoint in [
        format!("http://{stuck}"),
        format!("http://127.0.0.1:{}", free_port()),
    ] {
        let mut cluster = Cluster::start(ClusterOptions {
            env: vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ],
            ..Default::default()
        })
        .await;
        let mut client = cluster.gateway_client().await;
        let images: Vec<(String, Vec<u8>)> = (0..3)
            .map(|i| (format!("{i}.png"), pixelmesh_tests::png(640, 480, i)))
            .collect();
        let job = api::submit(
            &mut client,
            &images,
            vec![op(Op::Resize(Resize {
                width: 320,
                ..Default::default()
            }))],
        )
        .await;
        let id = job.summary.expect("summary").id;
        let started = Instant::now();
        let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
        assert_eq!(
            job.summary.map(|s| s.state()),
            Some(JobState::Completed),
            "{endpoint}"
        );
        let stopping = Instant::now();
        assert!(cluster.filters[0].terminate(), "filter stops cleanly");
        assert!(cluster.gateway.terminate(), "gateway stops cleanly");
        eprintln!(
            "collector {endpoint}: job done {:?} after submit, filter and gateway stopped in {:?}",
            stopping - started,
            stopping.elapsed()
        );
    }
}

/// A scrape of `/metrics` on `port`, as `name{labels} value` lines by series.
async fn scrape(port: u16) -> HashMap<String, f64> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        response.headers()
    );
    let body = response.text().await.expect("body");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A histogram's series (`_bucket`, `_sum`, `_count`) by the histogram's name.
fn base_name(name: &str) -> String {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
        .to_string()
}

/// The `pixelmesh_…` metric names in a dashboard's queries.
fn metric_names(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![dashboard];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    for (at, _) in expr.match_indices("pixelmesh_") {
                        let name: String = expr[at..]
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        names.insert(base_name(&name));
                    }
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    names
}

fn value(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_as_a_job_runs() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let filter_port = cluster.filters[0].port;
    let ports = [
        ("gateway", cluster.gateway.port),
        ("scheduler", cluster.scheduler.port),
        ("filter", filter_port),
        ("storage", cluster.storage.port),
    ];
    let mut before = HashMap::new();
    for (role, port) in ports {
        before.insert(role, scrape(port).await);
    }

    let mut client = cluster.gateway_client().await;
    let images: Vec<(String, Vec<u8>)> = vec![
        ("kite.jpg".into(), corpus::read("kite-2560x1600.jpg")),
        (
            "cups.jpg".into(),
            corpus::read("colorful-cups-2560x1600.jpg"),
        ),
        ("broken.jpg".into(), b"not an image".to_vec()),
    ];
    let job = api::submit(
        &mut client,
        &images,
        vec![
            op(Op::Resize(Resize {
                width: 800,
                ..Default::default()
            })),
            op(Op::Blur(Blur { sigma: 1.5 })),
        ],
    )
    .await;
    let id = job.summary.expect("summary").id;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(
        job.summary.map(|s| s.state()),
        Some(JobState::CompletedWithErrors)
    );
    let http = reqwest::Client::new();
    let status = http
        .get(format!("{}/api/v1/jobs/{id}", cluster.http_url()))
        .send()
        .await
        .expect("get job");
    assert_eq!(status.status().as_u16(), 200);
    let missing = http
        .get(format!(
            "{}/api/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
            cluster.http_url()
        ))
        .send()
        .await
        .expect("get job");
    assert_eq!(missing.status().as_u16(), 404);

    let mut after = HashMap::new();
    for (role, port) in ports {
        after.insert(role, scrape(port).await);
    }
    let moved =
        |role: &str, series: &str| value(&after[role], series) - value(&before[role], series);
    // The scheduler counts the job in and out.
    assert_eq!(moved("scheduler", "pixelmesh_jobs_submitted_total"), 1.0);
    assert_eq!(moved("scheduler", "pixelmesh_images_submitted_total"), 3.0);
    assert_eq!(
        moved(
            "scheduler",
            "pixelmesh_jobs_finished_total{state=\"completed_with_errors\"}"
        ),
        1.0
    );
    // The filter: images by outcome, per-op latency, task latency, bytes.
    assert_eq!(
        moved(
            "filter",
            "pixelmesh_images_processed_total{outcome=\"done\"}"
        ),
        2.0
    );
    assert_eq!(
        moved(
            "filter",
            "pixelmesh_images_processed_total{outcome=\"failed\"}"
        ),
        1.0
    );
    for op in ["resize", "blur"] {
        assert_eq!(
            moved(
                "filter",
                &format!("pixelmesh_operation_duration_seconds_count{{op=\"{op}\"}}")
            ),
            2.0,
            "{op}"
        );
        assert!(
            moved(
                "filter",
                &format!("pixelmesh_operation_duration_seconds_sum{{op=\"{op}\"}}")
            ) > 0.0
        );
    }
    assert_eq!(
        moved(
            "filter",
            "pixelmesh_task_duration_seconds_count{kind=\"image\"}"
        ),
        2.0
    );
    let inputs: usize = images.iter().map(|(_, bytes)| bytes.len()).sum();
    assert_eq!(
        moved("filter", "pixelmesh_filter_bytes_in_total"),
        inputs as f64
    );
    assert!(moved("filter", "pixelmesh_filter_bytes_out_total") > 0.0);
    // Storage: the uploads and the outputs in, the inputs out.
    assert!(moved("storage", "pixelmesh_storage_bytes_written_total") > inputs as f64);
    assert!(moved("storage", "pixelmesh_storage_bytes_read_total") >= inputs as f64);
    // Requests by route and code, gRPC and HTTP.
    assert_eq!(
        moved(
            "gateway",
            "pixelmesh_requests_total{protocol=\"grpc\",route=\"/pixelmesh.v1.Gateway/SubmitJob\",code=\"OK\"}"
        ),
        1.0
    );
    assert_eq!(
        moved(
            "gateway",
            "pixelmesh_requests_total{protocol=\"grpc\",route=\"/pixelmesh.v1.Gateway/UploadImage\",code=\"OK\"}"
        ),
        3.0
    );
    assert_eq!(
        moved(
            "gateway",
            "pixelmesh_requests_total{protocol=\"http\",route=\"/api/v1/jobs/{id}\",code=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        moved(
            "gateway",
            "pixelmesh_requests_total{protocol=\"http\",route=\"/api/v1/jobs/{id}\",code=\"404\"}"
        ),
        1.0
    );
    assert!(
        moved(
            "gateway",
            "pixelmesh_request_duration_seconds_count{protocol=\"grpc\",route=\"/pixelmesh.v1.Gateway/SubmitJob\"}"
        ) == 1.0
    );
    assert!(
        moved(
            "scheduler",
            "pixelmesh_requests_total{protocol=\"grpc\",route=\"/pixelmesh.v1.Scheduler/SubmitJob\",code=\"OK\"}"
        ) == 1.0
    );
    assert!(
        moved(
            "storage",
            "pixelmesh_requests_total{protocol=\"grpc\",route=\"/pixelmesh.v1.Storage/GetBlob\",code=\"OK\"}"
        ) >= 3.0
    );
    // Gauges from JetStream and the heartbeats: one worker, an empty queue.
    let gateway = &after["gateway"];
    assert_eq!(value(gateway, "pixelmesh_workers_online"), 1.0);
    assert_eq!(value(gateway, "pixelmesh_worker_slots"), 1.0);
    for gauge in [
        "pixelmesh_queue_pending_tasks",
        "pixelmesh_queue_in_flight_tasks",
        "pixelmesh_queue_redelivered_tasks",
    ] {
        assert_eq!(gateway.get(gauge), Some(&0.0), "{gauge}");
    }

    // Every metric the Grafana dashboard draws is one the roles expose.
    let exposed: BTreeSet<String> = after
        .values()
        .flat_map(|series| series.keys())
        .map(|series| base_name(series.split('{').next().unwrap_or_default()))
        .collect();
    let dashboard = std::fs::read_to_string(
        pixelmesh_tests::workspace_root().join("compose/grafana/dashboards/pixelmesh.json"),
    )
    .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard json");
    let drawn = metric_names(&dashboard);
    assert!(drawn.len() >= 15, "{drawn:?}");
    let missing: Vec<&String> = drawn.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "the dashboard draws metrics nobody exposes: {missing:?}"
    );

    // With the only worker stopped, submitted work shows up as queue depth.
    let mut cluster = cluster;
    assert!(cluster.filters[0].terminate());
    let queued = api::submit(
        &mut client,
        &images[..2],
        vec![op(Op::Resize(Resize {
            width: 100,
            ..Default::default()
        }))],
    )
    .await;
    assert!(queued.summary.is_some());
    poll(
        "queue depth and workers online following",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let gateway = scrape(cluster.gateway.port).await;
            let pending = value(&gateway, "pixelmesh_queue_pending_tasks");
            let online = value(&gateway, "pixelmesh_workers_online");
            if pending == 2.0 && online == 0.0 {
                Ok(())
            } else {
                Err(format!("pending {pending} online {online}"))
            }
        },
    )
    .await;
}

/// Sampling is the standard OTEL_TRACES_SAMPLER's, and the decision travels with the job: with
/// new traces never sampled, a job is exported nowhere, while a job whose caller sent a
/// sampled `traceparent` is exported by every service it passes through.
#[tokio::test(flavor = "multi_thread")]
async fn sampling_decides_once_per_job_for_every_service() {
    let (collector, addr) = Collector::start().await;
    let cluster = Cluster::start(ClusterOptions {
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{addr}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            (
                "OTEL_TRACES_SAMPLER".into(),
                "parentbased_traceidratio".into(),
            ),
            ("OTEL_TRACES_SAMPLER_ARG".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await;
    let pipeline = || {
        vec![op(Op::Resize(Resize {
            width: 320,
            ..Default::default()
        }))]
    };
    let (unsampled_job, unsampled) =
        submit(&cluster, "kite-2560x1600.jpg", pipeline(), Tiling::Never).await;

    // The same submit with a caller's sampled trace context.
    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut client = cluster.gateway_client().await;
    let blob_id = api::upload(
        &mut client,
        "cups.jpg",
        &corpus::read("colorful-cups-2560x1600.jpg"),
    )
    .await;
    let mut request = tonic::Request::new(SubmitJobRequest {
        pipeline: pipeline(),
        inputs: vec![ImageInput {
            blob_id,
            name: "cups.jpg".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{sampled}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    let response = client.submit_job(request).await.expect("submit");
    assert_eq!(
        response
            .metadata()
            .get("x-trace-id")
            .and_then(|v| v.to_str().ok()),
        Some(sampled),
        "the caller's trace goes on"
    );
    let id = response.into_inner().summary.expect("summary").id;
    let (_, job) = api::watch_to_end(&mut client, &id, JOB_TIMEOUT).await;
    assert_eq!(job.summary.map(|s| s.state()), Some(JobState::Completed));

    let spans = collector.wait_for(sampled, "job complete", &[]).await;
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, SERVICES.into_iter().collect());
    // Every role exports in order, and the unsampled job ran and ended first.
    assert_ne!(unsampled, sampled);
    assert!(
        collector.trace(&unsampled).is_empty(),
        "job {unsampled_job} was not sampled, yet its spans were exported"
    );
}
