//! The per-image budget: what a pipeline will cost, known before it runs, and a deadline that
//! stops it while it runs.
//!
//! One small request can ask for minutes of CPU (a 60 KB upload resized up to 10000x10000 and
//! sharpened eight times at sigma 100) or gigabytes of memory (a 100-megapixel 16-bit PNG).
//! So:
//!
//! * [`Pipeline::estimate`] predicts, from the size an input's header declares and the ops'
//!   costs, the most pixel memory alive at once and the single-core CPU time; [`Budget`]
//!   refuses what is over its limits, naming the limit, the estimate and the stage that costs
//!   most ([`OverBudget`]). Sizes follow [`crate::ops::Op::output_size`] along the pipeline;
//!   each op's numbers live in its own file (`cost`), the decoders' and encoders' in `codecs`.
//! * [`with_deadline`] sets a wall-clock deadline for the work of one image on the current
//!   thread, and [`expired`] tells the engine and the long per-row loops (blur, sharpen, edge,
//!   pixelate, rotate) when to give up, so a task over its time frees its core.
//!
//! The estimate is an upper bound, not a promise: memory within a small factor of what the
//! allocator is really asked for (the test `tests/budget_memory.rs` holds it to 3x on real
//! photos), and CPU from coefficients measured on the development machine, rounded up (see
//! each `cost`). Not counted: the encoded input and output bytes the worker holds (their sizes
//! are known to it), and the allocator's own overhead.
//!
//! # Calibration
//!
//! The time coefficients (nanoseconds per pixel, per kernel tap, per unit of blur radius) come
//! from the release build of `examples/bench-one` on the development machine (2 cores of an
//! AMD EPYC with AVX2 but not AVX-512, shared with other builds, load 1.1 to 3.2), on the
//! 5K corpus photo downscaled to 3840x2160 (`bench-one --out 4k.jpg
//! safe-landing-5120x2880.jpg "resize:w=3840/format:jpeg,q=95"`) and that image in every
//! format, an RGBA image (a 30 degree rotation of it) and a 10000x1200 strip:
//!
//! ```text
//! cargo build --release -p pixelmesh-filter --example bench-one
//! bench-one --mode ops --runs 3 4k.jpg "blur:sigma=100"      # each op
//! bench-one --mode decode --runs 5 4k.png ""                 # each decoder
//! bench-one --mode encode --runs 3 4k.jpg "format:png"       # each encoder
//! ```
//!
//! Medians on the 4K image, with the machine at load 1.1 to 1.8: blur 23 ms at sigma 2, 162
//! at 10, 545 at 30, 1800 at 100 (219 ns a pixel, as on the 10000-wide strip); sharpen at
//! sigma 1 59 ms; resize to 1920 16 ms, up to 7680 121 ms; rotate by 90 65 ms, by 30 265 ms;
//! edge 104 ms; saturation 52 ms, hue 44 ms; JPEG decode 79 ms. At load 2.6 to 3.2 the same
//! ran up to twice as long; the coefficients sit above the quiet figures (by about a quarter
//! for the blur) and mostly at or above the loaded ones. Decoders per pixel (loaded): JPEG 10
//! (18 progressive), PNG 17 (RGB), lossy WebP 52, GIF 14, BMP 3.4, TIFF 1.4; encoders: JPEG
//! q95 10.6 (progressive 32 to 51), PNG 6.1 / 39 / 131 (compression 1 / 6 / 9; quiet, since libdeflate), WebP 175 lossy
//! and 14 lossless, GIF 300, BMP 4.5, TIFF 1.4. A machine with AVX-512 runs the blur faster
//! (BENCHMARKS.md), so the estimate stays an upper bound there; one with SSE2 only runs it
//! about twice as slow as AVX2, so it may fall short there.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, Instant};

use pixelmesh_proto::ErrorCode;

mod codecs;

use crate::formats::{self, Encoding, FileFormat};
use crate::ops::Pipeline;

