//! Property tests of what clients and uploads control in the filter: the pipeline parsers (the
//! JSON, text and protobuf forms) and the image sniffers (`codec::detect_format`,
//! `codec::probe`, `tiles::pixels_of`).
//!
//! Each property runs a fixed number of cases through [`check`], which prints how many ran;
//! the counts are chosen so the whole file takes seconds on two cores, as CI runs it.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::tiff::TiffEncoder;
use image::{ExtendedColorType, ImageEncoder};
use pixelmesh_common::testing::check;
use pixelmesh_filter::codec::{self, Encoding, Limits};
use pixelmesh_filter::ops::text::MAX_TEXT_BYTES;
use pixelmesh_filter::ops::{
    Analyze, Anchor, AutoOrient, Bitmap, Blur, Brightness, Contrast, Crop, Describe, Edge,
    FileFormat, Filter, Fit, Flip, Flop, Format, Gamma, Gravity, Grayscale, Hue, Invert, MAX_OPS,
    Op, Pipeline, Pixelate, RemoveBackground, Resize, Rotate, Saturation, Sepia, Sharpen,
    Threshold, Thumbnail, Watermark, crop, resize, rotate,
};
use pixelmesh_filter::tiles;
use pixelmesh_pipeline::formats::Metadata;
use pixelmesh_proto::v1::{self, Operation, operation};
use pixelmesh_proto::{Error, ErrorCode};
use proptest::prelude::*;
use proptest::strategy::Union;
use serde_json::Value;

// ---------------------------------------------------------------- helpers

/// The error every pipeline parser gives for bad input: invalid argument, lowercase, without
/// trailing punctuation, and short whatever the input (clients control what it quotes).
fn well_refused(err: &Error) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    prop_assert!(
        err.message
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase()),
        "message does not start lowercase: {:?}",
        err.message
    );
    prop_assert!(
        !err.message.ends_with(['.', '!']),
        "trailing punctuation: {:?}",
        err.message
    );
    prop_assert!(
        err.message.len() <= 512,
        "{} bytes: {:?}",
        err.message.len(),
        err.message
    );
    Ok(())
}

fn accepted(result: Result<Pipeline, Error>, what: &str) -> Result<Pipeline, TestCaseError> {
    result.map_err(|err| TestCaseError::fail(format!("{what} refused: {}", err.message)))
}

/// Every form `p` writes reads back as `p` (but for the known bugs [`same_ops`] lists).
fn round_trips(p: &Pipeline) -> Result<(), TestCaseError> {
    let text = p.to_text();
    prop_assert_eq!(&accepted(Pipeline::from_text(&text), &text)?, p);
    prop_assert_eq!(&accepted(Pipeline::parse(&text), &text)?, p);
    let json = p.to_json();
    same_ops(
        accepted(Pipeline::from_json(&json), &json)?.ops(),
        p.ops(),
        Form::Json,
    )?;
    same_ops(
        accepted(Pipeline::parse(&json), &json)?.ops(),
        p.ops(),
        Form::Json,
    )?;
    let proto = p.to_proto();
    same_ops(
        accepted(Pipeline::from_proto(&proto), &text)?.ops(),
        p.ops(),
        Form::Proto,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Json,
    Proto,
}

/// `read`, parsed from `written`'s `form`, has exactly the same ops.
fn same_ops(read: &[Op], written: &[Op], form: Form) -> Result<(), TestCaseError> {
    prop_assert_eq!(read, written, "{:?}", form);
    Ok(())
}

// ---------------------------------------------------------------- valid pipelines

/// One field value as a client writes it, in either form.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    /// A float; `true` writes the text form in exponent notation (`1.5e0`).
    Num(f64, bool),
    /// A boolean; `true` writes the text form as a digit (`1`, `0`).
    Bool(bool, bool),
    Str(String),
}

impl Arg {
    fn text(&self) -> String {
        match self {
            Arg::Int(n) => n.to_string(),
            // Rust prints the shortest decimal that reads back as the same f64.
            Arg::Num(x, false) => x.to_string(),
            Arg::Num(x, true) => format!("{x:e}"),
            Arg::Bool(b, false) => b.to_string(),
            Arg::Bool(b, true) => u8::from(*b).to_string(),
            Arg::Str(s) => s.clone(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Arg::Int(n) => Value::from(*n),
            Arg::Num(x, _) => Value::from(*x),
            Arg::Bool(b, _) => Value::from(*b),
            Arg::Str(s) => Value::from(s.as_str()),
        }
    }
}

/// Each op's fields in the order the text form's bare values fill them (the README's table).
fn fields_of(name: &str) -> &'static [&'static str] {
    match name {
        "resize" => &["width", "height", "fit", "filter", "upscale"],
        "thumbnail" => &["width", "height"],
        "crop" => &["x", "y", "width", "height", "gravity"],
        "rotate" => &["angle", "background"],
        "blur" => &["sigma"],
        "sharpen" => &["sigma", "amount", "threshold"],
        "pixelate" => &["size"],
        "describe" => &["size", "tags"],
        "remove_background" => &["model", "refine"],
        "brightness" | "contrast" | "saturation" => &["factor"],
        "gamma" => &["gamma"],
        "hue" => &["degrees"],
        "threshold" => &["level"],
        "watermark" => &["logo", "gravity", "scale", "opacity", "padding"],
        "format" => &[
            "format",
            "quality",
            "progressive",
            "lossless",
            "compression",
            "effort",
            "metadata",
            "strip",
            "keep_icc",
            "frame",
        ],
        _ => &[],
    }
}

const OP_NAMES: &[&str] = &[
    "resize",
    "thumbnail",
    "crop",
    "rotate",
    "flip",
    "flop",
    "auto_orient",
    "blur",
    "sharpen",
    "edge",
    "pixelate",
    "brightness",
    "contrast",
    "gamma",
    "saturation",
    "hue",
    "grayscale",
    "sepia",
    "invert",
    "threshold",
    "watermark",
    "analyze",
    "describe",
    "remove_background",
    "format",
];

/// The text form's short field names.
fn alias_of(field: &str) -> Option<&'static str> {
    match field {
        "width" => Some("w"),
        "height" => Some("h"),
        "quality" => Some("q"),
        "gravity" => Some("g"),
        _ => None,
    }
}

