//! The REST API under `/api/v1`, and `/healthz`. Converts JSON and multipart at the edge and
//! calls [`Mesh`]; errors are `{"error": "...", "code": "..."}` with the matching status.

use axum::{
    Json, Router,
    body::Body,
    extract::{
        DefaultBodyLimit, FromRequestParts, Multipart, Path, Query, State,
        multipart::{Field, MultipartRejection},
    },
    http::HeaderMap,
    http::{StatusCode, header, request::Parts},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::{Stream, StreamExt, TryStreamExt};
use pixelmesh_pipeline::ops::{Pipeline, SPECS, Spec};
use pixelmesh_proto::{
    Error,
    v1::{
        Image, ImageInput, ImageState, Job, JobCounts, JobEvent, JobState, JobSummary,
        ListJobsRequest, Output, Tiling, Worker,
    },
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Caller,
    export::Format,
    images::{self, Signing},
    mesh::{FeedEvent, Mesh, OutputKey, event_version},
    submission::Submission,
};

/// The pipeline of the thumbnails job views link to: small enough for a table row at twice
/// the pixel density, in the best format the browser takes.
const THUMBNAIL: &str = "thumbnail:w=160,h=160/format:auto";
/// Largest `pipeline` part: a pipeline is at most a few dozen small objects.
const MAX_PIPELINE_BYTES: usize = 64 * 1024;
/// Longest file name kept from a multipart part.
const MAX_NAME_BYTES: usize = 255;
/// Where the OpenAPI document is served; open without a key, like the UI.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// Where the op specs are served; open without a key too, so the UI can draw its pipeline
/// builder before anyone signs in.
pub const OPS_PATH: &str = "/api/v1/ops";

pub fn router(mesh: Mesh) -> Router {
    let body_limit = usize::try_from(mesh.settings().max_request_bytes).unwrap_or(usize::MAX);
    let (router, document) = api(body_limit);
    let document = bytes::Bytes::from(document.to_json().unwrap_or_default());
    router
        .route("/img/{*path}", get(image))
        .route(
            OPENAPI_PATH,
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) }),
        )
        .with_state(mesh)
}

/// `GET /img/<signature>/<pipeline>/<source>`, an on-the-fly image (see [`crate::images`]).
/// Outside the OpenAPI document: its answers are images and short texts, not JSON.
async fn image(State(mesh): State<Mesh>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    mesh.images().serve(uri.path(), &headers).await
}

/// The OpenAPI 3.1 document of the REST API, as served at [`OPENAPI_PATH`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    api(0).1
}

/// The REST routes and their OpenAPI document, both made from the handlers' `#[utoipa::path]`
/// attributes: a handler is routed only through them, so the document cannot drift from the
/// routes.
fn api(body_limit: usize) -> (Router<Mesh>, utoipa::openapi::OpenApi) {
    let (schemas, paths, jobs) = routes!(submit, list);
    let jobs = jobs.layer(DefaultBodyLimit::max(body_limit));
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(ops))
        .routes((schemas, paths, jobs))
        .routes(routes!(upload))
        .routes(routes!(job, delete))
        .routes(routes!(batch))
        .routes(routes!(batch_analysis_csv))
        .routes(routes!(batch_analysis_jsonl))
        .routes(routes!(cancel))
        .routes(routes!(retry))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(events))
        .routes(routes!(feed))
        .routes(routes!(download))
        .routes(routes!(download_all))
        .routes(routes!(input))
        .routes(routes!(analysis_csv))
        .routes(routes!(analysis_json))
        .routes(routes!(analysis_xlsx))
        .routes(routes!(workers))
        .routes(routes!(stats))
        .split_for_parts();
    add_common_errors(&mut document);
    (router, document)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pixelmesh",
        description = "Distributed image processing: submit images and a pipeline of operations, follow progress live, download the results. Every error is `{\"error\", \"code\"}` with the matching status. With API keys configured, every call needs `Authorization: Bearer <key>` (or `?access_token=` on a GET).",
        license(name = "MIT OR Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security((), ("api_key" = [])),
)]
struct ApiDoc;

/// Declares the optional bearer API key.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from --api-keys, --admin-keys or --api-keys-file; not needed when the gateway runs without keys.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Adds the refusals any call may get from the layers in front of the handlers (see
/// `protect` and `auth`), so each operation lists every status it can answer.
fn add_common_errors(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{
        ResponseBuilder,
        content::ContentBuilder,
        header::HeaderBuilder,
        schema::{ObjectBuilder, Type},
    };
    let error = |description: &str| {
        ResponseBuilder::new().description(description).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
    };
    let retry_after = HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
        .description(Some("Seconds to wait before trying again."))
        .build();
    for item in document.paths.paths.values_mut() {
        let operations = [
            (false, &mut item.get),
            (true, &mut item.post),
            (false, &mut item.delete),
        ];
        for (post, operation) in operations {
            let Some(operation) = operation else {
                continue;
            };
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, response: utoipa::openapi::Response| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| response.into());
            };
            add(
                "400",
                error("The request is malformed; `error` says how.").build(),
            );
            add(
                "401",
                error("An API key is needed and none valid was given.").build(),
            );
            if post {
                add(
                    "408",
                    error("The request body sent nothing for the idle time (`--body-idle-timeout-secs`); what it uploaded was dropped.").build(),
                );
                add(
                    "413",
                    error("The body, or what it holds, is over a limit.").build(),
                );
            }
            add(
                "429",
                error("Over the rate limit for this key or client, or, for a submit or upload, over its submits and uploads at once.")
                    .header("Retry-After", retry_after.clone())
                    .build(),
            );
            let busy = "The gateway is at its concurrency limit, or a service it needs is down.";
            add(
                "503",
                error(busy)
                    .header("Retry-After", retry_after.clone())
                    .build(),
            );
            add(
                "504",
                error("The call took longer than the request timeout.").build(),
            );
        }
    }
}