/// Default [`Budget::max_memory_bytes`]: 2 GiB. A 100-megapixel photo (the decoder's default
/// pixel limit) through ordinary ops is estimated at about 1 GB from its declared size alone
/// (0.6 GB once its header says JPEG); a 100-megapixel 16-bit RGBA PNG at 1.2 GB when known
/// (measured 1.2 GB) and 2.0 GB from its size and depth alone. Bigger estimates come from
/// upscaling or rotating big images, or stacked copies.
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 2 << 30;

/// Default [`Budget::max_cpu_ms`]: 60 s of estimated single-core time. A 100-megapixel photo
/// resized to 1920, blurred at sigma 2 and encoded as JPEG is estimated at about 7 s (the
/// decode most of it), re-encoded as PNG at 33 s, and the costliest single op on it, a blur at
/// sigma 100, at 27 s (one fits, two do not); the issue's resize of a small upload to
/// 10000x10000 and eight sharpens at sigma 100 at 224 s.
pub const DEFAULT_MAX_CPU_MS: u64 = 60_000;

/// Memory every stage may hold beside its images: decoder and encoder state, row buffers,
/// the resizer's and zlib's tables. Measured in tests/budget_memory.rs, the images' bytes
/// alone fell short of the peak by a few bytes to 62 KB.
const FIXED_BYTES: u64 = 512 << 10;

/// How many rows the long per-row loops process between two looks at the deadline: each look
/// reads the clock (tens of nanoseconds), each row of a wide image takes microseconds.
pub(crate) const ROWS_PER_CHECK: usize = 16;

/// The image's size and layout at one point of a pipeline, as the estimate follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub width: u64,
    pub height: u64,
    /// Bytes per pixel of the bitmap: 3 (RGB) or 4 (RGBA).
    pub channels: u64,
}

impl Shape {
    pub fn new(width: u64, height: u64, channels: u64) -> Shape {
        Shape {
            width,
            height,
            channels,
        }
    }

    pub fn pixels(self) -> u64 {
        self.width.saturating_mul(self.height)
    }

    pub fn bytes(self) -> u64 {
        self.pixels().saturating_mul(self.channels)
    }

    /// The same image with `channels`.
    pub fn with_channels(self, channels: u64) -> Shape {
        Shape { channels, ..self }
    }
}

/// What one stage of a pipeline costs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    /// Pixel memory alive at the stage's peak, its input image included.
    pub peak_bytes: u64,
    /// Single-core time in nanoseconds.
    pub cpu_ns: f64,
}

impl Cost {
    /// An op that works in its input's buffer, at `ns_per_pixel`.
    pub fn in_place(image: Shape, ns_per_pixel: f64) -> Cost {
        Cost {
            peak_bytes: image.bytes(),
            cpu_ns: ns(image.pixels(), ns_per_pixel),
        }
    }

    /// An op that writes a new image, at `ns_per_pixel` of its output, while the input lives.
    pub fn copying(input: Shape, output: Shape, ns_per_pixel: f64) -> Cost {
        Cost {
            peak_bytes: input.bytes().saturating_add(output.bytes()),
            cpu_ns: ns(output.pixels(), ns_per_pixel),
        }
    }
}

/// `count` times `ns_each`, as a float: estimates need no exact integers, and huge counts
/// must not overflow.
pub fn ns(count: u64, ns_each: f64) -> f64 {
    count as f64 * ns_each
}

/// Where a pipeline spends: decoding, one of its ops, or encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Decode,
    Op { position: usize, name: &'static str },
    Encode,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Decode => f.write_str("decoding"),
            Stage::Op { position, name } => write!(f, "op {position} ({name})"),
            Stage::Encode => f.write_str("encoding"),
        }
    }
}

/// What a pipeline is estimated to cost on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The most pixel memory alive at once, in bytes.
    pub peak_bytes: u64,
    /// Single-core CPU time in milliseconds, rounded up.
    pub cpu_ms: u64,
    /// The stage at whose peak memory is highest.
    pub peak_stage: Stage,
    /// The stage that takes the most CPU, and how much.
    pub slowest_stage: Stage,
    pub slowest_cpu_ms: u64,
    /// The input size the estimate was made for, for messages.
    pub width: u32,
    pub height: u32,
}

