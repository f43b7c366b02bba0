//! Load against a real mesh, every role its own process: rounds of 300 concurrent REST
//! submits, each accepted job watched by its own SSE stream, from several API keys at once.
//! Every accepted job must complete, every refused submit must leave nothing behind, and
//! storage must answer its health check throughout (it used to deadlock under exactly this).
//!
//! Bounded: 5 rounds of one small image per job. The submit latencies (p50, p99) and how
//! many submits were shed are printed; BENCHMARKS.md keeps them.
//! `cargo test -p pixelmesh-tests --test load -- --nocapture`

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use pixelmesh_tests::{Cluster, ClusterOptions, png, rest, sse::SseStream};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const ROUNDS: usize = 5;
const SUBMITS: usize = 300;
const KEYS: usize = 30;
/// Longest any one call may take before the test calls it hung.
const HUNG: Duration = Duration::from_secs(120);
/// Longest a health check of storage may take while the load runs.
const HEALTH_WITHIN: Duration = Duration::from_secs(5);

fn secret(key: usize) -> String {
    format!("load-key-{key}-secret-0123456789")
}

/// What one submit came to.
enum Outcome {
    /// Accepted, and its watcher saw it complete.
    Completed { latency: Duration },
    /// Refused at once (503 at capacity, 429 over the key's share).
    Shed { status: u16 },
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// One client: submits one image, then watches its job to the end over SSE.
async fn submit_and_watch(http: reqwest::Client, base: String, seed: usize) -> Outcome {
    let image = png(48, 32, seed as u8)
        .into_iter()
        .chain((seed as u32).to_le_bytes())
        .collect::<Vec<u8>>();
    let form = reqwest::multipart::Form::new()
        .text("pipeline", "blur:sigma=1/format:png")
        .part(
            "file",
            reqwest::multipart::Part::bytes(image).file_name(format!("{seed}.png")),
        );
    let started = Instant::now();
    let response = tokio::time::timeout(HUNG, rest::post_job(&http, &base, form))
        .await
        .expect("a submit hung");
    let latency = started.elapsed();
    let status = response.status().as_u16();
    if status == 503 || status == 429 {
        assert!(
            response.headers().contains_key("retry-after"),
            "a refusal says when to retry"
        );
        return Outcome::Shed { status };
    }
    let id = rest::accepted(response).await;
    let mut events = SseStream::open(&http, &format!("{base}/api/v1/jobs/{id}/events"), None).await;
    while let Some(event) = events.next(HUNG).await {
        if event.event == "job_done" {
            assert_eq!(event.data["state"], "completed", "job {id}: {}", event.data);
            return Outcome::Completed { latency };
        }
    }
    panic!("the event stream of job {id} ended without job_done");
}

#[tokio::test(flavor = "multi_thread")]
async fn rounds_of_concurrent_submits_and_watchers_all_complete_or_are_shed_cleanly() {
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key{k}:{}", secret(k))).collect();
    let cluster = Cluster::start(ClusterOptions {
        filters: 2,
        // Room for every submit of a round at once, so storage sees all of them; each
        // key keeps its default share (--max-uploads-per-key).
        gateway_args: vec![
            "--api-keys".into(),
            keys.join(","),
            "--max-concurrent-uploads".into(),
            SUBMITS.to_string(),
        ],
        ..Default::default()
    })
    .await;
    let base = cluster.http_url();

    // Storage's health, checked every 100 ms for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let storage = format!("http://127.0.0.1:{}", cluster.storage.port);
    let health = tokio::spawn({
        let (stop, checks) = (stop.clone(), checks.clone());
        async move {
            let channel = tonic::transport::Channel::from_shared(storage)
                .expect("url")
                .connect_lazy();
            let mut client = HealthClient::new(channel);
            while !stop.load(Ordering::SeqCst) {
                let answer = tokio::time::timeout(
                    HEALTH_WITHIN,
                    client.check(HealthCheckRequest::default()),
                )
                .await;
                match answer {
                    Ok(Ok(_)) => checks.fetch_add(1, Ordering::SeqCst),
                    other => {
                        return Err(format!("storage health unanswered under load: {other:?}"));
                    }
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        }
    });

    let clients: Vec<reqwest::Client> = (0..KEYS).map(|k| rest::keyed_client(&secret(k))).collect();
    let mut latencies = Vec::new();
    let mut shed = (0usize, 0usize);
    for round in 0..ROUNDS {
        let started = Instant::now();
        let tasks: Vec<_> = (0..SUBMITS)
            .map(|i| {
                let http = clients[i % KEYS].clone();
                tokio::spawn(submit_and_watch(http, base.clone(), round * SUBMITS + i))
            })
            .collect();
        let (mut completed, mut refused) = (0, 0);
        for task in tasks {
            match task.await.expect("client task") {
                Outcome::Completed { latency } => {
                    completed += 1;
                    latencies.push(latency);
                }
                Outcome::Shed { status } => {
                    refused += 1;
                    if status == 503 {
                        shed.0 += 1;
                    } else {
                        shed.1 += 1;
                    }
                }
            }
        }
        eprintln!(
            "round {}: {completed} completed, {refused} shed, {:.1} s",
            round + 1,
            started.elapsed().as_secs_f64()
        );
        assert!(completed > 0, "round {round}: nothing was accepted");
    }
    stop.store(true, Ordering::SeqCst);
    health
        .await
        .expect("health task")
        .unwrap_or_else(|err| panic!("{err}\n{}", cluster.logs()));

    // Nothing a refused submit started is left anywhere: every job there is, is one the
    // clients were told was accepted, and it completed.
    let mut total = 0;
    for http in &clients {
        let listed = rest::get_json(http, &format!("{base}/api/v1/jobs?limit=1")).await;
        let counts = &listed["counts"];
        assert_eq!(counts["total"], counts["completed"], "{counts}");
        total += counts["total"].as_u64().unwrap_or_default() as usize;
    }
    assert_eq!(total, latencies.len(), "jobs stored = submits accepted");

    latencies.sort();
    eprintln!(
        "load: {} submits in {ROUNDS} rounds of {SUBMITS} ({KEYS} keys), {} accepted and completed, {} shed (503: {}, 429: {}); submit latency p50 {} ms, p99 {} ms, max {} ms; {} storage health checks answered",
        ROUNDS * SUBMITS,
        latencies.len(),
        shed.0 + shed.1,
        shed.0,
        shed.1,
        percentile(&latencies, 0.5).as_millis(),
        percentile(&latencies, 0.99).as_millis(),
        latencies.last().copied().unwrap_or_default().as_millis(),
        checks.load(Ordering::SeqCst)
    );
}
