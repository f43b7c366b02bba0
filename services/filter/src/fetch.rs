//! Fetching URL inputs. Workers download them themselves, so fetching scales with the
//! workers and the gateway never holds remote bodies.
//!
//! A URL comes from a user, so the fetch must not become a way into the mesh's own network
//! (SSRF). Every address a host name resolves to is checked before any connection, by the
//! client's own resolver, so the address checked is the address connected to (no DNS
//! rebinding window); hosts written as IP addresses are checked before the request; every
//! redirect hop is checked again (scheme, host allow-list, address). Loopback, private,
//! link-local, shared, documentation, multicast and other non-public addresses are refused
//! unless allowed by [`FetchSettings`].
//!
//! Bounded: a connect timeout, a whole-fetch timeout, a redirect count, and the input size
//! limit enforced while the body streams (and from `Content-Length` before it does).

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use clap::Args;
use http::header;
use http_body_util::{BodyExt as _, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::TokioExecutor,
};
use ipnet::IpNet;
use url::Url;

/// How long connecting to a host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const USER_AGENT: &str = concat!("pixelmesh/", env!("CARGO_PKG_VERSION"), " (image fetch)");

/// Where URL inputs may be fetched from, and how long and how far a fetch may go.
#[derive(Debug, Clone, Args)]
#[group(id = "fetch_settings")]
pub struct FetchSettings {
    /// Fetch URL inputs from private, loopback, link-local and other non-public addresses
    /// too. Off by default: a URL must not reach into the mesh's own network.
    #[arg(long = "fetch-allow-private", env = "PIXELMESH_FETCH_ALLOW_PRIVATE")]
    pub allow_private: bool,
    /// Non-public networks URL inputs may still be fetched from, comma-separated CIDRs (e.g.
    /// `10.20.0.0/16` for an internal image server).
    #[arg(
        long = "fetch-allow-networks",
        env = "PIXELMESH_FETCH_ALLOW_NETWORKS",
        value_delimiter = ','
    )]
    pub allow_networks: Vec<IpNet>,
    /// The only hosts URL inputs may be fetched from, comma-separated: `images.example.com`,
    /// or `*.example.com` for its subdomains. Empty: any host (public addresses only, unless
    /// allowed above).
    #[arg(
        long = "fetch-allow-hosts",
        env = "PIXELMESH_FETCH_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub allow_hosts: Vec<String>,
    /// How long fetching one URL input may take, redirects and body included, in seconds.
    #[arg(
        long = "fetch-timeout-secs",
        env = "PIXELMESH_FETCH_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub timeout_secs: u64,
    /// Most redirects followed for one URL input.
    #[arg(
        long = "fetch-max-redirects",
        env = "PIXELMESH_FETCH_MAX_REDIRECTS",
        default_value_t = 5
    )]
    pub max_redirects: usize,
}

impl Default for FetchSettings {
    /// The flags' defaults, without reading the environment.
    fn default() -> Self {
        pixelmesh_common::config::flag_defaults()
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Will fail again: refused by policy, 4xx, not an image, too big.
    Permanent(String),
    /// May pass: timeouts, connection errors, 5xx, 429.
    Transient(String),
}

/// A refusal by the policy, found again in the client's error chain to tell it apart from
/// network trouble.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// What may be fetched.
#[derive(Debug, Clone)]
struct Policy {
    allow_private: bool,
    allow_networks: Vec<IpNet>,
    /// Lowercase; `*.` prefixed entries match subdomains.
    allow_hosts: Vec<String>,
}

impl Policy {
    /// Scheme, credentials, host allow-list, and the address when the host is one.
    fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!(
                "scheme {:?} refused: only http and https are fetched",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused("urls with credentials are not fetched".into()));
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => {
                self.check_host_allowed(&ip.to_string())?;
                return self.check_ip(IpAddr::V4(ip));
            }
            Some(url::Host::Ipv6(ip)) => {
                self.check_host_allowed(&ip.to_string())?;
                return self.check_ip(IpAddr::V6(ip));
            }
            None => return Err(Refused("url has no host".into())),
        };
        self.check_host_allowed(&host)
    }

    fn check_host_allowed(&self, host: &str) -> Result<(), Refused> {
        let host = host.trim_end_matches('.');
        let allowed = self.allow_hosts.is_empty()
            || self
                .allow_hosts
                .iter()
                .any(|entry| match entry.strip_prefix("*.") {
                    Some(domain) => host
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                    None => host == entry,
                });
        if allowed {
            Ok(())
        } else {
            Err(Refused(format!(
                "host {host} is not on the fetch allow-list"
            )))
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.allow_networks.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match non_public(ip) {
            Some(kind) if !self.allow_private => Err(Refused(format!(
                "address {ip} refused: it is {kind} (private addresses are not fetched unless allowed)"
            ))),
            _ => Ok(()),
        }
    }
}