/// An [`Error`] as an HTTP response.
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
struct ErrorBody {
    /// What went wrong, for a person.
    error: String,
    /// What went wrong, for a program: `invalid_argument`, `not_found`,
    /// `failed_precondition`, `resource_exhausted`, `rate_limited`, `unauthenticated`,
    /// `unavailable`, `deadline_exceeded`, `request_timeout`, ...
    code: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.0.message,
            code: self.0.code.as_str().to_string(),
        };
        (self.0.code.http(), Json(body)).into_response()
    }
}

/// `Path`, with a malformed segment answered as an API error rather than axum's plain text.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(Error::invalid(rejection.body_text()).into()),
        }
    }
}

/// `Query`, with a malformed query answered as an API error rather than axum's plain text.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(Error::invalid(rejection.body_text()).into()),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Serialize, ToSchema)]
struct Health {
    /// `ok` or `unavailable`.
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Whether this gateway can serve: 200 while it is connected to NATS, else 503.
#[utoipa::path(get, path = "/healthz", tag = "health", responses(
    (status = 200, description = "Serving.", body = Health),
    (status = 503, description = "Not connected to NATS.", body = Health),
))]
async fn healthz(State(mesh): State<Mesh>) -> Response {
    if mesh.nats_connected() {
        let body = Health {
            status: "ok".into(),
            error: None,
        };
        Json(body).into_response()
    } else {
        let body = Health {
            status: "unavailable".into(),
            error: Some("not connected to nats".into()),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Every op a pipeline may hold, with each field's kind, range and default: what the UI's
/// pipeline builder draws its controls from, and what a client can check a pipeline against.
/// Open without a key.
#[utoipa::path(get, path = "/api/v1/ops", tag = "pipeline", responses(
    (status = 200, description = "The ops, in the order clients list them.", body = [Spec]),
))]
async fn ops() -> Response {
    // Fixed for the life of the binary; a short cache spares a reload the round trip.
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(SPECS),
    )
        .into_response()
}

/// A submitted job.
#[derive(Serialize, ToSchema)]
struct Submitted {
    id: String,
    #[schema(value_type = JobStateLabel)]
    state: &'static str,
    images: usize,
    url: String,
}

/// What a submit split into several jobs answers.
#[derive(Serialize, ToSchema)]
struct SubmittedBatch {
    parent_id: String,
    images: usize,
    url: String,
    jobs: Vec<Submitted>,
}

/// What a submit answers: one job, or the batch a long URL list was split into.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum SubmitAnswer {
    Job(Submitted),
    Batch(SubmittedBatch),
}

/// The parts of `POST /api/v1/jobs`, in any order; `pipeline` and at least one image.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "only its schema is used: the handler reads the parts as a stream"
)]
struct SubmitForm {
    /// The operations, as a JSON array (`[{"op": "resize", "width": 1920}]`) or the compact
    /// text form (`resize:w=1920`).
    #[schema(example = r#"[{"op": "resize", "width": 640}, {"op": "format", "format": "webp"}]"#)]
    pipeline: String,
    /// `auto` (the default: tile images over the tiling threshold), `always` or `never`.
    tiling: Option<TilingMode>,
    /// Images, one part each, streamed to storage as they arrive.
    file: Option<Vec<BinaryFile>>,
    /// A ZIP archive whose images become the job's images (folders flattened).
    archive: Option<BinaryFile>,
    /// Image URLs fetched by the workers: text, one per line (`#` starts a comment), or CSV
    /// with a `url` column and an optional `name` column. Read as it uploads, up to
    /// `--max-urls-per-list` (5 000 000): a list longer than one job becomes a batch of
    /// jobs, and then needs the `pipeline` part before it.
    #[schema(example = "https://images.example.com/a.jpg\nhttps://images.example.com/b.png\n")]
    urls: Option<String>,
}

/// How a job's images are cut into tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
enum TilingMode {
    Auto,
    Always,
    Never,
}

impl TilingMode {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(TilingMode::Auto),
            "always" => Some(TilingMode::Always),
            "never" => Some(TilingMode::Never),
            _ => None,
        }
    }

    fn to_proto(self) -> Tiling {
        match self {
            TilingMode::Auto => Tiling::Auto,
            TilingMode::Always => Tiling::Always,
            TilingMode::Never => Tiling::Never,
        }
    }
}

/// File bytes in a multipart part, or a binary response.
struct BinaryFile;

impl utoipa::PartialSchema for BinaryFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .content_media_type("application/octet-stream")
            .into()
    }
}

impl ToSchema for BinaryFile {}

