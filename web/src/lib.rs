//! The pixelmesh web UI: a Leptos client-side app, compiled to WebAssembly and served by the
//! gateway at `/`. Everything live arrives over server-sent events.
//!
//! * [`api`] — calls to the REST API and the shapes of its answers;
//! * [`hooks`] — an event stream and a clock tied to a component's life;
//! * [`ops`] — the operations the pipeline builder offers, with their parameters' ranges, as
//!   the gateway serves them;
//! * [`pipeline`] — the builder's state and its translation to the API's JSON;
//! * [`report`] — the analysis table's rows from `analyze` reports;
//! * [`format`] — sizes, durations, ages and percentages as people read them;
//! * [`components`] — one component per file: the pages and their pieces.

pub mod api;
pub mod components;
pub mod format;
pub mod hooks;
pub mod ops;
pub mod pipeline;
pub mod report;

use wasm_bindgen::prelude::wasm_bindgen;

/// Starts the app when the module loads, once the op specs are in (the pipeline builder is
/// drawn from them).
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    wasm_bindgen_futures::spawn_local(async {
        ops::fetch().await;
        leptos::mount::mount_to_body(components::app::App);
    });
}
