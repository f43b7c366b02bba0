//! `resize`: scale to a width and/or a height (fast_image_resize, SIMD convolution).
//!
//! * `inside` (default) — fit within the box, aspect ratio kept; with one side given the other
//!   follows the aspect ratio;
//! * `cover` — cover the box with the aspect ratio kept, then crop to exactly the box: the
//!   centre by default, else where `gravity` says (a side, a corner, or `smart`, `entropy`
//!   or `face`: where the content is, see [`Anchor`]);
//! * `fill` — stretch to exactly the box;
//! * `exact` — fit inside the box, then pad with transparency to exactly the box (formats
//!   without alpha show white).
//!
//! Never enlarges unless `upscale` is set: a box bigger than the image keeps the image's size
//! (`cover` shrinks the box to the largest one of its shape that fits, `exact` still pads).
//!
//! Sizes are computed in integers with round-half-up and never reach zero, so the same input
//! always gives the same size on every worker.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use pixelmesh_proto::v1;
use serde_json::Value;

use super::gravity::{Anchor, Gravity};
use super::json::{Fields, quoted};
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape, ns};

pub(crate) const NAME: &str = "resize";

/// The largest width or height a resize may ask for.
pub const MAX_DIMENSION: u32 = 16384;

/// Single-core nanoseconds, for the budget's estimate (calibration in `crate::budget`): per
/// kernel tap of fast_image_resize's two passes (see [`Resize::cost`]), per output pixel
/// (rounding, storing), and per pixel premultiplied or divided by alpha.
const NS_PER_TAP: f64 = 0.5;
const NS_PER_OUTPUT_PIXEL: f64 = 4.0;
const NS_PER_ALPHA_PIXEL: f64 = 1.5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fit {
    #[default]
    Inside,
    Cover,
    Fill,
    Exact,
}

impl Fit {
    pub const NAMES: &[&str] = &["inside", "cover", "fill", "exact"];

    pub fn name(self) -> &'static str {
        match self {
            Fit::Inside => "inside",
            Fit::Cover => "cover",
            Fit::Fill => "fill",
            Fit::Exact => "exact",
        }
    }

    fn from_name(name: &str) -> Result<Fit, String> {
        match name {
            "inside" => Ok(Fit::Inside),
            "cover" => Ok(Fit::Cover),
            "fill" => Ok(Fit::Fill),
            "exact" => Ok(Fit::Exact),
            other => Err(format!(
                "fit must be one of {}, got {}",
                Fit::NAMES.join(", "),
                quoted(other)
            )),
        }
    }

    fn from_proto(value: i32) -> Result<Fit, String> {
        match v1::Fit::try_from(value) {
            Ok(v1::Fit::Unspecified | v1::Fit::Inside) => Ok(Fit::Inside),
            Ok(v1::Fit::Cover) => Ok(Fit::Cover),
            Ok(v1::Fit::Fill) => Ok(Fit::Fill),
            Ok(v1::Fit::Exact) => Ok(Fit::Exact),
            Err(_) => Err(format!(
                "fit must be one of {}, got {value}",
                Fit::NAMES.join(", ")
            )),
        }
    }

    fn to_proto(self) -> v1::Fit {
        match self {
            Fit::Inside => v1::Fit::Inside,
            Fit::Cover => v1::Fit::Cover,
            Fit::Fill => v1::Fit::Fill,
            Fit::Exact => v1::Fit::Exact,
        }
    }
}

/// The resampling kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Filter {
    /// Sharpest for downscaled photos; the default.
    #[default]
    Lanczos3,
    CatmullRom,
    Bilinear,
    /// No interpolation: pixel art stays crisp.
    Nearest,
}

impl Filter {
    pub const NAMES: &[&str] = &["lanczos3", "catmullrom", "bilinear", "nearest"];

