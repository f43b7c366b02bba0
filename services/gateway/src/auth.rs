//! API keys: who is calling.
//!
//! Keys are optional. With none configured the gateway runs open: every request is an
//! admin [`Caller`] without a key, and `run` logs a warning. With keys, every call to the
//! API (`/api/…`) and to `pixelmesh.*` gRPC services needs one, as `Authorization: Bearer
//! <secret>` (gRPC metadata `authorization` is the same header). `/healthz`, the gRPC health
//! and reflection services and the UI's static files stay open, so probes and the login-free
//! first page load work.
//!
//! A browser's `EventSource` (and an `<img src>` or download link) cannot set headers, so a
//! `GET` may carry the key as `?access_token=<secret>` instead. The parameter is taken off the
//! URI before the handler sees it; the request span logs only the path. Prefer the header
//! everywhere else: URLs end up in browser history and proxy logs.
//!
//! Secrets are compared as BLAKE3 digests with a constant-time equality, against every
//! key, so neither timing nor length tells which key (or how much of one) matched. A
//! [`Caller`] carries the key's *name*, never its secret.

use std::{fmt, path::Path, str::FromStr, sync::Arc};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderValue, Method, header, request::Parts, uri::PathAndQuery},
    middleware::Next,
    response::Response,
};
use pixelmesh_proto::{Error, ErrorCode};

use crate::{Settings, protect};

/// Shortest secret accepted: 16 characters of a random token is well past guessing.
const MIN_SECRET_CHARS: usize = 16;
/// Longest secret and name accepted, to keep headers and logs sane.
const MAX_SECRET_CHARS: usize = 256;
const MAX_NAME_CHARS: usize = 64;

/// Who made a request. Inserted as a request extension by [`authenticate`] on every request
/// that needs a key (and on every request when the gateway runs open).
///
/// In an axum handler take it as an argument (`caller: Caller`); in a tonic handler call
/// [`caller_of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name (never its secret); `None` when the gateway runs open.
    pub key: Option<String>,
    /// Admin keys (and everyone, when open) see every job.
    pub admin: bool,
}

impl Caller {
    /// The caller of a gateway without keys: no key, sees everything.
    pub fn open() -> Self {
        Caller {
            key: None,
            admin: true,
        }
    }

    /// The owner to record on a job this caller creates: its key's name, or `""` when the
    /// gateway runs open.
    pub fn owner(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    /// Whether this caller may see, download, cancel, retry or delete a job recorded with
    /// `owner`. A job made while the gateway ran open (owner `""`) is visible to admins only
    /// once keys are configured.
    pub fn may_access(&self, owner: &str) -> bool {
        self.admin || self.key.as_deref().is_some_and(|key| key == owner)
    }
}

/// A missing [`Caller`] means the auth layer is not installed in front of the handler: a
/// wiring bug, refused rather than served open.
fn no_caller() -> Error {
    Error::internal("no caller on the request: the auth layer is not installed")
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = crate::http::ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| no_caller().into())
    }
}

/// The [`Caller`] of a gRPC request. The axum request extensions reach tonic unchanged
/// (`tonic::Request::from_http` keeps them), so this reads what [`authenticate`] inserted.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| no_caller().into())
}

/// One configured key. The secret is kept only as its digest.
struct Key {
    name: String,
    digest: blake3::Hash,
    admin: bool,
}

/// The configured keys; empty means open.
pub struct ApiKeys {
    keys: Vec<Key>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|key| &key.name))
            .finish()
    }
}

impl ApiKeys {
    /// No keys: the gateway runs open.
    pub fn open() -> Self {
        ApiKeys { keys: Vec::new() }
    }

