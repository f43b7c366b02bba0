//! Parse, then apply: a [`Pipeline`] is a validated list of [`Op`]s, read from protobuf, JSON
//! or the compact text form (`resize:w=1920/blur:sigma=2/format:webp,q=85`, see [`text`]); each
//! op lives in its own file with its parameters, validation and pixel code, and this module
//! only dispatches.
//!
//! Validation errors are `InvalidArgument` and name the op's 1-based position, the op and the
//! field: `op 2 (blur): sigma must be > 0 and <= 100, got -1`.

/// The [`Operator`] items every pointwise op shares (each output pixel from the same input
/// pixel, in place): its cost at `$ns_per_pixel` single-core nanoseconds, a tile halo of 0,
/// and its `apply`, which cannot fail.
macro_rules! pointwise {
    ($ns_per_pixel:expr) => {
        fn cost(&self, input: Shape, _output: Shape, _context: &Context) -> Cost {
            Cost::in_place(input, $ns_per_pixel)
        }

        fn tile_halo(&self) -> Option<u32> {
            Some(0)
        }

        fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
            Ok(self.apply(image))
        }
    };
}

pub mod analyze;
pub mod auto_orient;
pub mod blur;
pub mod blur_faces;
pub mod brightness;
pub mod contrast;
pub mod crop;
pub mod describe;
pub mod edge;
pub mod faces;
pub mod flip;
pub mod format;
pub mod gamma;
pub mod gravity;
pub mod grayscale;
pub mod hue;
pub mod interest;
pub mod invert;
pub mod json;
pub mod pixelate;
pub mod posterize;
mod range;
pub mod remove_background;
pub mod resize;
pub mod rotate;
pub mod saturation;
pub mod sepia;
pub mod sharpen;
pub mod spec;
pub mod text;
pub mod threshold;
pub mod thumbnail;
pub mod watermark;

pub use crate::bitmap::Bitmap;
pub use crate::formats::FileFormat;
pub use analyze::{Analyze, InputFacts};
pub use auto_orient::AutoOrient;
pub use blur::Blur;
pub use blur_faces::BlurFaces;
pub use brightness::Brightness;
pub use contrast::Contrast;
pub use crop::Crop;
pub use describe::Describe;
pub use edge::Edge;
pub use flip::{Flip, Flop};
pub use format::Format;
pub use gamma::Gamma;
pub use gravity::{Anchor, Gravity};
pub use grayscale::Grayscale;
pub use hue::Hue;
pub use invert::Invert;
pub use pixelate::Pixelate;
pub use posterize::Posterize;
pub use remove_background::{RemoveBackground, Segmenter};
pub use resize::{Filter, Fit, Resize};
pub use rotate::Rotate;
pub use saturation::Saturation;
pub use sepia::Sepia;
pub use sharpen::Sharpen;
pub use threshold::Threshold;
pub use thumbnail::Thumbnail;
pub use watermark::Watermark;

use std::collections::HashMap;

use pixelmesh_proto::Error;

pub use crate::budget::{Context, Cost, Shape};
use pixelmesh_proto::v1::{Operation, operation};
use serde_json::Value;

pub use json::Fields;
use json::{Source, brief, quoted};
pub use spec::{Field, Kind, Spec, When};

/// More ops than this is a mistake or an attack, not a pipeline.
pub const MAX_OPS: usize = 64;
/// Different logos one pipeline may overlay; each is held decoded while an image is processed.
pub const MAX_LOGOS: usize = 4;

/// What every op provides, in its own file: its spec (name, label, help and fields, for the
/// parsers and for clients), its three forms, what it does to the image's size and layout,
/// its cost for the budget, whether it can run on tiles, and its pixel code. The registry
/// below lists each op once; every dispatch over ops is generated from that list.
pub trait Operator: Sized {
    const SPEC: Spec;
    /// The op's protobuf message, a variant of `Operation.op` with the same name as the op's
    /// type.
    type Proto;

    /// Reads and validates the JSON or text form's fields; unknown fields were refused
    /// before.
    fn from_fields(fields: &Fields<'_>) -> Result<Self, String>;

    fn from_proto(proto: &Self::Proto) -> Result<Self, String>;

    fn to_proto(&self) -> Self::Proto;

    /// The fields in canonical order, defaults left out: what the JSON and text forms write.
    fn params(&self) -> Vec<(&'static str, Value)> {
        Vec::new()
    }

    /// The size of the image this op makes from a `width` x `height` one, computed without
    /// touching pixels so the engine can refuse oversized results before allocating them.
    /// `u64` because a resize with one side given can ask for more than `u32` holds.
    fn output_size(&self, width: u32, height: u32) -> (u64, u64) {
        (u64::from(width), u64::from(height))
    }

    /// The bytes per pixel (3 or 4) of the bitmap this op makes from `input`: the same, except
    /// where it puts the image on a transparent background.
    fn output_channels(&self, input: Shape) -> u64 {
        input.channels
    }

    /// What the op costs making `output` from `input`: the memory alive at its peak and its
    /// single-core time, for the budget's estimate (see [`crate::budget`]).
    fn cost(&self, input: Shape, output: Shape, context: &Context) -> Cost;

    /// How many pixels a tile must carry on each side (its halo) so that the op's output on
    /// the tile's interior matches, byte for byte, its output on the whole image: 0 for
    /// pointwise ops, the kernel radius for bounded-neighbourhood ones. `None` when an output
    /// pixel depends on more than a fixed neighbourhood or on where it sits in the whole
    /// image (resampling, geometry, compositing, whole-image statistics).
    fn tile_halo(&self) -> Option<u32>;

    /// Runs the op, taking the images it overlays (watermark logos) from `assets`. Errors
    /// mean a library refused buffers we built, or an asset the engine should have loaded is
    /// missing; valid ops on valid bitmaps do not fail.
    fn run(&self, image: Bitmap, assets: &Assets) -> Result<Bitmap, String>;
}

/// Generates [`Op`], [`SPECS`] and the dispatch from one line per op: `Variant(Type)`, where
/// `Variant` is also the op's variant of the protobuf `Operation.op`.
macro_rules! registry {
    ($($variant:ident($op:ty),)*) => {
        /// One validated operation.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Op {
            $($variant($op),)*
        }

        $(impl From<$op> for Op {
            fn from(op: $op) -> Op {
                Op::$variant(op)
            }
        })*

        /// Every op's spec, in the order clients list them.
        pub const SPECS: &[Spec] = &[$(<$op as Operator>::SPEC,)*];

        impl Op {
            /// The name used in JSON, the CLI and error messages.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Op::$variant(_) => <$op as Operator>::SPEC.name,)*
                }
            }

