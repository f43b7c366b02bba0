//! The jobs page: every job, newest first, with live progress; filters by state.

use std::time::Duration;

use leptos::{prelude::*, task::spawn_local};
use leptos_router::{components::A, hooks::use_query_map};

use super::{
    error_line::ErrorLine, progress::ProgressBar, state_badge::StateBadge, table_head::TableHead,
};
use crate::{
    api::{self, Counts, ImageEvent, JobView},
    format,
    hooks::{Live, use_clock, use_event_stream},
};

/// The job events a feed carries.
pub const JOB_EVENTS: &[&str] = &[
    "progress",
    "image_done",
    "image_failed",
    "image_cancelled",
    "tile_done",
    "job_done",
];

/// The job an event is about, from its data.
pub fn event_job(name: &str, data: &str) -> Option<JobView> {
    match name {
        "progress" | "job_done" => serde_json::from_str(data).ok(),
        _ => serde_json::from_str::<ImageEvent>(data).ok().map(|e| e.job),
    }
}

const FILTERS: &[(&str, &str)] = &[
    ("", "All"),
    ("queued", "Queued"),
    ("running", "Running"),
    ("paused", "Paused"),
    ("completed", "Completed"),
    ("completed_with_errors", "With errors"),
    ("failed", "Failed"),
    ("cancelled", "Cancelled"),
];

fn count(counts: &Counts, state: &str) -> u32 {
    match state {
        "queued" => counts.queued,
        "running" => counts.running,
        "paused" => counts.paused,
        "completed" => counts.completed,
        "completed_with_errors" => counts.completed_with_errors,
        "failed" => counts.failed,
        "cancelled" => counts.cancelled,
        _ => counts.total,
    }
}

/// A row: the job id and its live summary.
type Row = (String, RwSignal<JobView>);

