//! The REST API under `/api/v1`, and `/healthz`. Converts JSON and multipart at the edge and
//! calls [`Mesh`]; errors are `{"error": "...", "code": "..."}` with the matching status.

use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, Multipart, Path, Query, State, multipart::Field},
    http::HeaderMap,
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{MethodRouter, get, post},
};
use futures::{Stream, StreamExt, TryStreamExt};
use pixelmesh_filter::ops::Pipeline;
use pixelmesh_proto::{
    Error,
    v1::{
        Image, ImageInput, ImageState, Job, JobCounts, JobEvent, JobState, JobSummary,
        ListJobsRequest, Output, SubmitJobRequest, Tiling, Worker,
    },
};
use serde::{Deserialize, Serialize};

use tokio::io::AsyncWriteExt as _;

use crate::{
    archive::ZipLimits,
    auth::Caller,
    mesh::{FeedEvent, Mesh, OutputKey, event_version},
};

/// Largest `pipeline` part: a pipeline is at most a few dozen small objects.
const MAX_PIPELINE_BYTES: usize = 64 * 1024;
/// Longest file name kept from a multipart part.
const MAX_NAME_BYTES: usize = 255;
/// Largest `urls` part: 100 000 URLs of 300 bytes.
const MAX_URL_LIST_BYTES: usize = 32 * 1024 * 1024;

