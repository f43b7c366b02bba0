//! Event watchers share the gateway's NATS subscriptions and leave nothing behind: hundreds
//! of SSE clients on one job and on the all-jobs feed cost the gateway's NATS connection at
//! most one subscription per subject (as the real nats-server counts them, through its
//! monitoring endpoint), and once the clients hang up the gateway's subscriptions and live
//! tokio tasks are back where they were.

use std::time::Duration;

use futures::StreamExt;
use pixelmesh_tests::{Cluster, ClusterOptions, png, poll, rest, sse::SseStream};

/// Clients on the job's stream, and as many on the feed.
const CLIENTS: usize = 200;
/// The subjects those watchers need: the job's progress, every job's progress, and the
/// worker heartbeats' bucket.
const SUBJECTS: usize = 3;
/// How many clients connect at once: the gateway refuses requests over its concurrency
/// limit (256) while their responses have not started.
const CONNECTING: usize = 32;

/// The subscriptions nats-server holds for the gateway's connection, and their subjects.
async fn gateway_subscriptions(
    http: &reqwest::Client,
    monitor: &str,
) -> Result<(usize, Vec<String>), String> {
    let connz: serde_json::Value = http
        .get(format!("{monitor}/connz?subs=1&limit=1024"))
        .send()
        .await
        .map_err(|err| format!("connz: {err}"))?
        .json()
        .await
        .map_err(|err| format!("connz body: {err}"))?;
    let gateways: Vec<&serde_json::Value> = connz["connections"]
        .as_array()
        .ok_or("connz without connections")?
        .iter()
        .filter(|conn| conn["name"] == "pixelmesh-gateway")
        .collect();
    let [gateway] = gateways[..] else {
        return Err(format!("{} gateway connections", gateways.len()));
    };
    let count = gateway["subscriptions"]
        .as_u64()
        .ok_or("no subscription count")? as usize;
    let subjects = gateway["subscriptions_list"]
        .as_array()
        .map(|subjects| {
            subjects
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok((count, subjects))
}

/// A gauge of the gateway's `/metrics` (refreshed at each scrape).
async fn gauge(http: &reqwest::Client, base: &str, name: &str) -> Result<u64, String> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|err| format!("metrics: {err}"))?
        .text()
        .await
        .map_err(|err| format!("metrics body: {err}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .ok_or_else(|| format!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_share_one_subscription_per_subject_and_leave_nothing_behind() {
    // No filter: the job stays running, so every watcher stays in its loop.
    let cluster = Cluster::start(ClusterOptions {
        filters: 0,
        ..ClusterOptions::default()
    })
    .await;
    let base = cluster.http_url();
    let monitor = cluster.nats.monitor_url();
    // A fresh connection per scrape, closed after it: a kept-alive one would be a gateway
    // task of the test's own making.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let id = rest::submit(
        &probe,
        &base,
        r#"[{"op":"grayscale"}]"#,
        &[("a.png", png(64, 64, 1))],
    )
    .await;
    // Running before anyone watches, so the next event every watcher hears is the pause.
    rest::wait_job(
        &probe,
        &base,
        &id,
        "running",
        Duration::from_secs(30),
        |job| job["state"] == "running",
    )
    .await;
    let job_events = format!("{base}/api/v1/jobs/{id}/events");
    let feed = format!("{base}/api/v1/events");

    // One client of each first, so whatever the gateway sets up once (the JetStream
    // request inbox, the bucket's handle) is in the baseline.
    let warm = reqwest::Client::new();
    let mut first = SseStream::open(&warm, &job_events, None).await;
    let event = first.next(Duration::from_secs(10)).await.expect("an event");
    assert_eq!(event.event, "progress");
    drop(SseStream::open(&warm, &feed, None).await);
    drop(first);
    drop(warm);

    // Settled: only the throughput counter's subject is shared, and the server agrees
    // twice in a row.
    let (baseline_subs, baseline_subjects) = poll(
        "gateway subscriptions settle after the warm-up",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let before = gateway_subscriptions(&probe, &monitor).await?;
            let shared = gauge(&probe, &base, "pixelmesh_nats_shared_subscriptions").await?;
            let after = gateway_subscriptions(&probe, &monitor).await?;
            if shared == 1 && before.0 == after.0 {
                Ok(after)
            } else {
                Err(format!("{shared} shared, {before:?} then {after:?}"))
            }
        },
    )
    .await;
    let baseline_tasks = poll(
        "the gateway's task count is read",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || gauge(&probe, &base, "pixelmesh_runtime_alive_tasks"),
    )
    .await;

    let clients = reqwest::Client::new();
    let mut jobs: Vec<SseStream> = futures::stream::iter(0..CLIENTS)
        .map(|_| async {
            let mut stream = SseStream::open(&clients, &job_events, None).await;
            // The first event: the watcher is past storage and in its loop.
            let event = stream
                .next(Duration::from_secs(30))
                .await
                .expect("an event");
            assert_eq!(event.event, "progress");
            stream
        })
        .buffer_unordered(CONNECTING)
        .collect()
        .await;
    // The feed answers once its subscriptions are made (no worker: no first event).
    let feeds: Vec<SseStream> = futures::stream::iter(0..CLIENTS)
        .map(|_| SseStream::open(&clients, &feed, None))
        .buffer_unordered(CONNECTING)
        .collect()
        .await;
    assert_eq!((jobs.len(), feeds.len()), (CLIENTS, CLIENTS));

    // Listing the live workers makes a short-lived consumer per feed; polled until those
    // are gone, the count must stay within one subscription per subject.
    let (during_subs, during_subjects) = poll(
        "gateway subscriptions within one per subject while 400 clients watch",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let seen = gateway_subscriptions(&probe, &monitor).await?;
            if seen.0 <= baseline_subs + SUBJECTS {
                Ok(seen)
            } else {
                Err(format!("{} subscriptions: {:?}", seen.0, seen.1))
            }
        },
    )
    .await;
    let shared = gauge(&probe, &base, "pixelmesh_nats_shared_subscriptions")
        .await
        .expect("shared subscriptions");
    assert_eq!(shared as usize, SUBJECTS, "{during_subjects:?}");
    let during_tasks = gauge(&probe, &base, "pixelmesh_runtime_alive_tasks")
        .await
        .expect("tasks");
    // A watcher task and a connection task per client at the least: the count sees them,
    // so its return to the baseline below means something.
    assert!(
        during_tasks >= baseline_tasks + 2 * CLIENTS as u64,
        "{during_tasks} tasks with {} clients, {baseline_tasks} before",
        2 * CLIENTS
    );
    // Every watcher hears what is published on the shared subscription: the pause.
    let paused = probe
        .post(format!("{base}/api/v1/jobs/{id}/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status().as_u16(), 200, "pause");
    let heard = futures::future::join_all(
        jobs.iter_mut()
            .map(|stream| stream.next(Duration::from_secs(30))),
    )
    .await;
    for event in heard {
        let event = event.expect("the stream goes on");
        assert_eq!(
            (event.event.as_str(), event.data["state"].as_str()),
            ("progress", Some("paused"))
        );
    }

    drop(jobs);
    drop(feeds);
    drop(clients);
    let (after_subs, after_tasks) = poll(
        "the gateway's subscriptions and tasks back to the baseline",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let (subs, subjects) = gateway_subscriptions(&probe, &monitor).await?;
            let tasks = gauge(&probe, &base, "pixelmesh_runtime_alive_tasks").await?;
            // No tolerance: each scrape's own connection is in the baseline too (one at a
            // time, closed after it), and nothing else of the clients may stay.
            if subs == baseline_subs && tasks <= baseline_tasks {
                Ok((subs, tasks))
            } else {
                Err(format!(
                    "{subs} subscriptions (baseline {baseline_subs}: {baseline_subjects:?}, now {subjects:?}), {tasks} tasks (baseline {baseline_tasks})"
                ))
            }
        },
    )
    .await;
    eprintln!(
        "subscriptions: baseline {baseline_subs}, with {} clients {during_subs}, after {after_subs}; \
         tasks: baseline {baseline_tasks}, with clients {during_tasks}, after {after_tasks}",
        2 * CLIENTS
    );
}