/// Every job state's name, as a string enum.
struct JobStateLabel;

impl utoipa::PartialSchema for JobStateLabel {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        labels_schema(JobState::ALL.iter().map(|state| state.label()))
    }
}

impl ToSchema for JobStateLabel {}

/// Every image state's name, as a string enum.
pub(crate) struct ImageStateLabel;

impl utoipa::PartialSchema for ImageStateLabel {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let states = [
            ImageState::Pending,
            ImageState::Done,
            ImageState::Failed,
            ImageState::Cancelled,
        ];
        labels_schema(states.iter().map(|state| state.label()))
    }
}

impl ToSchema for ImageStateLabel {}

fn labels_schema<'a>(
    labels: impl Iterator<Item = &'a str>,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(labels))
        .into()
}

impl Submitted {
    fn new(summary: JobSummary) -> Self {
        Submitted {
            url: format!("/api/v1/jobs/{}", summary.id),
            state: summary.state().label(),
            images: summary.total as usize,
            id: summary.id,
        }
    }
}

/// `POST /api/v1/jobs`: multipart with a `pipeline` part (a JSON array) and images as
/// `file` parts, `archive` parts (ZIP) and `urls` parts (a URL list: text, one per line, or
/// CSV with a `url` column). Files stream to storage as they arrive; nothing is buffered
/// whole. A URL list longer than one job may hold is split into jobs sharing a parent id.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body(content = inline(SubmitForm), content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Queued: one job, or a batch of jobs for a long URL list.", body = SubmitAnswer),
    ),
)]
async fn submit(
    State(mesh): State<Mesh>,
    caller: Caller,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let mut multipart = multipart.map_err(|rejection| Error::invalid(rejection.body_text()))?;
    let mut submission = Submission::new(&mesh, &caller);
    let submitted = submit_parts(&mesh, &mut submission, &mut multipart).await;
    let made = match submitted {
        Ok(()) => submission.finish().await,
        Err(err) => {
            drain(&mut multipart).await;
            Err(err)
        }
    };
    let made = match made {
        Ok(made) => made,
        Err(err) => return Err(submission.abandon(err).await.into()),
    };
    if made.parent_id.is_empty() {
        let job = made.jobs.into_iter().next().unwrap_or_default();
        let body = SubmitAnswer::Job(Submitted::new(job));
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let body = SubmittedBatch {
        url: format!("/api/v1/batches/{}", made.parent_id),
        parent_id: made.parent_id,
        images: made.images,
        jobs: made.jobs.into_iter().map(Submitted::new).collect(),
    };
    Ok((StatusCode::ACCEPTED, Json(SubmitAnswer::Batch(body))).into_response())
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

/// Reads the parts into `submission`: files stream to storage, a URL list is read as it
/// arrives and made into jobs as they fill.
async fn submit_parts(
    mesh: &Mesh,
    submission: &mut Submission<'_>,
    multipart: &mut Multipart,
) -> Result<(), Error> {
    let per_job = mesh.settings().max_files_per_job;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(multipart_error_plain)?
    {
        match field.name().unwrap_or_default() {
            "pipeline" => {
                let text = read_small(field, MAX_PIPELINE_BYTES).await?;
                // Parsed as soon as it arrives, so a bad pipeline fails before any upload.
                submission.set_pipeline(Pipeline::parse(&text)?.to_proto())?;
            }
            "tiling" => {
                let text = read_small(field, MAX_PIPELINE_BYTES).await?;
                let text = text.trim();
                let tiling = TilingMode::parse(text).ok_or_else(|| {
                    Error::invalid(format!(
                        "tiling must be auto, always or never, got {text:?}"
                    ))
                })?;
                submission.set_tiling(tiling.to_proto() as i32)?;
            }
            "file" => {
                if submission.images() >= per_job {
                    return Err(Error::too_large(format!(
                        "too many files: at most {per_job} per job"
                    )));
                }
                let name = sanitize_name(field.file_name(), submission.images());
                let chunks = field.map_err(multipart_error_plain);
                let blob = mesh
                    .upload(submission.caller(), chunks)
                    .await
                    .map_err(|err| {
                        Error::new(err.code, format!("file {name:?}: {}", err.message))
                    })?;
                let input = ImageInput {
                    blob_id: blob.id,
                    name,
                    ..Default::default()
                };
                submission.add(input).await?;
            }
            "archive" => {
                let limits = mesh.zip_limits(submission.images());
                // A ZIP's directory sits at its end, so it is read from disk, never held in
                // memory.
                let chunks = field.map_err(multipart_error_plain);
                let file = crate::mesh::spool(chunks, mesh.settings().max_request_bytes).await?;
                for input in mesh
                    .upload_archive(submission.caller(), file, limits)
                    .await?
                {
                    submission.add(input).await?;
                }
            }
            "urls" => read_url_list(mesh, submission, field).await?,
            other => {
                return Err(Error::invalid(format!(
                    "unexpected part {other:?}: expected \"pipeline\", \"tiling\", \"file\", \"archive\" and \"urls\" parts"
                )));
            }
        }
    }
    Ok(())
}

/// Reads a `urls` part chunk by chunk, each URL checked as its line completes and added to
/// the submission, which submits a job each time one fills: nothing holds the whole list.
async fn read_url_list(
    mesh: &Mesh,
    submission: &mut Submission<'_>,
    mut field: Field<'_>,
) -> Result<(), Error> {
    let mut reader =
        crate::urls::ListReader::new(submission.images(), mesh.settings().max_urls_per_list);
    let mut inputs = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error_plain)? {
        reader.push(&chunk, &mut inputs)?;
        for input in inputs.drain(..) {
            submission.add(input).await?;
        }
    }
    reader.finish(&mut inputs)?;
    for input in inputs {
        submission.add(input).await?;
    }
    Ok(())
}

/// Stores the raw request body as a blob and answers `201 {"id", "size_bytes"}`: how a
/// watermark's logo gets its id. The body streams to storage, which enforces the upload size
/// limit. The blob is the caller's key's: jobs of other keys cannot use it (admins' can). It
/// is kept while a job's pipeline refers to it; an unreferenced upload is removed by the
/// orphan sweep after its grace period.
#[utoipa::path(post, path = "/api/v1/uploads", tag = "jobs",
    request_body(content = BinaryFile, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored.", body = Uploaded),
    ),
)]
async fn upload(State(mesh): State<Mesh>, caller: Caller, body: Body) -> ApiResult<Response> {
    let chunks = body
        .into_data_stream()
        .map_err(|err| Error::invalid(format!("reading the request body: {err}")));
    let blob = mesh.upload(&caller, chunks).await?;
    let body = Uploaded {
        id: blob.id,
        size_bytes: blob.size_bytes,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A stored upload.
#[derive(Serialize, ToSchema)]
struct Uploaded {
    /// The blob id, for a pipeline's `watermark` logo.
    id: String,
    size_bytes: u64,
}

async fn read_small(field: Field<'_>, max: usize) -> Result<String, Error> {
    let name = field.name().unwrap_or_default().to_string();
    let mut bytes = Vec::new();
    let mut field = field;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error_plain)? {
        if bytes.len() + chunk.len() > max {
            return Err(Error::too_large(format!("{name} part over {max} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| Error::invalid(format!("{name} part is not utf-8")))
}

fn multipart_error_plain(err: axum::extract::multipart::MultipartError) -> Error {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::too_large(format!("request body too large: {}", err.body_text()))
    } else {
        Error::invalid(format!("malformed multipart body: {}", err.body_text()))
    }
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// At most this many jobs (50 when 0 or absent; at most 1000).
    #[serde(default)]
    limit: u32,
    /// Only jobs older than this job id: the previous page's `next_before`.
    #[serde(default)]
    before: String,
    /// Only jobs in these states, comma-separated: `running,paused`.
    #[serde(default)]
    state: String,
    /// Only the jobs of this batch (its parent id).
    #[serde(default)]
    parent: String,
}

/// A page of jobs.
#[derive(Serialize, ToSchema)]
struct JobList {
    jobs: Vec<JobView>,
    counts: CountsView,
    /// The `before` for the next page; absent on the last page.
    next_before: Option<String>,
}

/// `GET /api/v1/jobs?limit=&before=&state=running,failed&parent=`: newest first, with
/// `counts` per state over every job and `next_before` for the next page when this one is
/// full.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "Newest first.", body = JobList),
    ),
)]
async fn list(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<JobList>> {
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
    Ok(Json(JobList {
        jobs,
        counts: CountsView::from(&counts),
        next_before,
    }))
}

fn job_state(label: &str) -> Option<JobState> {
    JobState::ALL
        .into_iter()
        .find(|state| state.label() == label)
}

/// How many jobs are in each state, over every job the caller may see.
#[derive(Serialize, ToSchema)]
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
#[utoipa::path(get, path = "/api/v1/batches/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The batch's parent id.")),
    responses(
        (status = 200, description = "The batch and its jobs.", body = BatchView),
        (status = 404, description = "No such batch (or not the caller's).", body = ErrorBody),
    ),
)]
async fn batch(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BatchView>> {
    let batch = mesh.batch_view(&caller, &id).await?;
    Ok(Json(BatchView {
        state: batch.state().label(),
        total: batch.total,
        done: batch.done,
        failed: batch.failed,
        cancelled: batch.cancelled,
        jobs: batch.jobs.iter().map(JobView::from_summary).collect(),
        id: batch.id,
    }))
}

/// `GET /api/v1/batches/{id}/analysis.csv`: every job's analysis table in one, oldest job
/// first, each row led by its job id and the image's URL. Streamed a job at a time.
#[utoipa::path(get, path = "/api/v1/batches/{id}/analysis.csv", tag = "outputs",
    params(("id" = String, Path, description = "The batch's parent id.")),
    responses(
        (status = 200, description = "The export.", body = BinaryFile, content_type = "text/csv"),
        (status = 404, description = "No such batch (or not the caller's).", body = ErrorBody),
    ),
)]
async fn batch_analysis_csv(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let head = crate::export::batch_csv_header();
    let chunks = mesh
        .batch_export(&caller, &id, head, crate::export::batch_csv_rows)
        .await?;
    streamed_export(chunks, "text/csv", &format!("{id}-analysis.csv"))
}