    pub fn name(self) -> &'static str {
        match self {
            Filter::Lanczos3 => "lanczos3",
            Filter::CatmullRom => "catmullrom",
            Filter::Bilinear => "bilinear",
            Filter::Nearest => "nearest",
        }
    }

    fn from_name(name: &str) -> Result<Filter, String> {
        match name {
            "lanczos3" => Ok(Filter::Lanczos3),
            "catmullrom" => Ok(Filter::CatmullRom),
            "bilinear" => Ok(Filter::Bilinear),
            "nearest" => Ok(Filter::Nearest),
            other => Err(format!(
                "filter must be one of {}, got {}",
                Filter::NAMES.join(", "),
                quoted(other)
            )),
        }
    }

    fn from_proto(value: i32) -> Result<Filter, String> {
        match v1::ResizeFilter::try_from(value) {
            Ok(v1::ResizeFilter::Unspecified | v1::ResizeFilter::Lanczos3) => Ok(Filter::Lanczos3),
            Ok(v1::ResizeFilter::Catmullrom) => Ok(Filter::CatmullRom),
            Ok(v1::ResizeFilter::Bilinear) => Ok(Filter::Bilinear),
            Ok(v1::ResizeFilter::Nearest) => Ok(Filter::Nearest),
            Err(_) => Err(format!(
                "filter must be one of {}, got {value}",
                Filter::NAMES.join(", ")
            )),
        }
    }

    fn to_proto(self) -> v1::ResizeFilter {
        match self {
            Filter::Lanczos3 => v1::ResizeFilter::Lanczos3,
            Filter::CatmullRom => v1::ResizeFilter::Catmullrom,
            Filter::Bilinear => v1::ResizeFilter::Bilinear,
            Filter::Nearest => v1::ResizeFilter::Nearest,
        }
    }

    fn algorithm(self) -> ResizeAlg {
        match self {
            Filter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
            Filter::CatmullRom => ResizeAlg::Convolution(FilterType::CatmullRom),
            Filter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            Filter::Nearest => ResizeAlg::Nearest,
        }
    }
}

/// Resize parameters; a side of 0 means "not given".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    width: u32,
    height: u32,
    fit: Fit,
    filter: Filter,
    upscale: bool,
    /// Which part a cover crop keeps; `None` (centre) for every other fit.
    gravity: Option<Anchor>,
}

/// Where the pixels go: resampled to `content`, placed centred on a `canvas`. The two differ
/// only for [`Fit::Exact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    content: (u64, u64),
    canvas: (u64, u64),
}

impl Resize {
    /// Validated parameters with the default filter and no upscaling; `0` leaves a side unset.
    pub fn new(width: u32, height: u32, fit: Fit) -> Result<Resize, String> {
        Resize::with_options(width, height, fit, Filter::default(), false)
    }

    pub fn with_options(
        width: u32,
        height: u32,
        fit: Fit,
        filter: Filter,
        upscale: bool,
    ) -> Result<Resize, String> {
        for (name, value) in [("width", width), ("height", height)] {
            if value > MAX_DIMENSION {
                return Err(range_error(name, i64::from(value)));
            }
        }
        if width == 0 && height == 0 {
            return Err("width or height is required".into());
        }
        if fit != Fit::Inside && (width == 0 || height == 0) {
            return Err(format!("fit {} needs both width and height", fit.name()));
        }
        Ok(Resize {
            width,
            height,
            fit,
            filter,
            upscale,
            gravity: None,
        })
    }

    /// The same resize keeping the part of the image `gravity` picks; cover only, the other
    /// fits keep the whole image.
    pub fn with_gravity(self, gravity: Option<Anchor>) -> Result<Resize, String> {
        if gravity.is_some() && self.fit != Fit::Cover {
            return Err(format!(
                "gravity applies to fit cover only, not {}",
                self.fit.name()
            ));
        }
        Ok(Resize { gravity, ..self })
    }

    /// Whether a cover crop is placed by what the image shows.
    pub fn reads_content(&self) -> bool {
        self.gravity.is_some_and(Anchor::reads_content)
    }

    pub fn width(&self) -> Option<u32> {
        (self.width != 0).then_some(self.width)
    }

    pub fn height(&self) -> Option<u32> {
        (self.height != 0).then_some(self.height)
    }

    pub fn fit(&self) -> Fit {
        self.fit
    }

    pub fn filter(&self) -> Filter {
        self.filter
    }