/// How one op is spelled in the text form.
#[derive(Debug, Clone)]
struct Style {
    /// Leading fields written as bare values, as far as the fields given allow.
    positional: usize,
    aliases: bool,
    /// Named fields are rotated by this much: order must not matter.
    rotate: usize,
    spaces: bool,
    /// JSON: absent fields written as `null`.
    nulls: bool,
}

fn style() -> impl Strategy<Value = Style> {
    (
        0..6_usize,
        any::<bool>(),
        0..5_usize,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(positional, aliases, rotate, spaces, nulls)| Style {
            positional,
            aliases,
            rotate,
            spaces,
            nulls,
        })
}

/// An op, the fields a client wrote for it (by index into [`fields_of`], in that order), and
/// how it is spelled.
#[derive(Debug, Clone)]
struct OpSpec {
    op: Op,
    name: &'static str,
    args: Vec<(usize, Arg)>,
    style: Style,
}

impl OpSpec {
    fn new(op: Op, args: Vec<(usize, Arg)>) -> OpSpec {
        OpSpec {
            name: op.name(),
            op,
            args,
            style: Style {
                positional: 0,
                aliases: false,
                rotate: 0,
                spaces: false,
                nulls: false,
            },
        }
    }

    fn text(&self) -> String {
        if self.args.is_empty() {
            return self.name.to_string();
        }
        let fields = fields_of(self.name);
        let style = &self.style;
        // Bare values fill fields in order, so only a run from the first field can be bare.
        let run = self
            .args
            .iter()
            .enumerate()
            .take_while(|(i, (field, _))| i == field)
            .count();
        let bare = style.positional.min(run);
        let mut named: Vec<String> = self.args[bare..]
            .iter()
            .map(|(field, arg)| {
                let name = fields[*field];
                let key = alias_of(name).filter(|_| style.aliases).unwrap_or(name);
                if style.spaces {
                    format!(" {key} = {} ", arg.text())
                } else {
                    format!("{key}={}", arg.text())
                }
            })
            .collect();
        if !named.is_empty() {
            let by = style.rotate % named.len();
            named.rotate_left(by);
        }
        let args: Vec<String> = self.args[..bare]
            .iter()
            .map(|(_, arg)| arg.text())
            .chain(named)
            .collect();
        let comma = if style.spaces { " , " } else { "," };
        format!("{}:{}", self.name, args.join(comma))
    }

    fn json(&self) -> Value {
        let fields = fields_of(self.name);
        let mut map = serde_json::Map::new();
        map.insert("op".into(), Value::from(self.name));
        if self.style.nulls {
            for field in fields {
                map.insert((*field).into(), Value::Null);
            }
        }
        for (field, arg) in &self.args {
            map.insert(fields[*field].into(), arg.json());
        }
        Value::Object(map)
    }
}

/// A valid pipeline as a client could write it.
#[derive(Debug, Clone)]
struct Case {
    ops: Vec<OpSpec>,
    slash_spaces: bool,
    pretty: bool,
}

impl Case {
    fn expected(&self) -> Vec<Op> {
        self.ops.iter().map(|spec| spec.op.clone()).collect()
    }

    fn text(&self) -> String {
        let slash = if self.slash_spaces { " / " } else { "/" };
        let ops: Vec<String> = self.ops.iter().map(OpSpec::text).collect();
        ops.join(slash)
    }

    fn json(&self) -> String {
        let ops = Value::Array(self.ops.iter().map(OpSpec::json).collect());
        if self.pretty {
            serde_json::to_string_pretty(&ops).expect("json")
        } else {
            ops.to_string()
        }
    }
}

/// Four blob ids: a pipeline may overlay at most four different logos.
const LOGOS: [&str; 4] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
];

/// f32s around `min..=max`, weighted to the ends, tiny values and short decimals; the ops'
/// constructors then keep the valid ones.
fn float_near(min: f32, max: f32) -> BoxedStrategy<f32> {
    prop_oneof![
        Just(min),
        Just(max),
        min..=max,
        (0_u32..=1000).prop_map(move |n| min + (max - min) * n as f32 / 1000.0),
        // The smallest subnormal and the smallest normal f32.
        Just(f32::from_bits(1)),
        Just(f32::MIN_POSITIVE),
        Just(-0.0_f32),
    ]
    .boxed()
}

fn num(x: f32, exponent: bool) -> Arg {
    Arg::Num(f64::from(x), exponent)
}

fn side() -> BoxedStrategy<u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(resize::MAX_DIMENSION),
        1..=resize::MAX_DIMENSION
    ]
    .boxed()
}

fn fit() -> impl Strategy<Value = Fit> {
    prop::sample::select(vec![Fit::Inside, Fit::Cover, Fit::Fill, Fit::Exact])
}

fn filter() -> impl Strategy<Value = Filter> {
    prop::sample::select(vec![
        Filter::Lanczos3,
        Filter::CatmullRom,
        Filter::Bilinear,
        Filter::Nearest,
    ])
}

fn gravity() -> impl Strategy<Value = Gravity> {
    prop::sample::select(Gravity::ALL.to_vec())
}

/// A gravity's name, in either spelling of centre.
fn gravity_arg(gravity: Gravity, american: bool) -> Arg {
    match gravity {
        Gravity::Centre if american => Arg::Str("center".into()),
        other => Arg::Str(other.name().into()),
    }
}

fn resize_op() -> BoxedStrategy<OpSpec> {
    (
        side(),
        side(),
        prop::option::of(fit()),
        prop::option::of(filter()),
        prop::option::of((any::<bool>(), any::<bool>())),
    )
        .prop_filter_map(
            "resize needs a valid box",
            |(w, h, fit, filter, upscale)| {
                let op = Resize::with_options(
                    w,
                    h,
                    fit.unwrap_or(Fit::Inside),
                    filter.unwrap_or(Filter::Lanczos3),
                    upscale.is_some_and(|(up, _)| up),
                )
                .ok()?;
                let mut args = Vec::new();
                if w != 0 {
                    args.push((0, Arg::Int(w.into())));
                }
                if h != 0 {
                    args.push((1, Arg::Int(h.into())));
                }
                if let Some(fit) = fit {
                    args.push((2, Arg::Str(fit.name().into())));
                }
                if let Some(filter) = filter {
                    args.push((3, Arg::Str(filter.name().into())));
                }
                if let Some((up, digit)) = upscale {
                    args.push((4, Arg::Bool(up, digit)));
                }
                Some(OpSpec::new(Op::Resize(op), args))
            },
        )
        .boxed()
}

