//! The pipeline builder: presets, then steps to add, remove, reorder and tune, each parameter
//! with a labelled control that knows its valid range.

use leptos::{prelude::*, task::spawn_local};

use crate::{
    api,
    ops::{self, Kind, Param},
    pipeline::{Builder, PRESETS},
};

#[component]
pub fn PipelineBuilder(builder: RwSignal<Builder>) -> impl IntoView {
    let choice = RwSignal::new("blur".to_string());
    // Bumped when a preset replaces every step, so rows are rebuilt rather than reused by id.
    let generation = RwSignal::new(0u32);
    let steps = move || {
        let generation = generation.get();
        builder.with(|b| {
            b.steps()
                .iter()
                .map(|s| (generation, s.id, s.op.name.as_str()))
                .collect::<Vec<_>>()
        })
    };
    let json = move || match builder.with(Builder::to_json) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => "(fix the errors above first)".to_string(),
    };
    view! {
        <section class="builder" aria-labelledby="pipeline-title">
            <h2 id="pipeline-title">"Pipeline"</h2>
            <div class="presets" role="group" aria-label="Presets">
                <span>"Presets:"</span>
                {PRESETS
                    .iter()
                    .map(|preset| {
                        let name = preset.name;
                        view! {
                            <button
                                type="button"
                                class="preset"
                                data-preset=name
                                on:click=move |_| {
                                    if let Some(preset) = Builder::preset(name) {
                                        builder.set(preset);
                                        generation.update(|g| *g += 1);
                                    }
                                }
                            >
                                {preset.label}
                            </button>
                        }
                    })
                    .collect_view()}
            </div>
            <ol class="steps">
                <For
                    each=steps
                    key=|step| *step
                    children=move |(_, id, name)| view! { <StepRow builder id name/> }
                />
            </ol>
            {ops::load_error().map(|error| view! { <p class="errors" role="alert">{error}</p> })}
            <div class="add-op">
                <label for="add-op">"Add operation"</label>
                <select id="add-op" on:change=move |ev| choice.set(event_target_value(&ev))>
                    {ops::all()
                        .iter()
                        .map(|op| {
                            let name = op.name.as_str();
                            view! {
                                <option
                                    value=name
                                    selected={name == "blur"}
                                    disabled=move || builder.with(|b| !b.can_add(name))
                                >
                                    {format!("{} — {}", op.label, op.help)}
                                </option>
                            }
                        })
                        .collect_view()}
                </select>
                <button
                    type="button"
                    id="add-op-button"
                    on:click=move |_| {
                        builder.update(|b| {
                            b.add(&choice.get_untracked());
                        });
                    }
                >
                    "Add"
                </button>
            </div>
            <ul class="errors" aria-live="polite">
                {move || {
                    builder
                        .with(Builder::errors)
                        .into_iter()
                        .map(|error| view! { <li>{error}</li> })
                        .collect_view()
                }}
            </ul>
            <details class="json">
                <summary>"Pipeline as JSON (for curl and grpcurl)"</summary>
                <pre>{json}</pre>
            </details>
        </section>
    }
}

