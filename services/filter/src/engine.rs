//! `process`: bytes in, pipeline applied, bytes out.
//!
//! Pure and synchronous: no I/O, no threads (a worker runs one image per core), and the same
//! input and pipeline always give the same bytes, so a redelivered task rewrites an identical
//! output.
//!
//! Shrink-on-load: when the pipeline starts by shrinking, a JPEG is decoded at 1/2, 1/4 or 1/8
//! scale (see [`codec::decode_shrunk`]): about 30 % less decode time for a thumbnail. The scaled
//! decode is a block average, so like libvips we leave a factor of [`SHRINK_HEADROOM`] for the
//! real resampling filter after it: the decoded image stays at least twice the size the first
//! op needs. The first op then resizes to exactly the size it would have made from the full
//! image, so the output size never depends on whether the input was shrunk.
//!
//! A deadline set with [`budget::with_deadline`] is looked at before each op and before the
//! encode, and by the long ops every few rows; past it, processing stops with
//! [`ProcessError::TimedOut`]. A decode or an encode, once started, runs to its end: the
//! budget's estimate bounds them.

use std::time::Duration;

use pixelmesh_proto::ErrorCode;

use crate::budget;
use crate::codec::{self, DecodeError, DecodeOptions, Decoded, EncodeError, InputMetadata, Limits};
use crate::ops::{
    Assets, Bitmap, Describe, FileFormat, Fit, InputFacts, Op, Pipeline, Resize, analyze, describe,
};
use crate::{animation, colour};

pub use pixelmesh_pipeline::formats::SHRINK_HEADROOM;

/// An encoded output image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
    /// One JSON report per `analyze` and `describe` op, in pipeline order; a `describe` op's
    /// is empty until the worker fills it from the AI model's answer to its [`Describing`].
    pub analysis: Vec<String>,
    /// What each `describe` op sends, in pipeline order.
    pub describe: Vec<Describing>,
}

/// A `describe` op's question: the image as the op saw it, downscaled and encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Describing {
    /// Where its report goes in [`Processed::analysis`].
    pub report: usize,
    /// The op's position in the pipeline, for errors.
    pub position: usize,
    pub prompt: String,
    /// Most tags kept from the answer.
    pub max_tags: usize,
    /// The downscaled copy as JPEG.
    pub jpeg: Vec<u8>,
    /// The image's size where the op ran.
    pub width: u32,
    pub height: u32,
}

// Not the JPEG's bytes: a failing test's output stays readable.
impl std::fmt::Debug for Describing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Describing")
            .field("report", &self.report)
            .field("position", &self.position)
            .field("jpeg_bytes", &self.jpeg.len())
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

/// Why an image could not be processed. Every case is about the input or what the pipeline
/// asks of it, so retrying the same task never helps (a time-out included: the same work
/// would take as long again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(
        "op {position} ({op}) would make a {width}x{height} image ({:.1} megapixels), over the limit of {:.1} megapixels",
        *width as f64 * *height as f64 / 1e6,
        *limit as f64 / 1e6
    )]
    OutputTooLarge {
        position: usize,
        op: &'static str,
        width: u64,
        height: u64,
        limit: u64,
    },
    /// A pixel library refused the buffers an op gave it.
    #[error("op {position} ({op}) failed: {reason}")]
    Op {
        position: usize,
        op: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// An animated input, and an op that cannot run frame by frame (see
    /// [`Pipeline::animation_refusal`]).
    #[error("{0}")]
    CannotAnimate(String),
    /// The task's deadline (see [`budget::with_deadline`]) passed before the image was done.
    #[error(
        "processing took longer than the limit of {} per task",
        budget::seconds(limit)
    )]
    TimedOut { limit: Duration },
}