            /// See [`Operator::output_size`].
            pub fn output_size(&self, width: u32, height: u32) -> (u64, u64) {
                match self {
                    $(Op::$variant(op) => Operator::output_size(op, width, height),)*
                }
            }

            /// See [`Operator::output_channels`].
            pub fn output_channels(&self, input: Shape) -> u64 {
                match self {
                    $(Op::$variant(op) => Operator::output_channels(op, input),)*
                }
            }

            /// See [`Operator::cost`].
            pub fn cost(&self, input: Shape, output: Shape, context: &Context) -> Cost {
                match self {
                    $(Op::$variant(op) => Operator::cost(op, input, output, context),)*
                }
            }

            /// See [`Operator::tile_halo`].
            pub fn tile_halo(&self) -> Option<u32> {
                match self {
                    $(Op::$variant(op) => Operator::tile_halo(op),)*
                }
            }

            /// Runs the op with the images it overlays taken from `assets` (see
            /// [`Operator::run`] and [`Pipeline::logos`]).
            pub fn apply_with(&self, image: Bitmap, assets: &Assets) -> Result<Bitmap, String> {
                match self {
                    $(Op::$variant(op) => Operator::run(op, image, assets),)*
                }
            }

            fn params(&self) -> Vec<(&'static str, Value)> {
                match self {
                    $(Op::$variant(op) => Operator::params(op),)*
                }
            }

            fn to_proto(&self) -> Operation {
                let op = match self {
                    $(Op::$variant(op) => operation::Op::$variant(Operator::to_proto(op)),)*
                };
                Operation { op: Some(op) }
            }

            fn from_proto(op: &operation::Op) -> Result<Op, (&'static str, String)> {
                match op {
                    $(operation::Op::$variant(proto) => <$op as Operator>::from_proto(proto)
                        .map(Op::$variant)
                        .map_err(|msg| (<$op as Operator>::SPEC.name, msg)),)*
                }
            }

            /// `name` is the JSON `"op"` value; `Ok(None)` means no op has that name.
            fn from_fields(
                name: &str,
                map: &serde_json::Map<String, Value>,
                source: Source,
            ) -> Result<Option<Op>, String> {
                $(if name == <$op as Operator>::SPEC.name {
                    let allowed = <$op as Operator>::SPEC.field_names();
                    let fields = Fields::new(map, &allowed, source)?;
                    return <$op as Operator>::from_fields(&fields).map(|op| Some(Op::$variant(op)));
                })*
                Ok(None)
            }
        }
    };
}

registry! {
    Resize(Resize),
    Thumbnail(Thumbnail),
    Crop(Crop),
    Rotate(Rotate),
    Flip(Flip),
    Flop(Flop),
    AutoOrient(AutoOrient),
    Blur(Blur),
    Sharpen(Sharpen),
    Edge(Edge),
    Pixelate(Pixelate),
    BlurFaces(BlurFaces),
    Brightness(Brightness),
    Contrast(Contrast),
    Gamma(Gamma),
    Saturation(Saturation),
    Hue(Hue),
    Grayscale(Grayscale),
    Sepia(Sepia),
    Invert(Invert),
    Threshold(Threshold),
    Posterize(Posterize),
    Watermark(Watermark),
    Analyze(Analyze),
    Describe(Describe),
    RemoveBackground(RemoveBackground),
    Format(Format),
}

impl Op {
    /// Runs the op without assets: [`Op::apply_with`] with none loaded, so a watermark fails.
    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        self.apply_with(image, &Assets::default())
    }

    /// Whether the op can run on each frame of an animation in turn and the result still be
    /// one animation: every op whose output size follows from the input's size alone. Not
    /// `analyze` or `describe`, which report on one image, nor a crop placed by content, nor a format that
    /// holds one frame.
    pub fn animates(&self) -> bool {
        match self {
            Op::Analyze(_) | Op::Describe(_) => false,
            // Each frame would be cut at another place.
            Op::Crop(crop) => !crop.reads_content(),
            Op::Resize(resize) => !resize.reads_content(),
            Op::Format(format) => format.format().animates(),
            _ => true,
        }
    }

    /// The spec of the op named `name`, if there is one.
    pub fn spec(name: &str) -> Option<&'static Spec> {
        SPECS.iter().find(|spec| spec.name == name)
    }
}

/// What some ops need beyond the image, which the engine passes to [`Op::apply_with`]: the
/// decoded logos watermarks overlay, by blob id (the engine loads what [`Pipeline::logos`]
/// names), and the filter's segmentation models for `remove_background`.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    // Shared, so a worker can keep decoded logos between the images of a job.
    logos: HashMap<String, std::sync::Arc<Bitmap>>,
    segmenter: Option<std::sync::Arc<dyn Segmenter>>,
}

impl Assets {
    pub fn insert(&mut self, blob_id: impl Into<String>, logo: impl Into<std::sync::Arc<Bitmap>>) {
        self.logos.insert(blob_id.into(), logo.into());
    }

    pub fn get(&self, blob_id: &str) -> Option<&Bitmap> {
        self.logos.get(blob_id).map(|logo| &**logo)
    }

    pub fn set_segmenter(&mut self, segmenter: std::sync::Arc<dyn Segmenter>) {
        self.segmenter = Some(segmenter);
    }

    pub fn segmenter(&self) -> Option<&dyn Segmenter> {
        self.segmenter.as_deref()
    }
}

/// A validated, ordered list of ops. Empty is valid: the image is only re-encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pipeline {
    ops: Vec<Op>,
}

