//! The filter role: the worker that turns input images into outputs.
//!
//! * [`ops`] — the operations: one file per op with its parameters, validation and pixel code;
//!   [`ops::Pipeline`] parses and validates a pipeline from protobuf or JSON;
//! * [`codec`] — decoding with limits checked from the header first, and encoding;
//! * [`engine`] — `process`: bytes in, pipeline applied, bytes out.

pub mod codec;
pub mod engine;
pub mod ops;
