//! Choosing images: drop them or a ZIP on the zone, or pick them with the file dialog. Shows
//! a preview of each image and, while submitting, how much of each has been sent.

use leptos::prelude::*;
use send_wrapper::SendWrapper;
use web_sys::{File, FileList, Url};

use crate::format;

/// A chosen file, as the list shows it. The `File` itself lives in [`Picked::file`], which
/// only the browser thread touches.
#[derive(Debug, Clone)]
pub struct Picked {
    pub id: u32,
    pub name: String,
    pub size: u64,
    pub archive: bool,
    /// An object URL of the image, for its preview.
    pub preview: Option<String>,
    pub file: SendWrapper<File>,
}

impl PartialEq for Picked {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

fn is_archive(file: &File) -> bool {
    file.type_() == "application/zip"
        || file.type_() == "application/x-zip-compressed"
        || file.name().to_ascii_lowercase().ends_with(".zip")
}

/// Adds every file of `list` to `files`.
fn add(files: RwSignal<Vec<Picked>>, next_id: StoredValue<u32>, list: Option<FileList>) {
    let Some(list) = list else { return };
    let mut added = Vec::new();
    for i in 0..list.length() {
        let Some(file) = list.get(i) else { continue };
        let archive = is_archive(&file);
        let preview = (!archive && file.type_().starts_with("image/"))
            .then(|| Url::create_object_url_with_blob(&file).ok())
            .flatten();
        let id = next_id.get_value();
        next_id.set_value(id + 1);
        added.push(Picked {
            id,
            name: file.name(),
            size: file.size() as u64,
            archive,
            preview,
            file: SendWrapper::new(file),
        });
    }
    files.update(|files| files.extend(added));
}

fn forget(picked: &Picked) {
    if let Some(url) = &picked.preview {
        let _ = Url::revoke_object_url(url);
    }
}

/// The drop zone and the list of chosen files. `sent` maps a file id to the share of it
/// uploaded so far (0 to 1), while a submit runs.
#[component]
pub fn FilePicker(
    files: RwSignal<Vec<Picked>>,
    sent: RwSignal<Vec<(u32, f64)>>,
    busy: Signal<bool>,
) -> impl IntoView {
    let next_id = StoredValue::new(0u32);
    let dragging = RwSignal::new(false);
    on_cleanup(move || files.with_untracked(|files| files.iter().for_each(forget)));
    let remove = move |id: u32| {
        files.update(|files| {
            if let Some(at) = files.iter().position(|f| f.id == id) {
                forget(&files.remove(at));
            }
        });
    };
    let total = move || files.with(|files| files.iter().map(|f| f.size).sum::<u64>());
    view! {
        <section class="picker" aria-labelledby="images-title">
            <h2 id="images-title">"Images"</h2>
            <div
                class="drop"
                class:dragging=move || dragging.get()
                on:dragover=move |ev| {
                    ev.prevent_default();
                    dragging.set(true);
                }
                on:dragleave=move |_| dragging.set(false)
                on:drop=move |ev| {
                    ev.prevent_default();
                    dragging.set(false);
                    add(files, next_id, ev.data_transfer().and_then(|d| d.files()));
                }
            >
                <p>"Drop images or a ZIP here, or"</p>
                <input
                    id="files"
                    class="visually-hidden"
                    type="file"
                    multiple
                    accept="image/*,.zip,application/zip"
                    on:change=move |ev| {
                        let input: web_sys::HtmlInputElement = event_target(&ev);
                        add(files, next_id, input.files());
                        // Picking the same file again fires a change too.
                        input.set_value("");
                    }
                />
                // After the input, so its keyboard focus can show on the label (see style.css).
                <label class="button" for="files">"Choose files…"</label>
            </div>
            <Show when=move || files.with(|f| !f.is_empty())>
                <p class="summary">
                    {move || files.with(Vec::len)} " files, " {move || format::bytes(total())}
                </p>
            </Show>
            <ul class="files">
                <For
                    each=move || files.get()
                    key=|picked| picked.id
                    children=move |picked| {
                        let id = picked.id;
                        let share = move || {
                            sent.with(|sent| sent.iter().find(|(f, _)| *f == id).map_or(0.0, |(_, s)| *s))
                        };
                        view! {
                            <li class="file" data-name=picked.name.clone()>
                                {match picked.preview.clone() {
                                    Some(url) => view! { <img class="thumb" src=url alt="" /> }.into_any(),
                                    None => view! {
                                        <span class="thumb placeholder" aria-hidden="true">
                                            {if picked.archive { "ZIP" } else { "?" }}
                                        </span>
                                    }.into_any(),
                                }}
                                <span class="name">{picked.name.clone()}</span>
                                <span class="size">{format::bytes(picked.size)}</span>
                                <progress
                                    max="100"
                                    value=move || format!("{:.0}", share() * 100.0)
                                    aria-label=format!("upload of {}", picked.name)
                                ></progress>
                                <button
                                    type="button"
                                    class="icon"
                                    aria-label=format!("Remove {}", picked.name)
                                    disabled=move || busy.get()
                                    on:click=move |_| remove(id)
                                >"✕"</button>
                            </li>
                        }
                    }
                />
            </ul>
        </section>
    }
}