pub fn router(mesh: Mesh) -> Router {
    let body_limit = usize::try_from(mesh.settings().max_request_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/api/v1/jobs",
            post(submit)
                .get(list)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/api/v1/uploads", post(upload))
        .route("/api/v1/jobs/{id}", get(job).delete(delete))
        .route("/api/v1/batches/{id}", get(batch))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/retry", post(retry))
        .route("/api/v1/jobs/{id}/pause", post(pause))
        .route("/api/v1/jobs/{id}/resume", post(resume))
        .route("/api/v1/jobs/{id}/events", get(events))
        .route("/api/v1/events", get(feed))
        .route("/api/v1/jobs/{id}/outputs/{output}", get(download))
        .route("/api/v1/jobs/{id}/outputs.zip", get(download_all))
        .route(
            "/api/v1/jobs/{id}/analysis.csv",
            analysis_route(Export::Csv),
        )
        .route(
            "/api/v1/jobs/{id}/analysis.json",
            analysis_route(Export::Json),
        )
        .route(
            "/api/v1/jobs/{id}/analysis.xlsx",
            analysis_route(Export::Xlsx),
        )
        .route("/api/v1/workers", get(workers))
        .with_state(mesh)
}

/// An [`Error`] as an HTTP response.
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.0.message, "code": self.0.code.as_str() });
        (self.0.code.http(), Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn healthz(State(mesh): State<Mesh>) -> Response {
    if mesh.nats_connected() {
        Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        let body = serde_json::json!({ "status": "unavailable", "error": "not connected to nats" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

#[derive(Serialize)]
struct Submitted {
    id: String,
    state: &'static str,
    images: usize,
    url: String,
}

/// What a submit split into several jobs answers.
#[derive(Serialize)]
struct SubmittedBatch {
    parent_id: String,
    images: usize,
    url: String,
    jobs: Vec<Submitted>,
}

impl Submitted {
    fn new(job: Job) -> Self {
        let summary = job.summary.unwrap_or_default();
        Submitted {
            url: format!("/api/v1/jobs/{}", summary.id),
            state: summary.state().label(),
            images: job.images.len(),
            id: summary.id,
        }
    }
}

/// `POST /api/v1/jobs`: multipart with a `pipeline` part (a JSON array) and images as
/// `file` parts, `archive` parts (ZIP) and `urls` parts (a URL list: text, one per line, or
/// CSV with a `url` column). Files stream to storage as they arrive; nothing is buffered
/// whole. A URL list longer than one job may hold is split into jobs sharing a parent id.
async fn submit(
    State(mesh): State<Mesh>,
    caller: Caller,
    mut multipart: Multipart,
) -> ApiResult<Response> {
    let submitted = submit_parts(&mesh, &caller, &mut multipart).await;
    if submitted.is_err() {
        drain(&mut multipart).await;
    }
    submitted
}

/// Reads what is left of a refused request (up to a bound), so the client gets to read our
/// error response instead of a connection reset in the middle of its upload.
async fn drain(multipart: &mut Multipart) {
    const MAX_DRAIN: usize = 32 * 1024 * 1024;
    let mut drained = 0;
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(chunk)) = field.chunk().await {
            drained += chunk.len();
            if drained > MAX_DRAIN {
                return;
            }
        }
    }
}

async fn submit_parts(
    mesh: &Mesh,
    caller: &Caller,
    multipart: &mut Multipart,
) -> ApiResult<Response> {
    let mut pipeline: Option<Pipeline> = None;
    let mut tiling = Tiling::Auto;
    let mut inputs = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name().unwrap_or_default() {
            "pipeline" => {
                let text = read_small(field, MAX_PIPELINE_BYTES).await?;
                // Parsed as soon as it arrives, so a bad pipeline fails before any upload.
                pipeline = Some(Pipeline::parse(&text)?);
            }
            "tiling" => {
                let text = read_small(field, MAX_PIPELINE_BYTES).await?;
                tiling = match text.trim() {
                    "auto" => Tiling::Auto,
                    "always" => Tiling::Always,
                    "never" => Tiling::Never,
                    other => {
                        return Err(Error::invalid(format!(
                            "tiling must be auto, always or never, got {other:?}"
                        ))
                        .into());
                    }
                };
            }
            "file" => {
                if inputs.len() >= mesh.settings().max_files_per_job {
                    return Err(Error::too_large(format!(
                        "too many files: at most {} per job",
                        mesh.settings().max_files_per_job
                    ))
                    .into());
                }
                let name = sanitize_name(field.file_name(), inputs.len());
                let chunks = field.map_err(multipart_error_plain);
                let blob = mesh.upload(chunks).await.map_err(|err| {
                    Error::new(err.code, format!("file {name:?}: {}", err.message))
                })?;
                inputs.push(ImageInput {
                    blob_id: blob.id,
                    name,
                    ..Default::default()
                });
            }
            "archive" => {
                let settings = mesh.settings();
                let room = settings.max_files_per_job.saturating_sub(inputs.len());
                let limits = ZipLimits {
                    max_entries: room,
                    max_total_bytes: settings.max_zip_total_bytes,
                    max_entry_bytes: settings.max_upload_bytes,
                    max_ratio: settings.max_zip_ratio,
                };
                let file = spool(field).await?;
                inputs.extend(mesh.upload_archive(file, limits).await?);
            }
            "urls" => {
                let text = read_small(field, MAX_URL_LIST_BYTES).await?;
                let max = mesh.settings().max_urls_per_list;
                inputs.extend(crate::urls::parse_list(&text, inputs.len(), max)?);
            }
            other => {
                return Err(Error::invalid(format!(
                    "unexpected part {other:?}: expected \"pipeline\", \"tiling\", \"file\", \"archive\" and \"urls\" parts"
                ))
                .into());
            }
        }
    }
    let pipeline = pipeline.ok_or_else(|| Error::invalid("missing \"pipeline\" part"))?;
    if inputs.is_empty() {
        return Err(Error::invalid(
            "missing \"file\", \"archive\" or \"urls\" part: a job needs at least one image",
        )
        .into());
    }
    let images = inputs.len();
    let (parent_id, mut jobs) = mesh
        .submit_batch(
            caller,
            SubmitJobRequest {
                pipeline: pipeline.to_proto(),
                inputs,
                tiling: tiling as i32,
                ..Default::default()
            },
        )
        .await?;
    if parent_id.is_empty() {
        let job = jobs.pop().unwrap_or_default();
        return Ok((StatusCode::ACCEPTED, Json(Submitted::new(job))).into_response());
    }
    let body = SubmittedBatch {
        url: format!("/api/v1/batches/{parent_id}"),
        parent_id,
        images,
        jobs: jobs.into_iter().map(Submitted::new).collect(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Stores the raw request body as a blob and answers `201 {"id", "size_bytes"}`: how a
/// watermark's logo gets its id. The body streams to storage, which enforces the upload size
/// limit. The blob is kept while a job's pipeline refers to it; an unreferenced upload is
/// removed by the orphan sweep after its grace period.
async fn upload(State(mesh): State<Mesh>, body: Body) -> ApiResult<Response> {
    let chunks = body
        .into_data_stream()
        .map_err(|err| Error::invalid(format!("reading the request body: {err}")));
    let blob = mesh.upload(chunks).await?;
    let body = serde_json::json!({ "id": blob.id, "size_bytes": blob.size_bytes });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Writes a multipart part to an unnamed temp file (gone when closed): a ZIP's directory
/// sits at its end, so it is read from disk, never held in memory. The request body limit
/// bounds its size.
async fn spool(mut field: Field<'_>) -> ApiResult<std::fs::File> {
    let file = tempfile::tempfile()
        .map_err(|err| Error::internal(format!("creating a temp file for the archive: {err}")))?;
    let mut file = tokio::fs::File::from_std(file);
    let write_error = |err: std::io::Error| Error::internal(format!("spooling the archive: {err}"));
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        file.write_all(&chunk).await.map_err(write_error)?;
    }
    file.flush().await.map_err(write_error)?;
    let mut file = file.into_std().await;
    std::io::Seek::rewind(&mut file).map_err(write_error)?;
    Ok(file)
}

async fn read_small(field: Field<'_>, max: usize) -> ApiResult<String> {
    let name = field.name().unwrap_or_default().to_string();
    let mut bytes = Vec::new();
    let mut field = field;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if bytes.len() + chunk.len() > max {
            return Err(Error::too_large(format!("{name} part over {max} bytes")).into());
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| Error::invalid(format!("{name} part is not utf-8")).into())
}

fn multipart_error_plain(err: axum::extract::multipart::MultipartError) -> Error {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::too_large(format!("request body too large: {}", err.body_text()))
    } else {
        Error::invalid(format!("malformed multipart body: {}", err.body_text()))
    }
}

fn multipart_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError(multipart_error_plain(err))
}

/// A display name from an uploaded file name: the last path component, no control
/// characters, at most 255 bytes; `image-N` when nothing usable is left.
pub fn sanitize_name(file_name: Option<&str>, index: usize) -> String {
    let base = file_name
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let mut name = String::new();
    for c in base.chars().filter(|c| !c.is_control()) {
        if name.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        name.push(c);
    }
    let name = name.trim().to_string();
    if name.is_empty() || name == "." || name == ".." {
        format!("image-{index}")
    } else {
        name
    }
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    before: String,
    /// Comma-separated job states.
    #[serde(default)]
    state: String,
    /// A batch's parent id.
    #[serde(default)]
    parent: String,
}

/// `GET /api/v1/jobs?limit=&before=&state=running,failed&parent=`: newest first, with
/// `counts` per state over every job and `next_before` for the next page when this one is
/// full.
async fn list(
    State(mesh): State<Mesh>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let states = params
        .state
        .split(',')
        .map(str::trim)
        .filter(|label| !label.is_empty())
        .map(|label| {
            job_state(label).map(|state| state as i32).ok_or_else(|| {
                Error::invalid(format!(
                    "unknown state {label:?}: expected queued, running, paused, completed, completed_with_errors, failed or cancelled"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limit = match params.limit {
        0 => 50,
        n => n.min(crate::mesh::MAX_LIST_LIMIT),
    };
    let listed = mesh
        .list(
            &caller,
            ListJobsRequest {
                limit,
                before: params.before,
                parent_id: params.parent,
                states,
            },
        )
        .await?;
    let next_before = (listed.jobs.len() == limit as usize)
        .then(|| listed.jobs.last().map(|job| job.id.clone()))
        .flatten();
    let jobs: Vec<JobView> = listed.jobs.iter().map(JobView::from_summary).collect();
    let counts = listed.counts.unwrap_or_default();
    Ok(Json(serde_json::json!({
        "jobs": jobs,
        "counts": CountsView::from(&counts),
        "next_before": next_before,
    })))
}

fn job_state(label: &str) -> Option<JobState> {
    [
        JobState::Queued,
        JobState::Running,
        JobState::Completed,
        JobState::CompletedWithErrors,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Paused,
    ]
    .into_iter()
    .find(|state| state.label() == label)
}

#[derive(Serialize)]
struct CountsView {
    total: u32,
    queued: u32,
    running: u32,
    completed: u32,
    completed_with_errors: u32,
    failed: u32,
    cancelled: u32,
    paused: u32,
}

impl From<&JobCounts> for CountsView {
    fn from(c: &JobCounts) -> Self {
        CountsView {
            total: c.total,
            queued: c.queued,
            running: c.running,
            completed: c.completed,
            completed_with_errors: c.completed_with_errors,
            failed: c.failed,
            cancelled: c.cancelled,
            paused: c.paused,
        }
    }
}

/// `GET /api/v1/batches/{id}`: the jobs a URL list was split into, oldest first, and their
/// aggregate: summed counts and one state (running while any runs, paused while the rest
/// are paused; then failed if every image failed, completed_with_errors if some did,
/// cancelled if all were cancelled).
async fn batch(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let jobs = mesh.batch(&caller, &id).await?;
    let sum = |f: fn(&JobSummary) -> u32| jobs.iter().map(f).sum::<u32>();
    let (total, done, failed, cancelled) = (
        sum(|j| j.total),
        sum(|j| j.done),
        sum(|j| j.failed),
        sum(|j| j.cancelled),
    );
    let state = if jobs.iter().all(|j| j.state() == JobState::Queued) {
        JobState::Queued
    } else if jobs
        .iter()
        .any(|j| !j.state().is_final() && j.state() != JobState::Paused)
    {
        JobState::Running
    } else if jobs.iter().any(|j| j.state() == JobState::Paused) {
        JobState::Paused
    } else if jobs.iter().all(|j| j.state() == JobState::Cancelled) {
        JobState::Cancelled
    } else if failed == total {
        JobState::Failed
    } else if failed > 0 || cancelled > 0 {
        JobState::CompletedWithErrors
    } else {
        JobState::Completed
    };
    let views: Vec<JobView> = jobs.iter().map(JobView::from_summary).collect();
    Ok(Json(serde_json::json!({
        "id": id,
        "state": state.label(),
        "total": total,
        "done": done,
        "failed": failed,
        "cancelled": cancelled,
        "jobs": views,
    })))
}

async fn job(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(JobView::from_job(&mesh.job(&caller, &id).await?)))
}

/// `DELETE /api/v1/jobs/{id}`: cancels a running job, deletes it and the blobs no other job
/// uses; answers what went.
async fn delete(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let deleted = mesh.delete(&caller, &id).await?;
    Ok(Json(serde_json::json!({
        "id": id,
        "deleted": true,
        "blobs_removed": deleted.blobs_removed,
        "bytes_removed": deleted.bytes_removed,
    })))
}

/// `POST /api/v1/jobs/{id}/retry`: runs an ended job's failed images again.
async fn retry(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = mesh.retry(&caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(JobView::from_job(&job))).into_response())
}

/// `POST /api/v1/jobs/{id}/pause`: stops dispatching the job's images; running ones finish.
async fn pause(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(JobView::from_job(&mesh.pause(&caller, &id).await?)))
}

/// `POST /api/v1/jobs/{id}/resume`: dispatches a paused job's pending images again.
async fn resume(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = mesh.resume(&caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(JobView::from_job(&job))).into_response())
}

async fn cancel(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(JobView::from_job(&mesh.cancel(&caller, &id).await?)))
}

/// How often an idle event stream sends a comment, so proxies keep the connection open.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Deserialize)]
struct EventParams {
    /// For clients that cannot set `Last-Event-ID` on their first request (a browser's
    /// `EventSource` after reading the job with `GET`).
    last_event_id: Option<String>,
}

/// `GET /api/v1/jobs/{id}/events`: server-sent events. `progress` (the job's state and
/// counts; always the first event), `image_done`, `image_failed`, `tile_done`, and
/// `job_done` last. Event ids are job versions: a client that reconnects with
/// `Last-Event-ID` gets what it missed, nothing twice. A finished job the client has seen
/// to the end answers 204, which tells `EventSource` to stop reconnecting.
async fn events(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<EventParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let last = headers
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or("?").to_string())
        .or(params.last_event_id);
    let after = match last.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(text) => text.parse::<u64>().map_err(|_| {
            Error::invalid(format!("last event id must be a job version, got {text:?}"))
        })?,
    };
    if after > 0 {
        let summary = mesh.summary(&caller, &id).await?;
        if summary.state().is_final() && after >= summary.version {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
    let events = mesh.watch(&caller, &id, after).await?;
    Ok(sse_response(events.map(|event| match event {
        Ok(event) => sse_events(&event),
        Err(err) => {
            // The stream cannot go on (storage gone): say why, as the last event.
            let body = serde_json::json!({ "error": err.message, "code": err.code.as_str() });
            vec![Event::default().event("error").data(body.to_string())]
        }
    })))
}

/// An event stream response; each item is the events one change makes.
fn sse_response(events: impl Stream<Item = Vec<Event>> + Send + 'static) -> Response {
    let events = events.flat_map(|events| {
        futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

/// `GET /api/v1/events`: every job's events (as on a job's stream, without resume) and
/// worker changes: `worker` (a heartbeat: the worker's counters) and `worker_gone`. Each
/// gateway relays what NATS tells it, so any replica serves the same feed.
async fn feed(State(mesh): State<Mesh>, caller: Caller) -> ApiResult<Response> {
    let events = mesh.feed(&caller).await?;
    Ok(sse_response(events.map(|event| match event {
        FeedEvent::Job(event) => sse_events(&event),
        FeedEvent::Worker(worker) => vec![
            Event::default()
                .event("worker")
                .data(json_string(&WorkerView::from(&worker))),
        ],
        FeedEvent::WorkerGone(id) => vec![
            Event::default()
                .event("worker_gone")
                .data(serde_json::json!({ "id": id }).to_string()),
        ],
    })))
}

/// One job event as SSE events: the change itself, then `job_done` if the job ended.
fn sse_events(event: &JobEvent) -> Vec<Event> {
    let summary = event.summary.clone().unwrap_or_default();
    let job = JobView::from_summary(&summary);
    let id = event_version(event).to_string();
    let mut events = Vec::with_capacity(2);
    let change = match &event.image {
        None => Event::default().event("progress").data(json_string(&job)),
        Some(image) => {
            let name = match image.state() {
                ImageState::Done => "image_done",
                ImageState::Failed => "image_failed",
                ImageState::Cancelled => "image_cancelled",
                _ => "tile_done",
            };
            let body =
                serde_json::json!({ "job": job, "image": ImageView::new(&summary.id, image) });
            Event::default().event(name).data(body.to_string())
        }
    };
    events.push(change.id(id.clone()));
    if summary.state().is_final() {
        events.push(
            Event::default()
                .event("job_done")
                .id(id)
                .data(json_string(&job)),
        );
    }
    events
}

fn json_string(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string())
}

/// `GET /api/v1/jobs/{id}/outputs/{output}`: one output, by image index (`3`) or by the
/// input's name (`photo.jpg`; the first image of that name).
async fn download(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path((id, output)): Path<(String, String)>,
) -> ApiResult<Response> {
    let key = match output.parse::<u32>() {
        Ok(index) => OutputKey::Index(index),
        Err(_) => OutputKey::Name(&output),
    };
    let (output, name, chunks) = mesh.download(&caller, &id, key).await?;
    let file_name = output_file_name(&name, &output.content_type);
    let body = Body::from_stream(chunks.map(|chunk| chunk.map_err(std::io::Error::other)));
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, output.content_type)
        .header(header::CONTENT_LENGTH, output.size_bytes)
        .header(
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{file_name}\""),
        )
        .body(body)
        .map_err(|err| Error::internal(format!("building response: {err}")))?)
}

/// `GET /api/v1/jobs/{id}/outputs.zip`: every output and the manifests, streamed.
async fn download_all(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let chunks = mesh.bundle(&caller, &id).await?;
    let body = Body::from_stream(chunks.map(|chunk| chunk.map_err(std::io::Error::other)));
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/zip")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{id}.zip\""),
        )
        .body(body)
        .map_err(|err| Error::internal(format!("building response: {err}")))?)
}