impl Pipeline {
    /// Validates the protobuf form.
    pub fn from_proto(ops: &[Operation]) -> Result<Pipeline, Error> {
        check_count(ops.len())?;
        let ops = ops
            .iter()
            .enumerate()
            .map(|(i, operation)| {
                let position = i + 1;
                let op = operation
                    .op
                    .as_ref()
                    .ok_or_else(|| Error::invalid(format!("op {position}: no op set")))?;
                Op::from_proto(op)
                    .map_err(|(name, msg)| Error::invalid(format!("op {position} ({name}): {msg}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Pipeline::new(ops)
    }

    /// Validates the REST form, a JSON array of objects each naming its op:
    /// `[{"op":"resize","width":1920},{"op":"format","format":"webp"}]`.
    /// Unknown ops and unknown fields are errors, so a typo never silently does nothing.
    pub fn from_json(json: &str) -> Result<Pipeline, Error> {
        let value: Value = serde_json::from_str(json)
            .map_err(|err| Error::invalid(format!("pipeline is not valid json: {err}")))?;
        let Value::Array(items) = value else {
            return Err(Error::invalid("pipeline must be a json array of ops"));
        };
        check_count(items.len())?;
        let ops = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let position = i + 1;
                let Value::Object(map) = item else {
                    return Err(Error::invalid(format!(
                        "op {position}: must be an object with an \"op\" field, got {}",
                        brief(item)
                    )));
                };
                let name = match map.get("op") {
                    Some(Value::String(name)) => name.as_str(),
                    Some(other) => {
                        return Err(Error::invalid(format!(
                            "op {position}: \"op\" must be a string, got {}",
                            brief(other)
                        )));
                    }
                    None => {
                        return Err(Error::invalid(format!(
                            "op {position}: missing \"op\" field"
                        )));
                    }
                };
                match Op::from_fields(name, map, Source::Json) {
                    Ok(Some(op)) => Ok(op),
                    Ok(None) => Err(Error::invalid(format!(
                        "op {position}: unknown op {}",
                        quoted(name)
                    ))),
                    Err(msg) => Err(Error::invalid(format!("op {position} ({name}): {msg}"))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Pipeline::new(ops)
    }

    /// Validates the text form, `resize:w=1920/blur:sigma=2/format:webp,q=85` (see [`text`]).
    pub fn from_text(text: &str) -> Result<Pipeline, Error> {
        let ops = text::split(text, |name| Op::spec(name).map(Spec::field_names)).map_err(
            |(position, name, msg)| {
                Error::invalid(match (position, name) {
                    (0, _) => msg,
                    (position, Some(name)) => format!("op {position} ({name}): {msg}"),
                    (position, None) => format!("op {position}: {msg}"),
                })
            },
        )?;
        check_count(ops.len())?;
        let ops = ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let position = i + 1;
                match Op::from_fields(op.name, &op.fields, Source::Text) {
                    Ok(Some(parsed)) => Ok(parsed),
                    Ok(None) => Err(Error::invalid(format!(
                        "op {position}: unknown op {}",
                        quoted(op.name)
                    ))),
                    Err(msg) => Err(Error::invalid(format!(
                        "op {position} ({}): {msg}",
                        op.name
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Pipeline::new(ops)
    }

    /// Either form a person types: a JSON array (it starts with `[`) or the text form.
    pub fn parse(input: &str) -> Result<Pipeline, Error> {
        if input.trim_start().starts_with('[') {
            Pipeline::from_json(input)
        } else {
            Pipeline::from_text(input)
        }
    }

    /// The JSON form; `from_json(&p.to_json())` gives back `p`.
    pub fn to_json(&self) -> String {
        let ops: Vec<Value> = self
            .ops
            .iter()
            .map(|op| {
                let mut map = serde_json::Map::new();
                map.insert("op".into(), Value::from(op.name()));
                map.extend(op.params().into_iter().map(|(k, v)| (k.to_string(), v)));
                Value::Object(map)
            })
            .collect();
        Value::Array(ops).to_string()
    }

    /// The text form; `from_text(&p.to_text())` gives back `p`.
    pub fn to_text(&self) -> String {
        self.ops
            .iter()
            .map(|op| text::write_op(op.name(), &op.params()))
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The protobuf form; `from_proto(&p.to_proto())` gives back `p`.
    pub fn to_proto(&self) -> Vec<Operation> {
        self.ops.iter().map(Op::to_proto).collect()
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The halo a tile must carry on each side so that, after every op, its interior pixels
    /// match the whole image's exactly: the sum of the ops' halos, since each op widens the
    /// neighbourhood the next one reads. `None` if any op cannot run on tiles.
    pub fn tile_halo(&self) -> Option<u32> {
        self.ops.iter().try_fold(0u32, |sum, op| {
            op.tile_halo().map(|halo| sum.saturating_add(halo))
        })
    }

    /// The blob ids of the logos the pipeline's watermarks need, each once, in pipeline order.
    pub fn logos(&self) -> Vec<&str> {
        let mut logos: Vec<&str> = Vec::new();
        for op in &self.ops {
            if let Op::Watermark(watermark) = op
                && !logos.contains(&watermark.logo())
            {
                logos.push(watermark.logo());
            }
        }
        logos
    }

    /// The position (1-based) of the first op that asks the filters' AI model
    /// ([`Describe`]): such a job needs a filter with an AI endpoint.
    pub fn describes(&self) -> Option<usize> {
        self.ops
            .iter()
            .position(|op| matches!(op, Op::Describe(_)))
            .map(|i| i + 1)
    }

    /// The segmentation models the pipeline's `remove_background` ops name, each with the
    /// position (1-based) of its first op: a job needs a filter that has each one.
    pub fn models(&self) -> Vec<(usize, &str)> {
        let mut models: Vec<(usize, &str)> = Vec::new();
        for (i, op) in self.ops.iter().enumerate() {
            if let Op::RemoveBackground(remove) = op
                && !models.iter().any(|(_, model)| *model == remove.model())
            {
                models.push((i + 1, remove.model()));
            }
        }
        models
    }

    /// How small the decoded image may be (width, height; 0 = any) before the pipeline runs,
    /// for a decoder that can shrink on load (JPEG's DCT scaling): `Some` only when the first
    /// op is a `thumbnail` or a `resize`, since only a resampling op can absorb a smaller
    /// input. The engine decodes at the largest of 1/2, 1/4, 1/8 that stays at least this size
    /// (times its headroom).
    ///
    /// The size is the op's box, side by side, which is conservative: whatever the aspect
    /// ratio, the output of `inside`, `cover` and `fill` lies within the box on each side given,
    /// so an input at least the box's size is still shrunk (or kept) on every axis and never
    /// enlarged; without the input's size a tighter bound cannot be known. A side left unset
    /// (fit `inside` only) follows the aspect ratio and needs no bound. `cover` and `fill` then
    /// make exactly the same size as from the full image; for `inside` the side that follows
    /// the aspect ratio can round one pixel differently, because the decoder rounds the scaled
    /// sides, so the engine takes sizes from the full-size image.
    ///
    /// `None` for fit `exact`, whose content inside the padded box would need the same care,
    /// and for the `nearest` filter: pixel art should keep its exact pixels, which a
    /// DCT-scaled decode would average.
    pub fn shrink_on_load(&self) -> Option<(u32, u32)> {
        let resize = match self.ops.first()? {
            Op::Thumbnail(thumbnail) => thumbnail.resize(),
            Op::Resize(resize) => *resize,
            _ => return None,
        };
        if resize.filter() == Filter::Nearest || resize.fit() == Fit::Exact {
            return None;
        }
        Some((resize.width().unwrap_or(0), resize.height().unwrap_or(0)))
    }

    /// The output format the pipeline asks for, if any; it is always the last op.
    pub fn output_format(&self) -> Option<&Format> {
        match self.ops.last() {
            Some(Op::Format(format)) => Some(format),
            _ => None,
        }
    }

    /// The one frame of an animated input the pipeline uses (the format op's `frame`), or
    /// `None` to keep every frame.
    pub fn frame(&self) -> Option<u32> {
        self.output_format().and_then(Format::frame)
    }

    /// How many frames of a `frames`-frame input the pipeline decodes and processes.
    pub fn frames_processed(&self, frames: u32) -> u32 {
        if self.frame().is_some() {
            1
        } else {
            frames.max(1)
        }
    }

    /// Why the pipeline cannot keep the frames of a `frames`-frame animation, naming the first
    /// op that cannot animate (see [`Op::animates`]); `None` for a still input, a pipeline
    /// that picks one frame, or one whose every op animates. Refused rather than quietly
    /// dropping frames: `frame=0` says so explicitly.
    pub fn animation_refusal(&self, frames: u32) -> Option<String> {
        if frames <= 1 || self.frame().is_some() {
            return None;
        }
        let (i, op) = self.ops.iter().enumerate().find(|(_, op)| !op.animates())?;
        let why = match op {
            Op::Format(format) => format!("{} holds one frame", format.format().name()),
            Op::Crop(_) | Op::Resize(_) => {
                "a crop placed by content would cut each frame at another place".to_string()
            }
            _ => "it reports on one image".to_string(),
        };
        Some(format!(
            "the input is an animation of {frames} frames and op {} ({}) cannot animate: {why}; add frame=0 to the format op to use one frame",
            i + 1,
            op.name()
        ))
    }

    /// Rules about the pipeline as a whole, after each op checked its own fields.
    fn new(ops: Vec<Op>) -> Result<Pipeline, Error> {
        let last = ops.len();
        if let Some(i) = ops
            .iter()
            .position(|op| matches!(op, Op::Format(_)))
            .filter(|&i| i + 1 != last)
        {
            // One format op, at the end: a format in the middle would have no effect.
            return Err(Error::invalid(format!(
                "op {} (format): format must be the last op",
                i + 1
            )));
        }
        let pipeline = Pipeline { ops };
        if pipeline.logos().len() > MAX_LOGOS {
            return Err(Error::invalid(format!(
                "pipeline uses {} different logos, over the limit of {MAX_LOGOS}",
                pipeline.logos().len()
            )));
        }
        Ok(pipeline)
    }
}

fn check_count(count: usize) -> Result<(), Error> {
    if count > MAX_OPS {
        return Err(Error::invalid(format!(
            "pipeline has {count} ops, over the limit of {MAX_OPS}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelmesh_proto::ErrorCode;
    use pixelmesh_proto::v1;

    fn json_err(json: &str) -> String {
        let err = Pipeline::from_json(json).expect_err(json);
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        err.message
    }

    fn proto_err(ops: Vec<operation::Op>) -> String {
        let ops: Vec<Operation> = ops
            .into_iter()
            .map(|op| Operation { op: Some(op) })
            .collect();
        let err = Pipeline::from_proto(&ops).expect_err("invalid pipeline");
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        err.message
    }

    #[test]
    fn a_pipeline_overlays_at_most_max_logos_different_logos() {
        let watermarks = |logos: usize| {
            (0..logos)
                .map(|i| format!("watermark:logo={:064x}", i % 5))
                .collect::<Vec<_>>()
                .join("/")
        };
        // The same logo twice counts once.
        assert_eq!(
            Pipeline::from_text(&watermarks(8)).unwrap_err().message,
            "pipeline uses 5 different logos, over the limit of 4"
        );
        let four = Pipeline::from_text(&watermarks(4)).unwrap();
        assert_eq!(four.logos().len(), MAX_LOGOS);
        let repeated = format!("{}/{}", watermarks(4), watermarks(4));
        assert_eq!(Pipeline::from_text(&repeated).unwrap().ops().len(), 8);
    }

    #[test]
    fn validation_messages_name_position_op_and_field() {
        let cases = [
            (
                r#"[{"op":"resize","width":10},{"op":"blur","sigma":-1}]"#,
                "op 2 (blur): sigma must be > 0 and <= 100, got -1",
            ),
            (r#"[{"op":"sharpenn"}]"#, r#"op 1: unknown op "sharpenn""#),
            (
                r#"[{"op":"resize","widht":100}]"#,
                r#"op 1 (resize): unknown field "widht""#,
            ),
            (
                r#"[{"op":"resize","width":0,"height":0}]"#,
                "op 1 (resize): width or height is required",
            ),
            (
                r#"[{"op":"resize","width":-5}]"#,
                "op 1 (resize): width must be between 1 and 16384, got -5",
            ),
            (
                r#"[{"op":"resize","height":16385}]"#,
                "op 1 (resize): height must be between 1 and 16384, got 16385",
            ),
            (
                r#"[{"op":"resize","width":10,"fit":"cover"}]"#,
                "op 1 (resize): fit cover needs both width and height",
            ),
            (
                r#"[{"op":"resize","width":10,"fit":"stretch"}]"#,
                r#"op 1 (resize): fit must be one of inside, cover, fill, exact, got "stretch""#,
            ),
            (
                r#"[{"op":"format","format":"png"},{"op":"grayscale"}]"#,
                "op 1 (format): format must be the last op",
            ),
            (
                r#"[{"op":"format","format":"jpeg","quality":101}]"#,
                "op 1 (format): quality must be between 1 and 100, got 101",
            ),
            (
                r#"[{"op":"format","format":"heic"}]"#,
                r#"op 1 (format): format must be one of jpeg, png, webp, gif, bmp, tiff, avif, got "heic""#,
            ),
            (
                r#"[{"op":"format","format":"avif","effort":10}]"#,
                "op 1 (format): effort must be between 0 and 9, got 10",
            ),
            (
                r#"[{"op":"format","format":"webp","effort":2}]"#,
                "op 1 (format): effort applies to avif only, not webp",
            ),
            (r#"[{"op":"format"}]"#, "op 1 (format): format is required"),
            (
                r#"[{"op":"brightness","factor":10.5}]"#,
                "op 1 (brightness): factor must be >= 0 and <= 10, got 10.5",
            ),
            (
                r#"[{"op":"brightness"}]"#,
                "op 1 (brightness): factor is required",
            ),
            (r#"[{"op":"blur"}]"#, "op 1 (blur): sigma is required"),
            (
                r#"[{"op":"blur","sigma":"2"}]"#,
                r#"op 1 (blur): sigma must be a number, got "2""#,
            ),
            (
                r#"[{"op":"grayscale","amount":1}]"#,
                r#"op 1 (grayscale): unknown field "amount""#,
            ),
            (r#"[{"width":1}]"#, r#"op 1: missing "op" field"#),
            (
                r#"[7]"#,
                r#"op 1: must be an object with an "op" field, got 7"#,
            ),
            (r#"{"op":"blur"}"#, "pipeline must be a json array of ops"),
        ];
        for (json, want) in cases {
            assert_eq!(json_err(json), want, "{json}");
        }
        assert!(json_err("[").starts_with("pipeline is not valid json: "));
    }

    #[test]
    fn proto_validation_matches_json() {
        assert_eq!(
            proto_err(vec![operation::Op::Blur(v1::Blur { sigma: -1.0 })]),
            "op 1 (blur): sigma must be > 0 and <= 100, got -1"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Blur(v1::Blur { sigma: f32::NAN })]),
            "op 1 (blur): sigma must be > 0 and <= 100, got NaN"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Resize(v1::Resize::default())]),
            "op 1 (resize): width or height is required"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Resize(v1::Resize {
                width: 10,
                height: 0,
                fit: 42,
                ..Default::default()
            })]),
            "op 1 (resize): fit must be one of inside, cover, fill, exact, got 42"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Format(v1::Format {
                format: v1::ImageFormat::Jpeg as i32,
                quality: 101,
                ..Default::default()
            })]),
            "op 1 (format): quality must be between 1 and 100, got 101"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Format(v1::Format::default())]),
            "op 1 (format): format is required"
        );
        assert_eq!(
            proto_err(vec![
                operation::Op::Format(v1::Format {
                    format: v1::ImageFormat::Png as i32,
                    quality: 0,
                    ..Default::default()
                }),
                operation::Op::Format(v1::Format {
                    format: v1::ImageFormat::Jpeg as i32,
                    quality: 0,
                    ..Default::default()
                }),
            ]),
            "op 1 (format): format must be the last op"
        );
        let err = Pipeline::from_proto(&[Operation::default()]).unwrap_err();
        assert_eq!(err.message, "op 1: no op set");
    }

    #[test]
    fn op_count_is_limited() {
        let ok = vec![
            Operation {
                op: Some(operation::Op::Grayscale(v1::Grayscale {}))
            };
            MAX_OPS
        ];
        assert_eq!(Pipeline::from_proto(&ok).unwrap().ops().len(), MAX_OPS);
        let too_many = format!("[{}]", vec![r#"{"op":"grayscale"}"#; MAX_OPS + 1].join(","));
        assert_eq!(
            json_err(&too_many),
            "pipeline has 65 ops, over the limit of 64"
        );
    }

    #[test]
    fn empty_pipeline_is_valid() {
        assert!(Pipeline::from_json("[]").unwrap().ops().is_empty());
        assert!(Pipeline::from_proto(&[]).unwrap().ops().is_empty());
    }

    #[test]
    fn json_and_proto_forms_parse_to_the_same_pipeline() {
        let json = Pipeline::from_json(
            r#"[{"op":"resize","width":1920},{"op":"blur","sigma":2},
                {"op":"brightness","factor":1.1},{"op":"grayscale"},
                {"op":"resize","width":300,"height":200,"fit":"cover"},
                {"op":"format","format":"webp"}]"#,
        )
        .unwrap();
        let ops = [
            operation::Op::Resize(v1::Resize {
                width: 1920,
                height: 0,
                fit: v1::Fit::Unspecified as i32,
                ..Default::default()
            }),
            operation::Op::Blur(v1::Blur { sigma: 2.0 }),
            operation::Op::Brightness(v1::Brightness { factor: 1.1 }),
            operation::Op::Grayscale(v1::Grayscale {}),
            operation::Op::Resize(v1::Resize {
                width: 300,
                height: 200,
                fit: v1::Fit::Cover as i32,
                ..Default::default()
            }),
            operation::Op::Format(v1::Format {
                format: v1::ImageFormat::Webp as i32,
                quality: 0,
                ..Default::default()
            }),
        ]
        .map(|op| Operation { op: Some(op) });
        let proto = Pipeline::from_proto(&ops).unwrap();
        assert_eq!(json, proto);
        assert_eq!(json.ops().len(), 6);
        assert_eq!(
            json.output_format(),
            Some(&Format::new(FileFormat::Webp, crate::formats::DEFAULT_QUALITY).unwrap())
        );
    }

    #[test]
    fn to_proto_round_trips() {
        let pipeline = Pipeline::from_json(
            r#"[{"op":"resize","height":77,"fit":"inside"},{"op":"resize","width":5,"height":9,"fit":"fill"},
                {"op":"blur","sigma":0.5},{"op":"brightness","factor":0},{"op":"grayscale"},
                {"op":"format","format":"jpeg","quality":42}]"#,
        )
        .unwrap();
        let back = Pipeline::from_proto(&pipeline.to_proto()).unwrap();
        assert_eq!(back, pipeline);
        let empty = Pipeline::default();
        assert_eq!(Pipeline::from_proto(&empty.to_proto()).unwrap(), empty);
    }

    #[test]
    fn every_form_round_trips() {
        let text = "resize:w=1920,h=1080,fit=exact,filter=nearest,upscale=true/flip/flop/\
                    blur:sigma=1.5/brightness:1.1/contrast:0.8/gamma:2.2/saturation:1.3/\
                    hue:-45/grayscale/sepia/invert/threshold:level=100/\
                    format:jpeg,q=70,progressive=true";
        let pipeline = Pipeline::from_text(text).unwrap();
        assert_eq!(pipeline.ops().len(), 14);
        assert_eq!(Pipeline::from_text(&pipeline.to_text()).unwrap(), pipeline);
        assert_eq!(Pipeline::from_json(&pipeline.to_json()).unwrap(), pipeline);
        assert_eq!(
            Pipeline::from_proto(&pipeline.to_proto()).unwrap(),
            pipeline
        );
        assert_eq!(Pipeline::parse(&pipeline.to_json()).unwrap(), pipeline);
        assert_eq!(Pipeline::parse(text).unwrap(), pipeline);
        for png in [
            "format:png,compression=9",
            "format:webp,lossless=true",
            "resize:300,200,cover/threshold",
            "crop:10,20,300,200/crop:w=50,h=40,g=south_east",
            "pixelate/pixelate:size=16",
        ] {
            let p = Pipeline::from_text(png).unwrap();
            assert_eq!(Pipeline::from_json(&p.to_json()).unwrap(), p, "{png}");
            assert_eq!(Pipeline::from_proto(&p.to_proto()).unwrap(), p, "{png}");
        }
    }

    const LOGO: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn every_new_op_round_trips_through_every_form() {
        let text = format!(
            "thumbnail:w=200,h=100/thumbnail:h=50/rotate:-30.5,background=#FF000080/rotate:90/\
             rotate:angle=45,background=00ff00/auto_orient/sharpen/\
             sharpen:sigma=2.5,amount=1.5,threshold=4/edge/\
             watermark:{LOGO},g=south_west,scale=12.5,opacity=0.4,padding=0/watermark:{LOGO}/\
             analyze/format:png"
        );
        let pipeline = Pipeline::from_text(&text).unwrap();
        assert_eq!(pipeline.ops().len(), 13);
        assert_eq!(Pipeline::from_text(&pipeline.to_text()).unwrap(), pipeline);
        assert_eq!(Pipeline::from_json(&pipeline.to_json()).unwrap(), pipeline);
        assert_eq!(
            Pipeline::from_proto(&pipeline.to_proto()).unwrap(),
            pipeline
        );
        assert_eq!(
            pipeline.to_text(),
            format!(
                "thumbnail:width=200,height=100/thumbnail:height=50/\
                 rotate:angle=329.5,background=#ff000080/rotate:angle=90/\
                 rotate:angle=45,background=#00ff00/auto_orient/sharpen/\
                 sharpen:sigma=2.5,amount=1.5,threshold=4/edge/\
                 watermark:logo={LOGO},gravity=south_west,scale=12.5,opacity=0.4,padding=0/\
                 watermark:logo={LOGO}/analyze/format:format=png"
            )
        );
        let json = Pipeline::from_json(&format!(
            r#"[{{"op":"sharpen","sigma":1}},{{"op":"rotate","angle":-90}},
                {{"op":"watermark","logo":"{LOGO}","gravity":"centre"}},{{"op":"edge"}}]"#
        ))
        .unwrap();
        assert_eq!(
            json,
            Pipeline::from_text(&format!(
                "sharpen:sigma=1/rotate:270/watermark:{LOGO},g=center/edge"
            ))
            .unwrap()
        );
        assert_eq!(Pipeline::from_proto(&json.to_proto()).unwrap(), json);
    }

    #[test]
    fn new_ops_name_their_fields_in_errors() {
        let cases = [
            (
                r#"[{"op":"sharpen","amount":0}]"#,
                "op 1 (sharpen): amount must be > 0 and <= 10, got 0",
            ),
            (
                r#"[{"op":"sharpen","sigma":101}]"#,
                "op 1 (sharpen): sigma must be > 0 and <= 100, got 101",
            ),
            (
                r#"[{"op":"sharpen","threshold":256}]"#,
                "op 1 (sharpen): threshold must be between 0 and 255, got 256",
            ),
            (r#"[{"op":"rotate"}]"#, "op 1 (rotate): angle is required"),
            (
                r#"[{"op":"rotate","angle":400}]"#,
                "op 1 (rotate): angle must be between -360 and 360, got 400",
            ),
            (
                r#"[{"op":"rotate","angle":10,"background":"red"}]"#,
                r##"op 1 (rotate): background must be a hex colour #rrggbb or #rrggbbaa, got "red""##,
            ),
            (
                r#"[{"op":"thumbnail"}]"#,
                "op 1 (thumbnail): width or height is required",
            ),
            (
                r#"[{"op":"thumbnail","width":-1}]"#,
                "op 1 (thumbnail): width must be between 1 and 16384, got -1",
            ),
            (
                r#"[{"op":"watermark"}]"#,
                "op 1 (watermark): logo is required",
            ),
            (
                r#"[{"op":"watermark","logo":"x"}]"#,
                r#"op 1 (watermark): logo must be a blob id of 64 lowercase hex characters, got "x""#,
            ),
            (
                r#"[{"op":"edge","radius":2}]"#,
                r#"op 1 (edge): unknown field "radius""#,
            ),
            (
                r#"[{"op":"analyze","deep":true}]"#,
                r#"op 1 (analyze): unknown field "deep""#,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(json_err(json), want, "{json}");
        }
        assert_eq!(
            proto_err(vec![operation::Op::Watermark(v1::Watermark {
                logo: LOGO.into(),
                opacity: 2.0,
                ..Default::default()
            })]),
            "op 1 (watermark): opacity must be > 0 and <= 1, got 2"
        );
        assert_eq!(
            proto_err(vec![operation::Op::Rotate(v1::Rotate {
                angle: f64::NAN,
                background: String::new(),
            })]),
            "op 1 (rotate): angle must be between -360 and 360, got NaN"
        );
    }

    #[test]
    fn animations_are_refused_by_ops_that_cannot_animate_unless_one_frame_is_picked() {
        let p = |text: &str| Pipeline::from_text(text).unwrap();
        for keeps in [
            "resize:w=100/crop:w=50,h=50/flip/rotate:90/grayscale/format:webp",
            "brightness:1.2/format:gif",
            // No format op: the output is the input's own format, an animated one.
            "thumbnail:w=64,h=64/sepia",
        ] {
            assert_eq!(p(keeps).animation_refusal(12), None, "{keeps}");
            assert_eq!(p(keeps).frames_processed(12), 12);
        }
        let analyze = p("resize:w=100/analyze/format:gif");
        assert_eq!(
            analyze.animation_refusal(12).unwrap(),
            "the input is an animation of 12 frames and op 2 (analyze) cannot animate: it reports on one image; add frame=0 to the format op to use one frame"
        );
        assert!(
            p("crop:w=50,h=50,g=smart/format:gif")
                .animation_refusal(12)
                .unwrap()
                .contains("op 1 (crop) cannot animate: a crop placed by content")
        );
        assert_eq!(p("blur_faces/format:gif").animation_refusal(12), None);
        let png = p("resize:w=100/format:png");
        assert!(
            png.animation_refusal(3)
                .unwrap()
                .contains("op 2 (format) cannot animate: png holds one frame"),
        );
        // A still input, or a frame picked, is never refused.
        assert_eq!(png.animation_refusal(1), None);
        let picked = p("resize:w=100/analyze/format:png,frame=2");
        assert_eq!(picked.frame(), Some(2));
        assert_eq!(picked.animation_refusal(12), None);
        assert_eq!(picked.frames_processed(12), 1);
        // The tile split decodes the first frame: a picked frame is processed whole.
        assert_eq!(p("invert/format:gif,frame=1").tile_halo(), None);
        assert_eq!(p("invert/format:gif").tile_halo(), Some(0));
        // The frame survives every form, and its range is checked.
        assert_eq!(p(&picked.to_text()), picked);
        assert_eq!(Pipeline::from_proto(&picked.to_proto()).unwrap(), picked);
        assert_eq!(Pipeline::from_json(&picked.to_json()).unwrap(), picked);
        assert!(
            picked.to_text().ends_with(",frame=2"),
            "{}",
            picked.to_text()
        );
        let err = Pipeline::from_text("format:gif,frame=1000").unwrap_err();
        assert!(err.message.contains("frame"), "{}", err.message);
    }

    #[test]
    fn tile_halo_sums_radii_and_refuses_geometry() {
        let halo = |text: &str| Pipeline::from_text(text).unwrap().tile_halo();
        assert_eq!(halo(""), Some(0));
        assert_eq!(
            halo("brightness:1.1/grayscale/auto_orient/format:png"),
            Some(0)
        );
        assert_eq!(
            halo("blur:sigma=1.5/sharpen:sigma=2/edge/invert"),
            Some(5 + 6 + 1)
        );
        assert_eq!(halo("sharpen"), Some(3));
        for refused in [
            "resize:w=10",
            "thumbnail:w=10",
            "crop:0,0,5,5",
            "rotate:90",
            "flip",
            "flop",
            "pixelate",
            "analyze",
        ] {
            assert_eq!(halo(&format!("blur:1/{refused}")), None, "{refused}");
        }
        assert_eq!(halo(&format!("edge/watermark:{LOGO}")), None);
    }

    #[test]
    fn shrink_on_load_follows_the_first_resampling_op() {
        let shrink = |text: &str| Pipeline::from_text(text).unwrap().shrink_on_load();
        assert_eq!(shrink("thumbnail:w=200,h=100/blur:2"), Some((200, 100)));
        assert_eq!(shrink("thumbnail:h=64"), Some((0, 64)));
        assert_eq!(shrink("resize:w=300"), Some((300, 0)));
        assert_eq!(shrink("resize:300,200,cover"), Some((300, 200)));
        assert_eq!(shrink("resize:300,200,exact,upscale=true"), None);
        assert_eq!(shrink("resize:300,200,fill,filter=nearest"), None);
        assert_eq!(shrink("grayscale/thumbnail:w=10"), None);
        assert_eq!(shrink("rotate:90/resize:w=10"), None);
        assert_eq!(shrink(""), None);
    }

    #[test]
    fn watermarks_take_their_logos_from_the_assets() {
        let other = "f".repeat(64);
        let pipeline = Pipeline::from_text(&format!(
            "watermark:{LOGO}/watermark:{other},g=south_west/watermark:{LOGO},scale=5"
        ))
        .unwrap();
        assert_eq!(pipeline.logos(), [LOGO, other.as_str()]);
        assert!(Pipeline::from_text("blur:1").unwrap().logos().is_empty());
        let image = Bitmap::new(50, 50, false, vec![0; 50 * 50 * 3]).unwrap();
        let op = &pipeline.ops()[0];
        assert_eq!(
            op.apply(image.clone()).unwrap_err(),
            format!("logo {LOGO} was not loaded")
        );
        let mut assets = Assets::default();
        assets.insert(LOGO, Bitmap::new(2, 2, false, vec![255; 12]).unwrap());
        assert!(assets.get(LOGO).is_some() && assets.get(&other).is_none());
        let out = op.apply_with(image.clone(), &assets).unwrap();
        assert_ne!(out, image);
        assert_eq!((out.width(), out.height()), (50, 50));
        // Other ops ignore the assets.
        let blur = Op::Blur(Blur::new(1.0).unwrap());
        assert_eq!(blur.apply_with(image.clone(), &assets), blur.apply(image));
    }

    #[test]
    fn output_size_follows_rotate_and_thumbnail() {
        let size = |text: &str| Pipeline::from_text(text).unwrap().ops()[0].output_size(400, 300);
        assert_eq!(size("rotate:90"), (300, 400));
        assert_eq!(size("rotate:-180"), (400, 300));
        assert_eq!(size("thumbnail:w=100"), (100, 75));
        assert_eq!(size("edge"), (400, 300));
        assert_eq!(size("analyze"), (400, 300));
    }

    #[test]
    fn describe_parses_in_every_form_and_reports_on_one_image() {
        let p = |text: &str| Pipeline::from_text(text).unwrap();
        for text in [
            "describe",
            "describe:size=256,tags=5",
            "analyze/describe:tags=3",
        ] {
            let pipeline = Pipeline::from_text(text).unwrap();
            let ops: Vec<Operation> = pipeline.ops().iter().map(Op::to_proto).collect();
            assert_eq!(Pipeline::from_proto(&ops).unwrap(), pipeline, "{text}");
            assert_eq!(Pipeline::from_json(&pipeline.to_json()).unwrap(), pipeline);
            assert_eq!(Pipeline::from_text(&pipeline.to_text()).unwrap(), pipeline);
        }
        assert_eq!(p("describe").to_text(), "describe");
        assert_eq!(p("resize:w=10/describe:tags=3").describes(), Some(2));
        assert_eq!(p("resize:w=10").describes(), None);
        let refused = |text: &str| Pipeline::from_text(text).unwrap_err().message;
        assert_eq!(
            refused("describe:size=4000"),
            "op 1 (describe): size must be 128 to 2048 pixels, got 4000"
        );
        assert_eq!(
            refused("describe:tags=0"),
            "op 1 (describe): tags must be 1 to 30, got 0"
        );
        // One report per image: an animation is refused, one frame of it is not.
        assert!(p("describe").animation_refusal(5).is_some());
        assert_eq!(p("describe/format:gif,frame=0").animation_refusal(5), None);
    }

    #[test]
    fn content_gravities_parse_in_every_form_and_place_crops_only() {
        for text in [
            "crop:w=200,h=200,g=smart",
            "crop:w=200,h=200,g=entropy",
            "crop:w=200,h=200,g=face",
            "resize:w=200,h=100,fit=cover,g=face",
            "resize:w=200,h=100,fit=cover,g=north",
            "blur_faces/blur_faces:cover=pixelate",
        ] {
            let pipeline = Pipeline::from_text(text).unwrap();
            let ops: Vec<Operation> = pipeline.ops().iter().map(Op::to_proto).collect();
            assert_eq!(Pipeline::from_proto(&ops).unwrap(), pipeline, "{text}");
            assert_eq!(Pipeline::from_json(&pipeline.to_json()).unwrap(), pipeline);
            assert_eq!(Pipeline::from_text(&pipeline.to_text()).unwrap(), pipeline);
        }
        let refused = |text: &str| Pipeline::from_text(text).unwrap_err().message;
        assert_eq!(
            refused("resize:w=200,h=100,g=smart"),
            "op 1 (resize): gravity applies to fit cover only, not inside"
        );
        assert!(refused("watermark:logo=ab,g=smart").contains("gravity must be one of"));
        assert!(refused("crop:w=5,h=5,g=middle").contains("smart, entropy, face"));
        assert_eq!(
            refused("blur_faces:cover=mosaic"),
            r#"op 1 (blur_faces): cover must be one of blur, pixelate, got "mosaic""#
        );
        // The proto's content gravities are refused where they cannot apply.
        let watermark = Pipeline::from_text(&format!("watermark:logo={}", "a".repeat(64)))
            .unwrap()
            .ops()[0]
            .to_proto();
        let Some(operation::Op::Watermark(mut proto)) = watermark.op else {
            panic!("a watermark");
        };
        proto.gravity = v1::Gravity::Face as i32;
        assert_eq!(
            proto_err(vec![operation::Op::Watermark(proto)]),
            "op 1 (watermark): gravity face places crops only, not this op"
        );
    }

    #[test]
    fn a_face_crop_and_a_cover_resize_keep_the_astronauts_face() {
        let photo = crate::testdata::fixture_photo("astronaut-512x512.jpg");
        let face = crate::ops::faces::detect(&photo).unwrap()[0];
        let cut = |text: &str| {
            let pipeline = Pipeline::from_text(text).unwrap();
            pipeline.ops()[0].apply(photo.clone()).unwrap()
        };
        // A 200x200 crop centred on the face holds the whole face: it is the one face found
        // in the output, at the middle.
        for text in ["crop:w=200,h=200,g=face", "crop:w=200,h=200,g=smart"] {
            let out = cut(text);
            assert_eq!((out.width(), out.height()), (200, 200));
            let found = crate::ops::faces::detect(&out).unwrap();
            assert_eq!(found.len(), 1, "{text}: {found:?}");
        }
        let centred = cut("crop:w=200,h=200");
        assert_eq!(crate::ops::faces::detect(&centred).unwrap(), vec![]);
        // Cover to a wide strip: the face is in it, where the centred strip has none.
        let strip = cut("resize:w=400,h=100,fit=cover,g=face");
        assert_eq!((strip.width(), strip.height()), (400, 100));
        assert_eq!(crate::ops::faces::detect(&strip).unwrap().len(), 1);
        let centred = cut("resize:w=400,h=100,fit=cover");
        assert_eq!(crate::ops::faces::detect(&centred).unwrap(), vec![]);
        assert!(face.y > 0, "{face:?}");
    }

    #[test]
    fn the_documented_text_example_means_what_the_json_does() {
        let text = Pipeline::from_text("resize:w=1920/blur:sigma=2/format:webp,q=85").unwrap();
        let json = Pipeline::from_json(
            r#"[{"op":"resize","width":1920},{"op":"blur","sigma":2},
                {"op":"format","format":"webp","quality":85}]"#,
        )
        .unwrap();
        assert_eq!(text, json);
        assert_eq!(
            text.to_text(),
            "resize:width=1920/blur:sigma=2/format:format=webp"
        );
        assert_eq!(
            json.to_json(),
            r#"[{"op":"resize","width":1920},{"op":"blur","sigma":2},{"op":"format","format":"webp"}]"#
        );
        assert!(Pipeline::from_text("").unwrap().ops().is_empty());
    }

    #[test]
    fn text_form_errors_name_position_op_and_field() {
        let text_err = |text: &str| {
            let err = Pipeline::from_text(text).expect_err(text);
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            err.message
        };
        let cases = [
            (
                "blur:sigma=abc",
                r#"op 1 (blur): sigma must be a number, got "abc""#,
            ),
            (
                "grayscale/blur:-1",
                "op 2 (blur): sigma must be > 0 and <= 100, got -1",
            ),
            ("grayscale/sharpn", r#"op 2: unknown op "sharpn""#),
            (
                "resize:w=10,widht=3",
                r#"op 1 (resize): unknown field "widht""#,
            ),
            (
                "resize:w=ten",
                r#"op 1 (resize): width must be an integer, got "ten""#,
            ),
            (
                "resize:w=10,upscale=maybe",
                r#"op 1 (resize): upscale must be true or false, got "maybe""#,
            ),
            (
                "format:png,progressive=true",
                "op 1 (format): progressive applies to jpeg only, not png",
            ),
            (
                "format:jpeg,compression=3",
                "op 1 (format): compression applies to png only, not jpeg",
            ),
            (
                "gamma:0",
                "op 1 (gamma): gamma must be between 0.1 and 10, got 0",
            ),
            ("hue", "op 1 (hue): degrees is required"),
            (
                "threshold:300",
                "op 1 (threshold): level must be between 0 and 255, got 300",
            ),
            (
                "format:png/grayscale",
                "op 1 (format): format must be the last op",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text_err(text), want, "{text}");
        }
        assert_eq!(
            text_err(&vec!["grayscale"; MAX_OPS + 1].join("/")),
            "pipeline has 65 ops, over the limit of 64"
        );
    }

    #[test]
    fn null_fields_count_as_absent() {
        let pipeline =
            Pipeline::from_json(r#"[{"op":"resize","width":10,"height":null,"fit":null}]"#)
                .unwrap();
        assert_eq!(
            pipeline.ops(),
            &[Op::Resize(Resize::new(10, 0, Fit::Inside).unwrap())]
        );
    }
}
