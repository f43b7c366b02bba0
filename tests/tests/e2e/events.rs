//! Live progress as server-sent events, seen by a real HTTP client: order, resume after a
//! reconnect, and the end of the stream.

use std::{collections::BTreeSet, time::Duration};

use pixelmesh_tests::{
    Cluster, ClusterOptions, png, rest,
    sse::{SseEvent, SseStream},
};

const EVENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Submits `n` images (the last one not an image) with a small pipeline; the job id.
async fn submit(http: &reqwest::Client, base: &str, n: u8) -> String {
    let names: Vec<String> = (0..n - 1).map(|i| format!("{i}.png")).collect();
    let mut files: Vec<(&str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), png(96, 64, i as u8)))
        .collect();
    files.push(("notes.txt", b"not an image".to_vec()));
    rest::submit(http, base, "blur:sigma=1/grayscale", &files).await
}

/// Reads events until the server ends the stream; the events, in order.
async fn read_to_end(stream: &mut SseStream) -> Vec<SseEvent> {
    let mut events = Vec::new();
    while let Some(event) = stream.next(EVENT_TIMEOUT).await {
        events.push(event);
    }
    events
}

fn version(event: &SseEvent) -> u64 {
    event.id.parse().expect("event ids are job versions")
}

#[tokio::test(flavor = "multi_thread")]
async fn events_report_every_image_once_in_order_and_resume_after_a_reconnect() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let n = 6;
    let id = submit(&http, &base, n).await;
    let url = format!("{base}/api/v1/jobs/{id}/events");

    // First connection: the current state, then events up to the first image's outcome.
    let mut stream = SseStream::open(&http, &url, None).await;
    let first = stream.next(EVENT_TIMEOUT).await.expect("first event");
    assert_eq!(first.event, "progress", "{first:?}");
    assert_eq!(first.data["id"], id.as_str());
    assert_eq!(first.data["total"], n as u64);
    assert_eq!(first.data["version"].as_u64(), Some(version(&first)));
    let mut seen = vec![first];
    while !seen
        .last()
        .is_some_and(|e| e.event.starts_with("image_") || e.event == "job_done")
    {
        seen.push(stream.next(EVENT_TIMEOUT).await.expect("an image event"));
    }
    drop(stream);

    // Second connection resumes after the last event seen, and runs to the end.
    let last_id = seen.last().expect("an event").id.clone();
    let mut stream = SseStream::open(&http, &url, Some(&last_id)).await;
    let rest_of_it = read_to_end(&mut stream).await;
    seen.extend(rest_of_it);

    let done = seen.last().expect("events");
    assert_eq!(done.event, "job_done", "{seen:#?}");
    assert_eq!(done.data["state"], "completed_with_errors");
    assert_eq!(
        (done.data["done"].as_u64(), done.data["failed"].as_u64()),
        (Some(n as u64 - 1), Some(1))
    );

    // Each image's outcome exactly once over both connections, ids never going back.
    let mut outcomes = BTreeSet::new();
    for event in seen.iter().filter(|e| e.event.starts_with("image_")) {
        let index = event.data["image"]["index"].as_u64().expect("index");
        assert!(
            outcomes.insert(index),
            "image {index} reported twice: {seen:#?}"
        );
        let expected = if index == n as u64 - 1 {
            "image_failed"
        } else {
            "image_done"
        };
        assert_eq!(event.event, expected, "{event:?}");
        assert_eq!(event.data["job"]["id"], id.as_str());
    }
    // Images that ended before the first connection are in the first event's counts, not
    // reported one by one; every later outcome is.
    let before =
        seen[0].data["done"].as_u64().unwrap_or(0) + seen[0].data["failed"].as_u64().unwrap_or(0);
    assert_eq!(outcomes.len() as u64 + before, n as u64, "{seen:#?}");
    assert!(outcomes.iter().all(|&index| index < n as u64));
    let failed = seen
        .iter()
        .find(|e| e.event == "image_failed")
        .expect("failure");
    assert!(
        failed.data["image"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a supported image")),
        "{failed:?}"
    );
    let versions: Vec<u64> = seen.iter().map(version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "event ids go back: {versions:?}"
    );

    // Seen to the end: a reconnect is told to stop (204), a fresh watcher gets the final
    // state and the end at once.
    let response = http
        .get(&url)
        .header("last-event-id", &done.id)
        .send()
        .await
        .expect("reconnect");
    assert_eq!(response.status().as_u16(), 204);
    let mut stream = SseStream::open(&http, &url, None).await;
    let ending: Vec<String> = read_to_end(&mut stream)
        .await
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(ending, ["progress", "job_done"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_refuse_unknown_jobs_and_bad_resume_ids() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let unknown = http
        .get(format!(
            "{base}/api/v1/jobs/01JAAAAAAAAAAAAAAAAAAAAAAA/events"
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status().as_u16(), 404);

    let id = submit(&http, &base, 2).await;
    let url = format!("{base}/api/v1/jobs/{id}/events");
    let bad = http
        .get(&url)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .expect("request");
    assert_eq!(bad.status().as_u16(), 400);
    let body: serde_json::Value = bad.json().await.expect("json error");
    assert_eq!(body["code"], "invalid_argument");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("yesterday")),
        "{body}"
    );

    // The query form, for EventSource's first request, resumes the same way.
    let mut stream = SseStream::open(&http, &format!("{url}?last_event_id=1"), None).await;
    let events = read_to_end(&mut stream).await;
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("job_done"));
    let images = events
        .iter()
        .filter(|e| e.event.starts_with("image_"))
        .count();
    assert_eq!(images, 2, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feed_shows_every_job_and_workers_coming_and_going() {
    let mut cluster = Cluster::start(ClusterOptions {
        filters: 2,
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let base = cluster.http_url();
    let mut feed = SseStream::open(&http, &format!("{base}/api/v1/events"), None).await;

    // Both workers, from the bucket's current heartbeats.
    let mut workers = BTreeSet::new();
    while workers.len() < 2 {
        let event = feed.next(EVENT_TIMEOUT).await.expect("feed event");
        if event.event == "worker" {
            workers.insert(event.data["id"].as_str().expect("id").to_string());
        }
    }

    let id = submit(&http, &base, 3).await;
    let mut images = BTreeSet::new();
    loop {
        let event = feed.next(EVENT_TIMEOUT).await.expect("feed event");
        let job = if event.event.starts_with("image_") || event.event == "tile_done" {
            &event.data["job"]
        } else {
            &event.data
        };
        if job["id"] != id.as_str() {
            continue;
        }
        if event.event.starts_with("image_") {
            images.insert(event.data["image"]["index"].as_u64().expect("index"));
        }
        if event.event == "job_done" {
            break;
        }
    }
    assert_eq!(images, BTreeSet::from([0, 1, 2]));

    // A worker that shuts down says goodbye; a killed one is reported once its heartbeat
    // expires.
    assert!(cluster.filters[1].terminate(), "filter exits cleanly");
    let first_gone = next_gone(&mut feed).await;
    cluster.filters[0].kill();
    let second_gone = next_gone(&mut feed).await;
    assert_eq!(BTreeSet::from([first_gone, second_gone]), workers);
}

/// The id of the next `worker_gone` event.
#[tokio::test(flavor = "multi_thread")]
async fn every_gateway_replica_relays_the_same_events() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let second = cluster.add_gateway().await;
    let first = cluster.http_url();
    let http = reqwest::Client::new();

    // The second replica's feed is open before the job exists on the first.
    let mut feed = SseStream::open(&http, &format!("{second}/api/v1/events"), None).await;
    let id = submit(&http, &first, 4).await;
    let (url_first, url_second) = (
        format!("{first}/api/v1/jobs/{id}/events"),
        format!("{second}/api/v1/jobs/{id}/events"),
    );
    // From version 1 (the job's creation), so both hold every outcome however fast the
    // job runs: what happened before a stream opened is read back, the rest relayed live.
    let (mut on_first, mut on_second) = tokio::join!(
        SseStream::open(&http, &url_first, Some("1")),
        SseStream::open(&http, &url_second, Some("1"))
    );
    let (from_first, from_second) =
        tokio::join!(read_to_end(&mut on_first), read_to_end(&mut on_second));

    // Both replicas report every outcome once, with the same ids, and the same end.
    let outcomes = |events: &[SseEvent]| -> BTreeSet<(String, String)> {
        events
            .iter()
            .filter(|e| e.event.starts_with("image_"))
            .map(|e| (e.id.clone(), e.event.clone()))
            .collect()
    };
    assert_eq!(outcomes(&from_first).len(), 4, "{from_first:?}");
    assert_eq!(outcomes(&from_first), outcomes(&from_second));
    let last = |events: &[SseEvent]| events.last().map(|e| (e.event.clone(), e.id.clone()));
    assert_eq!(last(&from_first), last(&from_second));
    assert_eq!(last(&from_second).expect("events").0, "job_done");

    // The feed of the replica that did not take the submit saw the job end.
    loop {
        let event = feed.next(EVENT_TIMEOUT).await.expect("feed event");
        if event.event == "job_done" && event.data["id"] == id.as_str() {
            assert_eq!(event.data["state"], "completed_with_errors");
            break;
        }
    }
}

async fn next_gone(feed: &mut SseStream) -> String {
    loop {
        let event = feed.next(EVENT_TIMEOUT).await.expect("feed event");
        if event.event == "worker_gone" {
            return event.data["id"].as_str().expect("id").to_string();
        }
    }
}