/// What kind of non-public address `ip` is, if it is one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => non_public_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let segments = ip.segments();
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address that decides.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return non_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            if segments[0] == 0x2002 {
                let [a, b] = segments[1].to_be_bytes();
                let [c, d] = segments[2].to_be_bytes();
                return non_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            non_public_v6(ip)
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified address",
        (127, _, _) => "a loopback address",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "a private address",
        (169, 254, _) => "a link-local address",
        (100, 64..=127, _) => "a shared (carrier-grade NAT) address",
        (192, 0, 0) => "an IETF protocol address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved address",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if first & 0xffc0 == 0xfe80 {
        "a link-local address"
    } else if first & 0xffc0 == 0xfec0 {
        // Deprecated, but some networks still route it privately.
        "a site-local address"
    } else if first & 0xfe00 == 0xfc00 {
        "a private (unique local) address"
    } else if first & 0xff00 == 0xff00 {
        "a multicast address"
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        "a documentation address"
    } else if first == 0x2001 && ip.segments()[1] == 0 {
        // Teredo (2001::/32) tunnels to an IPv4 host that the address hides.
        "a Teredo tunnel address"
    } else if ip.segments()[..3] == [0x64, 0xff9b, 1] {
        // Local-use NAT64 (64:ff9b:1::/48): translated inside the operator's network.
        "a local-use NAT64 address"
    } else if ip.segments()[..6] == [0, 0, 0, 0, 0, 0] {
        // Deprecated IPv4-compatible addresses (::a.b.c.d).
        "an IPv4-compatible address"
    } else {
        return None;
    })
}

/// Resolves host names and keeps only the addresses the policy allows, so the client can
/// only connect where the policy says.
#[derive(Clone)]
struct CheckedResolver(Arc<Policy>);

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|addr| match policy.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(err) => {
                        refusal.get_or_insert(err);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let reason =
                    refusal.map_or_else(|| "it has no addresses".to_string(), |refused| refused.0);
                return Err(Refused(format!("host {host} refused: {reason}")).into());
            }
            Ok(allowed.into_iter())
        })
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector<CheckedResolver>>, Empty<Bytes>>;