    fn plan(&self, width: u32, height: u32) -> Plan {
        let (src_w, src_h) = (u64::from(width.max(1)), u64::from(height.max(1)));
        let (box_w, box_h) = (u64::from(self.width), u64::from(self.height));
        let source = (src_w, src_h);
        let grows = |(w, h): (u64, u64)| w > src_w || h > src_h;
        let same = |size: (u64, u64)| Plan {
            content: size,
            canvas: size,
        };
        let inside = || -> (u64, u64) {
            let size = match (box_w, box_h) {
                (w, 0) => (w, scale(src_h, w, src_w)),
                (0, h) => (scale(src_w, h, src_h), h),
                // Compare aspect ratios by cross-multiplying: the wider one is bound by width.
                (w, h) if src_w * h >= src_h * w => (w, scale(src_h, w, src_w)),
                (_, h) => (scale(src_w, h, src_h), h),
            };
            if !self.upscale && grows(size) {
                source
            } else {
                size
            }
        };
        match self.fit {
            Fit::Inside => same(inside()),
            Fit::Cover if !self.upscale && grows((box_w, box_h)) => {
                // The largest box of the requested shape that the source can fill unscaled.
                if src_w * box_h <= src_h * box_w {
                    same((src_w, scale(box_h, src_w, box_w)))
                } else {
                    same((scale(box_w, src_h, box_h), src_h))
                }
            }
            Fit::Cover => same((box_w, box_h)),
            Fit::Fill if self.upscale => same((box_w, box_h)),
            Fit::Fill => same((box_w.min(src_w), box_h.min(src_h))),
            Fit::Exact => Plan {
                content: inside(),
                canvas: (box_w, box_h),
            },
        }
    }

    /// The output's bytes per pixel: `exact` pads onto a transparent canvas, RGBA.
    pub(crate) fn channels_for(&self, width: u64, height: u64, channels: u64) -> u64 {
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let plan = self.plan(narrow(width), narrow(height));
        if plan.canvas == plan.content {
            channels
        } else {
            4
        }
    }

    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        let (src_w, src_h) = (image.width(), image.height());
        let plan = self.plan(src_w, src_h);
        let fits = |(w, h): (u64, u64)| match (u32::try_from(w), u32::try_from(h)) {
            (Ok(w), Ok(h)) => Ok((w, h)),
            _ => Err(format!("resize to {w}x{h} is too large")),
        };
        let (w, h) = fits(plan.content)?;
        let canvas = fits(plan.canvas)?;
        let resized = if (w, h) == (src_w, src_h) {
            // Same size: cover crops nothing and a same-size convolution only costs time.
            image
        } else {
            self.resample(image, w, h)?
        };
        if canvas == (w, h) {
            Ok(resized)
        } else {
            Ok(pad(&resized, canvas.0, canvas.1))
        }
    }

    fn resample(&self, image: Bitmap, w: u32, h: u32) -> Result<Bitmap, String> {
        let alpha = image.has_alpha();
        let pixel_type = if alpha {
            PixelType::U8x4
        } else {
            PixelType::U8x3
        };
        let src = ImageRef::new(image.width(), image.height(), image.data(), pixel_type)
            .map_err(|err| format!("resize: {err}"))?;
        let mut dst = Image::new(w, h, pixel_type);
        // RGBA is premultiplied by the resizer (`mul_div_alpha`, on by default) so transparent
        // pixels do not bleed their colour.
        let mut options = ResizeOptions::new().resize_alg(self.filter.algorithm());
        if self.fit == Fit::Cover {
            // Resample only the part of the source with the box's aspect ratio: scaling and
            // cropping in one pass.
            options = match self.gravity.unwrap_or_default() {
                Anchor::Fixed(gravity) => options.fit_into_destination(Some(centring(gravity))),
                anchor => {
                    let window = cover_window((image.width(), image.height()), (w, h));
                    let (left, top) = anchor.place(&image, window)?;
                    options.crop(
                        f64::from(left),
                        f64::from(top),
                        f64::from(window.0),
                        f64::from(window.1),
                    )
                }
            };
        }
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|err| format!("resize: {err}"))?;
        Bitmap::new(w, h, alpha, dst.into_vec())
            .ok_or_else(|| "resize: output buffer has the wrong size".to_string())
    }
}