impl ProcessError {
    /// A lowercase sentence naming the problem, for results and logs.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Size problems are `ResourceExhausted`, a time-out `DeadlineExceeded`, the rest
    /// `InvalidArgument`; none is transient.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProcessError::Decode(
                DecodeError::InputTooLarge { .. }
                | DecodeError::TooManyPixels { .. }
                | DecodeError::OverMemoryLimit { .. }
                | DecodeError::TooManyFrames { .. },
            )
            | ProcessError::OutputTooLarge { .. } => ErrorCode::ResourceExhausted,
            ProcessError::TimedOut { .. } => ErrorCode::DeadlineExceeded,
            ProcessError::Decode(_)
            | ProcessError::Op { .. }
            | ProcessError::Encode(_)
            | ProcessError::CannotAnimate(_) => ErrorCode::InvalidArgument,
        }
    }
}

impl From<ProcessError> for pixelmesh_proto::Error {
    fn from(err: ProcessError) -> Self {
        pixelmesh_proto::Error::new(err.code(), err.message())
    }
}

/// Decodes `input`, applies `pipeline`, and encodes as the pipeline's format op says, or in
/// the input's own format when it has none. A pipeline with a watermark needs
/// [`process_with`].
pub fn process(
    input: &[u8],
    pipeline: &Pipeline,
    limits: &Limits,
) -> Result<Processed, ProcessError> {
    process_with(input, pipeline, limits, &Assets::default())
}

/// [`process`], with the logos the pipeline's watermarks overlay (see [`Pipeline::logos`]).
/// An animated GIF or WebP keeps every frame unless the pipeline picks one (see
/// [`animation`]).
pub fn process_with(
    input: &[u8],
    pipeline: &Pipeline,
    limits: &Limits,
    assets: &Assets,
) -> Result<Processed, ProcessError> {
    let detected = codec::detect_format(input);
    let count = detected.map(|format| animation::frame_count(input, format));
    match (detected, count, pipeline.frame()) {
        (Some(format), Some(count), None) if count.frames > 1 => {
            if !count.complete {
                return Err(DecodeError::Corrupt {
                    format,
                    reason: format!(
                        "the animation is cut short or corrupt after {} frames",
                        count.frames
                    ),
                }
                .into());
            }
            return process_animation(input, format, count.frames, pipeline, limits, assets);
        }
        (Some(format), Some(count), Some(index)) if index > 0 => {
            let decoded = stage_span("decode").in_scope(|| {
                let keep_icc = keeps_icc(pipeline);
                animation::decode_frame(input, format, index, count.frames, limits, keep_icc)
            })?;
            return process_decoded(decoded, pipeline, limits, assets);
        }
        _ => {}
    }
    let min_size = match pipeline.shrink_on_load() {
        Some((w, h)) => (
            w.saturating_mul(SHRINK_HEADROOM),
            h.saturating_mul(SHRINK_HEADROOM),
        ),
        None => (u32::MAX, u32::MAX),
    };
    let options = DecodeOptions {
        min_size,
        keep_icc: keeps_icc(pipeline),
    };
    let decoded = stage_span("decode").in_scope(|| codec::decode_with(input, limits, &options))?;
    process_decoded(decoded, pipeline, limits, assets)
}

/// The pipeline's ops on a decoded still image, then the encode.
fn process_decoded(
    decoded: Decoded,
    pipeline: &Pipeline,
    limits: &Limits,
    assets: &Assets,
) -> Result<Processed, ProcessError> {
    let Decoded {
        image,
        format: input_format,
        full_size,
        colour_type,
        exif,
        xmp,
        icc,
        colour_profile,
    } = decoded;
    // Moved, not copied: the analysis reads the EXIF from here too.
    let metadata = InputMetadata { exif, xmp, icc };
    let mut analysis = Vec::new();
    let mut describe = Vec::new();
    let mut facts: Option<InputFacts> = None;
    let image = run_ops(
        image,
        full_size,
        pipeline,
        limits,
        assets,
        |position, op, image| {
            match op {
                Op::Analyze(_) => {
                    // The EXIF summary is parsed once, however many analyze ops there are.
                    let facts = facts.get_or_insert_with(|| {
                        InputFacts::new(
                            input_format,
                            full_size,
                            &colour_type,
                            &metadata.exif,
                            colour_profile.as_ref().map(colour::Applied::describe),
                        )
                    });
                    analysis.push(analyze::report(image, facts).to_string());
                }
                Op::Describe(asked) => {
                    describe.push(describing(asked, position, analysis.len(), image)?);
                    analysis.push(String::new());
                }
                _ => {}
            }
            Ok(())
        },
    )?;
    Ok(Processed {
        analysis,
        describe,
        ..encode(&image, pipeline, input_format, &metadata)?
    })
}

