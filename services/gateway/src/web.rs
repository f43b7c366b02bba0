//! The web UI's files, as `scripts/web.sh` builds them into `web/dist`: `index.html` and
//! content-hashed files under `assets/` (each beside a gzipped copy). They are compiled into
//! the binary, so `pixelmesh all` serves the UI from any directory; `--web-dir` serves a
//! folder instead, for UI development.
//!
//! * `/assets/…` are cached for a year (`immutable`): a new build has new names;
//! * every other page path (`/jobs/01J…`, `/dashboard`) answers `index.html`, revalidated
//!   on each visit (`ETag`, `304`), and the app routes in the browser;
//! * a path with a file extension that is not there is a 404, not the page, so a stale
//!   script tag never receives HTML;
//! * unknown `/api/…` paths get the API's JSON 404, and gRPC calls to unknown services
//!   `UNIMPLEMENTED`, as they did before this fallback replaced tonic's.
//!
//! A binary built before the UI (no `web/dist`: the WASM toolchain was missing, or
//! `scripts/web.sh` was not run) builds all the same, with a warning from `build.rs`, and its
//! `/` says how to build the UI.

use std::{
    borrow::Cow,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use pixelmesh_proto::Error;

use crate::{http::ApiError, protect};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// The UI as `scripts/web.sh` left it in `web/dist` when this crate was compiled; empty when
/// it had not been built (`build.rs` reruns the compile once it is).
#[derive(rust_embed::Embed)]
#[folder = "../../web/dist"]
#[allow_missing = true]
struct Bundle;

/// Where the UI's files come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Compiled into the binary.
    Embedded,
    /// A built copy on disk (`--web-dir`), read on each request, so a rebuild shows at once.
    Dir(PathBuf),
}

/// One file of the UI.
struct File {
    bytes: Cow<'static, [u8]>,
    etag: String,
}

impl Source {
    /// The file at `path` (relative, `/`-separated), if there is one.
    async fn get(&self, path: &str) -> Option<File> {
        match self {
            Source::Embedded => Bundle::get(path).map(|file| File {
                etag: etag(&file.metadata.sha256_hash()[..]),
                bytes: file.data,
            }),
            Source::Dir(dir) => {
                // Only plain names: no `..`, no root, so nothing outside `dir` is served.
                let relative = Path::new(path);
                if path.is_empty()
                    || !relative
                        .components()
                        .all(|part| matches!(part, Component::Normal(_)))
                {
                    return None;
                }
                let bytes = tokio::fs::read(dir.join(relative)).await.ok()?;
                Some(File {
                    etag: etag(blake3::hash(&bytes).as_bytes()),
                    bytes: Cow::Owned(bytes),
                })
            }
        }
    }
}

/// A strong validator from a content hash: its first 16 bytes in hex, quoted.
fn etag(hash: &[u8]) -> String {
    let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The fallback router serving the UI from `source`; a page saying how to build it when
/// there is no `index.html`.
pub async fn router(source: Source) -> Router {
    if source.get("index.html").await.is_none() {
        match &source {
            Source::Embedded => tracing::warn!(
                "this binary was built without the web ui, / answers how to build it (scripts/web.sh)"
            ),
            Source::Dir(dir) => tracing::warn!(
                dir = %dir.display(),
                "web ui not built in --web-dir, / answers how to build it (scripts/web.sh)"
            ),
        }
        return Router::new().fallback(|request: Request<Body>| async move {
            not_for_ui(&request).unwrap_or_else(|| {
                (StatusCode::SERVICE_UNAVAILABLE, Html(NOT_BUILT)).into_response()
            })
        });
    }
    let source = Arc::new(source);
    Router::new().fallback(move |request: Request<Body>| {
        let source = source.clone();
        async move {
            if let Some(response) = not_for_ui(&request) {
                return response;
            }
            serve(
                &source,
                request.method(),
                request.uri().path(),
                request.headers(),
            )
            .await
        }
    })
}

/// A file, or for a page path the app's `index.html`; gzipped when the client takes it.
async fn serve(source: &Source, method: &Method, path: &str, headers: &HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return with_cache_headers(
            path,
            (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "GET, HEAD")],
            )
                .into_response(),
        );
    }
    let relative = path.trim_start_matches('/');
    let is_file = path.starts_with("/assets/")
        || path
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains('.'));
    let name = if is_file { relative } else { "index.html" };
    // Percent-encoded names never occur in the bundle; such a path is simply not there.
    let Some(file) = source.get(name).await else {
        return with_cache_headers(path, StatusCode::NOT_FOUND.into_response());
    };
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == file.etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let gzip = if accepts_gzip(headers) {
            source.get(&format!("{name}.gz")).await
        } else {
            None
        };
        let mut response = match gzip {
            Some(gzipped) => {
                let mut response = Response::new(Body::from(gzipped.bytes));
                response
                    .headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                response
            }
            None => Response::new(Body::from(file.bytes)),
        };
        if method == Method::HEAD {
            *response.body_mut() = Body::empty();
        }
        response
    };
    let headers = response.headers_mut();
    let content_type = if mime.type_() == mime_guess::mime::TEXT {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    };
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&file.etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    with_cache_headers(path, response)
}