impl Estimate {
    /// The larger of two estimates, field by field (each with its own stage).
    fn max(self, other: Estimate) -> Estimate {
        let memory = if other.peak_bytes > self.peak_bytes {
            other
        } else {
            self
        };
        let cpu = if other.cpu_ms > self.cpu_ms {
            other
        } else {
            self
        };
        Estimate {
            peak_bytes: memory.peak_bytes,
            peak_stage: memory.peak_stage,
            cpu_ms: cpu.cpu_ms,
            slowest_stage: cpu.slowest_stage,
            slowest_cpu_ms: cpu.slowest_cpu_ms,
            // The size as the caller gave it.
            width: self.width,
            height: self.height,
        }
    }

    /// This estimate of one frame, for `frames` frames processed in turn (see
    /// [`Pipeline::frames_processed`]): the CPU of each, and beside the one frame's peak, every
    /// other frame alive at its canvas size as decoded RGBA and again as output, which is how
    /// an animation is held until it is encoded. Output frames are never counted larger than
    /// input ones, an overestimate for a pipeline that shrinks them.
    pub fn for_frames(self, frames: u32) -> Estimate {
        if frames <= 1 {
            return self;
        }
        let others = u64::from(frames - 1);
        let frame_bytes = u64::from(self.width) * u64::from(self.height) * 4;
        Estimate {
            peak_bytes: self
                .peak_bytes
                .saturating_add(others.saturating_mul(frame_bytes).saturating_mul(2)),
            cpu_ms: self.cpu_ms.saturating_mul(u64::from(frames)),
            slowest_cpu_ms: self.slowest_cpu_ms.saturating_mul(u64::from(frames)),
            ..self
        }
    }
}

/// The largest logo accepted, in pixels: a logo is scaled down to a fraction of the image it
/// marks, so more than this (a 4000x4000 square) only costs memory.
pub const MAX_LOGO_PIXELS: u64 = 16_000_000;

/// What is known of an input before decoding it: the filter's codec reads it from the header
/// (`codec::Probe::input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    /// Upright size.
    pub width: u32,
    pub height: u32,
    /// Bytes per pixel of the decoder's own buffer; 0 is taken as 1.
    pub bytes_per_pixel: u32,
    pub alpha: bool,
    /// `None` when only the size is known: the estimate then assumes the costliest format
    /// that size and depth could be.
    pub format: Option<FileFormat>,
    /// Extra memory the decoder is known to need (a progressive JPEG's coefficients).
    pub decoder_bytes: Option<u64>,
}

impl Pipeline {
    /// The estimate for an input whose header declares `width` x `height` and
    /// `bytes_per_pixel` (the decoder's buffer at the stored depth: 8 for 16-bit RGBA, 3 for
    /// JPEG; 0 = unknown, taken as 4), when nothing else is known of it, as at submit.
    ///
    /// Conservative where that matters: the format is taken as the costliest one with that
    /// depth (so no JPEG shrink-on-load, and the slowest decoder and encoder when the pipeline
    /// names no output format), an alpha channel is assumed unless the depth rules it out,
    /// and since an EXIF orientation may swap the sides, the larger of both readings is kept.
    /// Each watermark logo is taken at the largest size a worker accepts
    /// ([`MAX_LOGO_PIXELS`]).
    pub fn estimate(&self, width: u32, height: u32, bytes_per_pixel: u32) -> Estimate {
        let bytes_per_pixel = if bytes_per_pixel == 0 {
            4
        } else {
            bytes_per_pixel
        };
        let input = Input {
            width,
            height,
            bytes_per_pixel,
            alpha: may_have_alpha(bytes_per_pixel),
            format: None,
            decoder_bytes: None,
        };
        let upright = estimate_upright(self, &input);
        if width == height {
            return upright;
        }
        let turned = estimate_upright(
            self,
            &Input {
                width: height,
                height: width,
                ..input
            },
        );
        Estimate {
            width,
            height,
            ..upright.max(turned)
        }
    }

