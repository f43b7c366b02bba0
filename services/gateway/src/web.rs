//! The web UI's files, as `scripts/web.sh` builds them into `--web-dir`: `index.html` and
//! content-hashed files under `assets/` (each beside a gzipped copy).
//!
//! * `/assets/…` are cached for a year (`immutable`): a new build has new names;
//! * every other page path (`/jobs/01J…`, `/dashboard`) answers `index.html`, revalidated
//!   on each visit, and the app routes in the browser;
//! * a path with a file extension that is not there is a 404, not the page, so a stale
//!   script tag never receives HTML;
//! * unknown `/api/…` paths get the API's JSON 404, and gRPC calls to unknown services
//!   `UNIMPLEMENTED`, as they did before this fallback replaced tonic's.

use std::path::Path;

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Request, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use pixelmesh_proto::Error;
use tower::ServiceExt as _;
use tower_http::services::{ServeDir, ServeFile};

use crate::{http::ApiError, protect};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// The fallback router serving the UI from `dir`; a page saying how to build it when `dir`
/// holds no `index.html`.
pub fn router(dir: &Path) -> Router {
    let index = dir.join("index.html");
    if !index.is_file() {
        tracing::warn!(
            dir = %dir.display(),
            "web ui not built, / answers how to build it (scripts/web.sh)"
        );
        return Router::new().fallback(|request: Request<Body>| async move {
            not_for_ui(&request).unwrap_or_else(|| {
                (StatusCode::SERVICE_UNAVAILABLE, Html(NOT_BUILT)).into_response()
            })
        });
    }
    let files = ServeDir::new(dir).precompressed_gzip();
    let pages = ServeDir::new(dir)
        .precompressed_gzip()
        .fallback(ServeFile::new(index).precompressed_gzip());
    Router::new().fallback(move |request: Request<Body>| {
        let (files, pages) = (files.clone(), pages.clone());
        async move {
            if let Some(response) = not_for_ui(&request) {
                return response;
            }
            let path = request.uri().path().to_string();
            let is_file = path.starts_with("/assets/")
                || path
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| last.contains('.'));
            let response = if is_file {
                files.oneshot(request).await.into_response()
            } else {
                pages.oneshot(request).await.into_response()
            };
            with_cache_headers(&path, response)
        }
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
<p>The web UI is not built. Build it with <code>scripts/web.sh</code> (<code>scripts/run.sh</code>
does this), or point <code>--web-dir</code> / <code>PIXELMESH_WEB_DIR</code> at a built copy.</p>
<p>The API works without it: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(router: &Router, path: &str, grpc: bool) -> Response {
        let mut request = Request::get(path);
        if grpc {
            request = request.header(header::CONTENT_TYPE, "application/grpc");
        }
        router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .map_or("", |v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn pages_assets_and_what_is_not_the_ui() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<html>app</html>").unwrap();
        std::fs::create_dir(dir.path().join("assets")).unwrap();
        std::fs::write(dir.path().join("assets/app-1a2b.wasm"), b"\0asm").unwrap();
        std::fs::write(dir.path().join("assets/app-1a2b.js"), "export {}").unwrap();
        let router = router(dir.path());

        for page in ["/", "/jobs", "/jobs/01JABC", "/dashboard"] {
            let response = get(&router, page, false).await;
            assert_eq!(response.status(), StatusCode::OK, "{page}");
            assert_eq!(
                header(&response, header::CACHE_CONTROL),
                REVALIDATE,
                "{page}"
            );
            assert!(header(&response, header::CONTENT_TYPE).starts_with("text/html"));
            assert_eq!(body(response).await, "<html>app</html>");
        }

        let wasm = get(&router, "/assets/app-1a2b.wasm", false).await;
        assert_eq!(wasm.status(), StatusCode::OK);
        assert_eq!(header(&wasm, header::CONTENT_TYPE), "application/wasm");
        assert_eq!(header(&wasm, header::CACHE_CONTROL), IMMUTABLE);
        let js = get(&router, "/assets/app-1a2b.js", false).await;
        assert_eq!(header(&js, header::CONTENT_TYPE), "text/javascript");

        // Missing files are 404s, never the page, and not cached for a year.
        for missing in ["/assets/app-old.js", "/favicon.ico"] {
            let response = get(&router, missing, false).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{missing}");
            assert_eq!(header(&response, header::CACHE_CONTROL), REVALIDATE);
        }

        let api = get(&router, "/api/v1/nope", false).await;
        assert_eq!(api.status(), StatusCode::NOT_FOUND);
        assert!(body(api).await.contains(r#""code":"not_found""#));

        let grpc = get(&router, "/pixelmesh.v1.Nope/Call", true).await;
        assert_eq!(header(&grpc, "grpc-status".parse().unwrap()), "12");
    }

    #[tokio::test]
    async fn without_a_build_the_root_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let router = router(dir.path());
        let response = get(&router, "/", false).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(response).await.contains("scripts/web.sh"));
        let api = get(&router, "/api/v1/nope", false).await;
        assert_eq!(api.status(), StatusCode::NOT_FOUND);
    }
}
