//! The API key field: only needed when the gateway runs with keys. Kept in local storage.

use leptos::prelude::*;

use crate::api;

#[component]
pub fn ApiKey() -> impl IntoView {
    let (saved, set_saved) = signal(api::key().is_some());
    let draft = RwSignal::new(String::new());
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        api::set_key(&draft.get_untracked());
        draft.set(String::new());
        set_saved.set(api::key().is_some());
        // Streams and lists opened without the key start over with it.
        let _ = window().location().reload();
    };
    let forget = move |_| {
        api::set_key("");
        set_saved.set(false);
        let _ = window().location().reload();
    };
    view! {
        <form class="api-key" on:submit=save>
            <Show
                when=move || saved.get()
                fallback=move || view! {
                    <label for="api-key">"API key"</label>
                    <input
                        id="api-key"
                        type="password"
                        autocomplete="off"
                        placeholder="only if the gateway needs one"
                        prop:value=move || draft.get()
                        on:input=move |ev| draft.set(event_target_value(&ev))
                    />
                    <button type="submit">"Use"</button>
                }
            >
                <span class="key-set">"API key set"</span>
                <button type="button" on:click=forget>"Forget"</button>
            </Show>
        </form>
    }
}