    /// The estimate for an input whose header was read (the codec's `probe`): its format,
    /// upright size, layout and (for JPEG) shrink-on-load and coefficient memory are known, so
    /// this is tighter than [`Pipeline::estimate`].
    pub fn estimate_probed(&self, input: &Input) -> Estimate {
        estimate_upright(
            self,
            &Input {
                bytes_per_pixel: input.bytes_per_pixel.max(1),
                ..*input
            },
        )
    }
}

/// Whether a decoder buffer of `bytes_per_pixel` may hold alpha: not for 1 (grey), 3 (RGB) or
/// 6 (16-bit RGB); 2, 4 and 8 can be grey+alpha or RGBA.
fn may_have_alpha(bytes_per_pixel: u32) -> bool {
    !matches!(bytes_per_pixel, 1 | 3 | 6 | 12)
}

fn estimate_upright(pipeline: &Pipeline, input: &Input) -> Estimate {
    let mut tally = Tally::default();
    let full = (input.width, input.height);
    // The engine decodes a JPEG smaller when the pipeline starts by shrinking.
    let decoded = match (input.format, pipeline.shrink_on_load()) {
        (Some(FileFormat::Jpeg), Some((w, h))) => {
            let headroom = formats::SHRINK_HEADROOM;
            let min = (w.saturating_mul(headroom), h.saturating_mul(headroom));
            let shrink = u32::from(formats::jpeg_shrink(full, min));
            (full.0.div_ceil(shrink), full.1.div_ceil(shrink))
        }
        _ => full,
    };
    let channels = if input.alpha { 4 } else { 3 };
    let mut image = Shape::new(u64::from(decoded.0), u64::from(decoded.1), channels);
    tally.add(
        Stage::Decode,
        codecs::decode_cost(
            input.format,
            Shape::new(u64::from(full.0), u64::from(full.1), channels),
            image,
            input.bytes_per_pixel,
            input.decoder_bytes,
        ),
    );
    let shrunk = decoded != full;
    let context = Context {
        logo_pixels: MAX_LOGO_PIXELS,
    };
    for (i, op) in pipeline.ops().iter().enumerate() {
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        // As in the engine: the first op after a shrunk decode makes the size it would have
        // made from the full image.
        let (width, height) = if i == 0 && shrunk {
            op.output_size(full.0, full.1)
        } else {
            op.output_size(narrow(image.width), narrow(image.height))
        };
        let output = Shape::new(width, height, op.output_channels(image));
        tally.add(
            Stage::Op {
                position: i + 1,
                name: op.name(),
            },
            op.cost(image, output, &context),
        );
        image = output;
    }
    let encoding = match (pipeline.output_format(), input.format) {
        (Some(format), _) => Some(format.encoding()),
        (None, Some(format)) => Some(Encoding::new(format)),
        (None, None) => None,
    };
    tally.add(Stage::Encode, codecs::encode_cost(encoding.as_ref(), image));
    // Logos are decoded before the pipeline starts and held to its end.
    let logos = pipeline.logos().len() as u64;
    let held = logos.saturating_mul(context.logo_pixels.saturating_mul(4));
    tally.finish(input.width, input.height, held)
}

/// What an op's cost depends on besides the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The pixel count assumed for a watermark's logo.
    pub logo_pixels: u64,
}

#[derive(Debug, Default)]
struct Tally {
    peak_bytes: u64,
    peak_stage: Option<Stage>,
    cpu_ns: f64,
    slowest_ns: f64,
    slowest_stage: Option<Stage>,
}

impl Tally {
    fn add(&mut self, stage: Stage, cost: Cost) {
        if self.peak_stage.is_none() || cost.peak_bytes > self.peak_bytes {
            self.peak_bytes = cost.peak_bytes;
            self.peak_stage = Some(stage);
        }
        self.cpu_ns += cost.cpu_ns;
        if self.slowest_stage.is_none() || cost.cpu_ns > self.slowest_ns {
            self.slowest_ns = cost.cpu_ns;
            self.slowest_stage = Some(stage);
        }
    }

