//! The dashboard: job and worker cards, the workers table, throughput, queue depth and a
//! feed of recent activity, all from the gateway's event feed and a few reads.

use std::{collections::VecDeque, time::Duration};

use leptos::{prelude::*, task::spawn_local};
use leptos_router::components::A;

use super::{
    error_line::ErrorLine,
    jobs::{JOB_EVENTS, LiveDot, event_job},
    table_head::TableHead,
    throughput_chart::ThroughputChart,
};
use crate::{
    api::{self, Counts, ImageEvent, Stats, Worker},
    format,
    hooks::{use_clock, use_event_stream},
};

/// A heartbeat older than this marks a worker as late (it beats every few seconds).
const LATE_MS: i64 = 10_000;
/// Entries the activity feed keeps.
const ACTIVITY: usize = 30;

const FEED_EVENTS: &[&str] = &[
    "progress",
    "image_done",
    "image_failed",
    "image_cancelled",
    "tile_done",
    "job_done",
    "worker",
    "worker_gone",
];

#[derive(Debug, Clone, PartialEq)]
struct Row {
    worker: Worker,
    online: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Activity {
    at_ms: i64,
    kind: &'static str,
    text: String,
    job: Option<String>,
}

/// A worker's status for the table: `offline` once gone, `late` when its heartbeat is
/// overdue, `busy` while it holds tasks, else `idle`.
pub fn worker_status(online: bool, in_flight: u32, seen_at_ms: i64, now_ms: i64) -> &'static str {
    if !online {
        "offline"
    } else if now_ms - seen_at_ms > LATE_MS {
        "late"
    } else if in_flight > 0 {
        "busy"
    } else {
        "idle"
    }
}