/// `http` with TLS over it: https with Mozilla's roots built in, plain http too, HTTP/1.1,
/// a connect timeout. The URL fetcher's and the AI client's.
pub(crate) fn https<R>(
    mut http: HttpConnector<R>,
) -> anyhow::Result<HttpsConnector<HttpConnector<R>>> {
    // https too: the TLS layer hands plain http back to this connector.
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// An HTTP client that fetches URL inputs under the policy.
#[derive(Clone)]
pub struct Fetcher {
    client: HttpClient,
    policy: Arc<Policy>,
    timeout: Duration,
    max_redirects: usize,
}

impl Fetcher {
    pub fn new(settings: &FetchSettings) -> anyhow::Result<Self> {
        let policy = Arc::new(Policy {
            allow_private: settings.allow_private,
            allow_networks: settings.allow_networks.clone(),
            allow_hosts: settings
                .allow_hosts
                .iter()
                .map(|host| host.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|host| !host.is_empty())
                .collect(),
        });
        let http = HttpConnector::new_with_resolver(CheckedResolver(policy.clone()));
        let client = Client::builder(TokioExecutor::new()).build(https(http)?);
        Ok(Fetcher {
            client,
            policy,
            timeout: Duration::from_secs(settings.timeout_secs.max(1)),
            max_redirects: settings.max_redirects,
        })
    }

    /// The image at `url`, at most `max_bytes` long, following at most the allowed number
    /// of redirects, each checked, all within the fetch timeout.
    pub async fn fetch(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        let url =
            Url::parse(url).map_err(|err| FetchError::Permanent(format!("invalid url: {err}")))?;
        match tokio::time::timeout(self.timeout, self.follow(url, max_bytes)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Transient(format!(
                "fetch timed out after {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn follow(&self, mut url: Url, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        self.policy
            .check_url(&url)
            .map_err(|refused| FetchError::Permanent(refused.0))?;
        let mut redirects = 0;
        loop {
            let request = http::Request::get(url.as_str())
                .header(header::ACCEPT, "image/*")
                .header(header::USER_AGENT, USER_AGENT)
                .body(Empty::new())
                .map_err(|err| FetchError::Permanent(format!("invalid url {url}: {err}")))?;
            let response = self.client.request(request).await.map_err(classify)?;
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response.headers().get(header::LOCATION)
            {
                if redirects == self.max_redirects {
                    return Err(FetchError::Permanent(format!(
                        "more than {} redirects",
                        self.max_redirects
                    )));
                }
                redirects += 1;
                let location = location.to_str().unwrap_or_default();
                url = url.join(location).map_err(|err| {
                    FetchError::Permanent(format!("redirect to {location:?}: {err}"))
                })?;
                self.policy.check_url(&url).map_err(|refused| {
                    FetchError::Permanent(format!("redirect to {url}: {refused}"))
                })?;
                continue;
            }
            return read_image(response, &url, max_bytes).await;
        }
    }
}

/// The body of a final answer, if it is a successful image within the limit.
async fn read_image(
    response: http::Response<hyper::body::Incoming>,
    url: &Url,
    max_bytes: u64,
) -> Result<Vec<u8>, FetchError> {
    let status = response.status();
    if !status.is_success() {
        let message = format!("fetching {url}: http status {status}");
        return Err(
            if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
                FetchError::Transient(message)
            } else {
                FetchError::Permanent(message)
            },
        );
    }
    if let Some(content_type) = response.headers().get(header::CONTENT_TYPE) {
        let content_type = content_type.to_str().unwrap_or("?");
        let essence = pixelmesh_common::media::essence(content_type);
        if !(essence.starts_with("image/") || essence == "application/octet-stream") {
            return Err(FetchError::Permanent(format!(
                "content type {content_type:?} is not an image"
            )));
        }
    }
    let too_big = || FetchError::Permanent(format!("over the input limit of {max_bytes} bytes"));
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|len| len.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes) {
        return Err(too_big());
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|err| FetchError::Transient(format!("reading the body: {err}")))?;
        if let Some(chunk) = frame.data_ref() {
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_big());
            }
            bytes.extend_from_slice(chunk);
        }
    }
    Ok(bytes)
}