fn thumbnail_op() -> BoxedStrategy<OpSpec> {
    (side(), side())
        .prop_filter_map("thumbnail needs a side", |(w, h)| {
            let op = Thumbnail::new(w, h).ok()?;
            let mut args = Vec::new();
            if w != 0 {
                args.push((0, Arg::Int(w.into())));
            }
            if h != 0 {
                args.push((1, Arg::Int(h.into())));
            }
            Some(OpSpec::new(Op::Thumbnail(op), args))
        })
        .boxed()
}

fn coordinate(min: u32) -> BoxedStrategy<u32> {
    prop_oneof![
        Just(min),
        Just(crop::MAX_COORDINATE),
        min..=crop::MAX_COORDINATE,
        min..=min + 100,
    ]
    .boxed()
}

fn crop_op() -> BoxedStrategy<OpSpec> {
    (
        prop::option::of((gravity(), any::<bool>())),
        coordinate(0),
        coordinate(0),
        coordinate(1),
        coordinate(1),
    )
        .prop_filter_map("crop needs a valid rectangle", |(g, x, y, w, h)| {
            // With a gravity, x and y are left out: the two placements exclude each other.
            let (x, y) = if g.is_some() { (0, 0) } else { (x, y) };
            let op = Crop::new(x, y, w, h, g.map(|(g, _)| Anchor::Fixed(g))).ok()?;
            let mut args = Vec::new();
            if x != 0 {
                args.push((0, Arg::Int(x.into())));
            }
            if y != 0 {
                args.push((1, Arg::Int(y.into())));
            }
            args.push((2, Arg::Int(w.into())));
            args.push((3, Arg::Int(h.into())));
            if let Some((g, american)) = g {
                args.push((4, gravity_arg(g, american)));
            }
            Some(OpSpec::new(Op::Crop(op), args))
        })
        .boxed()
}

fn angle() -> BoxedStrategy<f64> {
    prop_oneof![
        Just(-360.0),
        Just(360.0),
        Just(0.0),
        Just(-0.0),
        (-4_i32..=4).prop_map(|quarter| f64::from(quarter) * 90.0),
        (-3600_i32..=3600).prop_map(|tenths| f64::from(tenths) / 10.0),
        -360.0..=360.0_f64,
        Just(-1e-300),
        Just(f64::from_bits(1)),
    ]
    .boxed()
}

/// `#rrggbb` (opaque only) or `#rrggbbaa`, with or without `#`, in either case.
fn colour_arg(rgba: [u8; 4], short: bool, hash: bool, upper: bool) -> Arg {
    let [r, g, b, a] = rgba;
    let hex = if short && a == 255 {
        format!("{r:02x}{g:02x}{b:02x}")
    } else {
        format!("{r:02x}{g:02x}{b:02x}{a:02x}")
    };
    let hex = if upper { hex.to_uppercase() } else { hex };
    Arg::Str(if hash { format!("#{hex}") } else { hex })
}

fn rotate_op() -> BoxedStrategy<OpSpec> {
    (
        angle(),
        any::<bool>(),
        prop::option::of((
            any::<[u8; 4]>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )),
    )
        .prop_filter_map("rotate needs a valid angle", |(angle, exp, background)| {
            let rgba = background.map_or(rotate::TRANSPARENT, |(rgba, ..)| rgba);
            let op = Rotate::new(angle, rgba).ok()?;
            let mut args = vec![(0, Arg::Num(angle, exp))];
            if let Some((rgba, short, hash, upper)) = background {
                args.push((1, colour_arg(rgba, short, hash, upper)));
            }
            Some(OpSpec::new(Op::Rotate(op), args))
        })
        .boxed()
}

fn blur_op() -> BoxedStrategy<OpSpec> {
    (float_near(0.0, 100.0), any::<bool>())
        .prop_filter_map("sigma in range", |(sigma, exp)| {
            let op = Blur::new(sigma).ok()?;
            Some(OpSpec::new(Op::Blur(op), vec![(0, num(sigma, exp))]))
        })
        .boxed()
}

fn sharpen_op() -> BoxedStrategy<OpSpec> {
    (
        prop::option::of(float_near(0.0, 100.0)),
        prop::option::of(float_near(0.0, 10.0)),
        prop::option::of(any::<u8>()),
        any::<bool>(),
    )
        .prop_filter_map("sharpen in range", |(sigma, amount, threshold, exp)| {
            let op = Sharpen::new(
                sigma.unwrap_or(1.0),
                amount.unwrap_or(1.0),
                threshold.unwrap_or(0),
            )
            .ok()?;
            let mut args = Vec::new();
            if let Some(sigma) = sigma {
                args.push((0, num(sigma, exp)));
            }
            if let Some(amount) = amount {
                args.push((1, num(amount, exp)));
            }
            if let Some(threshold) = threshold {
                args.push((2, Arg::Int(threshold.into())));
            }
            Some(OpSpec::new(Op::Sharpen(op), args))
        })
        .boxed()
}

fn pixelate_op() -> BoxedStrategy<OpSpec> {
    prop::option::of(prop_oneof![Just(1_u32), Just(4096), 1..=4096_u32])
        .prop_map(|size| {
            let op = Pixelate::new(size.unwrap_or(10)).expect("size in range");
            let args = size.map(|s| (0, Arg::Int(s.into()))).into_iter().collect();
            OpSpec::new(Op::Pixelate(op), args)
        })
        .boxed()
}

fn describe_op() -> BoxedStrategy<OpSpec> {
    let size = prop::option::of(prop_oneof![Just(128_u32), Just(2048), 128..=2048_u32]);
    let tags = prop::option::of(prop_oneof![Just(1_u32), Just(30), 1..=30_u32]);
    (size, tags)
        .prop_map(|(size, tags)| {
            let op = Describe::new(size.unwrap_or(512), tags.unwrap_or(10)).expect("in range");
            let mut args = Vec::new();
            if let Some(size) = size {
                args.push((0, Arg::Int(size.into())));
            }
            if let Some(tags) = tags {
                args.push((1, Arg::Int(tags.into())));
            }
            OpSpec::new(Op::Describe(op), args)
        })
        .boxed()
}