#[component]
pub fn Dashboard() -> impl IntoView {
    let counts = RwSignal::new(Counts::default());
    let workers = RwSignal::new(Vec::<Row>::new());
    let stats = RwSignal::new(Stats::default());
    let stats_error = RwSignal::new(None::<String>);
    let activity = RwSignal::new(VecDeque::<Activity>::new());
    let error = RwSignal::new(None::<String>);
    let stale = RwSignal::new(true);

    let refresh = move || {
        spawn_local(async move {
            match api::jobs("limit=1").await {
                Ok(list) => counts.set(list.counts),
                Err(err) => error.set(Some(err.to_string())),
            }
            match api::stats().await {
                Ok(s) => {
                    stats.set(s);
                    stats_error.set(None);
                }
                // Said beside the chart too, which would otherwise only look empty.
                Err(err) => {
                    stats_error.set(Some(err.to_string()));
                    error.set(Some(err.to_string()));
                }
            }
        });
    };
    spawn_local(async move {
        match api::workers().await {
            Ok(list) => workers.update(|rows| {
                for worker in list {
                    upsert(rows, worker);
                }
            }),
            Err(err) => error.set(Some(err.to_string())),
        }
    });
    // Counts after job changes at most once a second; the queue and throughput every 5 s.
    let ticks = StoredValue::new(0u32);
    if let Ok(handle) = set_interval_with_handle(
        move || {
            ticks.update_value(|t| *t += 1);
            if stale.get_untracked() || ticks.get_value().is_multiple_of(5) {
                stale.set(false);
                refresh();
            }
        },
        Duration::from_secs(1),
    ) {
        on_cleanup(move || handle.clear());
    }
    refresh();

    let log = move |kind: &'static str, text: String, job: Option<String>| {
        activity.update(|feed| {
            feed.push_front(Activity {
                at_ms: js_sys::Date::now() as i64,
                kind,
                text,
                job,
            });
            feed.truncate(ACTIVITY);
        });
    };
    let live = use_event_stream(
        "/events".into(),
        FEED_EVENTS,
        None,
        move |name, data| match name {
            "worker" => {
                let Ok(worker) = serde_json::from_str::<Worker>(data) else {
                    return;
                };
                let id = worker.id.clone();
                let mut joined = false;
                workers.update(|rows| joined = upsert(rows, worker));
                if joined {
                    log("worker", format!("worker {id} online"), None);
                }
            }
            "worker_gone" => {
                let Some(id) = serde_json::from_str::<serde_json::Value>(data)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                else {
                    return;
                };
                workers.update(|rows| {
                    if let Some(row) = rows.iter_mut().find(|r| r.worker.id == id) {
                        row.online = false;
                    }
                });
                log("worker-gone", format!("worker {id} went offline"), None);
            }
            _ if JOB_EVENTS.contains(&name) => {
                let Some(job) = event_job(name, data) else {
                    return;
                };
                match name {
                    "job_done" => {
                        stale.set(true);
                        log(
                            "job-done",
                            format!(
                                "job {} {}: {} of {} done",
                                format::short_id(&job.id),
                                format::state(&job.state),
                                job.done,
                                job.total
                            ),
                            Some(job.id),
                        );
                    }
                    "progress" => {
                        stale.set(true);
                        if job.ended() == 0 && job.state == "queued" {
                            log(
                                "job-new",
                                format!(
                                    "job {} submitted: {} images",
                                    format::short_id(&job.id),
                                    job.total
                                ),
                                Some(job.id),
                            );
                        }
                    }
                    "image_failed" => {
                        if let Ok(event) = serde_json::from_str::<ImageEvent>(data) {
                            log(
                                "image-failed",
                                format!(
                                    "{} failed: {}",
                                    event.image.name,
                                    event.image.error.unwrap_or_default()
                                ),
                                Some(job.id),
                            );
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        },
    );
    let now = use_clock(Duration::from_secs(1));
    let online = move || workers.with(|rows| rows.iter().filter(|r| r.online).count());

    view! {
        <section class="page dashboard">
            <div class="page-head">
                <h1>"Dashboard"</h1>
                <LiveDot live/>
            </div>
            <ErrorLine message=error/>
            <div class="cards">
                <Card label="Jobs" value=Signal::derive(move || counts.get().total.to_string())/>
                <Card
                    label="Completed"
                    value=Signal::derive(move || {
                        counts.with(|c| (c.completed + c.completed_with_errors).to_string())
                    })
                />
                <Card label="Running" value=Signal::derive(move || counts.with(|c| (c.running + c.queued).to_string()))/>
                <Card label="Failed" value=Signal::derive(move || counts.get().failed.to_string())/>
                <Card label="Workers online" value=Signal::derive(move || online().to_string())/>
                <Card
                    label="Queue"
                    value=Signal::derive(move || {
                        stats.with(|s| match &s.queue {
                            Some(queue) => format!("{} waiting · {} running", queue.pending, queue.in_flight),
                            None => "unknown".to_string(),
                        })
                    })
                />
            </div>
            <div class="columns">
                <section aria-labelledby="workers-title">
                    <h2 id="workers-title">"Workers"</h2>
                    <table class="workers">
                        <TableHead columns=&["Worker", "Host", "Status", "In flight", "Done", "Failed", "Heartbeat"]/>
                        <tbody>
                            <For
                                each=move || workers.get()
                                key=|row| (row.worker.id.clone(), row.online, row.worker.seen_at_ms)
                                children=move |row| {
                                    let Row { worker, online } = row;
                                    let seen = worker.seen_at_ms;
                                    let in_flight = worker.in_flight;
                                    let status = move || worker_status(online, in_flight, seen, now.get());
                                    view! {
                                        <tr class="worker" data-worker=worker.id.clone() data-status=status>
                                            <td><code>{worker.id.clone()}</code></td>
                                            <td>{worker.host.clone()}</td>
                                            <td><span class=move || format!("badge worker-{}", status())>{status}</span></td>
                                            <td class="num">{format!("{} / {}", worker.in_flight, worker.concurrency)}</td>
                                            <td class="num">{worker.done}</td>
                                            <td class="num" title=worker.last_error.clone()>{worker.failed}</td>
                                            <td>{move || format::age(now.get(), seen)}</td>
                                        </tr>
                                    }
                                }
                            />
                        </tbody>
                    </table>
                    <Show when=move || workers.with(Vec::is_empty)>
                        <p class="empty">"No filter workers have reported yet."</p>
                    </Show>
                    <h2>"Throughput"</h2>
                    <ThroughputChart minutes=Signal::derive(move || stats.get().throughput)/>
                    <p class="hint">
                        {move || stats_error.get().map(|err| format!("throughput unavailable: {err}. "))}
                        {move || stats.with(|s| match (&s.queue, &s.queue_error) {
                            (Some(queue), _) => format!(
                                "queue: {} waiting, {} in flight, {} redelivered",
                                queue.pending, queue.in_flight, queue.redelivered
                            ),
                            (None, Some(error)) => format!("queue: unavailable ({error})"),
                            (None, None) => String::new(),
                        })}
                    </p>
                </section>
                <section aria-labelledby="activity-title">
                    <h2 id="activity-title">"Recent activity"</h2>
                    <ol class="activity" aria-live="polite">
                        {move || activity.get().into_iter().map(|entry| view! {
                            <li class=format!("activity-{}", entry.kind)>
                                <time>{format::clock(entry.at_ms)}</time>
                                " "
                                {match entry.job {
                                    Some(job) => view! { <A href=format!("/jobs/{job}")>{entry.text}</A> }.into_any(),
                                    None => view! { <span>{entry.text}</span> }.into_any(),
                                }}
                            </li>
                        }).collect_view()}
                    </ol>
                    <Show when=move || activity.with(VecDeque::is_empty)>
                        <p class="empty">"Nothing yet: events appear here as they happen."</p>
                    </Show>
                </section>
            </div>
        </section>
    }
}

/// Adds or updates a worker's row; whether it is new or back online.
fn upsert(rows: &mut Vec<Row>, worker: Worker) -> bool {
    match rows.iter_mut().find(|r| r.worker.id == worker.id) {
        Some(row) => {
            let back = !row.online;
            row.worker = worker;
            row.online = true;
            back
        }
        None => {
            rows.push(Row {
                worker,
                online: true,
            });
            rows.sort_by(|a, b| a.worker.id.cmp(&b.worker.id));
            true
        }
    }
}

#[component]
fn Card(label: &'static str, value: Signal<String>) -> impl IntoView {
    view! {
        <div class="card" data-card=label>
            <span class="card-value">{move || value.get()}</span>
            <span class="card-label">{label}</span>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_status_reads_gone_late_busy_idle() {
        assert_eq!(worker_status(false, 3, 1_000, 1_000), "offline");
        assert_eq!(worker_status(true, 0, 0, LATE_MS + 1), "late");
        assert_eq!(worker_status(true, 2, 5_000, 6_000), "busy");
        assert_eq!(worker_status(true, 0, 5_000, 6_000), "idle");
    }

    #[test]
    fn a_worker_is_new_once_and_again_after_going_offline() {
        let worker = |id: &str, done| Worker {
            id: id.into(),
            done,
            ..Worker::default()
        };
        let mut rows = Vec::new();
        assert!(upsert(&mut rows, worker("b", 1)));
        assert!(upsert(&mut rows, worker("a", 1)));
        assert!(!upsert(&mut rows, worker("b", 2)));
        assert_eq!(
            rows.iter()
                .map(|r| (r.worker.id.as_str(), r.worker.done))
                .collect::<Vec<_>>(),
            [("a", 1), ("b", 2)]
        );
        rows[1].online = false;
        assert!(upsert(&mut rows, worker("b", 3)));
        assert!(rows[1].online);
    }
}