/// Whether `Accept-Encoding` takes gzip (and does not refuse it with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// The API's and gRPC's own answers for paths the UI must not take.
fn not_for_ui(request: &Request<Body>) -> Option<Response> {
    if protect::is_grpc(request) {
        return Some(
            Response::builder()
                .header(header::CONTENT_TYPE, "application/grpc")
                .header(
                    "grpc-status",
                    (tonic::Code::Unimplemented as i32).to_string(),
                )
                .body(Body::empty())
                .unwrap_or_default(),
        );
    }
    let path = request.uri().path();
    if path == "/api" || path.starts_with("/api/") {
        return Some(
            ApiError::from(Error::not_found(format!("no api route {path}"))).into_response(),
        );
    }
    None
}

fn with_cache_headers(path: &str, mut response: Response) -> Response {
    let cache = if path.starts_with("/assets/") && response.status().is_success() {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

const NOT_BUILT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pixelmesh</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto">
<h1>pixelmesh</h1>
<p>This binary was built without its web UI: <code>web/dist</code> was not there when it was
compiled. Build the UI with <code>scripts/web.sh</code>, then build the binary again (<code>scripts/run.sh</code>
does both), or point <code>--web-dir</code> / <code>PIXELMESH_WEB_DIR</code> at a built copy.</p>
<p>The API works without it: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use tower::ServiceExt as _;

    use super::*;

    async fn request(router: &Router, request: Request<Body>) -> Response {
        router.clone().oneshot(request).await.unwrap()
    }

    async fn get(router: &Router, path: &str, grpc: bool) -> Response {
        let mut builder = Request::get(path);
        if grpc {
            builder = builder.header(header::CONTENT_TYPE, "application/grpc");
        }
        request(router, builder.body(Body::empty()).unwrap()).await
    }

    async fn body(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec()
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .map_or("", |v| v.to_str().unwrap())
    }

    /// A built UI as web.sh lays it out, with a gzipped copy of the script only.
    fn built() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<html>app</html>").unwrap();
        std::fs::create_dir(dir.path().join("assets")).unwrap();
        std::fs::write(dir.path().join("assets/app-1a2b.wasm"), b"\0asm").unwrap();
        std::fs::write(dir.path().join("assets/app-1a2b.js"), "export {}").unwrap();
        std::fs::write(dir.path().join("assets/app-1a2b.js.gz"), b"gzipped").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
        dir
    }

    #[tokio::test]
    async fn pages_assets_and_what_is_not_the_ui() {
        let dir = built();
        let router = router(Source::Dir(dir.path().join(""))).await;

        for page in ["/", "/jobs", "/jobs/01JABC", "/dashboard"] {
            let response = get(&router, page, false).await;
            assert_eq!(response.status(), StatusCode::OK, "{page}");
            assert_eq!(
                header(&response, header::CACHE_CONTROL),
                REVALIDATE,
                "{page}"
            );
            assert_eq!(
                header(&response, header::CONTENT_TYPE),
                "text/html; charset=utf-8"
            );
            assert_eq!(body(response).await, b"<html>app</html>");
        }

        let wasm = get(&router, "/assets/app-1a2b.wasm", false).await;
        assert_eq!(wasm.status(), StatusCode::OK);
        assert_eq!(header(&wasm, header::CONTENT_TYPE), "application/wasm");
        assert_eq!(header(&wasm, header::CACHE_CONTROL), IMMUTABLE);
        let js = get(&router, "/assets/app-1a2b.js", false).await;
        assert!(header(&js, header::CONTENT_TYPE).starts_with("text/javascript"));

        // Missing files are 404s, never the page, and not cached for a year; nothing
        // outside the folder is reached.
        for missing in [
            "/assets/app-old.js",
            "/favicon.ico",
            "/assets/../secret.txt",
            "/assets/%2e%2e/secret.txt",
        ] {
            let response = get(&router, missing, false).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{missing}");
            assert_eq!(header(&response, header::CACHE_CONTROL), REVALIDATE);
        }

        let api = get(&router, "/api/v1/nope", false).await;
        assert_eq!(api.status(), StatusCode::NOT_FOUND);
        assert!(
            String::from_utf8(body(api).await)
                .unwrap()
                .contains(r#""code":"not_found""#)
        );

        let grpc = get(&router, "/pixelmesh.v1.Nope/Call", true).await;
        assert_eq!(header(&grpc, "grpc-status".parse().unwrap()), "12");
    }

    #[tokio::test]
    async fn gzip_when_taken_validators_and_methods() {
        let dir = built();
        let router = router(Source::Dir(dir.path().to_path_buf())).await;
        let js = |accept: &str| {
            Request::get("/assets/app-1a2b.js")
                .header(header::ACCEPT_ENCODING, accept)
                .body(Body::empty())
                .unwrap()
        };

        let zipped = request(&router, js("br, gzip;q=0.8")).await;
        assert_eq!(header(&zipped, header::CONTENT_ENCODING), "gzip");
        assert_eq!(header(&zipped, header::VARY), "accept-encoding");
        let etag = header(&zipped, header::ETAG).to_string();
        assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
        assert_eq!(body(zipped).await, b"gzipped");
        for refused in ["gzip;q=0", "identity"] {
            let plain = request(&router, js(refused)).await;
            assert_eq!(header(&plain, header::CONTENT_ENCODING), "", "{refused}");
            assert_eq!(body(plain).await, b"export {}");
        }
        // No gzipped copy: the file as it is.
        let wasm = request(
            &router,
            Request::get("/assets/app-1a2b.wasm")
                .header(header::ACCEPT_ENCODING, "gzip")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(header(&wasm, header::CONTENT_ENCODING), "");

        // The page revalidates to a 304 while it is unchanged, then to the new one.
        let page = get(&router, "/jobs", false).await;
        let tag = header(&page, header::ETAG).to_string();
        let revalidate = |tag: &str| {
            Request::get("/jobs")
                .header(header::IF_NONE_MATCH, tag)
                .body(Body::empty())
                .unwrap()
        };
        let same = request(&router, revalidate(&tag)).await;
        assert_eq!(same.status(), StatusCode::NOT_MODIFIED);
        assert!(body(same).await.is_empty());
        std::fs::write(dir.path().join("index.html"), "<html>app 2</html>").unwrap();
        let changed = request(&router, revalidate(&tag)).await;
        assert_eq!(changed.status(), StatusCode::OK);
        assert_ne!(header(&changed, header::ETAG), tag);

        let head = request(&router, Request::head("/").body(Body::empty()).unwrap()).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert!(body(head).await.is_empty());
        let post = request(&router, Request::post("/").body(Body::empty()).unwrap()).await;
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn without_a_build_the_root_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let router = router(Source::Dir(dir.path().to_path_buf())).await;
        let response = get(&router, "/", false).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            String::from_utf8(body(response).await)
                .unwrap()
                .contains("scripts/web.sh")
        );
        let api = get(&router, "/api/v1/nope", false).await;
        assert_eq!(api.status(), StatusCode::NOT_FOUND);
    }

    /// The bundle compiled in is the one `web/dist` holds, when it is built (CI builds it
    /// before this crate); the browser test opens it from a binary run elsewhere.
    #[tokio::test]
    async fn the_embedded_bundle_is_web_dist() {
        let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dist");
        let router = router(Source::Embedded).await;
        let page = get(&router, "/", false).await;
        match std::fs::read(dist.join("index.html")) {
            Ok(index) => {
                assert_eq!(page.status(), StatusCode::OK);
                assert_eq!(body(page).await, index);
            }
            Err(_) => assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}