/// The question a `describe` op at `position` asks of `image`: its downscaled copy as JPEG.
fn describing(
    op: &Describe,
    position: usize,
    report: usize,
    image: &Bitmap,
) -> Result<Describing, ProcessError> {
    let failed = |reason: String| ProcessError::Op {
        position,
        op: Op::Describe(*op).name(),
        reason,
    };
    let copy = stage_span("describe copy").in_scope(|| op.copy(image).map_err(failed))?;
    let jpeg = codec::encode(&copy, FileFormat::Jpeg, describe::QUALITY)
        .map_err(|err| failed(err.to_string()))?;
    Ok(Describing {
        report,
        position,
        prompt: op.prompt(),
        max_tags: op.tags() as usize,
        jpeg,
        width: image.width(),
        height: image.height(),
    })
}

/// Every frame of an animation through the pipeline, each decoded, processed and kept in
/// turn, then encoded together with the input's delays and loop count. Refused, naming the op,
/// when the pipeline has one that cannot animate.
fn process_animation(
    input: &[u8],
    input_format: FileFormat,
    frames: u32,
    pipeline: &Pipeline,
    limits: &Limits,
    assets: &Assets,
) -> Result<Processed, ProcessError> {
    if let Some(refusal) = pipeline.animation_refusal(frames) {
        return Err(ProcessError::CannotAnimate(refusal));
    }
    let mut animation = animation::open(input, input_format, frames, limits)?;
    let mut metadata = animation.take_metadata();
    // Each frame as a still image's decode does it: converted to sRGB, or kept in the
    // profile that is then embedded; the transform is built once for all of them.
    let mut colour = metadata
        .icc
        .take()
        .map(|icc| colour::Manager::new(icc, keeps_icc(pipeline)));
    let mut processed = Vec::with_capacity(frames as usize);
    let timing = stage_span("frames").in_scope(|| {
        animation.decode_each(|mut image, _delay| {
            if let Some(colour) = &mut colour {
                colour.apply(&mut image);
            }
            let full_size = (image.width(), image.height());
            processed.push(run_ops(
                image,
                full_size,
                pipeline,
                limits,
                assets,
                |_, _, _| Ok(()),
            )?);
            Ok::<(), ProcessError>(())
        })
    })?;
    metadata.icc = colour.and_then(|colour| colour.finish().1);
    if budget::expired() {
        return Err(timed_out());
    }
    let encoding = match pipeline.output_format() {
        Some(output) => output.encoding(),
        None => codec::Encoding::new(input_format),
    };
    let bytes = stage_span("encode")
        .in_scope(|| animation::encode(&processed, &timing, &encoding, &metadata))?;
    let (width, height) = processed
        .first()
        .map_or((0, 0), |frame| (frame.width(), frame.height()));
    Ok(Processed {
        bytes,
        content_type: encoding.format.content_type(),
        width,
        height,
        analysis: Vec::new(),
        describe: Vec::new(),
    })
}

