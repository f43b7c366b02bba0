//! One job: its progress, every image with before/after thumbnails, controls, downloads and
//! the analysis table, all kept live by the job's event stream.

use leptos::{prelude::*, task::spawn_local};
use leptos_router::{
    NavigateOptions,
    hooks::{use_navigate, use_params_map},
};

use super::{
    error_line::ErrorLine, jobs::LiveDot, progress::ProgressBar, state_badge::StateBadge,
    table_head::TableHead,
};
use crate::{
    api::{self, ImageEvent, ImageView, JobView},
    format,
    hooks::use_event_stream,
    report,
};

const EVENTS: &[&str] = &[
    "progress",
    "image_done",
    "image_failed",
    "image_cancelled",
    "tile_done",
    "job_done",
    "error",
];

#[component]
pub fn JobDetail() -> impl IntoView {
    let params = use_params_map();
    let id = params.with_untracked(|p| p.get("id").unwrap_or_default());
    view! { <JobPage id/> }
}

#[component]
fn JobPage(id: String) -> impl IntoView {
    let job = RwSignal::new(None::<JobView>);
    let images = RwSignal::new(Vec::<RwSignal<ImageView>>::new());
    let error = RwSignal::new(None::<String>);
    let notice = RwSignal::new(None::<String>);

    // Stored, so the handlers below are `Copy` and every view closure may hold them.
    let job_id = StoredValue::new(id.clone());
    let reload = move || {
        let id = job_id.get_value();
        {
            spawn_local(async move {
                match api::job(&id).await {
                    Ok(mut view) => {
                        let list = view.images.take().unwrap_or_default();
                        let current = images.get_untracked();
                        if current.len() == list.len() {
                            for (signal, image) in current.iter().zip(list) {
                                signal.set(image);
                            }
                        } else {
                            images.set(list.into_iter().map(RwSignal::new).collect());
                        }
                        job.set(Some(view));
                        error.set(None);
                    }
                    Err(err) => error.set(Some(err.to_string())),
                }
            });
        }
    };
    reload();

    let apply = move |summary: JobView| {
        job.update(|job| match job {
            Some(old) if old.version > summary.version => {}
            _ => *job = Some(summary),
        });
    };
    let on_event = {
        move |name: &str, data: &str| match name {
            "progress" => {
                if let Ok(summary) = serde_json::from_str::<JobView>(data) {
                    apply(summary);
                }
            }
            "job_done" => {
                if let Ok(summary) = serde_json::from_str::<JobView>(data) {
                    apply(summary);
                }
                // Outputs and reports in full, once.
                reload();
            }
            "error" => error.set(Some(format!("live updates stopped: {data}"))),
            _ => {
                let Ok(event) = serde_json::from_str::<ImageEvent>(data) else {
                    return;
                };
                apply(event.job);
                let index = event.image.index as usize;
                if let Some(signal) = images.with_untracked(|list| list.get(index).copied()) {
                    signal.set(event.image);
                }
            }
        }
    };
    let live = use_event_stream(
        format!("/jobs/{}/events", api::encode(&id)),
        EVENTS,
        Some("job_done"),
        on_event,
    );

    let control = {
        move |action: &'static str| {
            let id = job_id.get_value();
            spawn_local(async move {
                notice.set(None);
                match api::send("POST", &format!("/jobs/{}/{action}", api::encode(&id))).await {
                    Ok(()) => reload(),
                    Err(err) => notice.set(Some(format!("{action}: {err}"))),
                }
            });
        }
    };
    let navigate = StoredValue::new_local(use_navigate());
    let delete = {
        move |_| {
            let confirmed = window()
                .confirm_with_message("Delete this job and its outputs?")
                .unwrap_or(false);
            if !confirmed {
                return;
            }
            let id = job_id.get_value();
            spawn_local(async move {
                match api::send("DELETE", &format!("/jobs/{}", api::encode(&id))).await {
                    Ok(()) => navigate
                        .with_value(|navigate| navigate("/jobs", NavigateOptions::default())),
                    Err(err) => notice.set(Some(format!("delete: {err}"))),
                }
            });
        }
    };

    let state = Signal::derive(move || {
        job.with(|j| j.as_ref().map(|j| j.state.clone()).unwrap_or_default())
    });
    let percent = Signal::derive(move || {
        job.with(|j| {
            j.as_ref()
                .map_or(0, |j| format::percent(j.ended(), j.total))
        })
    });
    let is = move |states: &[&str]| {
        job.with(|j| {
            j.as_ref()
                .is_some_and(|j| states.contains(&j.state.as_str()))
        })
    };
    let final_ = move || job.with(|j| j.as_ref().is_some_and(JobView::is_final));
    let retryable = move || {
        job.with(|j| {
            j.as_ref()
                .is_some_and(|j| j.is_final() && j.failed + j.cancelled > 0)
        })
    };
    let has_outputs = move || job.with(|j| j.as_ref().is_some_and(|j| j.done > 0));
    let rows = Memo::new(move |_| {
        let list: Vec<ImageView> = images.with(|images| images.iter().map(|i| i.get()).collect());
        report::rows(&list)
    });
    let zip_url = StoredValue::new(api::with_token(&api::url(&format!(
        "/jobs/{}/outputs.zip",
        api::encode(&id)
    ))));
    let export = move |format: &str| {
        api::with_token(&api::url(&format!(
            "/jobs/{}/analysis.{format}",
            api::encode(&job_id.get_value())
        )))
    };
    let row_job_id = id.clone();
    view! {
        <section class="page job-detail">
            <div class="page-head">
                <h1>"Job " <code>{id.clone()}</code></h1>
                <LiveDot live/>
            </div>
            <ErrorLine message=error/>
            <Show when=move || job.with(Option::is_some)>
                <div class="summary-row">
                    <StateBadge state/>
                    <ProgressBar percent label="job progress"/>
                    <span class="counts" id="job-counts">
                        {move || job.with(|j| j.as_ref().map(|j| {
                            let mut text = format!("{} of {} done", j.done, j.total);
                            if j.failed > 0 { text.push_str(&format!(", {} failed", j.failed)); }
                            if j.cancelled > 0 { text.push_str(&format!(", {} cancelled", j.cancelled)); }
                            text
                        }))}
                    </span>
                    <span class="times">
                        {move || job.with(|j| j.as_ref().map(|j| {
                            let end = j.finished_at_ms.unwrap_or(j.updated_at_ms);
                            format!("submitted {} UTC · {}", format::clock(j.created_at_ms), format::duration_ms((end - j.created_at_ms).max(0) as u64))
                        }))}
                    </span>
                </div>
                <div class="toolbar" role="group" aria-label="Job actions">
                    <Show when=move || !final_()>
                        <button type="button" on:click=move |_| control("cancel")>"Cancel"</button>
                    </Show>
                    <Show when=move || is(&["queued", "running"])>
                        <button type="button" on:click=move |_| control("pause")>"Pause"</button>
                    </Show>
                    <Show when=move || is(&["paused"])>
                        <button type="button" on:click=move |_| control("resume")>"Resume"</button>
                    </Show>
                    <Show when=retryable>
                        <button type="button" on:click=move |_| control("retry")>"Retry failed"</button>
                    </Show>
                    <Show when=has_outputs>
                        <a class="button primary" id="download-zip" href=move || zip_url.get_value() download="">"Download all (ZIP)"</a>
                    </Show>
                    <Show when=final_>
                        <button type="button" class="danger" on:click=delete>"Delete"</button>
                    </Show>
                </div>
                <ErrorLine message=notice/>
            </Show>
            <table class="images">
                <TableHead columns=&["#", "Before", "After", "Image", "State", "Worker", "Time", "Output"]/>
                <tbody>
                    <For
                        each=move || images.get().into_iter().enumerate()
                        key=|(index, _)| *index
                        children=move |(_, image)| view! { <ImageRow image job_id=row_job_id.clone()/> }
                    />
                </tbody>
            </table>
            <Show when=move || rows.with(|r| !r.is_empty())>
                <section class="analysis" aria-labelledby="analysis-title">
                    <div class="page-head">
                        <h2 id="analysis-title">"Analysis"</h2>
                        <span class="exports">
                            "Export: "
                            <a class="button" href=export("csv") download="">"CSV"</a>
                            <a class="button" href=export("json") download="">"JSON"</a>
                            <a class="button" href=export("xlsx") download="">"XLSX"</a>
                        </span>
                    </div>
                    <table class="analysis-table">
                        <TableHead columns=&["Image", "Size", "Input", "Brightness", "Sharpness", "Colours", "pHash", "Faces", "Camera", "Description"]/>
                        <tbody>
                            {move || rows.get().into_iter().map(|row| view! {
                                <tr>
                                    <td>{row.image}</td>
                                    <td>{row.size}</td>
                                    <td>{row.input}</td>
                                    <td class="num">{row.brightness}</td>
                                    <td class="num">{row.sharpness}</td>
                                    <td class="swatches">
                                        {row.colours.into_iter().map(|(colour, share)| view! {
                                            <span
                                                class="swatch"
                                                style:background=colour.clone()
                                                title=format!("{colour} {:.0} %", share * 100.0)
                                            ></span>
                                        }).collect_view()}
                                    </td>
                                    <td><code>{row.phash}</code></td>
                                    <td class="num">{row.faces}</td>
                                    <td>{row.camera}</td>
                                    <td class="description">{row.description}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                </section>
            </Show>
        </section>
    }
}

/// Whether a browser can show this output in an `<img>`.
fn displayable(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/jpeg" | "image/png" | "image/webp" | "image/gif" | "image/bmp" | "image/avif"
    )
}

#[component]
fn ImageRow(image: RwSignal<ImageView>, job_id: String) -> impl IntoView {
    let state = Signal::derive(move || image.with(|i| i.state.clone()));
    let index = image.with_untracked(|i| i.index);
    let output_url = api::with_token(&api::url(&format!(
        "/jobs/{}/outputs/{index}",
        api::encode(&job_id)
    )));
    let download_url = output_url.clone();
    // Thumbnails are image URLs the gateway signed (small, in the best format the browser
    // takes); without them, the whole input or output.
    let before = image.with_untracked(|i| match (&i.input_thumbnail_url, &i.input_url) {
        (Some(thumbnail), _) => Some(thumbnail.clone()),
        (None, Some(_)) => Some(api::with_token(&api::url(&format!(
            "/jobs/{}/inputs/{index}",
            api::encode(&job_id)
        )))),
        (None, None) => None,
    });
    // A thumbnail that fails (an output too large for image URLs): the whole output instead.
    let whole_output = RwSignal::new(false);
    // An input the browser cannot show (not an image at all, or TIFF): a placeholder.
    let broken = RwSignal::new(false);
    view! {
        <tr class="image" data-index=index data-state=move || state.get()>
            <td class="num">{index}</td>
            <td class="thumb-cell">
                {match before {
                    Some(src) => view! {
                        <Show
                            when=move || !broken.get()
                            fallback=|| view! { <span class="thumb placeholder" title="not an image">"—"</span> }
                        >
                            <img
                                class="thumb before"
                                src=src.clone()
                                loading="lazy"
                                decoding="async"
                                alt=move || format!("{} before", image.with(|i| i.name.clone()))
                                on:error=move |_| broken.set(true)
                            />
                        </Show>
                    }.into_any(),
                    None => view! {
                        <span class="thumb placeholder" title=move || image.with(|i| i.url.clone())>"URL"</span>
                    }.into_any(),
                }}
            </td>
            <td class="thumb-cell">
                {move || image.with(|i| match &i.output {
                    Some(output) if displayable(&output.content_type) => view! {
                        <a href=output_url.clone() target="_blank" rel="noopener">
                            <img
                                class="thumb after"
                                src=match &output.thumbnail_url {
                                    Some(thumbnail) if !whole_output.get() => thumbnail.clone(),
                                    _ => output_url.clone(),
                                }
                                on:error=move |_| whole_output.set(true)
                                loading="lazy"
                                decoding="async"
                                alt=format!("{} after", i.name)
                            />
                        </a>
                    }.into_any(),
                    Some(output) => view! {
                        <span class="thumb placeholder">{output.content_type.trim_start_matches("image/").to_uppercase()}</span>
                    }.into_any(),
                    None if matches!(i.state.as_str(), "failed" | "cancelled") => view! {
                        <span class="thumb placeholder" aria-hidden="true">"—"</span>
                    }.into_any(),
                    None => view! { <span class="thumb placeholder" aria-hidden="true">"…"</span> }.into_any(),
                })}
            </td>
            <td class="name">
                {move || image.with(|i| i.name.clone())}
                {move || image.with(|i| i.error.clone().map(|e| view! { <p class="image-error">{e}</p> }))}
                {move || image.with(|i| i.tiles.map(|t| view! {
                    <div class="tiles">
                        <progress max=t.total value=t.done aria-label="tiles"></progress>
                        {format!(" tiles {} / {}", t.done, t.total)}
                    </div>
                }))}
            </td>
            <td><StateBadge state/></td>
            <td>{move || image.with(|i| i.worker.clone().unwrap_or_default())}</td>
            <td class="num">
                {move || image.with(|i| (i.duration_ms > 0).then(|| format::duration_ms(i.duration_ms)))}
            </td>
            <td>
                {move || image.with(|i| i.output.clone().map(|o| view! {
                    <a href=download_url.clone() download="">
                        {format!("{}×{} · {}", o.width, o.height, format::bytes(o.size_bytes))}
                    </a>
                }))}
            </td>
        </tr>
    }
}