/// `GET /api/v1/batches/{id}/analysis.jsonl`: JSON Lines, one line per job, each the job's
/// `analysis.json`, oldest job first. Streamed a job at a time.
#[utoipa::path(get, path = "/api/v1/batches/{id}/analysis.jsonl", tag = "outputs",
    params(("id" = String, Path, description = "The batch's parent id.")),
    responses(
        (status = 200, description = "The export.", body = BinaryFile, content_type = "application/jsonl"),
        (status = 404, description = "No such batch (or not the caller's).", body = ErrorBody),
    ),
)]
async fn batch_analysis_jsonl(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let chunks = mesh
        .batch_export(&caller, &id, Vec::new(), crate::export::to_json)
        .await?;
    streamed_export(chunks, "application/jsonl", &format!("{id}-analysis.jsonl"))
}

/// A download of `chunks` as the attachment `file_name`. An error part way ends the body
/// early, which the client sees as a broken transfer, never as a whole file.
fn streamed_export(
    chunks: impl Stream<Item = Result<bytes::Bytes, Error>> + Send + 'static,
    content_type: &str,
    file_name: &str,
) -> ApiResult<Response> {
    let body = Body::from_stream(chunks.map(|chunk| chunk.map_err(std::io::Error::other)));
    attachment(body, content_type, file_name)
}

