//! The `describe` op's network half: the engine makes the question (a downscaled JPEG and a
//! prompt, [`Describing`]); this module asks an OpenAI-compatible vision endpoint
//! (`POST {endpoint}/chat/completions` with the image as a `data:` URL) and turns the answer
//! into the op's analysis report.
//!
//! What a shared AI service needs from a fleet of workers:
//!
//! * **Bounded concurrency**: at most `--ai-concurrency` requests in flight per filter.
//! * **A rate limit**: requests leave at most `--ai-requests-per-minute` a minute, evenly
//!   spaced; a 429 holds every request of this filter for its `Retry-After`.
//! * **Retries**: 408, 429 and 5xx answers, time-outs and refused connections are retried up
//!   to `--ai-max-retries` times, after `Retry-After` (seconds or an HTTP date, at most
//!   [`MAX_RETRY_AFTER`]) or an exponential back-off with jitter.
//! * **A time-out** per request (`--ai-timeout-secs`), and the task's own deadline over all.
//! * **An answer cache** in the JetStream KV bucket `pixelmesh-describe`, shared by the
//!   filters and keyed by the BLAKE3 hash of the model, the prompt and the JPEG sent: a
//!   re-run of the same image and op costs no request.
//! * **A clear per-image error**: a refusal (any other 4xx) fails that image with the
//!   service's status and message; a service that stays unavailable fails it after the
//!   task's attempts.
//!
//! The API key comes from `PIXELMESH_AI_API_KEY` only (never a flag, so it is not in a process
//! list), is held in [`ApiKey`] (whose `Debug` hides it) and is cut out of every text taken
//! from the service, since some services echo the key they refused.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use async_nats::jetstream::kv;
use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};

use crate::engine::Describing;

/// The KV bucket of answers, shared by every filter.
pub const CACHE_BUCKET: &str = "pixelmesh-describe";
/// How long a cached answer is kept.
const CACHE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The cache's size on the NATS server. KV buckets refuse writes when full, so past it new
/// answers go uncached (and are asked again) until old ones expire.
const CACHE_MAX_BYTES: i64 = 256 * 1024 * 1024;
/// Longest `Retry-After` honoured: a service asking for longer is treated as down for now.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest caption kept, in characters, and longest tag.
const MAX_CAPTION_CHARS: usize = 1000;
const MAX_TAG_CHARS: usize = 64;
/// The tokens the model may answer with: a sentence and a few tags fit easily.
const MAX_TOKENS: u32 = 400;
/// The key's environment variable.
pub const KEY_VARIABLE: &str = "PIXELMESH_AI_API_KEY";
const USER_AGENT: &str = concat!("pixelmesh/", env!("CARGO_PKG_VERSION"), " (describe)");

/// Where `describe` asks, and how hard. Without an endpoint, the filter does not offer
/// `describe` (its heartbeat says so, and the gateway refuses such jobs while no filter
/// does).
#[derive(Debug, Clone, Args)]
#[group(id = "ai_settings")]
pub struct AiSettings {
    /// Base URL of an OpenAI-compatible API with vision (chat completions), e.g.
    /// `https://api.openai.com/v1` or a local server's `http://ollama:11434/v1`. The key
    /// is read from PIXELMESH_AI_API_KEY.
    #[arg(long = "ai-endpoint", env = "PIXELMESH_AI_ENDPOINT")]
    pub ai_endpoint: Option<String>,
    /// The model asked.
    #[arg(
        long = "ai-model",
        env = "PIXELMESH_AI_MODEL",
        default_value = "gpt-4o-mini"
    )]
    pub ai_model: String,
    /// Requests in flight at once from this filter.
    #[arg(
        long = "ai-concurrency",
        env = "PIXELMESH_AI_CONCURRENCY",
        default_value_t = 4
    )]
    pub ai_concurrency: usize,
    /// Requests a minute from this filter, evenly spaced.
    #[arg(
        long = "ai-requests-per-minute",
        env = "PIXELMESH_AI_REQUESTS_PER_MINUTE",
        default_value_t = 60
    )]
    pub ai_requests_per_minute: u32,
    /// How long one request may take, in seconds.
    #[arg(
        long = "ai-timeout-secs",
        env = "PIXELMESH_AI_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub ai_timeout_secs: u64,
    /// Retries of a request answered 408, 429 or 5xx, or not answered.
    #[arg(
        long = "ai-max-retries",
        env = "PIXELMESH_AI_MAX_RETRIES",
        default_value_t = 4
    )]
    pub ai_max_retries: u32,
}