/// Where a fixed gravity puts a cover crop, as fast_image_resize takes it: 0 keeps the left
/// or top, 1 the right or bottom.
fn centring(gravity: Gravity) -> (f64, f64) {
    let (x, y) = Gravity::place(gravity, (2, 2), (0, 0));
    (f64::from(x) / 2.0, f64::from(y) / 2.0)
}

/// The largest window of `out`'s shape inside `source`, in whole pixels: what a cover crop
/// keeps.
fn cover_window(source: (u32, u32), out: (u32, u32)) -> (u32, u32) {
    let (sw, sh) = (u64::from(source.0), u64::from(source.1));
    let (ow, oh) = (u64::from(out.0), u64::from(out.1));
    if sw * oh > sh * ow {
        // Wider than the box: full height.
        ((scale(ow, sh, oh)).min(sw) as u32, source.1)
    } else {
        (source.0, (scale(oh, sw, ow)).min(sh) as u32)
    }
}

/// `image` centred on a transparent `width` x `height` RGBA canvas (rounding the offset down).
fn pad(image: &Bitmap, width: u32, height: u32) -> Bitmap {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (cw, ch) = (width as usize, height as usize);
    let (left, top) = ((cw - w) / 2, (ch - h) / 2);
    let mut data = vec![0u8; cw * ch * 4];
    let channels = image.channels();
    for (y, row) in image.data().chunks_exact(w * channels).enumerate() {
        let start = ((top + y) * cw + left) * 4;
        let out = &mut data[start..start + w * 4];
        if channels == 4 {
            out.copy_from_slice(row);
        } else {
            for (dst, src) in out.chunks_exact_mut(4).zip(row.chunks_exact(3)) {
                dst[..3].copy_from_slice(src);
                dst[3] = 255;
            }
        }
    }
    Bitmap::new(width, height, true, data).expect("canvas size matches its buffer")
}

/// `value * num / den`, rounded half up, at least 1 so no side ever becomes zero.
fn scale(value: u64, num: u64, den: u64) -> u64 {
    ((value * num * 2 + den) / (2 * den)).max(1)
}

fn range_error(name: &str, value: i64) -> String {
    format!("{name} must be between 1 and {MAX_DIMENSION}, got {value}")
}

impl Operator for Resize {
    const SPEC: Spec = Spec::new(
        NAME,
        "Resize",
        "Scale to a width and/or height.",
        &[
            Field::int("width", "Width (px)", 1, MAX_DIMENSION as i64).with_default("1920"),
            Field::int("height", "Height (px)", 1, MAX_DIMENSION as i64),
            Field::choice("fit", "Fit", Fit::NAMES).with_default("inside"),
            Field::choice("filter", "Filter", Filter::NAMES).with_default("lanczos3"),
            Field::flag("upscale", "Allow upscaling"),
            Field::choice("gravity", "Gravity", Anchor::NAMES).only_when("fit", &["cover"]),
        ],
    );

    type Proto = v1::Resize;

    fn from_fields(fields: &Fields<'_>) -> Result<Resize, String> {
        let side = |name: &str| -> Result<u32, String> {
            match fields.integer(name)? {
                None => Ok(0),
                Some(n) => u32::try_from(n).map_err(|_| range_error(name, n)),
            }
        };
        let fit = match fields.string("fit")? {
            None => Fit::Inside,
            Some(name) => Fit::from_name(name)?,
        };
        let filter = match fields.string("filter")? {
            None => Filter::Lanczos3,
            Some(name) => Filter::from_name(name)?,
        };
        let upscale = fields.boolean("upscale")?.unwrap_or(false);
        let gravity = fields
            .string("gravity")?
            .map(Anchor::from_name)
            .transpose()?;
        Resize::with_options(side("width")?, side("height")?, fit, filter, upscale)?
            .with_gravity(gravity)
    }

    fn from_proto(p: &v1::Resize) -> Result<Resize, String> {
        Resize::with_options(
            p.width,
            p.height,
            Fit::from_proto(p.fit)?,
            Filter::from_proto(p.filter)?,
            p.upscale,
        )?
        .with_gravity(Anchor::from_proto(p.gravity)?)
    }