#[component]
fn StepRow(builder: RwSignal<Builder>, id: u32, name: &'static str) -> impl IntoView {
    let Some(spec) = ops::find(name) else {
        return ().into_any();
    };
    let position = move || {
        builder.with(|b| {
            b.steps()
                .iter()
                .position(|s| s.id == id)
                .map_or(0, |p| p + 1)
        })
    };
    // Only a change in which params apply (a format's) rebuilds the controls, so typing in
    // one never loses focus.
    let applicable = Memo::new(move |_| {
        builder.with(|b| {
            b.steps()
                .iter()
                .find(|s| s.id == id)
                .map(|s| {
                    s.op.params
                        .iter()
                        .filter(|p| s.applies(p))
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
    });
    let label = spec.label.as_str();
    view! {
        <li class="step" data-op=name>
            <div class="step-head">
                <span class="step-number">{position} "."</span>
                <strong>{label}</strong>
                <span class="help">{spec.help.as_str()}</span>
                <span class="step-buttons">
                    <button
                        type="button"
                        class="icon"
                        aria-label=format!("Move {label} up")
                        on:click=move |_| {
                            builder.update(|b| {
                                b.shift(id, -1);
                            })
                        }
                    >
                        "↑"
                    </button>
                    <button
                        type="button"
                        class="icon"
                        aria-label=format!("Move {label} down")
                        on:click=move |_| {
                            builder.update(|b| {
                                b.shift(id, 1);
                            })
                        }
                    >
                        "↓"
                    </button>
                    <button
                        type="button"
                        class="icon"
                        aria-label=format!("Remove {label}")
                        on:click=move |_| builder.update(|b| b.remove(id))
                    >
                        "✕"
                    </button>
                </span>
            </div>
            <div class="params">
                {move || {
                    applicable
                        .get()
                        .into_iter()
                        .filter_map(|name| spec.params.iter().find(|p| p.name == name))
                        .map(|param| view! { <ParamControl builder id param/> })
                        .collect_view()
                }}
            </div>
        </li>
    }
    .into_any()
}

#[component]
fn ParamControl(builder: RwSignal<Builder>, id: u32, param: &'static Param) -> impl IntoView {
    let current = move || {
        builder.with_untracked(|b| {
            b.steps()
                .iter()
                .find(|s| s.id == id)
                .map(|s| s.value(&param.name).to_string())
                .unwrap_or_default()
        })
    };
    let set = move |value: String| builder.update(|b| b.set(id, &param.name, value));
    let dom_id = format!("step{id}-{}", param.name);
    let label = param.label.as_str();
    // Controls are not bound back to the state: the state follows them, so a half-typed
    // number is never overwritten.
    let control = match &param.kind {
        &Kind::Int { min, max } => view! {
            <input
                id=dom_id.clone()
                type="number"
                inputmode="numeric"
                min=min
                max=max
                step="1"
                value=current()
                placeholder="default"
                on:input=move |ev| set(event_target_value(&ev))
            />
            <small class="range">{format!("{min} – {max}")}</small>
        }
        .into_any(),
        &Kind::Float {
            min,
            max,
            step,
            min_exclusive,
        } => view! {
            <input
                id=dom_id.clone()
                type="number"
                inputmode="decimal"
                min=min
                max=max
                step=step
                value=current()
                on:input=move |ev| set(event_target_value(&ev))
            />
            <small class="range">
                {if min_exclusive { format!("> 0 – {max}") } else { format!("{min} – {max}") }}
            </small>
        }
        .into_any(),
        Kind::Choice { choices } => {
            let initial = current();
            view! {
                <select id=dom_id.clone() on:change=move |ev| set(event_target_value(&ev))>
                    {(!param.required && param.default.is_empty())
                        .then(|| view! { <option value="" selected={initial.is_empty()}>"(none)"</option> })}
                    {choices
                        .iter()
                        .map(|name| {
                            view! {
                                <option value=name.as_str() selected={*name == initial}>
                                    {name.replace('_', " ")}
                                </option>
                            }
                        })
                        .collect_view()}
                </select>
            }
            .into_any()
        }
        Kind::Bool => view! {
            <input
                id=dom_id.clone()
                type="checkbox"
                checked={current() == "true"}
                on:change=move |ev| set(event_target_checked(&ev).to_string())
            />
        }
        .into_any(),
        Kind::Colour => view! {
            <input
                id=dom_id.clone()
                type="text"
                placeholder="#rrggbb or #rrggbbaa"
                pattern="#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?"
                value=current()
                on:input=move |ev| set(event_target_value(&ev))
            />
        }
        .into_any(),
        Kind::Blob => view! { <LogoPicker dom_id=dom_id.clone() set/> }.into_any(),
        Kind::Name => view! {
            <input
                id=dom_id.clone()
                type="text"
                maxlength="64"
                pattern="[a-z0-9_\\-][a-z0-9._\\-]*"
                value=current()
                on:input=move |ev| set(event_target_value(&ev))
            />
        }
        .into_any(),
    };
    view! {
        <div class="param" class:required=param.required>
            <label for=dom_id>{label}</label>
            {control}
        </div>
    }
}

/// A file input that uploads the chosen image at once and keeps its blob id.
#[component]
fn LogoPicker(
    dom_id: String,
    set: impl Fn(String) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let status = RwSignal::new(String::new());
    view! {
        <input
            id=dom_id
            type="file"
            accept="image/*"
            on:change=move |ev| {
                let input: web_sys::HtmlInputElement = event_target(&ev);
                let Some(file) = input.files().and_then(|list| list.get(0)) else { return };
                status.set(format!("uploading {}…", file.name()));
                spawn_local(async move {
                    match api::upload(&file).await {
                        Ok(blob) => {
                            set(blob);
                            status.set(format!("{} uploaded", file.name()));
                        }
                        Err(err) => {
                            set(String::new());
                            status.set(format!("upload failed: {err}"));
                        }
                    }
                });
            }
        />
        <small class="status" aria-live="polite">{move || status.get()}</small>
    }
}
