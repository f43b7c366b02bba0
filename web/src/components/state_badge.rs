//! A job's or image's state as a coloured label.

use leptos::prelude::*;

use crate::format;

#[component]
pub fn StateBadge(state: Signal<String>) -> impl IntoView {
    view! {
        <span class=move || format!("badge state-{}", state.get()) data-state=move || state.get()>
            {move || format::state(&state.get())}
        </span>
    }
}