    /// The keys of `--api-keys`, `--admin-keys` and `--api-keys-file` together. Names must be
    /// unique across all three, and so must secrets.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let mut entries = settings
            .api_keys
            .entries("--api-keys", false)
            .map_err(anyhow::Error::msg)?;
        entries.extend(
            settings
                .admin_keys
                .entries("--admin-keys", true)
                .map_err(anyhow::Error::msg)?,
        );
        if let Some(path) = &settings.api_keys_file {
            entries.extend(read_key_file(path)?);
        }
        ApiKeys::new(entries).map_err(anyhow::Error::msg)
    }

    fn new(entries: Vec<KeyEntry>) -> Result<Self, String> {
        let mut keys: Vec<Key> = Vec::with_capacity(entries.len());
        for entry in entries {
            let digest = blake3::hash(entry.secret.as_bytes());
            if keys.iter().any(|key| key.name == entry.name) {
                return Err(format!("api key name {:?} is used twice", entry.name));
            }
            if keys.iter().any(|key| key.digest == digest) {
                return Err(format!(
                    "api key {:?} has the same secret as another key",
                    entry.name
                ));
            }
            keys.push(Key {
                name: entry.name,
                digest,
                admin: entry.admin,
            });
        }
        Ok(ApiKeys { keys })
    }

    /// Keys from `name:secret` pairs; for tests and embedding.
    pub fn parse(api_keys: &str, admin_keys: &str) -> anyhow::Result<Self> {
        let settings = Settings {
            api_keys: KeyList::from(api_keys),
            admin_keys: KeyList::from(admin_keys),
            ..Settings::default()
        };
        ApiKeys::from_settings(&settings)
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a secret identifies. Compares against every key without stopping early;
    /// `blake3::Hash` equality is constant-time.
    fn authenticate(&self, secret: &str) -> Option<Caller> {
        let digest = blake3::hash(secret.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if key.digest == digest {
                found = Some(key);
            }
        }
        found.map(|key| Caller {
            key: Some(key.name.clone()),
            admin: key.admin,
        })
    }
}

/// One `name:secret` as configured.
#[derive(Clone)]
struct KeyEntry {
    name: String,
    secret: String,
    admin: bool,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("name", &self.name)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// Comma-separated `name:secret` pairs, as `--api-keys` and `--admin-keys` take them.
///
/// Parsing never fails: the entries are checked by [`ApiKeys::from_settings`] at start,
/// because clap would echo a refused value, secret and all. Its `Debug` shows names only, so
/// logging the settings never leaks a secret.
#[derive(Clone, Default)]
pub struct KeyList(Vec<String>);

impl KeyList {
    fn entries(&self, flag: &str, admin: bool) -> Result<Vec<KeyEntry>, String> {
        self.0
            .iter()
            .enumerate()
            .map(|(index, pair)| {
                let entry = match pair.split_once(':') {
                    Some((name, secret)) => KeyEntry::new(name, secret, admin),
                    None => Err("expected name:secret".to_string()),
                };
                entry.map_err(|err| format!("{flag} entry {}: {err}", index + 1))
            })
            .collect()
    }
}

impl From<&str> for KeyList {
    fn from(text: &str) -> Self {
        KeyList(
            text.split(',')
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }
}

impl FromStr for KeyList {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(KeyList::from(text))
    }
}

impl fmt::Debug for KeyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.0.iter().map(|pair| match pair.split_once(':') {
            Some((name, _)) if valid_name(name) => name,
            _ => "?",
        });
        f.debug_list().entries(names).finish()
    }
}

fn valid_name(name: &str) -> bool {
    let name_ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    !name.is_empty() && name.len() <= MAX_NAME_CHARS && name.chars().all(name_ok)
}

impl KeyEntry {
    /// Errors name the key only once its name is known to be one: a mangled entry may be a
    /// secret.
    fn new(name: &str, secret: &str, admin: bool) -> Result<Self, String> {
        if !valid_name(name) {
            return Err(format!(
                "the name must be 1 to {MAX_NAME_CHARS} characters of A-Z a-z 0-9 _ . -"
            ));
        }
        // Base64, base64url and hex tokens fit; `:` and `,` separate entries, and header
        // values must be visible ASCII.
        let secret_ok = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
        let chars = secret.chars().count();
        if !(MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&chars) {
            return Err(format!(
                "api key {name:?}: the secret must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters long"
            ));
        }
        if !secret.chars().all(secret_ok) {
            return Err(format!(
                "api key {name:?}: the secret may hold only A-Z a-z 0-9 - . _ ~ + / ="
            ));
        }
        Ok(KeyEntry {
            name: name.to_string(),
            secret: secret.to_string(),
            admin,
        })
    }
}

