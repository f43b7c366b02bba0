//! The app's frame: header, navigation, the page for the route.

use leptos::prelude::*;
use leptos_router::{
    components::{A, Route, Router, Routes},
    path,
};

use super::{
    api_key::ApiKey, dashboard::Dashboard, job_detail::JobDetail, jobs::Jobs, new_job::NewJob,
};

#[component]
pub fn App() -> impl IntoView {
    view! {
        <Router>
            <a class="skip" href="#main">"Skip to content"</a>
            <header class="top">
                <a class="brand" href="/">"pixelmesh"</a>
                <nav aria-label="Main">
                    <A href="/" exact=true>"New job"</A>
                    <A href="/jobs">"Jobs"</A>
                    <A href="/dashboard">"Dashboard"</A>
                </nav>
                <ApiKey/>
            </header>
            <main id="main">
                <Routes fallback=|| view! { <NotFound/> }>
                    <Route path=path!("/") view=NewJob/>
                    <Route path=path!("/jobs") view=Jobs/>
                    <Route path=path!("/jobs/:id") view=JobDetail/>
                    <Route path=path!("/dashboard") view=Dashboard/>
                </Routes>
            </main>
        </Router>
    }
}

#[component]
fn NotFound() -> impl IntoView {
    view! {
        <section class="page">
            <h1>"Not found"</h1>
            <p>"There is no page here. " <A href="/">"Start a new job"</A> "."</p>
        </section>
    }
}
