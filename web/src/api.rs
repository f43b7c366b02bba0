//! Calls to the REST API and the shapes of its answers.
//!
//! The API base comes from the page (`<meta name="pixelmesh-api" content="/api/v1">`), so the
//! UI works behind any host, port or path prefix. An API key, when the gateway wants one, is
//! kept in the browser's local storage and sent as `Authorization: Bearer`, or as
//! `access_token` where a browser cannot set headers (event streams, links, images).

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{FormData, RequestInit, Response, XmlHttpRequest};

/// Where the key is kept between visits.
const KEY_STORAGE: &str = "pixelmesh.api_key";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct JobView {
    pub id: String,
    pub state: String,
    pub total: u32,
    pub done: u32,
    pub failed: u32,
    pub cancelled: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    #[serde(default)]
    pub finished_at_ms: Option<i64>,
    pub version: u64,
    #[serde(default)]
    pub parent_id: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub images: Option<Vec<ImageView>>,
}

impl JobView {
    pub fn ended(&self) -> u32 {
        self.done + self.failed + self.cancelled
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "completed" | "completed_with_errors" | "failed" | "cancelled"
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ImageView {
    pub index: u32,
    pub name: String,
    #[serde(default)]
    pub url: String,
    pub state: String,
    /// The input as submitted; absent for an image fetched by URL.
    #[serde(default)]
    pub input_url: Option<String>,
    /// A small rendering of the input, as an image URL (`/img/…`), when the gateway serves
    /// them.
    #[serde(default)]
    pub input_thumbnail_url: Option<String>,
    #[serde(default)]
    pub output: Option<OutputView>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub tiles: Option<TilesView>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct TilesView {
    pub done: u32,
    pub total: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct OutputView {
    pub url: String,
    /// A small rendering, as an image URL (`/img/…`), when the gateway serves them.
    #[serde(default)]
    pub thumbnail_url: Option<String>,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
    #[serde(default)]
    pub analysis: Vec<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Counts {
    pub total: u32,
    pub queued: u32,
    pub running: u32,
    pub completed: u32,
    pub completed_with_errors: u32,
    pub failed: u32,
    pub cancelled: u32,
    pub paused: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub counts: Counts,
    #[serde(default)]
    pub next_before: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Worker {
    pub id: String,
    pub host: String,
    #[serde(default)]
    pub version: String,
    pub concurrency: u32,
    pub in_flight: u32,
    pub done: u64,
    pub failed: u64,
    #[serde(default)]
    pub last_error: String,
    pub started_at_ms: i64,
    pub seen_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct WorkerList {
    pub workers: Vec<Worker>,
}

/// `GET /api/v1/stats`: the work queue and recent throughput.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Stats {
    /// None when the gateway could not read it (`queue_error` says why).
    pub queue: Option<Queue>,
    #[serde(default)]
    pub queue_error: Option<String>,
    /// Images ended per minute, oldest first, the current minute last.
    pub throughput: Vec<Minute>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Queue {
    pub pending: u64,
    pub in_flight: u64,
    pub redelivered: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Minute {
    pub at_ms: i64,
    pub done: u64,
    pub failed: u64,
}

/// An image or tile event's data: the job's summary and the image.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ImageEvent {
    pub job: JobView,
    pub image: ImageView,
}

/// What a submit answers: one job, or the batch a long URL list became.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Submitted {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parent_id: Option<String>,
    pub images: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Uploaded {
    id: String,
}

/// A failed call, as the API's `{"error", "code"}` or what the browser said.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{} ({})", self.message, self.status)
        }
    }
}

impl ApiError {
    fn network(err: JsValue) -> ApiError {
        let message = err
            .dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .or_else(|| err.as_string())
            .unwrap_or_else(|| "the gateway cannot be reached".to_string());
        ApiError { status: 0, message }
    }

    /// From an error answer's body: its `error` field, else the body itself.
    fn from_body(status: u16, body: &str) -> ApiError {
        let message = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| {
                let text = body.trim();
                if text.is_empty() {
                    format!("the gateway answered {status}")
                } else {
                    text.chars().take(300).collect()
                }
            });
        ApiError { status, message }
    }
}

fn window() -> web_sys::Window {
    web_sys::window().expect("a browser window")
}

/// The API's base path, from the page's `pixelmesh-api` meta tag.
pub fn base() -> String {
    window()
        .document()
        .and_then(|d| {
            d.query_selector(r#"meta[name="pixelmesh-api"]"#)
                .ok()
                .flatten()
        })
        .and_then(|meta| meta.get_attribute("content"))
        .map(|base| base.trim_end_matches('/').to_string())
        .filter(|base| !base.is_empty())
        .unwrap_or_else(|| "/api/v1".to_string())
}

pub fn key() -> Option<String> {
    window()
        .local_storage()
        .ok()
        .flatten()
        .and_then(|s| s.get_item(KEY_STORAGE).ok().flatten())
        .filter(|k| !k.is_empty())
}

pub fn set_key(key: &str) {
    if let Ok(Some(storage)) = window().local_storage() {
        let _ = if key.trim().is_empty() {
            storage.remove_item(KEY_STORAGE)
        } else {
            storage.set_item(KEY_STORAGE, key.trim())
        };
    }
}

/// `path` under the API base.
pub fn url(path: &str) -> String {
    format!("{}{path}", base())
}

/// An absolute API path (`/api/v1/jobs/…/outputs/0`, as answers give them) with the key as
/// `access_token`, for links, images and event streams.
pub fn with_token(path: &str) -> String {
    match key() {
        None => path.to_string(),
        Some(key) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!(
                "{path}{sep}access_token={}",
                String::from(js_sys::encode_uri_component(&key))
            )
        }
    }
}

async fn call(method: &str, path: &str) -> Result<String, ApiError> {
    let init = RequestInit::new();
    init.set_method(method);
    let headers = web_sys::Headers::new().map_err(ApiError::network)?;
    headers
        .set("Accept", "application/json")
        .map_err(ApiError::network)?;
    if let Some(key) = key() {
        headers
            .set("Authorization", &format!("Bearer {key}"))
            .map_err(ApiError::network)?;
    }
    init.set_headers(&headers);
    let response = JsFuture::from(window().fetch_with_str_and_init(&url(path), &init))
        .await
        .map_err(ApiError::network)?;
    let response: Response = response.dyn_into().map_err(ApiError::network)?;
    let text = JsFuture::from(response.text().map_err(ApiError::network)?)
        .await
        .map_err(ApiError::network)?
        .as_string()
        .unwrap_or_default();
    if response.ok() {
        Ok(text)
    } else {
        Err(ApiError::from_body(response.status(), &text))
    }
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(|err| ApiError {
        status: 0,
        message: format!("unexpected answer from the gateway: {err}"),
    })
}

pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    decode(&call("GET", path).await?)
}

/// A control call (`/jobs/{id}/cancel`…) or a delete; the answer's body is not needed.
pub async fn send(method: &str, path: &str) -> Result<(), ApiError> {
    call(method, path).await.map(|_| ())
}

pub async fn jobs(query: &str) -> Result<JobList, ApiError> {
    get(&format!("/jobs?{query}")).await
}

pub async fn job(id: &str) -> Result<JobView, ApiError> {
    get(&format!("/jobs/{}", encode(id))).await
}

pub async fn workers() -> Result<Vec<Worker>, ApiError> {
    get::<WorkerList>("/workers").await.map(|list| list.workers)
}

pub async fn stats() -> Result<Stats, ApiError> {
    get("/stats").await
}

pub fn encode(segment: &str) -> String {
    String::from(js_sys::encode_uri_component(segment))
}

/// A request body `XMLHttpRequest` can send.
enum Body<'a> {
    Form(&'a FormData),
    Blob(&'a web_sys::Blob),
}

/// Sends a request through `XMLHttpRequest` (fetch cannot report upload progress), calling
/// `progress(sent, total)` as the body goes out; the answer's body on success.
async fn xhr(
    method: &str,
    path: &str,
    body: Body<'_>,
    progress: impl Fn(f64, f64) + 'static,
) -> Result<String, ApiError> {
    let request = XmlHttpRequest::new().map_err(ApiError::network)?;
    request
        .open_with_async(method, &url(path), true)
        .map_err(ApiError::network)?;
    if let Some(key) = key() {
        request
            .set_request_header("Authorization", &format!("Bearer {key}"))
            .map_err(ApiError::network)?;
    }
    let on_progress =
        Closure::<dyn Fn(web_sys::ProgressEvent)>::new(move |event: web_sys::ProgressEvent| {
            if event.length_computable() {
                progress(event.loaded(), event.total());
            }
        });
    if let Ok(upload) = request.upload() {
        upload.set_onprogress(Some(on_progress.as_ref().unchecked_ref()));
    }
    let done = js_sys::Promise::new(&mut |resolve, reject| {
        request.set_onload(Some(&resolve));
        request.set_onerror(Some(&reject));
        request.set_onabort(Some(&reject));
    });
    match body {
        Body::Form(form) => request.send_with_opt_form_data(Some(form)),
        Body::Blob(blob) => request.send_with_opt_blob(Some(blob)),
    }
    .map_err(ApiError::network)?;
    let outcome = JsFuture::from(done).await;
    drop(on_progress);
    if outcome.is_err() {
        return Err(ApiError {
            status: 0,
            message: "the upload was interrupted: the gateway cannot be reached".into(),
        });
    }
    let status = request.status().unwrap_or(0);
    let text = request.response_text().ok().flatten().unwrap_or_default();
    if (200..300).contains(&status) {
        Ok(text)
    } else {
        Err(ApiError::from_body(status, &text))
    }
}

/// `POST /api/v1/jobs` with the form's parts, reporting upload progress.
pub async fn submit(
    form: &FormData,
    progress: impl Fn(f64, f64) + 'static,
) -> Result<Submitted, ApiError> {
    decode(&xhr("POST", "/jobs", Body::Form(form), progress).await?)
}

/// Uploads a file as a blob (a watermark's logo); its blob id.
pub async fn upload(file: &web_sys::File) -> Result<String, ApiError> {
    let text = xhr("POST", "/uploads", Body::Blob(file), |_, _| {}).await?;
    decode::<Uploaded>(&text).map(|u| u.id)
}
