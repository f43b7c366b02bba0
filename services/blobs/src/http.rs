//! object_store's HTTP client: hyper over rustls with ring, with webpki's root certificates.
//!
//! Hand-written (a few lines of glue) because object_store's own client is reqwest, and
//! reqwest's TLS, once compiled into the build, makes every reqwest client in it (the tests',
//! the gateway's) panic unless a process-wide crypto provider was installed first. This is
//! the stack the filter's URL fetcher already uses.

use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use object_store::{
    ClientConfigKey, ClientOptions,
    client::{
        HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
        HttpResponse, HttpResponseBody, HttpService,
    },
};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may wait for its answer's head; object_store retries on timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

#[derive(Debug, Default)]
pub struct HyperConnector;

impl HttpConnector for HyperConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let allow_http = options
            .get_config_value(&ClientConfigKey::AllowHttp)
            .is_some_and(|value| value.eq_ignore_ascii_case("true"));
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|err| object_store::Error::Generic {
                store: "S3",
                source: Box::new(err),
            })?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(HttpClient::new(HyperService { client, allow_http }))
    }
}

#[derive(Debug)]
struct HyperService {
    client: Client<Connector, HttpRequestBody>,
    allow_http: bool,
}

#[async_trait::async_trait]
impl HttpService for HyperService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        if !self.allow_http && request.uri().scheme_str() != Some("https") {
            return Err(HttpError::new(
                HttpErrorKind::Unknown,
                std::io::Error::other("plain http refused: set AWS_ALLOW_HTTP=true to allow it"),
            ));
        }
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|elapsed| HttpError::new(HttpErrorKind::Timeout, elapsed))?
            .map_err(|err| {
                let kind = if err.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Request
                };
                HttpError::new(kind, err)
            })?;
        let (parts, body) = response.into_parts();
        let body = body.map_err(|err| HttpError::new(HttpErrorKind::Interrupted, err));
        Ok(HttpResponse::from_parts(
            parts,
            HttpResponseBody::new(SyncBody(sync_wrapper::SyncWrapper::new(body))),
        ))
    }
}

/// hyper's body is Send but not Sync, which object_store asks of a response body; it is only
/// ever polled through `&mut`, so wrapping it is enough.
struct SyncBody<B>(sync_wrapper::SyncWrapper<B>);

impl<B> http_body::Body for SyncBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(self.get_mut().0.get_mut()).poll_frame(cx)
    }
}