impl Default for AiSettings {
    /// The flags' defaults, without reading the environment.
    fn default() -> Self {
        pixelmesh_common::config::flag_defaults()
    }
}

/// The API key. Its `Debug` says only whether there is one.
#[derive(Clone)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// From [`KEY_VARIABLE`]; `None` when unset or empty (a local server may need none).
    pub fn from_env() -> Option<ApiKey> {
        std::env::var(KEY_VARIABLE)
            .ok()
            .map(|key| key.trim().to_string())
            .filter(|key| !key.is_empty())
            .map(|key| ApiKey(key.into()))
    }

    /// `text` with the key cut out.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&*self.0, "[redacted]")
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> ApiKey {
        ApiKey(key.into())
    }
}

/// What the model said of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub caption: String,
    pub tags: Vec<String>,
    /// The model that answered, as the service named it.
    pub model: String,
    /// Taken from the answer cache, not asked.
    pub cached: bool,
}

impl Description {
    /// The op's report among the analysis reports.
    pub fn report(&self, asked: &Describing) -> String {
        json!({
            "op": "describe",
            "width": asked.width,
            "height": asked.height,
            "caption": self.caption,
            "tags": self.tags,
            "model": self.model,
            "cached": self.cached,
        })
        .to_string()
    }
}

/// A [`Description`] as the answer cache keeps it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CachedAnswer {
    caption: String,
    tags: Vec<String>,
    model: String,
}

/// Why an image has no description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    /// The service refused this image or this request (a 4xx other than 408 and 429), or
    /// answered with something that is not a description: asking again will not help.
    #[error("the AI service refused: {0}")]
    Refused(String),
    /// The service stayed unavailable through every retry: a later attempt may succeed.
    #[error("the AI service is unavailable: {0}")]
    Unavailable(String),
}

/// Spaces requests evenly, and holds them all after a 429.
///
/// Hand-written rather than `governor`: a dozen lines, and a 429's `Retry-After` must hold the
/// whole filter's schedule, which a plain rate limiter cannot be told.
struct Pace {
    every: Duration,
    next: Mutex<Instant>,
}