/// The formats a job's analysis reports export to.
#[derive(Debug, Clone, Copy)]
enum Export {
    /// One row per image and `analyze` report.
    Csv,
    /// Every image's reports whole (histograms too).
    Json,
    /// The CSV's table as a workbook.
    Xlsx,
}

/// `GET /api/v1/jobs/{id}/analysis.<extension>` for one format.
fn analysis_route(format: Export) -> MethodRouter<Mesh> {
    get(move |mesh: State<Mesh>, caller: Caller, id: Path<String>| {
        analysis(mesh, caller, id, format)
    })
}

/// A job's analysis as a download named `<job id>-analysis.<extension>`. Built in memory: a
/// job has at most `--max-files-per-job` images, each a few hundred bytes of table.
async fn analysis(
    State(mesh): State<Mesh>,
    caller: Caller,
    Path(id): Path<String>,
    format: Export,
) -> ApiResult<Response> {
    let job = mesh.job(&caller, &id).await?;
    let (extension, content_type, bytes) = match format {
        Export::Csv => (
            "csv",
            "text/csv; charset=utf-8",
            crate::export::to_csv(&job),
        ),
        Export::Json => ("json", "application/json", crate::export::to_json(&job)),
        Export::Xlsx => (
            "xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            crate::export::to_xlsx(&job)?,
        ),
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{id}-analysis.{extension}\""),
        )
        .body(Body::from(bytes))
        .map_err(|err| Error::internal(format!("building response: {err}")))?)
}