/// The pipeline's ops on `image`, decoded from a `full_size` image (bigger when shrunk on
/// load), with `report` called for each op (its position, itself and the image it sees)
/// before it runs: analyze and describe take their reports there.
fn run_ops(
    mut image: Bitmap,
    full_size: (u32, u32),
    pipeline: &Pipeline,
    limits: &Limits,
    assets: &Assets,
    mut report: impl FnMut(usize, &Op, &Bitmap) -> Result<(), ProcessError>,
) -> Result<Bitmap, ProcessError> {
    let shrunk = (image.width(), image.height()) != full_size;
    for (i, op) in pipeline.ops().iter().enumerate() {
        if budget::expired() {
            return Err(timed_out());
        }
        let position = i + 1;
        let name = op.name();
        // Sizes as if the input had been decoded in full.
        let exact;
        let (op, (width, height)) = if i == 0 && shrunk {
            let size = op.output_size(full_size.0, full_size.1);
            exact = exact_resize(op, size);
            (exact.as_ref().unwrap_or(op), size)
        } else {
            (op, op.output_size(image.width(), image.height()))
        };
        // Checked before the op allocates: a small image resized by width alone can ask for
        // an enormous height.
        if width.saturating_mul(height) > limits.max_pixels {
            return Err(ProcessError::OutputTooLarge {
                position,
                op: name,
                width,
                height,
                limit: limits.max_pixels,
            });
        }
        report(position, op, &image)?;
        image = timed_op(name, position, || op.apply_with(image, assets)).map_err(|reason| {
            // A long op stops at the deadline with an error of its own; the deadline is what
            // the caller needs to hear about.
            if budget::expired() {
                timed_out()
            } else {
                ProcessError::Op {
                    position,
                    op: name,
                    reason,
                }
            }
        })?;
    }
    if budget::expired() {
        return Err(timed_out());
    }
    Ok(image)
}

/// Whether `pipeline`'s output embeds the input's ICC profile, so decoding must leave the
/// pixels in it.
pub fn keeps_icc(pipeline: &Pipeline) -> bool {
    pipeline
        .output_format()
        .is_some_and(|format| format.encoding().embeds_icc())
}

/// [`ProcessError::TimedOut`] with the current deadline's limit.
pub fn timed_out() -> ProcessError {
    ProcessError::TimedOut {
        limit: budget::deadline().map_or(Duration::ZERO, |deadline| deadline.limit()),
    }
}

/// A span for one stage of a task (fetch, decode, encode, store), a child of the task's span.
pub fn stage_span(name: &'static str) -> tracing::Span {
    tracing::info_span!("stage", otel.name = name)
}

/// Runs one op inside its own span (named after the op) and records its duration in
/// `pixelmesh_operation_duration_seconds{op}`.
pub fn timed_op<T>(name: &'static str, position: usize, apply: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let result = tracing::info_span!("op", otel.name = name, op = name, position).in_scope(apply);
    metrics::histogram!("pixelmesh_operation_duration_seconds", "op" => name)
        .record(started.elapsed().as_secs_f64());
    result
}

/// Encodes as the pipeline's format op says, or in the input's own format when it has none,
/// with what the format op keeps of the input's `metadata`. The last step of [`process`], and
/// of a tiled image's assembly, so both give the same bytes.
pub fn encode(
    image: &Bitmap,
    pipeline: &Pipeline,
    input_format: FileFormat,
    metadata: &InputMetadata,
) -> Result<Processed, EncodeError> {
    let encoding = match pipeline.output_format() {
        Some(output) => output.encoding(),
        None => codec::Encoding::new(input_format),
    };
    let bytes =
        stage_span("encode").in_scope(|| codec::encode_carrying(image, &encoding, metadata))?;
    Ok(Processed {
        bytes,
        content_type: encoding.format.content_type(),
        width: image.width(),
        height: image.height(),
        analysis: Vec::new(),
        describe: Vec::new(),
    })
}

/// The first op as a resize, if it is one: a thumbnail is a fit-inside resize.
fn first_resize(op: &Op) -> Option<Resize> {
    match op {
        Op::Resize(resize) => Some(*resize),
        Op::Thumbnail(thumbnail) => Some(thumbnail.resize()),
        _ => None,
    }
}

