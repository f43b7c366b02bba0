//! A message that something went wrong, announced to screen readers; nothing when `None`.

use leptos::prelude::*;

#[component]
pub fn ErrorLine(message: RwSignal<Option<String>>) -> impl IntoView {
    view! {
        <Show when=move || message.with(Option::is_some)>
            <p class="error" role="alert">{move || message.get().unwrap_or_default()}</p>
        </Show>
    }
}