/// The download's file name: the input's stem with the output format's extension, made
/// safe for a quoted header value.
fn output_file_name(name: &str, content_type: &str) -> String {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_ .".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{stem}.{}", crate::bundle::extension(content_type))
}

async fn workers(State(mesh): State<Mesh>) -> ApiResult<Json<serde_json::Value>> {
    let workers: Vec<WorkerView> = mesh.workers().await?.iter().map(WorkerView::from).collect();
    Ok(Json(serde_json::json!({ "workers": workers })))
}

#[derive(Serialize)]
pub struct JobView {
    id: String,
    state: &'static str,
    total: u32,
    done: u32,
    failed: u32,
    cancelled: u32,
    created_at_ms: i64,
    updated_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at_ms: Option<i64>,
    /// Grows with every change to the job; the id of its progress events.
    version: u64,
    /// The batch a long URL list was split into.
    #[serde(skip_serializing_if = "String::is_empty")]
    parent_id: String,
    /// The API key that made the job.
    #[serde(skip_serializing_if = "String::is_empty")]
    owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    images: Option<Vec<ImageView>>,
}

impl JobView {
    fn from_summary(summary: &JobSummary) -> Self {
        JobView {
            id: summary.id.clone(),
            state: summary.state().label(),
            total: summary.total,
            done: summary.done,
            failed: summary.failed,
            cancelled: summary.cancelled,
            created_at_ms: summary.created_at_ms,
            updated_at_ms: summary.updated_at_ms,
            finished_at_ms: (summary.finished_at_ms > 0).then_some(summary.finished_at_ms),
            version: summary.version,
            parent_id: summary.parent_id.clone(),
            owner: summary.owner.clone(),
            images: None,
        }
    }

