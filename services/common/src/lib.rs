//! Pieces every pixelmesh role shares.
//!
//! * [`config`] — command-line/environment settings more than one role reads;
//! * [`grpc`] — the one server helper (health, reflection, tracing, graceful stop) and clients;
//! * [`media`] — media types of `Content-Type` headers;
//! * [`metrics`] — the Prometheus recorder, `/metrics`, and per-request counts and latencies;
//! * [`nats`] — stream, subject, consumer and bucket names in one place, and their setup;
//! * [`shutdown`] — the process stop signal;
//! * [`telemetry`] — logging, OTLP trace export and W3C trace-context propagation;
//! * [`time`] — wall-clock milliseconds as the protos carry them.

pub mod config;
pub mod grpc;
pub mod media;
pub mod metrics;
pub mod nats;
pub mod shutdown;
pub mod telemetry;
pub mod time;