impl Pace {
    fn new(per_minute: u32) -> Pace {
        Pace {
            every: Duration::from_secs(60) / per_minute.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's turn.
    async fn turn(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.every;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }

    /// No request leaves before `until`.
    async fn hold(&self, until: Instant) {
        let mut next = self.next.lock().await;
        *next = (*next).max(until);
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Asks the configured endpoint; one per filter, shared by its tasks.
pub struct Describer {
    url: String,
    model: String,
    key: Option<ApiKey>,
    client: HttpClient,
    slots: Semaphore,
    pace: Pace,
    timeout: Duration,
    max_retries: u32,
    cache: Option<kv::Store>,
}

// By hand: the client has no `Debug`, and the key shows as `ApiKey([redacted])`.
impl std::fmt::Debug for Describer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Describer")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// One request's outcome, before retries decide.
enum Attempt {
    Answered(Description),
    Refused(String),
    /// Worth another try, after the service's `Retry-After` if it gave one.
    Retry {
        why: String,
        after: Option<Duration>,
        throttled: bool,
    },
}

impl Describer {
    /// A describer for `settings`, or `None` without an endpoint. `cache` is the shared answer
    /// bucket ([`cache_bucket`]).
    pub fn new(
        settings: &AiSettings,
        key: Option<ApiKey>,
        cache: Option<kv::Store>,
    ) -> anyhow::Result<Option<Describer>> {
        let Some(endpoint) = settings.ai_endpoint.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if endpoint.is_empty() {
            return Ok(None);
        }
        let base = url::Url::parse(endpoint)
            .map_err(|err| anyhow::anyhow!("--ai-endpoint {endpoint:?}: {err}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            anyhow::bail!("--ai-endpoint {endpoint:?}: want an http(s) URL with a host");
        }
        if settings.ai_model.trim().is_empty() {
            anyhow::bail!("--ai-model is empty");
        }
        // Not the fetcher's checked resolver: the endpoint is the operator's, often a model
        // server on the private network.
        let https = crate::fetch::https(HttpConnector::new())?;
        Ok(Some(Describer {
            url: format!("{}/chat/completions", base.as_str().trim_end_matches('/')),
            model: settings.ai_model.trim().to_string(),
            key,
            client: Client::builder(TokioExecutor::new()).build(https),
            slots: Semaphore::new(settings.ai_concurrency.max(1)),
            pace: Pace::new(settings.ai_requests_per_minute),
            timeout: Duration::from_secs(settings.ai_timeout_secs.max(1)),
            max_retries: settings.ai_max_retries,
            cache,
        }))
    }

    /// The model's caption and tags for `asked`, from the cache or the service.
    pub async fn describe(&self, asked: &Describing) -> Result<Description, DescribeError> {
        let key = self.cache_key(asked);
        if let Some(found) = self.cached(&key).await {
            metrics::counter!("pixelmesh_filter_describe_total", "outcome" => "cached")
                .increment(1);
            return Ok(found);
        }
        let answer = self.ask(asked).await;
        let outcome = match &answer {
            Ok(_) => "answered",
            Err(DescribeError::Refused(_)) => "refused",
            Err(DescribeError::Unavailable(_)) => "unavailable",
        };
        metrics::counter!("pixelmesh_filter_describe_total", "outcome" => outcome).increment(1);
        let answer = answer?;
        self.remember(&key, &answer).await;
        Ok(answer)
    }

    /// The cache key: the BLAKE3 of the model, the prompt and the image sent, in hex.
    fn cache_key(&self, asked: &Describing) -> String {
        let mut hasher = blake3::Hasher::new();
        for part in [self.model.as_bytes(), asked.prompt.as_bytes()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update(&asked.jpeg);
        hasher.finalize().to_hex().to_string()
    }

    async fn cached(&self, key: &str) -> Option<Description> {
        let cache = self.cache.as_ref()?;
        // A cache that does not answer only costs a request.
        let entry = cache.get(key).await.ok()??;
        let answer: CachedAnswer = serde_json::from_slice(&entry).ok()?;
        Some(Description {
            caption: answer.caption,
            tags: answer.tags,
            model: answer.model,
            cached: true,
        })
    }

    async fn remember(&self, key: &str, answer: &Description) {
        let Some(cache) = &self.cache else { return };
        let value = CachedAnswer {
            caption: answer.caption.clone(),
            tags: answer.tags.clone(),
            model: answer.model.clone(),
        };
        let value = serde_json::to_vec(&value).expect("strings serialise");
        if let Err(err) = cache.put(key, value.into()).await {
            tracing::warn!(error = %err, "describe answer not cached");
        }
    }

    /// Asks, retrying what may pass on another try.
    async fn ask(&self, asked: &Describing) -> Result<Description, DescribeError> {
        let body = Bytes::from(self.request_body(asked).to_string());
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = {
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                self.pace.turn().await;
                self.attempt(body.clone(), asked).await
            };
            match attempt {
                Attempt::Answered(description) => return Ok(description),
                Attempt::Refused(why) => return Err(DescribeError::Refused(why)),
                Attempt::Retry {
                    why,
                    after,
                    throttled,
                } => {
                    if tries > self.max_retries {
                        return Err(DescribeError::Unavailable(format!(
                            "{why} (after {tries} tries)"
                        )));
                    }
                    if after.is_some_and(|after| after > MAX_RETRY_AFTER) {
                        return Err(DescribeError::Unavailable(format!(
                            "{why}, and it asks to wait longer than {} s",
                            MAX_RETRY_AFTER.as_secs()
                        )));
                    }
                    let wait = after.unwrap_or_else(|| backoff(tries));
                    tracing::info!(
                        tries,
                        wait_ms = wait.as_millis() as u64,
                        reason = %why,
                        "describe request retried"
                    );
                    if throttled {
                        self.pace.hold(Instant::now() + wait).await;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The chat-completions request: the prompt and the image as a `data:` URL.
    fn request_body(&self, asked: &Describing) -> Value {
        let image = base64::engine::general_purpose::STANDARD.encode(&asked.jpeg);
        json!({
            "model": self.model,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "text", "text": asked.prompt},
                    {"type": "image_url", "image_url": {"url": format!("data:image/jpeg;base64,{image}")}},
                ],
            }],
        })
    }

    async fn attempt(&self, body: Bytes, asked: &Describing) -> Attempt {
        let mut request = Request::post(&self.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, USER_AGENT);
        if let Some(key) = &self.key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", key.0));
        }
        let request = request
            .body(Full::new(body))
            .expect("a request built from valid parts");
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|collected| collected.to_bytes());
            Ok::<_, hyper_util::client::legacy::Error>((parts, bytes))
        };
        let (parts, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Attempt::Retry {
                    why: format!("no answer within {} s", self.timeout.as_secs()),
                    after: None,
                    throttled: false,
                };
            }
            Ok(Err(err)) => {
                return Attempt::Retry {
                    why: self.redact(&format!("request failed: {}", error_chain(&err))),
                    after: None,
                    throttled: false,
                };
            }
            Ok(Ok(answer)) => answer,
        };
        let status = parts.status;
        let Ok(bytes) = bytes else {
            return Attempt::Retry {
                why: format!("{status}: the answer was cut off or over {MAX_ANSWER_BYTES} bytes"),
                after: None,
                throttled: false,
            };
        };
        if status.is_success() {
            return match parse_answer(&bytes, asked.max_tags) {
                Ok((caption, tags, model)) => Attempt::Answered(Description {
                    caption,
                    tags,
                    model: model.unwrap_or_else(|| self.model.clone()),
                    cached: false,
                }),
                Err(why) => Attempt::Refused(self.redact(&format!("{status}: {why}"))),
            };
        }
        let why = self.redact(&format!("{status}: {}", service_message(&bytes)));
        if retried(status) {
            Attempt::Retry {
                why,
                after: retry_after(&parts.headers, SystemTime::now()),
                throttled: status == StatusCode::TOO_MANY_REQUESTS,
            }
        } else {
            Attempt::Refused(why)
        }
    }

    fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(key) => key.redact(text),
            None => text.to_string(),
        }
    }
}