fn remove_background_op() -> BoxedStrategy<OpSpec> {
    let model = prop::option::of("[a-z0-9_-][a-z0-9._-]{0,20}");
    (model, prop::option::of((any::<bool>(), any::<bool>())))
        .prop_map(|(model, refine)| {
            let name = model.clone().unwrap_or_else(|| "u2net".into());
            let op = RemoveBackground::new(&name, refine.is_none_or(|(on, _)| on))
                .expect("a valid name");
            let mut args = Vec::new();
            if let Some(model) = model {
                args.push((0, Arg::Str(model)));
            }
            if let Some((on, digit)) = refine {
                args.push((1, Arg::Bool(on, digit)));
            }
            OpSpec::new(Op::RemoveBackground(op), args)
        })
        .boxed()
}

/// The ops whose one required field is a float: brightness, contrast, saturation, gamma, hue.
fn float_op() -> BoxedStrategy<OpSpec> {
    let factor = (float_near(0.0, 10.0), any::<bool>());
    prop_oneof![
        factor
            .clone()
            .prop_filter_map("factor in range", |(f, exp)| Some(OpSpec::new(
                Op::Brightness(Brightness::new(f).ok()?),
                vec![(0, num(f, exp))]
            ))),
        factor
            .clone()
            .prop_filter_map("factor in range", |(f, exp)| Some(OpSpec::new(
                Op::Contrast(Contrast::new(f).ok()?),
                vec![(0, num(f, exp))]
            ))),
        factor.prop_filter_map("factor in range", |(f, exp)| Some(OpSpec::new(
            Op::Saturation(Saturation::new(f).ok()?),
            vec![(0, num(f, exp))]
        ))),
        (float_near(0.1, 10.0), any::<bool>()).prop_filter_map("gamma in range", |(g, exp)| {
            Some(OpSpec::new(
                Op::Gamma(Gamma::new(g).ok()?),
                vec![(0, num(g, exp))],
            ))
        }),
        (float_near(-360.0, 360.0), any::<bool>()).prop_filter_map(
            "degrees in range",
            |(d, exp)| Some(OpSpec::new(
                Op::Hue(Hue::new(d).ok()?),
                vec![(0, num(d, exp))]
            ))
        ),
    ]
    .boxed()
}

fn threshold_op() -> BoxedStrategy<OpSpec> {
    prop::option::of(0..=255_u8)
        .prop_map(|level| {
            let op = Threshold::new(level.unwrap_or(128));
            let args = level.map(|l| (0, Arg::Int(l.into()))).into_iter().collect();
            OpSpec::new(Op::Threshold(op), args)
        })
        .boxed()
}

fn watermark_op() -> BoxedStrategy<OpSpec> {
    (
        prop::sample::select(LOGOS.to_vec()),
        prop::option::of((gravity(), any::<bool>())),
        prop::option::of(float_near(0.0, 100.0)),
        prop::option::of(float_near(0.0, 1.0)),
        prop::option::of(prop_oneof![Just(0_u32), Just(16384), 0..=16384_u32]),
        any::<bool>(),
    )
        .prop_filter_map(
            "watermark in range",
            |(logo, g, scale, opacity, padding, exp)| {
                let op = Watermark::new(
                    logo,
                    g.map_or(Gravity::NorthEast, |(g, _)| g),
                    scale.unwrap_or(20.0),
                    opacity.unwrap_or(1.0),
                    padding.unwrap_or(10),
                )
                .ok()?;
                let mut args = vec![(0, Arg::Str(logo.into()))];
                if let Some((g, american)) = g {
                    args.push((1, gravity_arg(g, american)));
                }
                if let Some(scale) = scale {
                    args.push((2, num(scale, exp)));
                }
                if let Some(opacity) = opacity {
                    args.push((3, num(opacity, exp)));
                }
                if let Some(padding) = padding {
                    args.push((4, Arg::Int(padding.into())));
                }
                Some(OpSpec::new(Op::Watermark(op), args))
            },
        )
        .boxed()
}

fn format_op() -> BoxedStrategy<OpSpec> {
    (
        prop::sample::select(FileFormat::ALL.to_vec()),
        // 0 is "default" in every form.
        prop::option::of(0..=100_u8),
        prop::option::of((any::<bool>(), any::<bool>())),
        prop::option::of((any::<bool>(), any::<bool>())),
        prop::option::of(0..=9_u8),
        prop::option::of(0..=9_u8),
        prop::option::of(prop::sample::select(Metadata::NAMES.to_vec())),
        prop::option::of((any::<bool>(), any::<bool>())),
        prop::option::of(0..1200_u32),
    )
        .prop_filter_map(
            "format options that apply",
            |(
                format,
                quality,
                progressive,
                lossless,
                compression,
                effort,
                metadata,
                keep_icc,
                frame,
            )| {
                let op = Format::with_options(Encoding {
                    format,
                    quality: quality.filter(|&q| q != 0).unwrap_or(85),
                    progressive: progressive.is_some_and(|(p, _)| p),
                    lossless: lossless.is_some_and(|(l, _)| l),
                    compression: compression.filter(|&c| c != 0).unwrap_or(6),
                    effort: effort.unwrap_or(4),
                    metadata: metadata.and_then(Metadata::from_name).unwrap_or_default(),
                    keep_icc: keep_icc.is_some_and(|(k, _)| k),
                })
                .and_then(|op| op.with_frame(frame))
                .ok()?;
                let mut args = vec![(0, Arg::Str(format.name().into()))];
                if let Some(q) = quality {
                    args.push((1, Arg::Int(q.into())));
                }
                if let Some((p, digit)) = progressive {
                    args.push((2, Arg::Bool(p, digit)));
                }
                if let Some((l, digit)) = lossless {
                    args.push((3, Arg::Bool(l, digit)));
                }
                if let Some(c) = compression {
                    args.push((4, Arg::Int(c.into())));
                }
                if let Some(e) = effort {
                    args.push((5, Arg::Int(e.into())));
                }
                if let Some(m) = metadata {
                    args.push((6, Arg::Str(m.into())));
                }
                if let Some((k, digit)) = keep_icc {
                    args.push((8, Arg::Bool(k, digit)));
                }
                if let Some(f) = frame {
                    args.push((9, Arg::Int(f.into())));
                }
                Some(OpSpec::new(Op::Format(op), args))
            },
        )
        .boxed()
}

fn bare_op() -> BoxedStrategy<OpSpec> {
    prop::sample::select(vec![
        Op::Flip(Flip),
        Op::Flop(Flop),
        Op::AutoOrient(AutoOrient),
        Op::Edge(Edge),
        Op::Grayscale(Grayscale),
        Op::Sepia(Sepia),
        Op::Invert(Invert),
        Op::Analyze(Analyze),
    ])
    .prop_map(|op| OpSpec::new(op, Vec::new()))
    .boxed()
}