/// `body` as a download named `file_name`.
fn attachment(body: Body, content_type: &str, file_name: &str) -> ApiResult<Response> {
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        )
        .body(body)
        .map_err(|err| Error::internal(format!("building response: {err}")))?)
}

/// The jobs a URL list was split into, and their sums.
#[derive(Serialize, ToSchema)]
struct BatchView {
    id: String,
    #[schema(value_type = JobStateLabel)]
    state: &'static str,
    total: u32,
    done: u32,
    failed: u32,
    cancelled: u32,
    /// Oldest first.
    jobs: Vec<JobView>,
}

/// A job with its images: states, outputs, workers, errors, tile progress.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
    ),
)]
async fn job(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(JobView::from_job(
        &mesh.job(&caller, &id).await?,
        mesh.images().signing(),
    )))
}

/// `DELETE /api/v1/jobs/{id}`: cancels a running job, deletes it and the blobs no other job
/// uses; answers what went.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "Deleted.", body = Deleted),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
    ),
)]
async fn delete(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    let deleted = mesh.delete(&caller, &id).await?;
    Ok(Json(Deleted {
        id,
        deleted: true,
        blobs_removed: deleted.blobs_removed,
        bytes_removed: deleted.bytes_removed,
    }))
}

/// What a delete removed.
#[derive(Serialize, ToSchema)]
struct Deleted {
    id: String,
    deleted: bool,
    /// Blobs no other job used: outputs, and inputs past the upload grace period.
    blobs_removed: u32,
    bytes_removed: u64,
}

/// `POST /api/v1/jobs/{id}/retry`: runs an ended job's failed images again.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "control",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 202, description = "Retried.", body = JobView),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
        (status = 409, description = "Not in a state that allows it.", body = ErrorBody),
    ),
)]
async fn retry(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let job = mesh.retry(&caller, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobView::from_job(&job, mesh.images().signing())),
    )
        .into_response())
}

/// `POST /api/v1/jobs/{id}/pause`: stops dispatching the job's images; running ones finish.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/pause", tag = "control",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "Paused.", body = JobView),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
        (status = 409, description = "Not in a state that allows it.", body = ErrorBody),
    ),
)]
async fn pause(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(JobView::from_job(
        &mesh.pause(&caller, &id).await?,
        mesh.images().signing(),
    )))
}

/// `POST /api/v1/jobs/{id}/resume`: dispatches a paused job's pending images again.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/resume", tag = "control",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 202, description = "Resumed.", body = JobView),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
        (status = 409, description = "Not in a state that allows it.", body = ErrorBody),
    ),
)]
async fn resume(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let job = mesh.resume(&caller, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobView::from_job(&job, mesh.images().signing())),
    )
        .into_response())
}

/// `POST /api/v1/jobs/{id}/cancel`: purges the job's queued work; running tasks are dropped
/// when they end.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "control",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "Cancelled.", body = JobView),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
        (status = 409, description = "Not in a state that allows it.", body = ErrorBody),
    ),
)]
async fn cancel(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(JobView::from_job(
        &mesh.cancel(&caller, &id).await?,
        mesh.images().signing(),
    )))
}

/// How often an idle event stream sends a comment, so proxies keep the connection open.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventParams {
    /// Resume after this event id, as `Last-Event-ID` does: for clients that cannot set the
    /// header on their first request (a browser's `EventSource` after reading the job).
    last_event_id: Option<String>,
}