/// The shared answer cache, created by the first filter that needs it.
pub async fn cache_bucket(
    js: &async_nats::jetstream::Context,
    replicas: u16,
) -> anyhow::Result<kv::Store> {
    pixelmesh_common::nats::kv_bucket(
        js,
        kv::Config {
            bucket: CACHE_BUCKET.into(),
            history: 1,
            max_age: CACHE_TTL,
            max_bytes: CACHE_MAX_BYTES,
            max_value_size: 64 * 1024,
            num_replicas: usize::from(replicas),
            ..Default::default()
        },
    )
    .await
}

fn retried(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Exponential back-off with jitter after the `tries`-th failure: about 0.5 s, 1 s, 2 s, …,
/// at most 20 s.
fn backoff(tries: u32) -> Duration {
    let base = Duration::from_millis(500) * 2u32.saturating_pow(tries.saturating_sub(1).min(6));
    let base = base.min(Duration::from_secs(20));
    // Up to a quarter more, so filters throttled together do not come back together.
    let jitter = (ulid::Ulid::new().random() as u64) % (base.as_millis() as u64 / 4 + 1);
    base + Duration::from_millis(jitter)
}

/// `Retry-After` as seconds or an HTTP date; `None` without a readable one.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// The service's own words from an error body: OpenAI's `{"error": {"message"}}`, else the
/// body's start.
fn service_message(bytes: &[u8]) -> String {
    let from_json =
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|value| match &value["error"] {
                Value::String(message) => Some(message.clone()),
                error => error["message"].as_str().map(str::to_string),
            });
    let message = from_json.unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    match message.trim() {
        "" => "no message".to_string(),
        message => message.to_string(),
    }
}

