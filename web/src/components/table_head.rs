//! A table's header row of column names.

use leptos::prelude::*;

#[component]
pub fn TableHead(columns: &'static [&'static str]) -> impl IntoView {
    view! {
        <thead>
            <tr>
                {columns.iter().map(|name| view! { <th scope="col">{*name}</th> }).collect_view()}
            </tr>
        </thead>
    }
}
