//! Pieces every pixelmesh role shares.
//!
//! * [`config`] — command-line/environment settings more than one role reads;
//! * [`grpc`] — the one server helper (health, reflection, tracing, graceful stop) and clients;
//! * [`media`] — media types of `Content-Type` headers;
//! * [`metrics`] — the Prometheus recorder, `/metrics`, and per-request counts and latencies;
//! * [`nats`] — stream, subject, consumer and bucket names in one place, and their setup;
//! * [`shutdown`] — the process stop signal;
//! * [`telemetry`] — logging, OTLP trace export and W3C trace-context propagation;
//! * [`time`] — wall-clock milliseconds as the protos carry them;
//! * `testing` (feature `testing`) — what the crates' tests share: a property-test runner
//!   that reports its case counts, and PNG chunks written by hand.

pub mod config;
pub mod grpc;
pub mod media;
pub mod metrics;
pub mod nats;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