/// Reads `name:secret[:admin]` lines; blank lines and lines starting with `#` are skipped.
fn read_key_file(path: &Path) -> anyhow::Result<Vec<KeyEntry>> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("reading api keys file {}: {err}", path.display()))?;
    parse_key_file(&text).map_err(|err| anyhow::anyhow!("api keys file {}: {err}", path.display()))
}

fn parse_key_file(text: &str) -> Result<Vec<KeyEntry>, String> {
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let entry = match fields.as_slice() {
            [name, secret] => KeyEntry::new(name, secret, false),
            [name, secret, "admin"] => KeyEntry::new(name, secret, true),
            _ => Err("expected name:secret or name:secret:admin".to_string()),
        };
        entries.push(entry.map_err(|err| format!("line {}: {err}", number + 1))?);
    }
    Ok(entries)
}

/// Whether a request needs a key: the API and the `pixelmesh.*` gRPC services do; health,
/// reflection, the OpenAPI document, the op specs and the UI's static files do not. A gRPC
/// request to any other service needs one too, so nothing new slips through unguarded.
fn needs_key(request: &Request) -> bool {
    let path = request.uri().path();
    if protect::is_grpc_health_or_reflection(path)
        || path == crate::http::OPENAPI_PATH
        || path == crate::http::OPS_PATH
    {
        return false;
    }
    path == "/api"
        || path.starts_with("/api/")
        || path.starts_with("/pixelmesh.")
        || protect::is_grpc(request)
}

/// The secret a request presents: `Authorization: Bearer <secret>`, else on a `GET` the
/// `access_token` query parameter.
fn presented_secret(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?.trim();
        let (scheme, secret) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| secret.trim().to_string());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return None;
    }
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned())
}

/// The URI without its `access_token` parameter, so the secret reaches neither the handler
/// nor anything that logs the URI.
fn strip_access_token(request: &mut Request) {
    let uri = request.uri();
    let Some(query) = uri.query() else { return };
    // A pair is the token by its decoded name, as `presented_secret` reads it
    // (`access%5Ftoken=` included).
    let is_token = |pair: &&str| {
        form_urlencoded::parse(pair.as_bytes()).any(|(name, _)| name == "access_token")
    };
    if !query.split('&').any(|pair| is_token(&pair)) {
        return;
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !is_token(pair)).collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(path_and_query) = PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(path_and_query);
        if let Ok(stripped) = axum::http::Uri::from_parts(parts) {
            *request.uri_mut() = stripped;
        }
    }
}