/// Any op but `format`, which may only come last.
fn middle_op() -> BoxedStrategy<OpSpec> {
    let op = prop_oneof![
        3 => resize_op(),
        1 => thumbnail_op(),
        2 => crop_op(),
        2 => rotate_op(),
        1 => blur_op(),
        2 => sharpen_op(),
        1 => pixelate_op(),
        1 => describe_op(),
        1 => remove_background_op(),
        3 => float_op(),
        1 => threshold_op(),
        2 => watermark_op(),
        1 => bare_op(),
    ];
    (op, style())
        .prop_map(|(spec, style)| OpSpec { style, ..spec })
        .boxed()
}

/// At most this many ops in generated pipelines, below [`MAX_OPS`]: 64 watermarks with every
/// option written have a text form over [`MAX_TEXT_BYTES`], which `from_text` then refuses
/// (reported); 48 of the longest op's canonical text stay within it.
const MAX_ROUND_TRIP_OPS: usize = 48;

fn valid_pipeline() -> impl Strategy<Value = Case> {
    let ops = prop_oneof![
        3 => prop::collection::vec(middle_op(), 0..=6),
        1 => prop::collection::vec(middle_op(), 0..MAX_ROUND_TRIP_OPS),
    ];
    (
        ops,
        prop::option::of((format_op(), style())),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mut ops, format, slash_spaces, pretty)| {
            if let Some((spec, style)) = format {
                ops.truncate(MAX_ROUND_TRIP_OPS - 1);
                ops.push(OpSpec { style, ..spec });
            }
            Case {
                ops,
                slash_spaces,
                pretty,
            }
        })
}

#[test]
fn valid_pipelines_parse_in_every_form_and_round_trip() {
    check(
        "valid_pipelines_parse_in_every_form_and_round_trip",
        2000,
        valid_pipeline(),
        |case| {
            let expected = case.expected();
            let json = case.json();
            let from_json = accepted(Pipeline::from_json(&json), &json)?;
            same_ops(from_json.ops(), &expected, Form::Json)?;
            prop_assert_eq!(&accepted(Pipeline::parse(&json), &json)?, &from_json);

            let text = case.text();
            if text.len() > MAX_TEXT_BYTES {
                let Err(err) = Pipeline::from_text(&text) else {
                    return Err(TestCaseError::fail("text over the limit accepted"));
                };
                prop_assert_eq!(
                    err.message,
                    format!("pipeline text is over {MAX_TEXT_BYTES} bytes")
                );
                return round_trips(&from_json);
            }
            let p = accepted(Pipeline::from_text(&text), &text)?;
            prop_assert_eq!(p.ops(), &expected[..], "{}", text);
            prop_assert_eq!(&accepted(Pipeline::parse(&text), &text)?, &p);
            same_ops(from_json.ops(), p.ops(), Form::Json)?;
            round_trips(&p)
        },
    );
}

// ---------------------------------------------------------------- hostile text

/// Pieces of pipelines, glued at random: nearly-valid input reaches deeper than noise.
fn token() -> BoxedStrategy<String> {
    let words: Vec<&'static str> = OP_NAMES
        .iter()
        .copied()
        .chain([
            "width",
            "height",
            "w",
            "h",
            "q",
            "g",
            "fit",
            "cover",
            "exact",
            "sigma",
            "amount",
            "factor",
            "gamma",
            "degrees",
            "level",
            "logo",
            "scale",
            "opacity",
            "padding",
            "size",
            "angle",
            "background",
            "format",
            "quality",
            "progressive",
            "lossless",
            "compression",
            "effort",
            "avif",
            "webp",
            "jpeg",
            "png",
            "centre",
            "center",
            "north_east",
            ":",
            "/",
            ",",
            "=",
            " ",
            "  ",
            "\t",
            "\n",
            "1",
            "0",
            "-1",
            "1.5",
            "-0",
            "1e400",
            "-1e400",
            "1e-400",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "Infinity",
            "true",
            "false",
            "maybe",
            "99999999999999999999",
            "18446744073709551616",
            "-9223372036854775809",
            "16385",
            "#ff000080",
            "ff00",
            "[",
            "]",
            "{",
            "}",
            "\"",
            "\"op\"",
            "null",
            "é",
            "\u{0}",
            "\u{feff}",
            "\u{202e}",
            "💥",
        ])
        .chain(LOGOS)
        .collect();
    prop_oneof![
        8 => prop::sample::select(words).prop_map(String::from),
        1 => "[a-z0-9_]{1,8}",
        1 => any::<char>().prop_map(String::from),
    ]
    .boxed()
}

fn hostile_text() -> BoxedStrategy<String> {
    prop_oneof![
        1 => any::<String>(),
        1 => prop::collection::vec(any::<u8>(), 0..256)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        2 => prop::collection::vec(token(), 0..40).prop_map(|tokens| tokens.concat()),
        // A valid pipeline with a piece cut out and noise put in.
        3 => (
            valid_pipeline(),
            any::<bool>(),
            any::<prop::sample::Index>(),
            0..8_usize,
            token()
        )
            .prop_map(|(case, json, at, cut, noise)| {
                let text = if json { case.json() } else { case.text() };
                let chars: Vec<char> = text.chars().collect();
                let start = at.index(chars.len() + 1);
                let end = (start + cut).min(chars.len());
                let mut out: String = chars[..start].iter().collect();
                out.push_str(&noise);
                out.extend(&chars[end..]);
                out
            }),
        // Around the size limit.
        1 => (MAX_TEXT_BYTES - 16..MAX_TEXT_BYTES + 16).prop_map(|n| "a".repeat(n)),
    ]
    .boxed()
}

