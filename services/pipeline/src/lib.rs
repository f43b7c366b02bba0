//! The pipeline model, shared by every role: what users may ask for and what it will cost,
//! without any codec.
//!
//! * [`ops`] — the operations, one file per op with its parameters, validation, JSON, text and
//!   protobuf forms, field specs for clients, cost, tile halo and pixel code, listed once in
//!   the registry (`ops/mod.rs`); [`ops::Pipeline`] parses and validates a whole pipeline;
//! * [`budget`] — what a pipeline will cost on an image, estimated before it runs, and the
//!   deadline that stops it while it runs;
//! * [`tiles`] — which images are split into tiles, and where the tiles lie;
//! * [`formats`] — the image formats and how an output is encoded;
//! * [`bitmap`] — the decoded image the ops work on.
//!
//! The gateway and the scheduler validate and budget with this crate alone; the filter adds
//! the codecs and the worker. Nothing here depends on an image codec.

pub mod bitmap;
pub mod budget;
pub mod formats;
pub mod ops;
pub mod tiles;

#[cfg(any(test, feature = "testing"))]
pub mod testdata;

pub use bitmap::Bitmap;
pub use formats::FileFormat;