    fn to_proto(&self) -> v1::Resize {
        v1::Resize {
            width: self.width,
            height: self.height,
            fit: self.fit.to_proto() as i32,
            filter: self.filter.to_proto() as i32,
            upscale: self.upscale,
            gravity: self
                .gravity
                .map_or(v1::Gravity::Unspecified, Anchor::to_proto) as i32,
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        let mut params = Vec::new();
        if self.width != 0 {
            params.push(("width", Value::from(self.width)));
        }
        if self.height != 0 {
            params.push(("height", Value::from(self.height)));
        }
        if self.fit != Fit::Inside {
            params.push(("fit", Value::from(self.fit.name())));
        }
        if self.filter != Filter::Lanczos3 {
            params.push(("filter", Value::from(self.filter.name())));
        }
        if self.upscale {
            params.push(("upscale", Value::from(true)));
        }
        if let Some(gravity) = self.gravity {
            params.push(("gravity", Value::from(gravity.name())));
        }
        params
    }

    /// The output size for a `width` x `height` input. `u64`: with one side given, a very
    /// thin input can ask for more than `u32` holds, and the engine must be able to say so.
    fn output_size(&self, width: u32, height: u32) -> (u64, u64) {
        self.plan(width, height).canvas
    }

    fn output_channels(&self, input: Shape) -> u64 {
        self.channels_for(input.width, input.height, input.channels)
    }

    /// What the op costs (see `crate::budget`).
    ///
    /// fast_image_resize runs the vertical pass first for 8-bit pixels, from the source into
    /// a buffer as wide as the source and as tall as the output, then the horizontal pass into
    /// the output; RGBA is premultiplied into a copy of the source first. Each pass's kernel
    /// reaches `support` source pixels each side, widened by the scale when shrinking, so the
    /// taps are `2 support max(source, output)` per line of each pass. An `exact` fit then
    /// pads onto a new canvas.
    fn cost(&self, input: Shape, output: Shape, _context: &Context) -> Cost {
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let plan = self.plan(narrow(input.width), narrow(input.height));
        let padded = plan.canvas != plan.content;
        // Without padding the content is the output, whose size the engine may have fixed
        // (after a shrunk decode).
        let content = if padded {
            Shape::new(plan.content.0, plan.content.1, input.channels)
        } else {
            output.with_channels(input.channels)
        };
        let mut cost = if (content.width, content.height) == (input.width, input.height) {
            Cost::in_place(input, 0.0)
        } else {
            let support = match self.filter {
                Filter::Nearest => 0.0,
                Filter::Bilinear => 1.0,
                Filter::CatmullRom => 2.0,
                Filter::Lanczos3 => 3.0,
            };
            let vertical = input.width.saturating_mul(input.height.max(content.height));
            let horizontal = content
                .height
                .saturating_mul(input.width.max(content.width));
            let taps = 2.0 * support * (vertical as f64 + horizontal as f64);
            // 4 bytes a pixel cost a third more than 3.
            let width = input.channels as f64 / 3.0;
            let temp = input
                .width
                .saturating_mul(content.height)
                .saturating_mul(input.channels);
            let alpha = input.channels == 4;
            let premultiplied = if alpha { input.bytes() } else { 0 };
            // Each axis's weights: about 2 support + 1 f64s, and their fixed-point copies, per
            // source or output pixel, whichever is more (measured: about 82 bytes each).
            let weights = (input.width.max(content.width) + input.height.max(content.height))
                .saturating_mul(160);
            let alpha_pixels = if alpha {
                input.pixels().saturating_add(content.pixels())
            } else {
                0
            };
            Cost {
                peak_bytes: input
                    .bytes()
                    .saturating_add(content.bytes())
                    .saturating_add(temp)
                    .saturating_add(premultiplied)
                    .saturating_add(weights),
                cpu_ns: taps * NS_PER_TAP * width
                    + ns(content.pixels(), NS_PER_OUTPUT_PIXEL)
                    + ns(alpha_pixels, NS_PER_ALPHA_PIXEL),
            }
        };
        if padded {
            // The resampled content and the canvas live together; the source is gone by then
            // unless the content is the source itself.
            let canvas = output.bytes();
            cost.peak_bytes = cost.peak_bytes.max(content.bytes().saturating_add(canvas));
            cost.cpu_ns += ns(output.pixels(), NS_PER_OUTPUT_PIXEL);
        }
        match self.gravity {
            Some(anchor) => anchor.add_cost(cost, input),
            None => cost,
        }
    }

    fn tile_halo(&self) -> Option<u32> {
        None
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        self.apply(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::gradient;

    #[test]
    fn cover_gravity_picks_the_part_kept() {
        assert_eq!(centring(Gravity::Centre), (0.5, 0.5));
        assert_eq!(centring(Gravity::NorthWest), (0.0, 0.0));
        assert_eq!(centring(Gravity::South), (0.5, 1.0));
        assert_eq!(cover_window((2560, 1600), (400, 100)), (2560, 640));
        assert_eq!(cover_window((2560, 1600), (100, 400)), (400, 1600));
        // Rows 0..50 of a 100-row gradient are kept by north, 50..100 by south: green is
        // 5 x y, so the top row shows which.
        let image = gradient(100, 100, false);
        let cover = |g: &str| {
            let op = Resize::new(50, 25, Fit::Cover)
                .unwrap()
                .with_gravity(Some(Anchor::from_name(g).unwrap()))
                .unwrap();
            op.apply(image.clone()).unwrap()
        };
        let (north, south) = (cover("north"), cover("south"));
        assert!(north.data()[1] < 20, "{}", north.data()[1]);
        assert_ne!(north, south);
    }

    fn size(width: u32, height: u32, fit: Fit, src: (u32, u32)) -> (u64, u64) {
        Resize::new(width, height, fit)
            .unwrap()
            .output_size(src.0, src.1)
    }

    #[test]
    fn one_side_keeps_the_aspect_ratio() {
        assert_eq!(size(1920, 0, Fit::Inside, (3840, 2160)), (1920, 1080));
        assert_eq!(size(0, 100, Fit::Inside, (3840, 2160)), (178, 100));
        // 333 * 1001 / 999 = 333.67, rounds to 334.
        assert_eq!(size(333, 0, Fit::Inside, (999, 1001)), (333, 334));
        // A very wide image never gets a zero height.
        assert_eq!(size(10, 0, Fit::Inside, (10_000, 3)), (10, 1));
    }

    #[test]
    fn inside_fits_within_the_box() {
        assert_eq!(size(101, 101, Fit::Inside, (3840, 2160)), (101, 57));
        assert_eq!(size(101, 101, Fit::Inside, (2160, 3840)), (57, 101));
        assert_eq!(size(333, 77, Fit::Inside, (999, 1001)), (77, 77));
        assert_eq!(size(8, 8, Fit::Inside, (1, 1000)), (1, 8));
    }

    #[test]
    fn cover_and_fill_give_exactly_the_box() {
        assert_eq!(size(101, 57, Fit::Cover, (999, 1001)), (101, 57));
        assert_eq!(size(101, 57, Fit::Fill, (999, 1001)), (101, 57));
    }

    fn upscaled(width: u32, height: u32, fit: Fit, src: (u32, u32)) -> (u64, u64) {
        Resize::with_options(width, height, fit, Filter::Lanczos3, true)
            .unwrap()
            .output_size(src.0, src.1)
    }

    #[test]
    fn never_enlarges_unless_asked() {
        assert_eq!(size(300, 300, Fit::Inside, (3, 2)), (3, 2));
        assert_eq!(upscaled(300, 300, Fit::Inside, (3, 2)), (300, 200));
        assert_eq!(size(4000, 0, Fit::Inside, (1920, 1080)), (1920, 1080));
        assert_eq!(size(4000, 10, Fit::Fill, (1920, 1080)), (1920, 10));
        assert_eq!(upscaled(4000, 10, Fit::Fill, (1920, 1080)), (4000, 10));
        // Cover keeps the box's shape at the largest size the source fills: 2:1 from 300x200.
        assert_eq!(size(1000, 500, Fit::Cover, (300, 200)), (300, 150));
        assert_eq!(size(500, 1000, Fit::Cover, (300, 200)), (100, 200));
        assert_eq!(upscaled(1000, 500, Fit::Cover, (300, 200)), (1000, 500));
        // Exact always gives the box; the image inside it is not enlarged.
        assert_eq!(size(1000, 500, Fit::Exact, (300, 200)), (1000, 500));
    }

    #[test]
    fn exact_pads_to_the_box_with_transparency() {
        let out = Resize::new(40, 40, Fit::Exact)
            .unwrap()
            .apply(gradient(80, 40, false))
            .unwrap();
        assert_eq!((out.width(), out.height(), out.has_alpha()), (40, 40, true));
        // Content is 40x20, centred: rows 0..10 and 30..40 are transparent, the rest opaque.
        let alpha_at = |x: usize, y: usize| out.data()[(y * 40 + x) * 4 + 3];
        assert_eq!(alpha_at(20, 5), 0);
        assert_eq!(alpha_at(20, 35), 0);
        assert_eq!(alpha_at(0, 10), 255);
        assert_eq!(alpha_at(39, 29), 255);
        // A small image is centred unscaled.
        let small = Resize::new(10, 10, Fit::Exact)
            .unwrap()
            .apply(gradient(4, 2, true))
            .unwrap();
        assert_eq!((small.width(), small.height()), (10, 10));
        assert_eq!(
            small.data()[(4 * 10 + 3) * 4..(4 * 10 + 4) * 4],
            gradient(4, 2, true).data()[..4]
        );
    }

    #[test]
    fn every_filter_gives_the_size_and_nearest_copies_pixels() {
        for filter in [
            Filter::Lanczos3,
            Filter::CatmullRom,
            Filter::Bilinear,
            Filter::Nearest,
        ] {
            let out = Resize::with_options(20, 0, Fit::Inside, filter, false)
                .unwrap()
                .apply(gradient(40, 30, false))
                .unwrap();
            assert_eq!((out.width(), out.height()), (20, 15), "{filter:?}");
            assert_eq!(Filter::from_name(filter.name()), Ok(filter));
        }
        // Nearest halving picks source pixels: every output value exists in the input.
        let input = gradient(40, 30, false);
        let out = Resize::with_options(20, 15, Fit::Fill, Filter::Nearest, false)
            .unwrap()
            .apply(input.clone())
            .unwrap();
        let source: std::collections::HashSet<&[u8]> = input.data().chunks(3).collect();
        assert!(out.data().chunks(3).all(|p| source.contains(p)));
    }

    #[test]
    fn thin_inputs_can_ask_for_more_than_u32() {
        let (w, h) = upscaled(16384, 0, Fit::Inside, (1, u32::MAX));
        assert_eq!(w, 16384);
        assert!(h > u64::from(u32::MAX));
    }

    #[test]
    fn apply_produces_the_computed_size() {
        for (fit, w, h) in [
            (Fit::Inside, 31, 17),
            (Fit::Cover, 31, 17),
            (Fit::Fill, 31, 17),
            (Fit::Cover, 7, 29),
        ] {
            for alpha in [false, true] {
                let out = Resize::new(w, h, fit)
                    .unwrap()
                    .apply(gradient(97, 55, alpha))
                    .unwrap();
                let want = Resize::new(w, h, fit).unwrap().output_size(97, 55);
                assert_eq!((u64::from(out.width()), u64::from(out.height())), want);
                assert_eq!(out.has_alpha(), alpha);
                assert_eq!(
                    out.data().len(),
                    (out.width() * out.height()) as usize * out.channels()
                );
            }
        }
    }

    #[test]
    fn cover_crops_the_centre() {
        // Left third red, middle third green, right third blue: covering a square box keeps
        // only the green middle.
        let data = (0..90 * 30)
            .flat_map(|i| match (i % 90) / 30 {
                0 => [255, 0, 0],
                1 => [0, 255, 0],
                _ => [0, 0, 255],
            })
            .collect();
        let out = Resize::new(10, 10, Fit::Cover)
            .unwrap()
            .apply(Bitmap::new(90, 30, false, data).unwrap())
            .unwrap();
        assert!(
            out.data()
                .chunks(3)
                .all(|p| p[1] > 200 && p[0] < 30 && p[2] < 30)
        );
    }

    #[test]
    fn same_size_is_left_alone() {
        let image = gradient(20, 10, false);
        let out = Resize::new(20, 10, Fit::Fill)
            .unwrap()
            .apply(image.clone())
            .unwrap();
        assert_eq!(out, image);
    }
}