/// The auth middleware: finds the [`Caller`] and inserts it as a request extension, or
/// refuses the request with `401` (REST) or gRPC `UNAUTHENTICATED`.
pub async fn authenticate(
    State(keys): State<Arc<ApiKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    if keys.is_open() {
        request.extensions_mut().insert(Caller::open());
        return next.run(request).await;
    }
    if !needs_key(&request) {
        return next.run(request).await;
    }
    let grpc = protect::is_grpc(&request);
    let caller = match presented_secret(&request) {
        None => {
            return unauthenticated(
                grpc,
                "missing api key: send it as Authorization: Bearer <key>",
                false,
            );
        }
        Some(secret) => keys.authenticate(&secret),
    };
    let Some(caller) = caller else {
        return unauthenticated(grpc, "unknown api key", true);
    };
    strip_access_token(&mut request);
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn unauthenticated(grpc: bool, message: &str, invalid: bool) -> Response {
    let mut response =
        protect::error_response(grpc, Error::new(ErrorCode::Unauthenticated, message));
    if !grpc {
        // RFC 6750: tell the client which scheme, and whether its token was refused.
        let challenge = if invalid {
            "Bearer realm=\"pixelmesh\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"pixelmesh\""
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::{
        Json, Router,
        http::StatusCode,
        routing::{get, post},
    };
    use pixelmesh_proto::v1::{
        ListWorkersRequest, ListWorkersResponse, Worker, gateway_client::GatewayClient,
    };

    use super::*;
    use crate::protect::{
        self,
        testing::{no_limits, serve},
    };

    const ALICE: &str = "alice-secret-0123456789";
    const ROOT: &str = "root+secret/0123456789==";

    fn keys() -> Arc<ApiKeys> {
        Arc::new(
            ApiKeys::parse(
                &format!("alice:{ALICE}, bob:bob-secret-0123456789"),
                &format!("root:{ROOT}"),
            )
            .unwrap(),
        )
    }

    /// Answers the caller the handler sees, and the query it got.
    async fn whoami(caller: Caller, request: axum::extract::Request) -> Json<serde_json::Value> {
        Json(serde_json::json!({
            "key": caller.key,
            "admin": caller.admin,
            "query": request.uri().query(),
        }))
    }

    async fn app(keys: Arc<ApiKeys>) -> String {
        let app = Router::new()
            .route("/api/v1/whoami", get(whoami).post(whoami))
            .route("/healthz", get(|| async { "ok" }))
            .route("/index.html", get(|| async { "<html>" }))
            .route("/pixelmesh.v1.Gateway/ListJobs", post(|| async { "grpc" }))
            .route("/grpc.health.v1.Health/Check", post(|| async { "health" }));
        serve(protect::protect(app, &no_limits(), keys)).await
    }

    #[tokio::test]
    async fn with_keys_every_api_call_needs_a_known_one() {
        let base = app(keys()).await;
        let client = reqwest::Client::new();
        let whoami = format!("{base}/api/v1/whoami");

        let missing = client.get(&whoami).send().await.unwrap();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert!(
            missing.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let body: serde_json::Value = missing.json().await.unwrap();
        assert_eq!(body["code"], "unauthenticated");
        assert!(body["error"].as_str().unwrap().contains("missing api key"));

        for wrong in ["alice-secret-012345678", "alice", ""] {
            let refused = client.get(&whoami).bearer_auth(wrong).send().await.unwrap();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
        }
        let basic = client
            .get(&whoami)
            .basic_auth("alice", Some(ALICE))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);

        for (secret, key, admin) in [(ALICE, "alice", false), (ROOT, "root", true)] {
            let response = client.get(&whoami).bearer_auth(secret).send().await;
            let body: serde_json::Value = response.unwrap().json().await.unwrap();
            assert_eq!(body["key"], key);
            assert_eq!(body["admin"], admin);
        }

        for open in ["/healthz", "/index.html"] {
            let response = client.get(format!("{base}{open}")).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{open}");
        }
    }

    #[tokio::test]
    async fn grpc_calls_without_a_key_get_unauthenticated_as_a_grpc_status() {
        let base = app(keys()).await;
        let client = reqwest::Client::new();
        let grpc = |path: &str| {
            client
                .post(format!("{base}{path}"))
                .header(header::CONTENT_TYPE, "application/grpc")
        };

        let refused = grpc("/pixelmesh.v1.Gateway/ListJobs").send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::OK);
        assert_eq!(refused.headers()["grpc-status"], "16");
        assert!(refused.headers().contains_key("grpc-message"));
        assert!(!refused.headers().contains_key(header::WWW_AUTHENTICATE));

        let allowed = grpc("/pixelmesh.v1.Gateway/ListJobs")
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(allowed.text().await.unwrap(), "grpc");

        let health = grpc("/grpc.health.v1.Health/Check").send().await.unwrap();
        assert_eq!(health.text().await.unwrap(), "health");
    }

    #[tokio::test]
    async fn a_get_may_carry_the_key_as_access_token_which_the_handler_never_sees() {
        let base = app(keys()).await;
        let client = reqwest::Client::new();
        let url =
            format!("{base}/api/v1/whoami?after=3&access_token=root%2Bsecret%2F0123456789%3D%3D");

        // However its name is escaped, the token is read and taken off.
        for url in [url.clone(), url.replace("access_token", "access%5Ftoken")] {
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{url}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["key"], "root", "{url}");
            assert_eq!(body["query"], "after=3", "{url}");
        }

        // Only a GET: other methods must send the header.
        let post = client.post(&url).send().await.unwrap();
        assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn without_keys_everyone_is_an_open_admin() {
        let base = app(Arc::new(ApiKeys::open())).await;
        let body: serde_json::Value = reqwest::get(format!("{base}/api/v1/whoami"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["key"], serde_json::Value::Null);
        assert_eq!(body["admin"], true);
    }

    /// The caller reaches a tonic handler through `into_axum_router`, as the gateway serves
    /// it: a real gRPC client, a real tonic server, the extension read by [`caller_of`].
    #[tokio::test]
    async fn tonic_handlers_see_the_caller() {
        #[derive(Clone)]
        struct WhoAmI;
        impl tonic::server::NamedService for WhoAmI {
            const NAME: &'static str = "pixelmesh.v1.Gateway";
        }
        impl tower::Service<axum::http::Request<tonic::body::Body>> for WhoAmI {
            type Response = axum::http::Response<tonic::body::Body>;
            type Error = std::convert::Infallible;
            type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: axum::http::Request<tonic::body::Body>) -> Self::Future {
                // Answers every method as ListWorkers: one worker named after the caller.
                let list_workers =
                    tower::service_fn(|request: tonic::Request<ListWorkersRequest>| async move {
                        let caller = caller_of(&request)?;
                        let worker = Worker {
                            id: caller.key.unwrap_or_default(),
                            host: caller.admin.to_string(),
                            ..Worker::default()
                        };
                        Ok::<_, tonic::Status>(tonic::Response::new(ListWorkersResponse {
                            workers: vec![worker],
                        }))
                    });
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        ListWorkersResponse,
                        ListWorkersRequest,
                    >::default());
                    Ok(grpc.unary(list_workers, request).await)
                })
            }
        }

        let app = tonic::service::Routes::new(WhoAmI).into_axum_router();
        let base = serve(protect::protect(app, &no_limits(), keys())).await;
        let mut client = GatewayClient::connect(base).await.unwrap();
        let call = |secret: Option<&str>| {
            let mut request = tonic::Request::new(ListWorkersRequest {});
            if let Some(secret) = secret {
                let value = format!("Bearer {secret}").parse().unwrap();
                request.metadata_mut().insert("authorization", value);
            }
            request
        };

        let alice = client
            .list_workers(call(Some(ALICE)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(alice.workers[0].id, "alice");
        assert_eq!(alice.workers[0].host, "false");
        let root = client
            .list_workers(call(Some(ROOT)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(root.workers[0].id, "root");
        assert_eq!(root.workers[0].host, "true");

        let refused = client.list_workers(call(None)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = client
            .list_workers(call(Some("nope-nope-nope-nope")))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_missing_caller_is_refused_not_served_open() {
        let status = caller_of(&tonic::Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    #[test]
    fn callers_see_their_own_jobs_and_admins_see_all() {
        let alice = Caller {
            key: Some("alice".into()),
            admin: false,
        };
        assert!(alice.may_access("alice"));
        assert!(!alice.may_access("bob"));
        assert!(!alice.may_access(""));
        assert_eq!(alice.owner(), "alice");
        let root = Caller {
            key: Some("root".into()),
            admin: true,
        };
        assert!(root.may_access("alice") && root.may_access(""));
        assert!(Caller::open().may_access("bob"));
        assert_eq!(Caller::open().owner(), "");
    }

    #[test]
    fn key_lists_are_validated() {
        let good: KeyList = "alice:0123456789abcdef, ci.bot-2:AAAAAAAAAAAAAAAA=="
            .parse()
            .unwrap();
        assert_eq!(
            format!("{good:?}"),
            r#"["alice", "ci.bot-2"]"#,
            "names only, never secrets"
        );
        assert!("".parse::<KeyList>().unwrap().0.is_empty());
        // A mangled entry may be a secret: errors point at it by position only.
        for bad in [
            "0123456789abcdefXYZ",
            "alice:short",
            ":0123456789abcdef",
            "al ice:0123456789abcdef",
            "0123456789/abcdef:0123456789abcdef",
            "alice:0123456789abcdef with space",
            "alice:0123456789abcdéf",
        ] {
            let list = format!("bob:fedcba9876543210,{bad}");
            let err = ApiKeys::parse("", &list).unwrap_err().to_string();
            assert!(err.starts_with("--admin-keys entry 2: "), "{err}");
            assert!(
                !err.contains("0123456789"),
                "the error shows no secret: {err}"
            );
            assert!(!err.contains("al ice"), "nor a name that may be one: {err}");
            assert!(!format!("{:?}", KeyList::from(bad)).contains("0123456789"));
        }
        let same_name = ApiKeys::parse("alice:0123456789abcdef", "alice:fedcba9876543210");
        assert!(same_name.unwrap_err().to_string().contains("used twice"));
        let same_secret = ApiKeys::parse("alice:0123456789abcdef,bob:0123456789abcdef", "");
        assert!(same_secret.unwrap_err().to_string().contains("same secret"));
        assert!(ApiKeys::parse("", "").unwrap().is_open());
    }

    #[test]
    fn key_files_hold_one_key_per_line() {
        let text = "# ci keys\n\nalice:0123456789abcdef\n  root:fedcba9876543210:admin  \n";
        let entries = parse_key_file(text).unwrap();
        let keys = ApiKeys::new(entries).unwrap();
        assert_eq!(
            keys.authenticate("0123456789abcdef"),
            Some(Caller {
                key: Some("alice".into()),
                admin: false
            })
        );
        assert_eq!(
            keys.authenticate("fedcba9876543210"),
            Some(Caller {
                key: Some("root".into()),
                admin: true
            })
        );
        assert_eq!(keys.authenticate("0123456789abcdeF"), None);
        let err =
            parse_key_file("alice:0123456789abcdef\nbob:0123456789abcdef:root\n").unwrap_err();
        assert!(err.starts_with("line 2"), "{err}");
    }

    #[test]
    fn the_key_file_setting_is_read_at_start() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"carol:0123456789abcdef:admin\n").unwrap();
        let settings = Settings {
            api_keys: "alice:fedcba9876543210".parse().unwrap(),
            api_keys_file: Some(file.path().to_path_buf()),
            ..Settings::default()
        };
        let keys = ApiKeys::from_settings(&settings).unwrap();
        assert_eq!(format!("{keys:?}"), r#"["alice", "carol"]"#);
        let missing = Settings {
            api_keys_file: Some(file.path().with_extension("missing")),
            ..Settings::default()
        };
        assert!(ApiKeys::from_settings(&missing).is_err());
    }

    #[test]
    fn an_access_token_is_read_percent_decoded_from_a_get_only() {
        let secret = |method: Method, uri: &str| {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::empty())
                .expect("request");
            presented_secret(&request)
        };
        let get = |query: &str| secret(Method::GET, &format!("/api/v1/jobs?{query}"));
        assert_eq!(
            get("a=1&access_token=a%2Bb%2f%3D").as_deref(),
            Some("a+b/=")
        );
        assert_eq!(get("access_token=a+b").as_deref(), Some("a b"));
        // A malformed escape is kept as is, and then matches no key.
        assert_eq!(get("access_token=%zz%1").as_deref(), Some("%zz%1"));
        assert_eq!(get("token=x"), None);
        assert_eq!(secret(Method::POST, "/api/v1/jobs?access_token=x"), None);
    }
}