    fn from_job(job: &Job) -> Self {
        let summary = job.summary.clone().unwrap_or_default();
        let mut view = JobView::from_summary(&summary);
        view.images = Some(
            job.images
                .iter()
                .map(|image| ImageView::new(&summary.id, image))
                .collect(),
        );
        view
    }
}

#[derive(Serialize)]
struct ImageView {
    index: u32,
    name: String,
    /// The input's URL, for an image fetched by URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    url: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<OutputView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<String>,
    attempts: u32,
    duration_ms: u64,
    /// Set for an image cut into tiles: `{"done": 3, "total": 24}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tiles: Option<TilesView>,
}

#[derive(Serialize)]
struct TilesView {
    done: u32,
    total: u32,
}

impl ImageView {
    fn new(job_id: &str, image: &Image) -> Self {
        ImageView {
            index: image.index,
            name: image.name.clone(),
            url: image.url.clone(),
            state: image.state().label(),
            output: image
                .output
                .as_ref()
                .map(|output| OutputView::new(job_id, image.index, output)),
            error: (!image.error.is_empty()).then(|| image.error.clone()),
            worker: (!image.worker_id.is_empty()).then(|| image.worker_id.clone()),
            attempts: image.attempts,
            duration_ms: image.duration_ms,
            tiles: (image.tiles_total > 0).then_some(TilesView {
                done: image.tiles_done,
                total: image.tiles_total,
            }),
        }
    }
}