    fn finish(self, width: u32, height: u32, held_bytes: u64) -> Estimate {
        let ms = |ns: f64| (ns / 1e6).ceil().min(u64::MAX as f64) as u64;
        Estimate {
            peak_bytes: self
                .peak_bytes
                .saturating_add(held_bytes)
                .saturating_add(FIXED_BYTES),
            cpu_ms: ms(self.cpu_ns),
            peak_stage: self.peak_stage.unwrap_or(Stage::Decode),
            slowest_stage: self.slowest_stage.unwrap_or(Stage::Decode),
            slowest_cpu_ms: ms(self.slowest_ns),
            width,
            height,
        }
    }
}

/// What one image's pipeline may cost; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_memory_bytes: u64,
    pub max_cpu_ms: u64,
}

impl Default for Budget {
    /// [`DEFAULT_MAX_MEMORY_BYTES`] and [`DEFAULT_MAX_CPU_MS`].
    fn default() -> Self {
        Budget {
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_cpu_ms: DEFAULT_MAX_CPU_MS,
        }
    }
}

impl Budget {
    /// No limits.
    pub const UNLIMITED: Budget = Budget {
        max_memory_bytes: 0,
        max_cpu_ms: 0,
    };

    /// Whether `estimate` fits; memory is checked first.
    pub fn check(&self, estimate: &Estimate) -> Result<(), OverBudget> {
        if self.max_memory_bytes != 0 && estimate.peak_bytes > self.max_memory_bytes {
            return Err(OverBudget::Memory {
                width: estimate.width,
                height: estimate.height,
                bytes: estimate.peak_bytes,
                stage: estimate.peak_stage,
                limit: self.max_memory_bytes,
            });
        }
        if self.max_cpu_ms != 0 && estimate.cpu_ms > self.max_cpu_ms {
            return Err(OverBudget::Cpu {
                width: estimate.width,
                height: estimate.height,
                ms: estimate.cpu_ms,
                stage: estimate.slowest_stage,
                stage_ms: estimate.slowest_cpu_ms,
                limit: self.max_cpu_ms,
            });
        }
        Ok(())
    }
}

/// A pipeline estimated over a [`Budget`]; `ResourceExhausted`, since the same image and
/// pipeline would be refused again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error(
        "the pipeline would need about {} of memory for a {width}x{height} image (at its peak during {stage}), over the limit of {} per image",
        Bytes(*bytes),
        Bytes(*limit)
    )]
    Memory {
        width: u32,
        height: u32,
        bytes: u64,
        stage: Stage,
        limit: u64,
    },
    #[error(
        "the pipeline would need about {} of cpu for a {width}x{height} image ({stage} alone {}), over the limit of {} per image",
        Seconds(*ms),
        Seconds(*stage_ms),
        Seconds(*limit)
    )]
    Cpu {
        width: u32,
        height: u32,
        ms: u64,
        stage: Stage,
        stage_ms: u64,
        limit: u64,
    },
}

impl From<OverBudget> for pixelmesh_proto::Error {
    fn from(err: OverBudget) -> Self {
        pixelmesh_proto::Error::new(ErrorCode::ResourceExhausted, err.to_string())
    }
}

/// Bytes for people: `1.2 GiB`, `640 MiB`, `12 KiB`.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} bytes", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{} {}", short(value), UNITS[unit])
    }
}

/// Milliseconds as seconds for people: `94 s`, `2.5 s`, `0.05 s`.
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} s", short(self.0 as f64 / 1000.0))
    }
}

/// A number with two significant digits below 10 and none beyond, without trailing zeros.
fn short(value: f64) -> String {
    let text = if value >= 10.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A wall-clock limit for one image's work: when it ends, and how long it was (for the
/// message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    /// `limit` from now.
    pub fn after(limit: Duration) -> Deadline {
        Deadline::since(Instant::now(), limit)
    }

    /// `limit` from `started`, e.g. when the task was received, so time spent fetching counts.
    pub fn since(started: Instant, limit: Duration) -> Deadline {
        Deadline {
            // Far enough to never come, rather than a panic on overflow.
            at: started
                .checked_add(limit)
                .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600)),
            limit,
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

thread_local! {
    // Thread-local, not passed down: the ops' signatures stay about pixels, and a worker runs
    // each image's CPU work in its own blocking closure on one thread.
    static DEADLINE: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// Runs `work` with `deadline` as the current thread's deadline (`None`: none), restoring the
/// previous one afterwards, also if `work` panics.
pub fn with_deadline<T>(deadline: Option<Deadline>, work: impl FnOnce() -> T) -> T {
    struct Restore(Option<Deadline>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|current| current.set(self.0));
        }
    }
    let _restore = Restore(DEADLINE.with(|current| current.replace(deadline)));
    work()
}