/// The caption, tags and model of a chat-completions answer. The model is asked for JSON;
/// an answer in prose (or JSON in a code fence) is still taken, the prose as the caption.
fn parse_answer(
    bytes: &[u8],
    max_tags: usize,
) -> Result<(String, Vec<String>, Option<String>), String> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|err| format!("the answer is not chat-completions json ({err})"))?;
    let content = value["choices"][0]["message"]["content"]
        .as_str()
        .ok_or("the answer has no choices[0].message.content")?;
    let model = value["model"].as_str().map(str::to_string);
    let inner = content
        .trim()
        .trim_start_matches("```json")
        .trim_start_matches("```")
        .trim_end_matches("```")
        .trim();
    let (caption, tags) = match serde_json::from_str::<Value>(inner) {
        Ok(Value::Object(object)) => {
            let caption = object
                .get("caption")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let tags = object
                .get("tags")
                .and_then(Value::as_array)
                .map(|tags| {
                    tags.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            (caption, tags)
        }
        _ => (content.to_string(), Vec::new()),
    };
    let caption = clean(&caption, MAX_CAPTION_CHARS);
    if caption.is_empty() {
        return Err("the answer has no caption".into());
    }
    let mut kept: Vec<String> = Vec::new();
    for tag in tags {
        let tag = clean(&tag, MAX_TAG_CHARS).to_lowercase();
        if !tag.is_empty() && !kept.contains(&tag) && kept.len() < max_tags {
            kept.push(tag);
        }
    }
    Ok((caption, kept, model))
}

/// One line without control characters, at most `max` characters.
fn clean(text: &str, max: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max)
        .collect()
}