#[component]
pub fn Jobs() -> impl IntoView {
    let query = use_query_map();
    let filter = Memo::new(move |_| query.with(|q| q.get("state").unwrap_or_default()));
    let parent = Memo::new(move |_| query.with(|q| q.get("parent").unwrap_or_default()));
    let rows = RwSignal::new(Vec::<Row>::new());
    let counts = RwSignal::new(Counts::default());
    let next = RwSignal::new(None::<String>);
    let error = RwSignal::new(None::<String>);
    let loaded = RwSignal::new(false);
    // Set when a job appears or changes state: lists and counts are read again (at most once
    // a second), since which jobs match the filter may have changed.
    let stale = RwSignal::new(false);

    let load = move |more: bool| {
        let mut query = format!(
            "limit=50&state={}&parent={}",
            api::encode(&filter.get_untracked()),
            api::encode(&parent.get_untracked())
        );
        if more {
            match next.get_untracked() {
                Some(before) => query.push_str(&format!("&before={}", api::encode(&before))),
                None => return,
            }
        }
        spawn_local(async move {
            match api::jobs(&query).await {
                Ok(list) => {
                    let fresh: Vec<Row> = list
                        .jobs
                        .into_iter()
                        .map(|job| (job.id.clone(), RwSignal::new(job)))
                        .collect();
                    if more {
                        rows.update(|rows| rows.extend(fresh));
                    } else {
                        rows.set(fresh);
                    }
                    counts.set(list.counts);
                    next.set(list.next_before);
                    error.set(None);
                    loaded.set(true);
                }
                Err(err) => error.set(Some(err.to_string())),
            }
        });
    };
    Effect::new(move |_| {
        filter.track();
        parent.track();
        load(false);
    });
    if let Ok(handle) = set_interval_with_handle(
        move || {
            if stale.get_untracked() {
                stale.set(false);
                load(false);
            }
        },
        Duration::from_secs(1),
    ) {
        on_cleanup(move || handle.clear());
    }

    let live = use_event_stream("/events".into(), JOB_EVENTS, None, move |name, data| {
        let Some(job) = event_job(name, data) else {
            return;
        };
        let row = rows.with_untracked(|rows| {
            rows.iter()
                .find(|(id, _)| *id == job.id)
                .map(|(_, row)| *row)
        });
        match row {
            Some(row) => {
                let (older, changed) =
                    row.with_untracked(|old| (job.version < old.version, old.state != job.state));
                if !older {
                    row.set(job);
                }
                if changed {
                    stale.set(true);
                }
            }
            None => stale.set(true),
        }
    });
    let now = use_clock(Duration::from_secs(5));

    // The whole batch's analysis in one table, streamed by the gateway a job at a time.
    let batch_export = move || {
        api::with_token(&api::url(&format!(
            "/batches/{}/analysis.csv",
            api::encode(&parent.get())
        )))
    };

    view! {
        <section class="page jobs">
            <div class="page-head">
                <h1>"Jobs"</h1>
                <LiveDot live/>
            </div>
            <Show when=move || !parent.get().is_empty()>
                <p class="batch">
                    "Jobs of batch " <code>{move || parent.get()}</code> " · "
                    <a id="batch-export" href=batch_export download>"analysis (CSV)"</a> " · "
                    <A href="/jobs">"all jobs"</A>
                </p>
            </Show>
            <nav class="filters" aria-label="Filter by state">
                {FILTERS
                    .iter()
                    .map(|(state, label)| {
                        let state = *state;
                        let href = if state.is_empty() { "/jobs".to_string() } else { format!("/jobs?state={state}") };
                        view! {
                            <a
                                href=href
                                class="filter"
                                data-filter=state
                                aria-current=move || (filter.get() == state).then_some("true")
                            >
                                {*label}
                                " "
                                <span class="count">{move || count(&counts.get(), state)}</span>
                            </a>
                        }
                    })
                    .collect_view()}
            </nav>
            <ErrorLine message=error/>
            <Show when=move || loaded.get() && rows.with(Vec::is_empty)>
                <p class="empty">"No jobs here yet. " <A href="/">"Submit one"</A> "."</p>
            </Show>
            <table class="job-table">
                <TableHead columns=&["Job", "State", "Progress", "Images", "Submitted"]/>
                <tbody>
                    <For
                        each=move || rows.get()
                        key=|(id, _)| id.clone()
                        children=move |(id, job)| view! { <JobRow id job now/> }
                    />
                </tbody>
            </table>
            <Show when=move || next.with(Option::is_some)>
                <button type="button" on:click=move |_| load(true)>"Older jobs"</button>
            </Show>
        </section>
    }
}

#[component]
fn JobRow(id: String, job: RwSignal<JobView>, now: ReadSignal<i64>) -> impl IntoView {
    let percent = Signal::derive(move || job.with(|j| format::percent(j.ended(), j.total)));
    let state = Signal::derive(move || job.with(|j| j.state.clone()));
    let href = format!("/jobs/{id}");
    let short = format::short_id(&id).to_string();
    let title = id.clone();
    view! {
        <tr class="job" data-job=id.clone()>
            <td>
                <A href=href>
                    <code title=title.clone()>{short.clone()}</code>
                </A>
            </td>
            <td><StateBadge state/></td>
            <td><ProgressBar percent label=format!("job {id}")/></td>
            <td class="counts">
                {move || job.with(|j| format!("{} / {} done", j.done, j.total))}
                {move || job.with(|j| (j.failed > 0).then(|| format!(", {} failed", j.failed)))}
                {move || job.with(|j| (j.cancelled > 0).then(|| format!(", {} cancelled", j.cancelled)))}
            </td>
            <td>{move || format::age(now.get(), job.with(|j| j.created_at_ms))}</td>
        </tr>
    }
}

/// The live-connection indicator.
#[component]
pub fn LiveDot(live: ReadSignal<Live>) -> impl IntoView {
    view! {
        <span
            class=move || format!("live live-{}", live.get().label())
            data-live=move || live.get().label()
            role="status"
        >
            {move || live.get().label()}
        </span>
    }
}