/// `GET /api/v1/jobs/{id}/events`: server-sent events. `progress` (the job's state and
/// counts; always the first event), `image_done`, `image_failed`, `tile_done`, and
/// `job_done` last. Event ids are job versions: a client that reconnects with
/// `Last-Event-ID` gets what it missed, nothing twice. A finished job the client has seen
/// to the end answers 204, which tells `EventSource` to stop reconnecting.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "events",
    params(
        ("id" = String, Path, description = "The job id."),
        EventParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id."),
    ),
    responses(
        (status = 200, description = "The event stream: `progress` first, then `image_done`, `image_failed`, `image_cancelled`, `tile_done`, and `job_done` last.", body = SseEvent, content_type = "text/event-stream"),
        (status = 204, description = "The job ended and the client has seen it all."),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
    ),
)]
async fn events(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<EventParams>,
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
    let signing = mesh.images().signing().clone();
    Ok(sse_response(events.map(move |event| match event {
        Ok(event) => sse_events(&event, &signing),
        Err(err) => {
            // The stream cannot go on (storage gone): say why, as the last event.
            let body = serde_json::json!({ "error": err.message, "code": err.code.as_str() });
            vec![Event::default().event("error").data(body.to_string())]
        }
    })))
}

/// One server-sent event, as the schema of an event stream's items.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "only its schema is used: events are written by axum's `Event`"
)]
struct SseEvent {
    /// `progress`, `image_done`, `image_failed`, `image_cancelled`, `tile_done`, `job_done`,
    /// `error` (the stream cannot go on); on the feed also `worker` and `worker_gone`.
    event: String,
    /// JSON: a job (as `GET /api/v1/jobs/{id}` without images) for `progress` and
    /// `job_done`; `{"job", "image"}` for image and tile events; a worker for `worker`.
    data: String,
    /// The job version: send it back as `Last-Event-ID` to resume after it.
    id: Option<String>,
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

/// `GET /api/v1/events`: the events of every job the caller may see (as on a job's stream,
/// without resume) and worker changes: `worker` (a heartbeat: the worker's counters; its
/// `last_error` to admin keys only) and `worker_gone`. Each gateway relays what NATS tells
/// it, so any replica serves the same feed.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    responses(
        (status = 200, description = "The event stream of every job the caller may see, plus `worker` (`last_error` for admin keys only) and `worker_gone`. It never ends.", body = SseEvent, content_type = "text/event-stream"),
    ),
)]
async fn feed(State(mesh): State<Mesh>, caller: Caller) -> ApiResult<Response> {
    let events = mesh.feed(&caller).await?;
    let signing = mesh.images().signing().clone();
    Ok(sse_response(events.map(move |event| match event {
        FeedEvent::Job(event) => sse_events(&event, &signing),
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
fn sse_events(event: &JobEvent, signing: &Signing) -> Vec<Event> {
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
            let body = serde_json::json!({ "job": job, "image": ImageView::new(&summary.id, image, signing) });
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
#[utoipa::path(get, path = "/api/v1/jobs/{id}/outputs/{output}", tag = "outputs",
    params(
        ("id" = String, Path, description = "The job id."),
        ("output" = String, Path, description = "The image's index, or its input name."),
    ),
    responses(
        (status = 200, description = "The output image.", body = BinaryFile, content_type = "image/*"),
        (status = 404, description = "No such job or image, or the image has no output (yet).", body = ErrorBody),
    ),
)]
async fn download(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath((id, output)): ApiPath<(String, String)>,
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

/// `GET /api/v1/jobs/{id}/inputs/{index}`: the image as it was submitted (the UI's "before"
/// thumbnails). Images fetched by URL have no stored input: 404.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/inputs/{index}", tag = "outputs",
    params(
        ("id" = String, Path, description = "The job id."),
        ("index" = u32, Path, description = "The image's index."),
    ),
    responses(
        (status = 200, description = "The input as uploaded: its image type read from its first bytes, else `application/octet-stream` (an upload that is not an image).", content(
            (BinaryFile = "image/*"),
            (BinaryFile = "application/octet-stream"),
        )),
        (status = 404, description = "No such job or image, or an image fetched by URL.", body = ErrorBody),
    ),
)]
async fn input(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath((id, index)): ApiPath<(String, u32)>,
) -> ApiResult<Response> {
    let (name, chunks) = mesh.input(&caller, &id, index).await?;
    let mut chunks = Box::pin(chunks);
    // The stored bytes carry no media type: read it off the first chunk's magic number.
    let first = chunks.next().await.transpose()?.unwrap_or_default();
    let content_type = image_media_type(&first);
    let chunks = futures::stream::once(async move { Ok(first) }).chain(chunks);
    let body = Body::from_stream(chunks.map(|chunk| chunk.map_err(std::io::Error::other)));
    let file_name = header_safe_name(&name);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{file_name}\""),
        )
        .body(body)
        .map_err(|err| Error::internal(format!("building response: {err}")))?)
}

/// The media type of an image from its first bytes; `application/octet-stream` for what is
/// not a format the mesh decodes.
fn image_media_type(head: &[u8]) -> &'static str {
    match head {
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => "image/webp",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'B', b'M', ..] => "image/bmp",
        [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => "image/tiff",
        // An ISO BMFF file whose major brand is AVIF's.
        [
            _,
            _,
            _,
            _,
            b'f',
            b't',
            b'y',
            b'p',
            b'a',
            b'v',
            b'i',
            b'f',
            ..,
        ] => "image/avif",
        _ => "application/octet-stream",
    }
}