/// A client error as a refusal (permanent) or network trouble (transient), with its causes.
fn classify(err: hyper_util::client::legacy::Error) -> FetchError {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return FetchError::Permanent(refused.0.clone());
        }
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    FetchError::Transient(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{
        Router,
        http::{StatusCode, header},
        response::{IntoResponse, Redirect},
        routing::get,
    };

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n pretend pixels";

    /// A real HTTP server on `ip` (port 0), serving what the tests fetch.
    async fn serve(ip: &str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let big = vec![0u8; 4096];
        let app = Router::new()
            .route(
                "/a.png",
                get(|| async { ([(header::CONTENT_TYPE, "image/png")], PNG) }),
            )
            .route(
                "/page",
                get(|| async { ([(header::CONTENT_TYPE, "text/html")], "<html></html>") }),
            )
            .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
            .route("/broken", get(|| async { StatusCode::BAD_GATEWAY }))
            .route(
                "/big",
                get(move || async move { ([(header::CONTENT_TYPE, "image/png")], big) }),
            )
            .route(
                "/stream",
                get(|| async {
                    // No Content-Length: the limit must hold while the body streams.
                    let chunks = futures::stream::iter(
                        (0..64).map(|_| Ok::<_, std::io::Error>(vec![7u8; 1024])),
                    );
                    axum::body::Body::from_stream(chunks).into_response()
                }),
            )
            .route(
                "/hop/{n}",
                get(
                    |axum::extract::Path(n): axum::extract::Path<u32>| async move {
                        if n == 0 {
                            Redirect::temporary("/a.png")
                        } else {
                            Redirect::temporary(&format!("/hop/{}", n - 1))
                        }
                    },
                ),
            )
            .route(
                "/to/{target}",
                get(
                    |axum::extract::Path(target): axum::extract::Path<String>| async move {
                        Redirect::temporary(&format!("http://{target}/a.png"))
                    },
                ),
            )
            .route("/hang", get(std::future::pending::<()>));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn fetcher(settings: FetchSettings) -> Fetcher {
        Fetcher::new(&settings).expect("fetcher")
    }

    /// Allows the test server's own address, and nothing else that is not public.
    fn allowing(addr: SocketAddr) -> FetchSettings {
        FetchSettings {
            allow_networks: vec![IpNet::from(addr.ip())],
            timeout_secs: 2,
            ..Default::default()
        }
    }

    fn permanent(result: Result<Vec<u8>, FetchError>) -> String {
        match result {
            Err(FetchError::Permanent(message)) => message,
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    fn transient(result: Result<Vec<u8>, FetchError>) -> String {
        match result {
            Err(FetchError::Transient(message)) => message,
            other => panic!("expected a transient failure, got {other:?}"),
        }
    }

    #[test]
    fn non_public_addresses_are_named() {
        let kind = |ip: &str| non_public(ip.parse().expect("ip"));
        assert_eq!(kind("127.0.0.1"), Some("a loopback address"));
        assert_eq!(kind("10.1.2.3"), Some("a private address"));
        assert_eq!(kind("172.31.255.1"), Some("a private address"));
        assert_eq!(kind("192.168.0.10"), Some("a private address"));
        assert_eq!(kind("169.254.169.254"), Some("a link-local address"));
        assert_eq!(
            kind("100.100.1.1"),
            Some("a shared (carrier-grade NAT) address")
        );
        assert_eq!(kind("0.0.0.0"), Some("an unspecified address"));
        assert_eq!(kind("224.0.0.1"), Some("a multicast address"));
        assert_eq!(kind("::1"), Some("a loopback address"));
        assert_eq!(kind("::"), Some("an unspecified address"));
        assert_eq!(kind("fe80::1"), Some("a link-local address"));
        assert_eq!(kind("fd00::1"), Some("a private (unique local) address"));
        assert_eq!(kind("::ffff:127.0.0.1"), Some("a loopback address"));
        assert_eq!(kind("::ffff:10.0.0.1"), Some("a private address"));
        assert_eq!(kind("64:ff9b::a9fe:a9fe"), Some("a link-local address"));
        assert_eq!(kind("2002:c0a8:0101::1"), Some("a private address"));
        assert_eq!(kind("fec0::1"), Some("a site-local address"));
        assert_eq!(kind("2001:0:4136:e378::1"), Some("a Teredo tunnel address"));
        assert_eq!(kind("64:ff9b:1::a00:1"), Some("a local-use NAT64 address"));
        assert_eq!(kind("2001:db8::1"), Some("a documentation address"));
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "1.1.1.1",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "64:ff9b::808:808",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
    }

    #[test]
    fn the_host_allow_list_matches_names_and_subdomains() {
        let policy = Policy {
            allow_private: false,
            allow_networks: Vec::new(),
            allow_hosts: vec!["images.example.com".into(), "*.cdn.example.net".into()],
        };
        let check = |url: &str| policy.check_url(&Url::parse(url).expect("url"));
        assert!(check("https://images.example.com/a.jpg").is_ok());
        assert!(check("https://IMAGES.example.com./a.jpg").is_ok());
        assert!(check("https://eu.cdn.example.net/a.jpg").is_ok());
        assert!(check("https://cdn.example.net/a.jpg").is_err());
        assert!(check("https://evilcdn.example.net/a.jpg").is_err());
        assert!(check("https://example.com/a.jpg").is_err());
        assert!(check("https://images.example.com.evil.org/a.jpg").is_err());
        let refused = check("ftp://images.example.com/a.jpg").expect_err("scheme");
        assert!(refused.0.contains("scheme"), "{refused}");
        let refused = check("https://user:pw@images.example.com/a.jpg").expect_err("credentials");
        assert!(refused.0.contains("credentials"), "{refused}");
    }

    #[tokio::test]
    async fn fetches_an_image_from_an_allowed_network() {
        let addr = serve("127.0.0.1").await;
        let fetcher = fetcher(allowing(addr));
        let bytes = fetcher
            .fetch(&format!("http://{addr}/a.png"), 1 << 20)
            .await
            .expect("fetch");
        assert_eq!(bytes, PNG);
        // Within the redirect limit.
        let bytes = fetcher
            .fetch(&format!("http://{addr}/hop/4"), 1 << 20)
            .await
            .expect("redirects");
        assert_eq!(bytes, PNG);
    }

    #[tokio::test]
    async fn loopback_and_private_targets_are_refused_unless_allowed() {
        let addr = serve("127.0.0.1").await;
        let strict = fetcher(FetchSettings::default());
        let message = permanent(strict.fetch(&format!("http://{addr}/a.png"), 1 << 20).await);
        assert!(
            message.contains("127.0.0.1") && message.contains("loopback"),
            "{message}"
        );
        // A name that resolves to loopback is refused by the resolver, before connecting.
        let message = permanent(
            strict
                .fetch(&format!("http://localhost:{}/a.png", addr.port()), 1 << 20)
                .await,
        );
        assert!(
            message.contains("localhost") && message.contains("loopback"),
            "{message}"
        );
        let message = permanent(
            strict
                .fetch("http://169.254.169.254/latest/meta-data/", 1 << 20)
                .await,
        );
        assert!(message.contains("link-local"), "{message}");
        let message = permanent(strict.fetch("http://[::1]/", 1 << 20).await);
        assert!(message.contains("loopback"), "{message}");
        let message = permanent(strict.fetch("file:///etc/passwd", 1 << 20).await);
        assert!(message.contains("scheme"), "{message}");

        let open = fetcher(FetchSettings {
            allow_private: true,
            ..Default::default()
        });
        assert_eq!(
            open.fetch(&format!("http://localhost:{}/a.png", addr.port()), 1 << 20)
                .await
                .expect("allowed"),
            PNG
        );
    }

    #[tokio::test]
    async fn a_redirect_is_checked_like_the_url_it_came_from() {
        let addr = serve("127.0.0.1").await;
        // 127.0.0.2 is loopback too, but outside the one allowed address.
        let other = serve("127.0.0.2").await;
        let fetcher = fetcher(allowing(addr));
        let message = permanent(
            fetcher
                .fetch(&format!("http://{addr}/to/{other}"), 1 << 20)
                .await,
        );
        assert!(
            message.contains("127.0.0.2") && message.contains("loopback"),
            "{message}"
        );
        let message = permanent(
            fetcher
                .fetch(&format!("http://{addr}/hop/6"), 1 << 20)
                .await,
        );
        assert!(message.contains("more than 5 redirects"), "{message}");
    }

    #[tokio::test]
    async fn bad_answers_fail_with_their_reason() {
        let addr = serve("127.0.0.1").await;
        let fetcher = fetcher(allowing(addr));
        let url = |path: &str| format!("http://{addr}{path}");
        let message = permanent(fetcher.fetch(&url("/missing"), 1 << 20).await);
        assert!(message.contains("404"), "{message}");
        let message = permanent(fetcher.fetch(&url("/page"), 1 << 20).await);
        assert!(
            message.contains("text/html") && message.contains("not an image"),
            "{message}"
        );
        let message = permanent(fetcher.fetch(&url("/big"), 1000).await);
        assert!(message.contains("1000 bytes"), "{message}");
        let message = permanent(fetcher.fetch(&url("/stream"), 10_000).await);
        assert!(message.contains("10000 bytes"), "{message}");
        assert_eq!(
            fetcher
                .fetch(&url("/stream"), 1 << 20)
                .await
                .expect("fits")
                .len(),
            64 * 1024
        );
        let message = transient(fetcher.fetch(&url("/broken"), 1 << 20).await);
        assert!(message.contains("502"), "{message}");
        let message = transient(fetcher.fetch(&url("/hang"), 1 << 20).await);
        assert!(message.contains("timed out after 2 s"), "{message}");
    }
}