/// An error and its sources, which say what actually failed (refused, reset, …).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, net::SocketAddr, sync::Mutex as StdMutex};

    use axum::{Json, Router, extract::State, http::HeaderMap as Headers, routing::post};

    use super::*;

    const KEY: &str = "sk-test-0123456789abcdef";

    /// One scripted answer: status, extra headers, body.
    type Answer = (u16, Vec<(&'static str, String)>, String);

    /// What the stand-in answers, in turn, and what it was asked.
    #[derive(Default)]
    struct Script {
        answers: StdMutex<VecDeque<Answer>>,
        asked: StdMutex<Vec<(Option<String>, Value)>>,
    }

    /// A chat-completions answer whose content is `content`.
    fn completion(content: &str) -> String {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "vision-test-1",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
        })
        .to_string()
    }

    /// A local server speaking the chat-completions API, answering from `script`.
    async fn stand_in(script: Arc<Script>) -> SocketAddr {
        async fn answer(
            State(script): State<Arc<Script>>,
            headers: Headers,
            Json(body): Json<Value>,
        ) -> axum::response::Response {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            script.asked.lock().unwrap().push((auth, body));
            let (status, extra, body) = script.answers.lock().unwrap().pop_front().unwrap_or((
                500,
                Vec::new(),
                "script ran out".into(),
            ));
            let mut response = axum::response::Response::new(axum::body::Body::from(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (name, value) in extra {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(script);
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn describer(addr: SocketAddr, max_retries: u32) -> Describer {
        let settings = AiSettings {
            ai_endpoint: Some(format!("http://{addr}/v1/")),
            ai_model: "vision-test".into(),
            ai_requests_per_minute: 6000,
            ai_max_retries: max_retries,
            ai_timeout_secs: 5,
            ..AiSettings::default()
        };
        Describer::new(&settings, Some(ApiKey::from(KEY)), None)
            .unwrap()
            .unwrap()
    }

    fn asked() -> Describing {
        Describing {
            report: 0,
            position: 2,
            prompt: "Describe, with at most 3 tags.".into(),
            max_tags: 3,
            jpeg: vec![0xff, 0xd8, 0xff, 0xe0, 1, 2, 3],
            width: 640,
            height: 480,
        }
    }

    fn script(answers: Vec<Answer>) -> Arc<Script> {
        Arc::new(Script {
            answers: StdMutex::new(answers.into()),
            ..Script::default()
        })
    }

    #[tokio::test]
    async fn an_answer_becomes_a_caption_and_tags() {
        let content = r#"{"caption": "A red kite over a beach.", "tags": ["Kite", "beach", "kite", "sky", "sea"]}"#;
        let script = script(vec![(200, Vec::new(), completion(content))]);
        let describer = describer(stand_in(script.clone()).await, 0);
        let answer = describer.describe(&asked()).await.unwrap();
        assert_eq!(answer.caption, "A red kite over a beach.");
        // Lowercased, without repeats, at most the op's count.
        assert_eq!(answer.tags, ["kite", "beach", "sky"]);
        assert_eq!(answer.model, "vision-test-1");
        assert!(!answer.cached);
        let asked_of = script.asked.lock().unwrap();
        let (auth, body) = &asked_of[0];
        assert_eq!(auth.as_deref(), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!(body["model"], "vision-test");
        let content = &body["messages"][0]["content"];
        assert_eq!(content[0]["text"], "Describe, with at most 3 tags.");
        let url = content[1]["image_url"]["url"].as_str().unwrap();
        assert_eq!(url, "data:image/jpeg;base64,/9j/4AECAw==");
        let report: Value = serde_json::from_str(&answer.report(&asked())).unwrap();
        assert_eq!(report["op"], "describe");
        assert_eq!(report["width"], 640);
        assert_eq!(report["tags"], json!(["kite", "beach", "sky"]));
    }

    #[tokio::test]
    async fn a_429_waits_its_retry_after_and_a_5xx_is_retried() {
        let script = script(vec![
            (
                429,
                vec![("retry-after", "1".into())],
                r#"{"error": {"message": "slow down"}}"#.into(),
            ),
            (503, Vec::new(), "busy".into()),
            (
                200,
                Vec::new(),
                completion(r#"{"caption": "A cup.", "tags": ["cup"]}"#),
            ),
        ]);
        let describer = describer(stand_in(script.clone()).await, 4);
        let started = Instant::now();
        let answer = describer.describe(&asked()).await.unwrap();
        assert_eq!(answer.caption, "A cup.");
        assert_eq!(script.asked.lock().unwrap().len(), 3);
        // The service's Retry-After was honoured: the second request waited for it.
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_service_that_stays_unavailable_fails_after_the_retries() {
        let script = script(vec![
            (502, Vec::new(), "bad gateway".into()),
            (502, Vec::new(), "bad gateway".into()),
        ]);
        let describer = describer(stand_in(script.clone()).await, 1);
        let err = describer.describe(&asked()).await.unwrap_err();
        assert_eq!(
            err,
            DescribeError::Unavailable("502 Bad Gateway: bad gateway (after 2 tries)".into())
        );
        assert_eq!(script.asked.lock().unwrap().len(), 2);
        // A Retry-After past the cap is not waited for.
        let script = super::tests::script(vec![(
            429,
            vec![("retry-after", "86400".into())],
            "quota".into(),
        )]);
        let describer = self::describer(stand_in(script).await, 3);
        let err = describer.describe(&asked()).await.unwrap_err().to_string();
        assert!(err.contains("longer than 120 s"), "{err}");
    }

    #[tokio::test]
    async fn a_refusal_fails_at_once_and_never_shows_the_key() {
        // As OpenAI does: the refused key is quoted back.
        let echo = format!(r#"{{"error": {{"message": "Incorrect API key provided: {KEY}."}}}}"#);
        let script = script(vec![(401, Vec::new(), echo)]);
        let describer = describer(stand_in(script.clone()).await, 4);
        let err = describer.describe(&asked()).await.unwrap_err();
        assert_eq!(
            err,
            DescribeError::Refused(
                "401 Unauthorized: Incorrect API key provided: [redacted].".into()
            )
        );
        assert_eq!(
            script.asked.lock().unwrap().len(),
            1,
            "a refusal is not retried"
        );
        assert!(!err.to_string().contains(KEY));
        assert!(!format!("{describer:?}").contains(KEY));
        assert!(!format!("{:?}", ApiKey::from(KEY)).contains(KEY));
        // An answer that is no description is refused too, with what was wrong.
        let script = super::tests::script(vec![(200, Vec::new(), "{}".into())]);
        let describer = self::describer(stand_in(script).await, 4);
        let err = describer.describe(&asked()).await.unwrap_err().to_string();
        assert!(err.contains("no choices[0].message.content"), "{err}");
    }

    #[test]
    fn answers_in_prose_or_fences_are_taken() {
        let fenced = completion("```json\n{\"caption\": \"Two dogs.\", \"tags\": [\"dog\"]}\n```");
        let (caption, tags, _) = parse_answer(fenced.as_bytes(), 10).unwrap();
        assert_eq!(
            (caption.as_str(), tags),
            ("Two dogs.", vec!["dog".to_string()])
        );
        let prose = completion("A harbour\nat dusk.");
        let (caption, tags, _) = parse_answer(prose.as_bytes(), 10).unwrap();
        assert_eq!((caption.as_str(), tags.len()), ("A harbour at dusk.", 0));
        assert!(parse_answer(completion("  ").as_bytes(), 10).is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(header("7"), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(header(&later), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(header(&earlier), Some(Duration::ZERO));
        assert_eq!(header("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn the_cache_key_covers_model_prompt_and_image() {
        let describer = Describer::new(
            &AiSettings {
                ai_endpoint: Some("http://127.0.0.1:9/v1".into()),
                ..AiSettings::default()
            },
            None,
            None,
        )
        .unwrap()
        .unwrap();
        let base = describer.cache_key(&asked());
        assert_eq!(base, describer.cache_key(&asked()));
        let mut other = asked();
        other.prompt.push('!');
        assert_ne!(base, describer.cache_key(&other));
        let mut other = asked();
        other.jpeg.push(0);
        assert_ne!(base, describer.cache_key(&other));
        assert_eq!(base.len(), 64);
    }

    #[test]
    fn endpoints_are_checked_at_start() {
        let with = |endpoint: &str| {
            Describer::new(
                &AiSettings {
                    ai_endpoint: Some(endpoint.into()),
                    ..AiSettings::default()
                },
                None,
                None,
            )
        };
        assert!(with("").unwrap().is_none());
        assert!(
            with("ftp://host/v1")
                .unwrap_err()
                .to_string()
                .contains("http(s)")
        );
        assert!(with("not a url").is_err());
        assert!(with("https://api.example.com/v1").unwrap().is_some());
    }
}
