//! A progress bar that screen readers announce.

use leptos::prelude::*;

/// `percent` (0 to 100) as a bar with its number; `label` names what progresses.
#[component]
pub fn ProgressBar(percent: Signal<u32>, #[prop(into)] label: String) -> impl IntoView {
    view! {
        <div class="progress">
            <div
                class="bar"
                role="progressbar"
                aria-label=label
                aria-valuemin="0"
                aria-valuemax="100"
                aria-valuenow=move || percent.get().to_string()
            >
                <div class="fill" style:width=move || format!("{}%", percent.get())></div>
            </div>
            <span class="percent">{move || format!("{} %", percent.get())}</span>
        </div>
    }
}
