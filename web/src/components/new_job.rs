//! The new-job page: images (files, a ZIP, URLs), a pipeline, submit with upload progress.

use leptos::{prelude::*, task::spawn_local};
use leptos_router::{NavigateOptions, hooks::use_navigate};
use web_sys::FormData;

use super::{
    file_picker::{FilePicker, Picked},
    pipeline_builder::PipelineBuilder,
};
use crate::{api, pipeline::Builder};

/// How much of each file is sent when `loaded` of `total` request bytes are: the parts go out
/// in order, so file i is done once the bytes before it and its own are.
pub fn shares(sizes: &[(u32, u64)], loaded: f64, total: f64) -> Vec<(u32, f64)> {
    let files: u64 = sizes.iter().map(|(_, size)| size).sum();
    if total <= 0.0 || files == 0 {
        return sizes.iter().map(|(id, _)| (*id, 0.0)).collect();
    }
    // Multipart framing and the pipeline add a little; count it as spread evenly.
    let sent = loaded / total * files as f64;
    let mut before = 0.0;
    sizes
        .iter()
        .map(|(id, size)| {
            let size = *size as f64;
            let share = if size == 0.0 {
                if sent >= before { 1.0 } else { 0.0 }
            } else {
                ((sent - before) / size).clamp(0.0, 1.0)
            };
            before += size;
            (*id, share)
        })
        .collect()
}

#[component]
pub fn NewJob() -> impl IntoView {
    let files = RwSignal::new(Vec::<Picked>::new());
    let sent = RwSignal::new(Vec::<(u32, f64)>::new());
    let urls = RwSignal::new(String::new());
    let builder = RwSignal::new(Builder::preset("web").unwrap_or_default());
    let tiling = RwSignal::new("auto".to_string());
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let navigate = use_navigate();

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        error.set(None);
        let pipeline = match builder.with_untracked(Builder::to_json) {
            Ok(pipeline) => pipeline,
            Err(errors) => {
                error.set(Some(errors.join("; ")));
                return;
            }
        };
        let url_text = urls.get_untracked();
        if files.with_untracked(Vec::is_empty) && url_text.trim().is_empty() {
            error.set(Some("choose images or a ZIP, or paste image URLs".into()));
            return;
        }
        let form = match build_form(
            &pipeline.to_string(),
            &tiling.get_untracked(),
            files,
            &url_text,
        ) {
            Ok(form) => form,
            Err(err) => {
                error.set(Some(err));
                return;
            }
        };
        let sizes: Vec<(u32, u64)> =
            files.with_untracked(|files| files.iter().map(|f| (f.id, f.size)).collect());
        sent.set(sizes.iter().map(|(id, _)| (*id, 0.0)).collect());
        busy.set(true);
        let navigate = navigate.clone();
        spawn_local(async move {
            let answer = api::submit(&form, move |loaded, total| {
                sent.set(shares(&sizes, loaded, total));
            })
            .await;
            busy.set(false);
            match answer {
                Ok(submitted) => {
                    let to = match (submitted.id, submitted.parent_id) {
                        (Some(id), _) => format!("/jobs/{id}"),
                        (None, Some(parent)) => format!("/jobs?parent={parent}"),
                        (None, None) => "/jobs".to_string(),
                    };
                    navigate(&to, NavigateOptions::default());
                }
                Err(err) => error.set(Some(err.to_string())),
            }
        });
    };

    view! {
        <section class="page new-job">
            <h1>"New job"</h1>
            <form on:submit=submit novalidate>
                <div class="columns">
                    <div>
                        <FilePicker files sent busy=busy.into()/>
                        <section class="urls">
                            <label for="urls">"Image URLs"</label>
                            <p class="hint" id="urls-hint">
                                "One per line, or a CSV with a url column. Fetched by the workers."
                            </p>
                            <textarea
                                id="urls"
                                rows="4"
                                aria-describedby="urls-hint"
                                placeholder="https://example.com/photo.jpg"
                                prop:value=move || urls.get()
                                on:input=move |ev| urls.set(event_target_value(&ev))
                            ></textarea>
                        </section>
                    </div>
                    <div>
                        <PipelineBuilder builder/>
                        <div class="field">
                            <label for="tiling">"Tiling of large images"</label>
                            <select id="tiling" on:change=move |ev| tiling.set(event_target_value(&ev))>
                                <option value="auto" selected>"auto: over the mesh's threshold"</option>
                                <option value="always">"always"</option>
                                <option value="never">"never"</option>
                            </select>
                        </div>
                    </div>
                </div>
                <Show when=move || error.with(Option::is_some)>
                    <p class="error" role="alert">{move || error.get().unwrap_or_default()}</p>
                </Show>
                <div class="actions">
                    <button
                        type="submit"
                        class="primary"
                        id="submit"
                        disabled=move || busy.get() || builder.with(|b| !b.errors().is_empty())
                    >
                        {move || if busy.get() { "Uploading…" } else { "Submit job" }}
                    </button>
                </div>
            </form>
        </section>
    }
}

fn build_form(
    pipeline: &str,
    tiling: &str,
    files: RwSignal<Vec<Picked>>,
    urls: &str,
) -> Result<FormData, String> {
    let failed = |_| "the browser could not build the upload".to_string();
    let form = FormData::new().map_err(failed)?;
    form.append_with_str("pipeline", pipeline).map_err(failed)?;
    form.append_with_str("tiling", tiling).map_err(failed)?;
    files.with_untracked(|files| {
        files.iter().try_for_each(|picked| {
            let part = if picked.archive { "archive" } else { "file" };
            form.append_with_blob_and_filename(part, &picked.file, &picked.name)
                .map_err(failed)
        })
    })?;
    if !urls.trim().is_empty() {
        form.append_with_str("urls", urls).map_err(failed)?;
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn upload_progress_is_shared_out_over_the_files_in_order() {
        let sizes = [(7, 100), (8, 300), (9, 0)];
        assert_eq!(shares(&sizes, 0.0, 0.0), [(7, 0.0), (8, 0.0), (9, 0.0)]);
        // 440 request bytes for 400 file bytes: a tenth is framing.
        assert_eq!(shares(&sizes, 110.0, 440.0), [(7, 1.0), (8, 0.0), (9, 0.0)]);
        assert_eq!(
            shares(&sizes, 220.0, 440.0),
            [(7, 1.0), (8, 1.0 / 3.0), (9, 0.0)]
        );
        assert_eq!(shares(&sizes, 440.0, 440.0), [(7, 1.0), (8, 1.0), (9, 1.0)]);
        assert_eq!(shares(&[], 5.0, 10.0), []);
    }
}