/// The current thread's deadline, if any.
pub fn deadline() -> Option<Deadline> {
    DEADLINE.with(Cell::get)
}

/// Whether the current thread's deadline has passed; false without one (and then without
/// reading the clock).
pub fn expired() -> bool {
    deadline().is_some_and(|deadline| Instant::now() >= deadline.at)
}

/// What a long op returns when it stops at the deadline; the engine reports the deadline,
/// not this.
pub fn stopped() -> String {
    "stopped at the task's deadline".to_string()
}

/// Formats a duration for messages: `120 s`, `0.05 s`.
pub fn seconds(duration: &Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms >= 1.0 {
        Seconds(ms.round() as u64).to_string()
    } else {
        format!("{} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(text: &str) -> Pipeline {
        Pipeline::from_text(text).unwrap()
    }

    const MP100: (u32, u32) = (12_000, 8_334);

    /// The issue's example: a small upload resized up to 10000x10000, then eight sharpens.
    fn issue_example() -> Pipeline {
        let sharpens = ["sharpen:sigma=100"; 8].join("/");
        pipeline(&format!("resize:w=10000,h=10000,upscale=true/{sharpens}"))
    }

    #[test]
    fn the_issues_example_is_refused_by_the_defaults() {
        // Without a format op the output's format is the input's, unknown here, so the
        // estimate takes the slowest encoder; refused either way.
        let estimate = issue_example().estimate(100, 100, 3);
        assert!(Budget::default().check(&estimate).is_err(), "{estimate:?}");
        let jpeg = pipeline(&format!("{}/format:jpeg", issue_example().to_text()));
        let estimate = jpeg.estimate(100, 100, 3);
        let err = Budget::default().check(&estimate).unwrap_err();
        assert!(estimate.cpu_ms > DEFAULT_MAX_CPU_MS, "{estimate:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("the pipeline would need about ")
                && message.contains(" of cpu for a 100x100 image (op ")
                && message.contains("(sharpen) alone ")
                && message.ends_with("over the limit of 60 s per image"),
            "{message}"
        );
        let proto: pixelmesh_proto::Error = err.into();
        assert_eq!(proto.code, ErrorCode::ResourceExhausted);
        // Each sharpen at sigma 100 on 100 megapixels is seconds of work.
        assert!(estimate.slowest_cpu_ms > 5_000, "{estimate:?}");
        assert!(matches!(
            estimate.slowest_stage,
            Stage::Op {
                name: "sharpen",
                ..
            }
        ));
    }

    #[test]
    fn ordinary_pipelines_on_a_100_megapixel_photo_fit_the_defaults() {
        let (w, h) = MP100;
        for text in [
            "resize:w=1920/blur:sigma=2/format:jpeg,q=85",
            "blur:sigma=2/format:jpeg",
            "thumbnail:w=256/format:webp,q=80",
            "resize:w=4000/sharpen/brightness:1.1/format:png",
            "crop:w=6000,h=4000,g=centre/grayscale/format:jpeg",
            "rotate:90/format:jpeg",
            "",
        ] {
            let estimate = pipeline(text).estimate(w, h, 3);
            assert_eq!(Budget::default().check(&estimate), Ok(()), "{text}");
        }
        // A 16-bit RGBA PNG of the same size, re-encoded: the decode is the peak.
        let estimate = pipeline("resize:w=1920/format:jpeg").estimate(w, h, 8);
        assert_eq!(Budget::default().check(&estimate), Ok(()));
        assert_eq!(estimate.peak_stage, Stage::Decode);
    }

    #[test]
    fn a_100_megapixel_16_bit_png_needs_at_least_what_it_was_measured_at() {
        // The issue measured 1.2 GB of filter memory: the 16-bit buffer (8 bytes a pixel) and
        // its 8-bit RGBA conversion (4) alive together.
        let (w, h) = (10_000, 10_000);
        let estimate = pipeline("resize:w=1920/format:png").estimate(w, h, 8);
        assert!(estimate.peak_bytes >= 1_200_000_000, "{estimate:?}");
        let probe = Input {
            format: Some(FileFormat::Png),
            width: w,
            height: h,
            bytes_per_pixel: 8,
            alpha: true,
            decoder_bytes: Some(0),
        };
        let probed = pipeline("resize:w=1920/format:png").estimate_probed(&probe);
        assert!(probed.peak_bytes >= 1_200_000_000, "{probed:?}");
        assert!(probed.peak_bytes <= estimate.peak_bytes);
    }

    #[test]
    fn estimates_grow_with_sigma_and_area() {
        let cost = |text: &str, w: u32, h: u32| pipeline(text).estimate(w, h, 3);
        let mut last = cost("blur:sigma=0.5", 2000, 1000);
        for sigma in [1.0, 2.0, 5.0, 5.4, 10.0, 30.0, 100.0] {
            let next = cost(&format!("blur:sigma={sigma}"), 2000, 1000);
            assert!(
                next.cpu_ms >= last.cpu_ms,
                "sigma {sigma}: {next:?} {last:?}"
            );
            assert!(next.peak_bytes >= last.peak_bytes, "sigma {sigma}");
            last = next;
        }
        // Linear in sigma, roughly: the op at 100 costs several times what it does at 10.
        let base = cost("format:bmp", 4000, 4000).cpu_ms;
        let (ten, hundred) = (
            cost("sharpen:sigma=10/format:bmp", 4000, 4000).cpu_ms - base,
            cost("sharpen:sigma=100/format:bmp", 4000, 4000).cpu_ms - base,
        );
        assert!(hundred > 4 * ten, "{ten} {hundred}");
        let mut last = cost("sharpen:sigma=3/edge/rotate:30", 100, 100);
        for side in [200, 1000, 3000, 10_000] {
            let next = cost("sharpen:sigma=3/edge/rotate:30", side, side);
            assert!(next.cpu_ms >= last.cpu_ms && next.peak_bytes > last.peak_bytes);
            last = next;
        }
        // The upscale's area counts, not the input's.
        let small = cost("resize:w=1000,upscale=true/blur:sigma=4", 100, 100);
        let big = cost("resize:w=8000,upscale=true/blur:sigma=4", 100, 100);
        assert!(big.peak_bytes > 50 * small.peak_bytes);
        assert!(big.cpu_ms > 50 * small.cpu_ms.max(1));
    }

    #[test]
    fn either_orientation_is_covered() {
        // 400 wide by 4000 tall, or the other way round after its EXIF orientation: a resize
        // to 4000 wide is ten times bigger one way.
        let p = pipeline("resize:w=4000,upscale=true");
        let a = p.estimate(400, 4000, 3);
        let b = p.estimate(4000, 400, 3);
        assert_eq!((a.peak_bytes, a.cpu_ms), (b.peak_bytes, b.cpu_ms));
        assert!(a.peak_bytes >= 4000 * 40_000 * 3);
        assert_eq!((a.width, a.height), (400, 4000));
    }

    #[test]
    fn unknown_depth_is_taken_as_rgba_and_limits_of_zero_are_off() {
        let p = pipeline("blur:sigma=3");
        assert_eq!(p.estimate(800, 600, 0), p.estimate(800, 600, 4));
        assert!(p.estimate(800, 600, 4).peak_bytes > p.estimate(800, 600, 3).peak_bytes);
        let huge = issue_example().estimate(10_000, 10_000, 8);
        assert_eq!(Budget::UNLIMITED.check(&huge), Ok(()));
        let memory_only = Budget {
            max_memory_bytes: 1 << 30,
            max_cpu_ms: 0,
        };
        let err = memory_only
            .check(&pipeline("rotate:45").estimate(10_000, 10_000, 8))
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("the pipeline would need about ")
                && message.contains(" GiB of memory for a 10000x10000 image (at its peak during ")
                && message.ends_with("over the limit of 1 GiB per image"),
            "{message}"
        );
    }

    #[test]
    fn every_frame_of_an_animation_counts() {
        let p = pipeline("resize:w=100/format:gif");
        let one = p.estimate(500, 400, 4);
        assert_eq!(one.for_frames(1), one);
        let ten = one.for_frames(10);
        assert_eq!(ten.cpu_ms, one.cpu_ms * 10);
        assert_eq!(ten.peak_bytes, one.peak_bytes + 9 * 500 * 400 * 4 * 2);
        assert_eq!((ten.width, ten.height), (500, 400));
        let budget = Budget {
            max_memory_bytes: one.peak_bytes * 2,
            max_cpu_ms: 0,
        };
        assert_eq!(budget.check(&one), Ok(()));
        assert!(budget.check(&ten).is_err());
    }

    #[test]
    fn watermarks_count_their_logos() {
        let logo = "ab".repeat(32);
        let plain = pipeline("grayscale").estimate(1000, 1000, 3);
        let marked = pipeline(&format!("watermark:{logo}")).estimate(1000, 1000, 3);
        assert!(marked.peak_bytes >= plain.peak_bytes + MAX_LOGO_PIXELS * 4);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(Bytes(512).to_string(), "512 bytes");
        assert_eq!(Bytes(2 << 30).to_string(), "2 GiB");
        assert_eq!(Bytes(1_200_000_000).to_string(), "1.1 GiB");
        assert_eq!(Bytes(300 << 20).to_string(), "300 MiB");
        assert_eq!(Seconds(94_300).to_string(), "94 s");
        assert_eq!(Seconds(60_000).to_string(), "60 s");
        assert_eq!(Seconds(2_540).to_string(), "2.5 s");
        assert_eq!(Seconds(50).to_string(), "0.05 s");
        assert_eq!(seconds(&Duration::from_secs(120)), "120 s");
        assert_eq!(seconds(&Duration::from_millis(50)), "0.05 s");
    }

    #[test]
    fn deadlines_nest_and_are_restored() {
        assert!(!expired() && deadline().is_none());
        let past = Deadline::since(Instant::now(), Duration::ZERO);
        let future = Deadline::after(Duration::from_secs(3600));
        with_deadline(Some(future), || {
            assert!(!expired());
            with_deadline(Some(past), || assert!(expired()));
            assert_eq!(deadline(), Some(future));
            with_deadline(None, || assert!(!expired()));
        });
        assert!(deadline().is_none());
        // Restored when the work panics, too.
        let caught = std::panic::catch_unwind(|| with_deadline(Some(past), || panic!("boom")));
        assert!(caught.is_err());
        assert!(deadline().is_none());
        // Another thread has its own.
        with_deadline(Some(past), || {
            std::thread::spawn(|| assert!(!expired())).join().unwrap();
        });
        let far = Deadline::after(Duration::MAX);
        assert_eq!(far.limit(), Duration::MAX);
        with_deadline(Some(far), || assert!(!expired()));
    }

    #[test]
    fn every_long_op_stops_at_a_passed_deadline() {
        use crate::Bitmap;
        let data = (0..64 * 48 * 4).map(|i| (i * 7 % 251) as u8).collect();
        let image = Bitmap::new(64, 48, true, data).unwrap();
        let past = Deadline::since(Instant::now(), Duration::ZERO);
        for text in [
            "blur:sigma=2",
            "blur:sigma=20",
            "sharpen",
            "edge",
            "pixelate:4",
            "rotate:90",
            "rotate:30",
        ] {
            let op = pipeline(text).ops()[0].clone();
            assert_eq!(
                with_deadline(Some(past), || op.apply(image.clone())),
                Err(stopped()),
                "{text}"
            );
            // And without one, they run.
            assert!(op.apply(image.clone()).is_ok(), "{text}");
        }
    }
}