/// A file name fit for a quoted header parameter: every character but ASCII letters,
/// digits, `-`, `_`, space and `.` becomes `_`.
fn header_safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_ .".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `GET /api/v1/jobs/{id}/outputs.zip`: every output and `manifest.json` and
/// `manifest.csv` (input name, output name, size, dimensions, worker, duration, error),
/// streamed.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/outputs.zip", tag = "outputs",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "A ZIP of the outputs and manifests.", body = BinaryFile, content_type = "application/zip"),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
    ),
)]
async fn download_all(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let chunks = mesh.bundle(&caller, &id).await?;
    streamed_export(chunks, "application/zip", &format!("{id}.zip"))
}

/// `GET /api/v1/jobs/{id}/analysis.csv`: the `analyze` reports, a row per image and report.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/analysis.csv", tag = "outputs",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The export.", body = BinaryFile, content_type = "text/csv"),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
    ),
)]
async fn analysis_csv(
    mesh: State<Mesh>,
    caller: Caller,
    id: ApiPath<String>,
) -> ApiResult<Response> {
    analysis(mesh, caller, id, Format::Csv).await
}

/// `GET /api/v1/jobs/{id}/analysis.json`: the `analyze` reports, every image's reports whole.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/analysis.json", tag = "outputs",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The export.", body = crate::export::JobJson),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
    ),
)]
async fn analysis_json(
    mesh: State<Mesh>,
    caller: Caller,
    id: ApiPath<String>,
) -> ApiResult<Response> {
    analysis(mesh, caller, id, Format::Json).await
}

/// `GET /api/v1/jobs/{id}/analysis.xlsx`: the `analyze` reports, the CSV's table as a workbook.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/analysis.xlsx", tag = "outputs",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The export.", body = BinaryFile, content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        (status = 404, description = "No such job (or not the caller's).", body = ErrorBody),
    ),
)]
async fn analysis_xlsx(
    mesh: State<Mesh>,
    caller: Caller,
    id: ApiPath<String>,
) -> ApiResult<Response> {
    analysis(mesh, caller, id, Format::Xlsx).await
}

/// A job's analysis as a download named `<job id>-analysis.<extension>`. Built in memory: a
/// job has at most `--max-files-per-job` images, each a few hundred bytes of table.
async fn analysis(
    State(mesh): State<Mesh>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    format: Format,
) -> ApiResult<Response> {
    let job = mesh.job(&caller, &id).await?;
    let bytes = crate::export::render(&job, format)?;
    attachment(
        Body::from(bytes),
        format.content_type(),
        &format.file_name(&id),
    )
}

/// The download's file name: the input's stem with the output format's extension, made
/// safe for a quoted header value.
fn output_file_name(name: &str, content_type: &str) -> String {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    format!(
        "{}.{}",
        header_safe_name(stem),
        crate::bundle::extension(content_type)
    )
}

/// The filter workers with a live heartbeat and their counters. Shared by every key, so a
/// worker's `last_error` (one task's error, which may name another user's URLs and blobs) is
/// shown to admin keys only.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers",
    responses(
        (status = 200, description = "The workers online.", body = WorkerList),
    ),
)]
async fn workers(State(mesh): State<Mesh>, caller: Caller) -> ApiResult<Json<WorkerList>> {
    let workers = mesh
        .workers(&caller)
        .await?
        .iter()
        .map(WorkerView::from)
        .collect();
    Ok(Json(WorkerList { workers }))
}

/// `GET /api/v1/stats`: the filter workers' queue (from JetStream) and how many images
/// ended in each of the last 15 minutes (as this gateway counted them since it started).
#[utoipa::path(get, path = "/api/v1/stats", tag = "workers",
    responses(
        (status = 200, description = "Queue depth and recent throughput.", body = StatsView),
    ),
)]
async fn stats(State(mesh): State<Mesh>) -> Json<StatsView> {
    let (queue, minutes) = mesh.stats().await;
    let (queue, queue_error) = match queue {
        Ok(queue) => (
            Some(QueueView {
                pending: queue.pending,
                in_flight: queue.in_flight,
                redelivered: queue.redelivered,
            }),
            None,
        ),
        Err(err) => {
            tracing::warn!(error = %err.message, "stats without the task queue");
            (None, Some(err.message))
        }
    };
    Json(StatsView {
        queue,
        queue_error,
        throughput: minutes
            .iter()
            .map(|m| MinuteView {
                at_ms: m.at_ms,
                done: m.done,
                failed: m.failed,
            })
            .collect(),
    })
}

/// The work queue and recent throughput.
#[derive(Serialize, ToSchema)]
struct StatsView {
    /// Null when the queue could not be read (see `queue_error`); the throughput is there
    /// all the same.
    queue: Option<QueueView>,
    /// Why the queue could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_error: Option<String>,
    /// Images ended per minute, oldest first; the last is the current minute.
    throughput: Vec<MinuteView>,
}

/// The filter workers' task queue.
#[derive(Serialize, ToSchema)]
struct QueueView {
    /// Tasks waiting for a worker.
    pending: u64,
    /// Tasks a worker holds, not yet acknowledged.
    in_flight: u64,
    /// Tasks delivered more than once (a worker died or timed out), not yet acknowledged.
    redelivered: u64,
}

#[derive(Serialize, ToSchema)]
struct MinuteView {
    /// The minute's start, milliseconds since the epoch.
    at_ms: i64,
    done: u64,
    failed: u64,
}