#[test]
fn any_text_is_parsed_or_refused_without_panicking() {
    check(
        "any_text_is_parsed_or_refused_without_panicking",
        5000,
        hostile_text(),
        |text| {
            for (form, result) in [
                ("text", Pipeline::from_text(&text)),
                ("json", Pipeline::from_json(&text)),
                ("either", Pipeline::parse(&text)),
            ] {
                match result {
                    Ok(p) => {
                        prop_assert!(p.ops().len() <= MAX_OPS, "{form}");
                        round_trips(&p)?;
                    }
                    Err(err) => well_refused(&err)?,
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- hostile JSON

/// A JSON number as raw text, including ones no f64 or i64 holds.
fn raw_number() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("json has no nan or infinity", |x| x.is_finite())
            .prop_map(|x| format!("{x:?}")),
        (-1000_i32..1000).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1e400",
            "-1e400",
            "1e-400",
            "1E+2",
            "4.9e-324",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "0.1000000000000000055511151231257827",
            "16384",
            "16385",
            "4294967296",
            "255",
            "256",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

fn json_string() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(vec![
            "NaN",
            "nan",
            "Infinity",
            "-inf",
            "inf",
            "1e999",
            "",
            " ",
            "centre",
            "center",
            "north_east",
            "webp",
            "jpeg",
            "cover",
            "lanczos3",
            "nearest",
            "#ff0000",
            "ff000080",
            "red",
            "true",
            "1",
            "1.5",
        ])
        .prop_map(String::from),
        prop::sample::select(OP_NAMES.to_vec()).prop_map(String::from),
        prop::sample::select(LOGOS.to_vec()).prop_map(String::from),
        any::<String>(),
    ]
    .prop_map(|s| Value::from(s).to_string())
    .boxed()
}

fn json_leaf() -> BoxedStrategy<String> {
    prop_oneof![
        3 => raw_number(),
        3 => json_string(),
        1 => Just("true".to_string()),
        1 => Just("false".to_string()),
        1 => Just("null".to_string()),
    ]
    .boxed()
}

fn json_key() -> BoxedStrategy<String> {
    let fields: Vec<&'static str> = OP_NAMES
        .iter()
        .flat_map(|name| fields_of(name).iter().copied())
        .chain(["op", "w", "q", "unknown", ""])
        .collect();
    prop_oneof![
        4 => prop::sample::select(fields).prop_map(String::from),
        1 => any::<String>(),
    ]
    .prop_map(|key| Value::from(key).to_string())
    .boxed()
}

/// Any JSON value, nested a few levels.
fn json_tree() -> BoxedStrategy<String> {
    json_leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((json_key(), inner), 0..6).prop_map(|pairs| {
                    let pairs: Vec<String> =
                        pairs.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", pairs.join(","))
                }),
            ]
        })
        .boxed()
}

/// An object that names a real op and sets some of its fields (or others) to any value.
fn op_shaped() -> BoxedStrategy<String> {
    (
        prop::sample::select(OP_NAMES.to_vec()),
        prop::collection::vec((any::<prop::sample::Index>(), json_tree()), 0..5),
        prop::option::of(json_key()),
    )
        .prop_map(|(name, values, stray)| {
            let fields = fields_of(name);
            let mut pairs = vec![format!("\"op\":\"{name}\"")];
            for (at, value) in values {
                if !fields.is_empty() {
                    pairs.push(format!("\"{}\":{value}", fields[at.index(fields.len())]));
                }
            }
            if let Some(key) = stray {
                pairs.push(format!("{key}:null"));
            }
            format!("{{{}}}", pairs.join(","))
        })
        .boxed()
}