/// The first op rewritten to make exactly `size` from a shrunk-on-load image. A fit `inside`
/// resize computes its size from the aspect ratio, which the decoder's rounding of scaled sides
/// changes slightly; the other fits already produce their box.
fn exact_resize(op: &Op, size: (u64, u64)) -> Option<Op> {
    let resize = first_resize(op)?;
    if resize.fit() != Fit::Inside {
        return None;
    }
    let (width, height) = (u32::try_from(size.0).ok()?, u32::try_from(size.1).ok()?);
    Resize::with_options(width, height, Fit::Fill, resize.filter(), true)
        .ok()
        .map(Op::Resize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo_like(width: u32, height: u32) -> Vec<u8> {
        let data = (0..width * height)
            .flat_map(|i| {
                let (x, y) = (i % width, i / width);
                [
                    (x * 255 / width) as u8,
                    (y * 255 / height) as u8,
                    ((x * y) % 251) as u8,
                ]
            })
            .collect();
        let image = Bitmap::new(width, height, false, data).unwrap();
        codec::encode(&image, FileFormat::Jpeg, 90).unwrap()
    }

    fn pipeline(json: &str) -> Pipeline {
        Pipeline::from_json(json).unwrap()
    }

    #[test]
    fn full_pipeline_and_determinism() {
        let input = photo_like(401, 233);
        let p = pipeline(
            r#"[{"op":"resize","width":200},{"op":"blur","sigma":2},
                {"op":"brightness","factor":1.1},{"op":"format","format":"jpeg","quality":85}]"#,
        );
        let first = process(&input, &p, &Limits::default()).unwrap();
        assert_eq!((first.width, first.height), (200, 116));
        assert_eq!(first.content_type, "image/jpeg");
        assert_eq!(codec::detect_format(&first.bytes), Some(FileFormat::Jpeg));
        for _ in 0..3 {
            assert_eq!(process(&input, &p, &Limits::default()).unwrap(), first);
        }
    }

    #[test]
    fn every_op_and_output_format_is_deterministic() {
        let input = photo_like(64, 48);
        for format in FileFormat::ALL {
            let p = pipeline(&format!(
                r#"[{{"op":"resize","width":30,"height":30,"fit":"cover"}},{{"op":"grayscale"}},
                    {{"op":"blur","sigma":0.7}},{{"op":"brightness","factor":0.9}},
                    {{"op":"format","format":"{}"}}]"#,
                format.name()
            ));
            let a = process(&input, &p, &Limits::default()).unwrap();
            let b = process(&input, &p, &Limits::default()).unwrap();
            assert_eq!(a, b, "{format:?}");
            assert_eq!((a.width, a.height), (30, 30));
            assert_eq!(a.content_type, format.content_type());
        }
    }

    #[test]
    fn without_a_format_op_the_input_format_is_kept() {
        let image = Bitmap::new(8, 8, true, vec![90; 8 * 8 * 4]).unwrap();
        let png = codec::encode(&image, FileFormat::Png, 85).unwrap();
        let out = process(&png, &Pipeline::default(), &Limits::default()).unwrap();
        assert_eq!(out.content_type, "image/png");
        assert_eq!((out.width, out.height), (8, 8));
        let out = process(
            &photo_like(10, 10),
            &pipeline(r#"[{"op":"grayscale"}]"#),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(out.content_type, "image/jpeg");
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let p = pipeline(r#"[{"op":"blur","sigma":1}]"#);
        let jpeg = photo_like(50, 40);
        let mut inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"GIF89a".to_vec(),
            b"\x89PNG\r\n\x1a\n".to_vec(),
            b"RIFF\0\0\0\0WEBPVP8 ".to_vec(),
            b"BM".to_vec(),
            b"II*\0".to_vec(),
            b"MM\0*".to_vec(),
            vec![0xff, 0xd8, 0xff],
        ];
        inputs.extend((1..jpeg.len()).step_by(37).map(|cut| jpeg[..cut].to_vec()));
        // Deterministic pseudo-random garbage after a JPEG signature.
        let mut state = 0x2545_f491_u32;
        let mut noise = vec![0xff, 0xd8, 0xff, 0xe0];
        noise.extend((0..4000).map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        }));
        inputs.push(noise);
        for input in &inputs {
            if let Err(err) = process(input, &p, &Limits::default()) {
                let msg = err.message();
                assert!(
                    !msg.is_empty() && msg.starts_with(char::is_lowercase),
                    "{msg}"
                );
                assert_ne!(err.code(), ErrorCode::Internal);
            }
        }
        let err = process(b"garbage", &p, &Limits::default()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        assert_eq!(
            err.message(),
            "not a supported image (jpeg, png, webp, gif, bmp, tiff, avif)"
        );
    }

    #[test]
    fn shrink_on_load_keeps_the_output_size_and_stays_close() {
        // Odd sizes, so the decoder's rounding of scaled sides would show in the aspect ratio.
        let input = photo_like(1601, 1003);
        for (text, shrinks) in [
            ("resize:w=100/format:png", true),
            ("resize:h=97/format:png", true),
            ("resize:w=120,h=120,fit=cover/format:png", true),
            ("resize:w=150,h=40,fit=fill/format:png", true),
            ("resize:w=300,h=300,fit=exact/format:png", false),
            ("resize:w=900/format:png", false),
            ("thumbnail:w=150,h=150/format:png", true),
        ] {
            let p = Pipeline::from_text(text).unwrap();
            let out = process(&input, &p, &Limits::default()).unwrap();
            // The same ops on the full decode.
            let mut image = codec::decode(&input, &Limits::default()).unwrap().image;
            let size = p.ops()[0].output_size(image.width(), image.height());
            assert_eq!(
                (u64::from(out.width), u64::from(out.height)),
                size,
                "{text}"
            );
            image = p.ops()[0].apply(image).unwrap();
            let ours = codec::decode(&out.bytes, &Limits::default()).unwrap().image;
            assert_eq!(
                (ours.width(), ours.height()),
                (image.width(), image.height())
            );
            let diff: u64 = ours
                .data()
                .iter()
                .zip(image.data())
                .map(|(&a, &b)| u64::from(a.abs_diff(b)))
                .sum();
            let mean = diff as f64 / ours.data().len() as f64;
            if shrinks {
                assert!(mean < 3.0, "{text}: mean difference {mean}");
            } else {
                assert_eq!(mean, 0.0, "{text}: not shrunk, so identical");
            }
        }
        let p = Pipeline::from_text("resize:w=100/blur:sigma=1/format:jpeg").unwrap();
        let first = process(&input, &p, &Limits::default()).unwrap();
        assert_eq!(process(&input, &p, &Limits::default()).unwrap(), first);
    }

    #[test]
    fn analyze_names_the_embedded_profile_and_what_decoding_did_with_it() {
        let (_, profile) = codec::tests::system_profile("compatibleWithAdobeRGB1998.icc");
        let pixels = Bitmap::new(2, 1, false, vec![30, 200, 60, 90, 90, 90]).unwrap();
        let png = |icc: Vec<u8>| codec::tests::png_with_icc(&pixels, Some(icc));
        let report = |input: &[u8]| -> serde_json::Value {
            let out = process(
                input,
                &pipeline(r#"[{"op":"analyze"}]"#),
                &Limits::default(),
            );
            serde_json::from_str(&out.unwrap().analysis[0]).unwrap()
        };
        let converted = report(&png(profile));
        let name = converted["input"]["colour_profile"]
            .as_str()
            .unwrap_or_default();
        assert!(
            name.contains("Adobe") && name.ends_with("converted to sRGB"),
            "{converted}"
        );
        let broken = report(&png(b"scribbles".to_vec()));
        let name = broken["input"]["colour_profile"]
            .as_str()
            .unwrap_or_default();
        assert!(name.starts_with("ignored: "), "{broken}");
    }

    #[test]
    fn analyze_reports_the_image_at_its_place_in_the_pipeline() {
        let input = photo_like(401, 233);
        let p = pipeline(
            r#"[{"op":"analyze"},{"op":"resize","width":100},{"op":"grayscale"},{"op":"analyze"}]"#,
        );
        let out = process(&input, &p, &Limits::default()).unwrap();
        assert_eq!(out.analysis.len(), 2);
        let reports: Vec<serde_json::Value> = out
            .analysis
            .iter()
            .map(|report| serde_json::from_str(report).unwrap())
            .collect();
        assert_eq!(
            (&reports[0]["width"], &reports[0]["height"]),
            (&401.into(), &233.into())
        );
        assert_eq!(
            (&reports[1]["width"], &reports[1]["height"]),
            (&100.into(), &58.into())
        );
        for report in &reports {
            assert_eq!(report["input"]["format"], "jpeg");
            assert_eq!(report["input"]["width"], 401);
            assert_eq!(report["input"]["colour_type"], "rgb8");
            assert_eq!(report["input"]["colour_profile"], serde_json::Value::Null);
        }
        assert_eq!(
            reports[1]["dominant_colours"][0]["colour"]
                .as_str()
                .map(|c| {
                    let c = c.trim_start_matches('#');
                    c[0..2] == c[2..4] && c[2..4] == c[4..6]
                }),
            Some(true),
            "grey after grayscale: {}",
            reports[1]
        );
        // The same bytes every time, so a redelivered task records the same report.
        assert_eq!(process(&input, &p, &Limits::default()).unwrap(), out);
        assert!(
            process(
                &input,
                &pipeline(r#"[{"op":"grayscale"}]"#),
                &Limits::default()
            )
            .unwrap()
            .analysis
            .is_empty()
        );
    }

    #[test]
    fn watermarks_take_their_logo_from_the_assets() {
        let input = photo_like(200, 100);
        let logo_id = "a".repeat(64);
        let p = pipeline(&format!(
            r#"[{{"op":"watermark","logo":"{logo_id}","gravity":"centre","scale":50,"padding":0}},
                {{"op":"format","format":"png"}}]"#
        ));
        let err = process(&input, &p, &Limits::default()).unwrap_err();
        assert_eq!(
            err.message(),
            format!("op 1 (watermark) failed: logo {logo_id} was not loaded")
        );
        let mut assets = Assets::default();
        assets.insert(
            logo_id,
            Bitmap::new(10, 10, false, [0, 0, 255].repeat(100)).unwrap(),
        );
        let out = process_with(&input, &p, &Limits::default(), &assets).unwrap();
        let image = codec::decode(&out.bytes, &Limits::default()).unwrap().image;
        // 50 % of 200 is a 100x100 logo, centred: the middle pixel is the logo's blue.
        let middle = (50 * 200 + 100) * 3;
        assert_eq!(&image.data()[middle..middle + 3], &[0, 0, 255]);
        assert_ne!(&image.data()[..3], &[0, 0, 255]);
    }

    #[test]
    fn outputs_carry_no_metadata_from_the_input() {
        let input = crate::testdata::corpus("safe-landing-exif-1622x2880.jpg");
        let has = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        // The photo's EXIF names the program that wrote it and when.
        assert!(has(&input, b"Exif") && has(&input, b"gThumb") && has(&input, b"2022:05:23"));
        let p = pipeline(r#"[{"op":"analyze"}]"#);
        let report: serde_json::Value =
            serde_json::from_str(&process(&input, &p, &Limits::default()).unwrap().analysis[0])
                .unwrap();
        assert_eq!(
            report["input"]["exif"]["DateTime"], "2022:05:23 19:21:22",
            "{report}"
        );
        for format in FileFormat::ALL {
            let p = pipeline(&format!(
                r#"[{{"op":"resize","width":64}},{{"op":"format","format":"{}"}}]"#,
                format.name()
            ));
            let out = process(&input, &p, &Limits::default()).unwrap();
            for needle in [
                &b"Exif"[..],
                b"gThumb",
                b"2022:05:23",
                b"eXIf",
                b"tEXt",
                b"XMP",
            ] {
                assert!(
                    !has(&out.bytes, needle),
                    "{format:?} output carries {:?}",
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }

    #[test]
    fn resize_results_over_the_pixel_limit_are_refused_before_allocating() {
        // 4x1 asked for height 16384 makes 65536x16384: about a gigapixel.
        let input = codec::encode(
            &Bitmap::new(4, 1, false, vec![1; 12]).unwrap(),
            FileFormat::Png,
            85,
        )
        .unwrap();
        let err = process(
            &input,
            &pipeline(r#"[{"op":"grayscale"},{"op":"resize","height":16384,"upscale":true}]"#),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ResourceExhausted);
        assert_eq!(
            err.message(),
            "op 2 (resize) would make a 65536x16384 image (1073.7 megapixels), over the limit of 100.0 megapixels"
        );
        let proto: pixelmesh_proto::Error = err.into();
        assert_eq!(proto.code, ErrorCode::ResourceExhausted);
    }

    #[test]
    fn a_deadline_stops_the_work_with_a_clear_error() {
        use std::time::{Duration, Instant};
        let input = photo_like(1200, 800);
        let blurs = pipeline(
            r#"[{"op":"blur","sigma":30},{"op":"blur","sigma":30},{"op":"blur","sigma":30},
                {"op":"blur","sigma":30},{"op":"format","format":"png","compression":1}]"#,
        );
        let limit = Duration::from_millis(50);
        let started = Instant::now();
        let err = budget::with_deadline(Some(budget::Deadline::after(limit)), || {
            process(&input, &blurs, &Limits::default())
        })
        .unwrap_err();
        // Generous: a check of correctness, not of speed.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err, ProcessError::TimedOut { limit });
        assert_eq!(
            err.message(),
            "processing took longer than the limit of 0.05 s per task"
        );
        assert_eq!(err.code(), ErrorCode::DeadlineExceeded);
        let proto: pixelmesh_proto::Error = err.into();
        assert_eq!(proto.code, ErrorCode::DeadlineExceeded);

        // Inside one op: a single wide blur stops between its rows.
        let one = pipeline(r#"[{"op":"blur","sigma":100}]"#);
        let limit = Duration::from_millis(20);
        let err = budget::with_deadline(Some(budget::Deadline::after(limit)), || {
            process(&input, &one, &Limits::default())
        })
        .unwrap_err();
        assert_eq!(err, ProcessError::TimedOut { limit });
        // Already past before the first op: the decode runs, nothing after it.
        let past = budget::Deadline::since(Instant::now(), Duration::ZERO);
        let err = budget::with_deadline(Some(past), || {
            process(&input, &pipeline("[]"), &Limits::default())
        });
        assert_eq!(
            err,
            Err(ProcessError::TimedOut {
                limit: Duration::ZERO
            })
        );

        // Without a deadline, or with one far away, the same bytes as ever.
        let plain = process(&input, &blurs, &Limits::default()).unwrap();
        let none = budget::with_deadline(None, || process(&input, &blurs, &Limits::default()));
        let far = budget::with_deadline(
            Some(budget::Deadline::after(Duration::from_secs(3600))),
            || process(&input, &blurs, &Limits::default()),
        );
        assert_eq!(none.unwrap(), plain);
        assert_eq!(far.unwrap(), plain);
    }
}
