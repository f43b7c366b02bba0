//! The one pixelmesh binary.
//!
//! * [`cli`] — flags and environment variables for every role, and `main`;
//! * [`roles`] — the static role → start-function table; `all` is every role at once;
//! * [`health`] — `pixelmesh health`, the container health probe;
//! * [`nats_server`] — starting a local `nats-server` for `all` when none answers.

pub mod cli;
pub mod health;
pub mod nats_server;
pub mod roles;