#[derive(Serialize, ToSchema)]
struct WorkerList {
    workers: Vec<WorkerView>,
}

/// A job: its state and counts, and with `GET /api/v1/jobs/{id}` its images.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    id: String,
    #[schema(value_type = JobStateLabel)]
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

    fn from_job(job: &Job, signing: &Signing) -> Self {
        let summary = job.summary.clone().unwrap_or_default();
        let mut view = JobView::from_summary(&summary);
        view.images = Some(
            job.images
                .iter()
                .map(|image| ImageView::new(&summary.id, image, signing))
                .collect(),
        );
        view
    }
}

#[derive(Serialize, ToSchema)]
struct ImageView {
    index: u32,
    name: String,
    /// The input's URL, for an image fetched by URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    url: String,
    #[schema(value_type = ImageStateLabel)]
    state: &'static str,
    /// The input as submitted; absent for an image fetched by URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    input_url: Option<String>,
    /// A small rendering of the input (an image URL, see `/img`), when the gateway serves
    /// image URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    input_thumbnail_url: Option<String>,
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

#[derive(Serialize, ToSchema)]
struct TilesView {
    done: u32,
    total: u32,
}

impl ImageView {
    fn new(job_id: &str, image: &Image, signing: &Signing) -> Self {
        ImageView {
            index: image.index,
            name: image.name.clone(),
            url: image.url.clone(),
            state: image.state().label(),
            input_url: (!image.input_blob_id.is_empty())
                .then(|| format!("/api/v1/jobs/{job_id}/inputs/{}", image.index)),
            input_thumbnail_url: (!image.input_blob_id.is_empty())
                .then(|| images::blob_url(signing, THUMBNAIL, &image.input_blob_id))
                .flatten(),
            output: image
                .output
                .as_ref()
                .map(|output| OutputView::new(job_id, image.index, output, signing)),
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

#[derive(Serialize, ToSchema)]
struct OutputView {
    url: String,
    /// A small rendering of the output (an image URL, see `/img`), when the gateway serves
    /// image URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    thumbnail_url: Option<String>,
    content_type: String,
    width: u32,
    height: u32,
    size_bytes: u64,
    /// The `analyze` ops' reports, in pipeline order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    analysis: Vec<serde_json::Value>,
}

impl OutputView {
    fn new(job_id: &str, index: u32, output: &Output, signing: &Signing) -> Self {
        OutputView {
            url: format!("/api/v1/jobs/{job_id}/outputs/{index}"),
            thumbnail_url: images::blob_url(signing, THUMBNAIL, &output.blob_id),
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

/// A filter worker: its own id, host and version, its slots and counters. Never a user's
/// data, but for `last_error` to admins.
#[derive(Serialize, ToSchema)]
struct WorkerView {
    id: String,
    host: String,
    version: String,
    /// Tasks it runs at once.
    concurrency: u32,
    in_flight: u32,
    done: u64,
    failed: u64,
    /// The error of its last failed task; admin keys only (and everyone when the gateway runs
    /// open): it may carry another user's URL, file name or blob ids.
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

    /// Every `$ref` in `value`, as `(where, target)`.
    fn refs(value: &serde_json::Value, at: &str, found: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    if key == "$ref" {
                        found.push((at.to_string(), inner.as_str().unwrap_or("").to_string()));
                    }
                    refs(inner, &format!("{at}/{key}"), found);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, inner) in items.iter().enumerate() {
                    refs(inner, &format!("{at}/{i}"), found);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn openapi_document_is_whole() {
        let document = serde_json::to_value(openapi()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let paths = document["paths"].as_object().unwrap();
        for path in [
            "/api/v1/jobs",
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/{id}/events",
            "/api/v1/jobs/{id}/outputs.zip",
            "/api/v1/jobs/{id}/analysis.xlsx",
            "/api/v1/batches/{id}",
            "/api/v1/uploads",
            "/api/v1/events",
            "/api/v1/workers",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        // Every operation has a success, the layers' refusals, and its own summary.
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|status| status.starts_with('2')),
                    "{method} {path} has no success"
                );
                for status in ["400", "401", "429", "503", "504"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
                assert!(
                    operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{method} {path} has no summary"
                );
            }
        }
        // Every reference resolves.
        let schemas = document["components"]["schemas"].as_object().unwrap();
        let mut found = Vec::new();
        refs(&document, "", &mut found);
        assert!(!found.is_empty());
        for (at, target) in found {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_default();
            assert!(schemas.contains_key(name), "{at}: dangling {target}");
        }
        let states: Vec<&str> = schemas["JobStateLabel"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|state| state.as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            [
                "queued",
                "running",
                "paused",
                "completed",
                "completed_with_errors",
                "failed",
                "cancelled"
            ]
        );
        for path in ["/api/v1/jobs", "/api/v1/uploads"] {
            let responses = &paths[path]["post"]["responses"];
            assert!(
                responses["408"].is_object(),
                "{path} lacks the idle body's 408"
            );
        }
        let form = &paths["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"];
        assert_eq!(form["schema"]["required"], serde_json::json!(["pipeline"]));
    }

    #[test]
    fn errors_map_to_statuses() {
        let response = ApiError(Error::new(ErrorCode::NotFound, "x")).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