fn hostile_json() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::collection::vec(
            prop_oneof![4 => op_shaped(), 1 => json_tree()],
            0..8
        )
        .prop_map(|items| format!("[{}]", items.join(","))),
        1 => json_tree(),
        // Nesting far past serde_json's recursion limit of 128.
        1 => (1..600_usize, any::<bool>()).prop_map(|(depth, objects)| if objects {
            format!("[{}{}]", "{\"op\":".repeat(depth), "}".repeat(depth))
        } else {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }),
        // Around the op limit.
        1 => (MAX_OPS - 2..MAX_OPS + 3)
            .prop_map(|n| format!("[{}]", vec![r#"{"op":"invert"}"#; n].join(","))),
    ]
    .boxed()
}

#[test]
fn any_json_is_parsed_or_refused_without_panicking() {
    check(
        "any_json_is_parsed_or_refused_without_panicking",
        5000,
        hostile_json(),
        |json| {
            match Pipeline::from_json(&json) {
                Ok(p) => {
                    prop_assert!(p.ops().len() <= MAX_OPS);
                    round_trips(&p)?;
                }
                Err(err) => well_refused(&err)?,
            }
            // The same bytes read as the text form: they start with `[` or not.
            if let Err(err) = Pipeline::parse(&json) {
                well_refused(&err)?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- hostile protobuf

fn any_u32() -> BoxedStrategy<u32> {
    prop_oneof![
        Just(0),
        Just(1),
        0..20_000_u32,
        any::<u32>(),
        Just(u32::MAX)
    ]
    .boxed()
}

fn any_f32() -> BoxedStrategy<f32> {
    // `any` covers NaN, the infinities, subnormals and both zeros.
    prop_oneof![any::<f32>(), -1.0..400.0_f32, Just(0.0), Just(f32::NAN)].boxed()
}

fn any_enum() -> BoxedStrategy<i32> {
    prop_oneof![4 => -1..14_i32, 1 => any::<i32>()].boxed()
}

fn any_string() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        prop::sample::select(LOGOS.to_vec()).prop_map(String::from),
        "#?[0-9a-fA-F]{0,9}",
        any::<String>(),
    ]
    .boxed()
}

fn any_operation() -> BoxedStrategy<Operation> {
    use operation::Op as P;
    // More arms than `prop_oneof!` takes of different types: a union of boxed strategies.
    let op = Union::new([
        (
            any_u32(),
            any_u32(),
            any_enum(),
            any_enum(),
            any::<bool>(),
            any_enum(),
        )
            .prop_map(|(width, height, fit, filter, upscale, gravity)| {
                P::Resize(v1::Resize {
                    width,
                    height,
                    fit,
                    filter,
                    upscale,
                    gravity,
                })
            })
            .boxed(),
        (any_u32(), any_u32())
            .prop_map(|(width, height)| P::Thumbnail(v1::Thumbnail { width, height }))
            .boxed(),
        (any_u32(), any_u32(), any_u32(), any_u32(), any_enum())
            .prop_map(|(x, y, width, height, gravity)| {
                P::Crop(v1::Crop {
                    x,
                    y,
                    width,
                    height,
                    gravity,
                })
            })
            .boxed(),
        (
            prop_oneof![any::<f64>(), -400.0..400.0_f64, Just(f64::NAN)],
            any_string(),
        )
            .prop_map(|(angle, background)| P::Rotate(v1::Rotate { angle, background }))
            .boxed(),
        any_f32()
            .prop_map(|sigma| P::Blur(v1::Blur { sigma }))
            .boxed(),
        (any_f32(), any_f32(), any_u32())
            .prop_map(|(sigma, amount, threshold)| {
                P::Sharpen(v1::Sharpen {
                    sigma,
                    amount,
                    threshold,
                })
            })
            .boxed(),
        any_u32()
            .prop_map(|size| P::Pixelate(v1::Pixelate { size }))
            .boxed(),
        any_enum()
            .prop_map(|cover| P::BlurFaces(v1::BlurFaces { cover }))
            .boxed(),
        (any_u32(), any_u32())
            .prop_map(|(size, tags)| P::Describe(v1::Describe { size, tags }))
            .boxed(),
        (any_string(), any::<bool>())
            .prop_map(|(model, no_refine)| {
                P::RemoveBackground(v1::RemoveBackground { model, no_refine })
            })
            .boxed(),
        any_f32()
            .prop_map(|factor| P::Brightness(v1::Brightness { factor }))
            .boxed(),
        any_f32()
            .prop_map(|factor| P::Contrast(v1::Contrast { factor }))
            .boxed(),
        any_f32()
            .prop_map(|gamma| P::Gamma(v1::Gamma { gamma }))
            .boxed(),
        any_f32()
            .prop_map(|factor| P::Saturation(v1::Saturation { factor }))
            .boxed(),
        any_f32()
            .prop_map(|degrees| P::Hue(v1::Hue { degrees }))
            .boxed(),
        proptest::option::of(any_u32())
            .prop_map(|level| P::Threshold(v1::Threshold { level }))
            .boxed(),
        (
            any_string(),
            any_enum(),
            any_f32(),
            any_f32(),
            prop::option::of(any_u32()),
        )
            .prop_map(|(logo, gravity, scale, opacity, padding)| {
                P::Watermark(v1::Watermark {
                    logo,
                    gravity,
                    scale,
                    opacity,
                    padding,
                })
            })
            .boxed(),
        (
            any_enum(),
            any_u32(),
            any::<bool>(),
            any::<bool>(),
            any_u32(),
            prop::option::of(any_u32()),
            any_enum(),
            any::<bool>(),
            prop::option::of(any_u32()),
        )
            .prop_map(
                |(
                    format,
                    quality,
                    progressive,
                    lossless,
                    compression,
                    effort,
                    metadata,
                    keep_icc,
                    frame,
                )| {
                    P::Format(v1::Format {
                        format,
                        quality,
                        progressive,
                        lossless,
                        compression,
                        effort,
                        metadata,
                        keep_icc,
                        frame,
                    })
                },
            )
            .boxed(),
        prop::sample::select(vec![
            P::Flip(v1::Flip {}),
            P::Flop(v1::Flop {}),
            P::AutoOrient(v1::AutoOrient {}),
            P::Edge(v1::Edge {}),
            P::Grayscale(v1::Grayscale {}),
            P::Sepia(v1::Sepia {}),
            P::Invert(v1::Invert {}),
            P::Analyze(v1::Analyze {}),
        ])
        .boxed(),
    ]);
    prop_oneof![
        20 => op.prop_map(|op| Operation { op: Some(op) }),
        1 => Just(Operation { op: None }),
    ]
    .boxed()
}

#[test]
fn any_protobuf_pipeline_is_validated_without_panicking() {
    check(
        "any_protobuf_pipeline_is_validated_without_panicking",
        5000,
        prop_oneof![
            4 => prop::collection::vec(any_operation(), 0..6),
            1 => prop::collection::vec(any_operation(), 0..MAX_ROUND_TRIP_OPS),
        ],
        |ops| {
            match Pipeline::from_proto(&ops) {
                Ok(p) => {
                    prop_assert_eq!(p.ops().len(), ops.len());
                    round_trips(&p)?;
                }
                Err(err) => well_refused(&err)?,
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- image sniffing

/// How a generated image is encoded: the project's own encoders, and image's for the colour
/// types and depths clients send that the project never writes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Own(FileFormat, Variant),
    /// PNG at another colour type or depth.
    Png(ExtendedColorType),
    /// TIFF at another colour type or depth.
    Tiff(ExtendedColorType),
    JpegGrey,
}

#[derive(Debug, Clone, Copy)]
enum Variant {
    Default,
    /// Progressive JPEG, lossy WebP.
    Alternative,
}

#[derive(Debug, Clone)]
struct Generated {
    kind: Kind,
    width: u32,
    height: u32,
    bytes: Vec<u8>,
}

fn expected_format(kind: Kind) -> FileFormat {
    match kind {
        Kind::Own(format, _) => format,
        Kind::Png(_) => FileFormat::Png,
        Kind::Tiff(_) => FileFormat::Tiff,
        Kind::JpegGrey => FileFormat::Jpeg,
    }
}

/// Deterministic noise, so images are not flat (flat ones compress to nothing).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn encode(kind: Kind, width: u32, height: u32, alpha: bool, seed: u64) -> Vec<u8> {
    let pixels = (width * height) as usize;
    let mut out = Vec::new();
    match kind {
        Kind::Own(format, variant) => {
            let channels = if alpha { 4 } else { 3 };
            let bitmap =
                Bitmap::new(width, height, alpha, noise(seed, pixels * channels)).expect("bitmap");
            let alternative = matches!(variant, Variant::Alternative);
            let encoding = Encoding {
                progressive: alternative && format == FileFormat::Jpeg,
                lossless: !(alternative && format == FileFormat::Webp),
                // The quickest: these are many small images of noise.
                effort: 0,
                ..Encoding::new(format)
            };
            out = codec::encode_with(&bitmap, &encoding).expect("encode");
        }
        Kind::Png(colour) => {
            let data = noise(seed, pixels * usize::from(colour.bits_per_pixel() / 8));
            PngEncoder::new(&mut out)
                .write_image(&data, width, height, colour)
                .expect("png");
        }
        Kind::Tiff(colour) => {
            let mut data = noise(seed, pixels * usize::from(colour.bits_per_pixel() / 8));
            if matches!(colour, ExtendedColorType::Rgb32F) {
                // Finite floats: noise bytes can spell NaN.
                for sample in data.chunks_exact_mut(4) {
                    sample.copy_from_slice(&(f32::from(sample[0]) / 255.0).to_ne_bytes());
                }
            }
            TiffEncoder::new(Cursor::new(&mut out))
                .write_image(&data, width, height, colour)
                .expect("tiff");
        }
        Kind::JpegGrey => {
            JpegEncoder::new_with_quality(&mut out, 80)
                .write_image(&noise(seed, pixels), width, height, ExtendedColorType::L8)
                .expect("jpeg");
        }
    }
    out
}

fn kind() -> impl Strategy<Value = Kind> {
    let own = (
        prop::sample::select(FileFormat::ALL.to_vec()),
        prop::sample::select(vec![Variant::Default, Variant::Alternative]),
    )
        .prop_map(|(format, variant)| Kind::Own(format, variant));
    prop_oneof![
        4 => own,
        1 => prop::sample::select(vec![
            ExtendedColorType::L8,
            ExtendedColorType::La8,
            ExtendedColorType::L16,
            ExtendedColorType::La16,
            ExtendedColorType::Rgb16,
            ExtendedColorType::Rgba16,
        ])
        .prop_map(Kind::Png),
        1 => prop::sample::select(vec![
            ExtendedColorType::L8,
            ExtendedColorType::L16,
            ExtendedColorType::Rgb16,
            ExtendedColorType::Rgba16,
            ExtendedColorType::Rgb32F,
        ])
        .prop_map(Kind::Tiff),
        1 => Just(Kind::JpegGrey),
    ]
}

fn generated() -> impl Strategy<Value = Generated> {
    (kind(), 1..=40_u32, 1..=40_u32, any::<bool>(), any::<u64>()).prop_map(
        |(kind, width, height, alpha, seed)| Generated {
            kind,
            width,
            height,
            bytes: encode(kind, width, height, alpha, seed),
        },
    )
}

/// Small enough that a header corrupted into a huge size is refused, not allocated.
const LIMITS: Limits = Limits {
    max_pixels: 1 << 20,
    max_input_bytes: 1 << 24,
};

/// The sniffers and the decoder on bytes that may be anything: none may panic, and whatever
/// they say must be self-consistent.
fn sniff(bytes: &[u8]) -> Result<(), TestCaseError> {
    let format = codec::detect_format(bytes);
    let probe = codec::probe(bytes);
    if let Some(probe) = probe {
        prop_assert_eq!(Some(probe.format), format);
    }
    let _ = tiles::pixels_of(bytes);
    if let Ok(decoded) = codec::decode(bytes, &LIMITS) {
        prop_assert_eq!(Some(decoded.format), format);
        prop_assert!(decoded.image.width() as u64 * decoded.image.height() as u64 <= 1 << 20);
    }
    Ok(())
}

#[test]
fn sniffers_agree_with_decoding_on_real_images() {
    check(
        "sniffers_agree_with_decoding_on_real_images",
        1000,
        generated(),
        |image| {
            let bytes = &image.bytes;
            let format = expected_format(image.kind);
            let size = (image.width, image.height);
            prop_assert_eq!(codec::detect_format(bytes), Some(format));
            let decoded = codec::decode(bytes, &LIMITS)
                .map_err(|err| TestCaseError::fail(format!("decode: {err}")))?;
            prop_assert_eq!((decoded.image.width(), decoded.image.height()), size);
            prop_assert_eq!(decoded.full_size, size);
            let probe = codec::probe(bytes).ok_or_else(|| TestCaseError::fail("no probe"))?;
            prop_assert_eq!(probe.format, format);
            prop_assert_eq!((probe.width, probe.height), size);
            // The probe reports the buffer at the stored depth, which decoding then converts.
            // (image reads no AVIF; our AVIF decoder fills the bitmap itself.)
            if format != FileFormat::Avif {
                let stored = image::load_from_memory(bytes)
                    .map_err(|err| TestCaseError::fail(format!("image: {err}")))?;
                prop_assert!(
                    probe.bytes_per_pixel >= u32::from(stored.color().bytes_per_pixel()),
                    "probe says {} bytes per pixel, the decoder fills {:?}",
                    probe.bytes_per_pixel,
                    stored.color()
                );
            }
            if decoded.image.has_alpha() {
                prop_assert!(probe.alpha, "decoded with alpha, probed without");
            }
            prop_assert_eq!(
                tiles::pixels_of(bytes),
                Some(u64::from(image.width) * u64::from(image.height))
            );
            Ok(())
        },
    );
}

#[test]
fn truncated_and_corrupted_images_never_panic_the_sniffers() {
    check(
        "truncated_and_corrupted_images_never_panic_the_sniffers",
        600,
        (
            generated(),
            prop::collection::vec(any::<prop::sample::Index>(), 1..6),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ),
        |(image, cuts, flips)| {
            let bytes = &image.bytes;
            let size = (image.width, image.height);
            // The first bytes, where the signature and header lie, and some cuts anywhere.
            let short = (0..bytes.len().min(48)).collect::<Vec<_>>();
            for len in short
                .into_iter()
                .chain(cuts.iter().map(|at| at.index(bytes.len())))
            {
                let prefix = &bytes[..len];
                sniff(prefix)?;
                // A header that reads at all reads right: the size is in its first bytes.
                if let Some(probe) = codec::probe(prefix) {
                    prop_assert_eq!((probe.width, probe.height), size, "prefix of {}", len);
                }
            }
            let mut corrupt = bytes.clone();
            for (at, byte) in flips {
                let i = at.index(corrupt.len());
                corrupt[i] = byte;
            }
            sniff(&corrupt)
        },
    );
}

#[test]
fn arbitrary_bytes_never_panic_the_sniffers() {
    let magic: Vec<&'static [u8]> = vec![
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        b"\xff\xd8\xff",
        b"\xff\xd8\xff\xe1\0\x40Exif\0\0MM\0*",
        b"RIFF\0\0\0\0WEBPVP8 ",
        b"RIFF\0\0\0\0WEBPVP8L",
        b"RIFF\0\0\0\0WEBPVP8X",
        b"GIF89a",
        b"BM",
        b"II*\0",
        b"MM\0*",
    ];
    check(
        "arbitrary_bytes_never_panic_the_sniffers",
        5000,
        (
            prop::option::of(prop::sample::select(magic)),
            prop::collection::vec(any::<u8>(), 0..512),
        ),
        |(magic, rest)| {
            let bytes = [magic.unwrap_or_default(), rest.as_slice()].concat();
            sniff(&bytes)
        },
    );
}