#[derive(Serialize)]
struct OutputView {
    url: String,
    content_type: String,
    width: u32,
    height: u32,
    size_bytes: u64,
    /// The `analyze` ops' reports, in pipeline order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    analysis: Vec<serde_json::Value>,
}

impl OutputView {
    fn new(job_id: &str, index: u32, output: &Output) -> Self {
        OutputView {
            url: format!("/api/v1/jobs/{job_id}/outputs/{index}"),
            content_type: output.content_type.clone(),
            width: output.width,
            height: output.height,
            size_bytes: output.size_bytes,
            analysis: output
                .analysis
                .iter()
                .map(|report| {
                    serde_json::from_str(report)
                        .unwrap_or_else(|_| serde_json::Value::from(report.as_str()))
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct WorkerView {
    id: String,
    host: String,
    version: String,
    concurrency: u32,
    in_flight: u32,
    done: u64,
    failed: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    last_error: String,
    started_at_ms: i64,
    seen_at_ms: i64,
}

impl From<&Worker> for WorkerView {
    fn from(w: &Worker) -> Self {
        WorkerView {
            id: w.id.clone(),
            host: w.host.clone(),
            version: w.version.clone(),
            concurrency: w.concurrency,
            in_flight: w.in_flight,
            done: w.done,
            failed: w.failed,
            last_error: w.last_error.clone(),
            started_at_ms: w.started_at_ms,
            seen_at_ms: w.seen_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelmesh_proto::ErrorCode;

    #[test]
    fn names_lose_paths_and_control_characters() {
        assert_eq!(sanitize_name(Some("../../etc/passwd"), 0), "passwd");
        assert_eq!(sanitize_name(Some("C:\\photos\\cat.jpg"), 0), "cat.jpg");
        assert_eq!(sanitize_name(Some("a\u{0}b\nc.png"), 0), "abc.png");
        assert_eq!(sanitize_name(Some(".."), 3), "image-3");
        assert_eq!(sanitize_name(None, 7), "image-7");
        assert!(sanitize_name(Some(&"é".repeat(300)), 0).len() <= MAX_NAME_BYTES);
    }

    #[test]
    fn download_names_take_the_output_extension() {
        assert_eq!(output_file_name("cat.png", "image/webp"), "cat.webp");
        assert_eq!(output_file_name("a\"b.jpg", "image/jpeg"), "a_b.jpeg");
    }

    #[test]
    fn errors_map_to_statuses() {
        let response = ApiError(Error::new(ErrorCode::NotFound, "x")).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
