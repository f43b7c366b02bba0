//! `watermark`: lay a logo over the image. The logo is a blob uploaded like any image; the
//! engine loads and decodes it (see [`super::Assets`]) and [`Watermark::apply_with_logo`]
//! does the pixels:
//!
//! * the logo is scaled, aspect kept, so its width is `scale` percent of the image's (at
//!   least 1 pixel), with Catmull-Rom on premultiplied alpha;
//! * it is placed by `gravity` inside the image shrunk by `padding` on every side; a logo
//!   larger than that area is clipped to it, keeping the part its gravity anchors (the right
//!   end for east, the middle for centre), and padding that leaves no room draws nothing: a
//!   watermark never fails an image;
//! * it is composited "over" the image at `opacity`; the image keeps its RGB or RGBA layout.
//!
//! Only the visible part of the logo is resampled, so an absurdly tall logo costs no more than
//! the image itself.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use pixelmesh_proto::v1;
use serde_json::Value;

use super::gravity::Gravity;
use super::json::{Fields, quoted};
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape, ns};

pub(crate) const NAME: &str = "watermark";

pub const DEFAULT_GRAVITY: Gravity = Gravity::NorthEast;
/// Percent of the image width.
pub const DEFAULT_SCALE: f32 = 20.0;
pub const DEFAULT_OPACITY: f32 = 1.0;
pub const DEFAULT_PADDING: u32 = 10;
pub const MAX_PADDING: u32 = 16384;

/// Single-core nanoseconds, for the budget's estimate (calibration in `crate::budget`): per
/// logo pixel laid over the image, and per kernel tap of the logo's resampling.
const BLEND_NS_PER_PIXEL: f64 = 4.0;
const NS_PER_TAP: f64 = 0.3;

#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    /// Blob id: 64 lowercase hex characters.
    logo: String,
    gravity: Gravity,
    scale: f32,
    opacity: f32,
    padding: u32,
}

impl Watermark {
    /// `scale` in `(0, 100]`, `opacity` in `(0, 1]` (0 would draw nothing, and the protobuf
    /// form reads 0 as "default"), `padding` at most [`MAX_PADDING`].
    pub fn new(
        logo: &str,
        gravity: Gravity,
        scale: f32,
        opacity: f32,
        padding: u32,
    ) -> Result<Watermark, String> {
        if !(logo.len() == 64 && logo.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))) {
            return Err(format!(
                "logo must be a blob id of 64 lowercase hex characters, got {}",
                quoted(logo)
            ));
        }
        // Written so NaN fails too.
        if !(scale.is_finite() && scale > 0.0 && scale <= 100.0) {
            return Err(format!("scale must be > 0 and <= 100, got {scale}"));
        }
        if !(opacity.is_finite() && opacity > 0.0 && opacity <= 1.0) {
            return Err(format!("opacity must be > 0 and <= 1, got {opacity}"));
        }
        if padding > MAX_PADDING {
            return Err(padding_error(i64::from(padding)));
        }
        Ok(Watermark {
            logo: logo.to_string(),
            gravity,
            scale,
            opacity,
            padding,
        })
    }

    /// The logo's blob id, which the engine must load into [`super::Assets`].
    pub fn logo(&self) -> &str {
        &self.logo
    }

    /// Lays `logo` over `image`. Errors only if the resampler refuses buffers we built.
    pub fn apply_with_logo(&self, mut image: Bitmap, logo: &Bitmap) -> Result<Bitmap, String> {
        let (image_w, image_h) = (u64::from(image.width()), u64::from(image.height()));
        let (logo_w, logo_h) = (u64::from(logo.width()), u64::from(logo.height()));
        // The whole scaled logo, in integers (round half up) so every worker agrees.
        let scaled_w =
            ((image_w as f64 * f64::from(self.scale) / 100.0).round() as u64).clamp(1, image_w);
        let scaled_h = (u128::from(logo_h) * u128::from(scaled_w) * 2 + u128::from(logo_w))
            / (2 * u128::from(logo_w));
        let scaled_h = u64::try_from(scaled_h).unwrap_or(u64::MAX).max(1);
        let padding = u64::from(self.padding);
        let area = (
            image_w.saturating_sub(2 * padding),
            image_h.saturating_sub(2 * padding),
        );
        let visible = (scaled_w.min(area.0), scaled_h.min(area.1));
        if visible.0 == 0 || visible.1 == 0 {
            return Ok(image);
        }
        // Everything below is at most the image's size, so fits u32; a scaled height beyond
        // u32 only shifts which part of an absurd logo shows.
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let visible = (narrow(visible.0), narrow(visible.1));
        let (area_x, area_y) = self
            .gravity
            .place((narrow(area.0), narrow(area.1)), visible);
        let (left, top) = (area_x + self.padding, area_y + self.padding);
        // The part of the scaled logo that shows: placed in it by the same gravity.
        let (skip_x, skip_y) = self
            .gravity
            .place((narrow(scaled_w), narrow(scaled_h)), visible);
        let part = scale_part(
            logo,
            (scaled_w as f64, scaled_h as f64),
            (skip_x, skip_y),
            visible,
        )?;
        // Opacity in 0..=255, once per image.
        let opacity = (f64::from(self.opacity) * 255.0).round() as u32;
        let (channels, part_channels) = (image.channels(), part.channels());
        let stride = image.width() as usize * channels;
        let span = visible.0 as usize * part_channels;
        let rows = image
            .data_mut()
            .chunks_exact_mut(stride)
            .skip(top as usize)
            .zip(part.data().chunks_exact(span));
        for (row, logo_row) in rows {
            let start = left as usize * channels;
            let pixels = row[start..start + visible.0 as usize * channels]
                .chunks_exact_mut(channels)
                .zip(logo_row.chunks_exact(part_channels));
            for (pixel, over) in pixels {
                let logo_alpha = if part_channels == 4 {
                    u32::from(over[3])
                } else {
                    255
                };
                blend(pixel, &over[..3], (logo_alpha * opacity + 127) / 255);
            }
        }
        Ok(image)
    }
}

/// The `visible` part, starting at `skip`, of `logo` resampled to `scaled` (width, height).
fn scale_part(
    logo: &Bitmap,
    scaled: (f64, f64),
    skip: (u32, u32),
    visible: (u32, u32),
) -> Result<Bitmap, String> {
    let pixel_type = if logo.has_alpha() {
        PixelType::U8x4
    } else {
        PixelType::U8x3
    };
    let src = ImageRef::new(logo.width(), logo.height(), logo.data(), pixel_type)
        .map_err(|err| format!("watermark: {err}"))?;
    let mut dst = Image::new(visible.0, visible.1, pixel_type);
    // Source pixels per scaled pixel, on each axis.
    let (fx, fy) = (
        f64::from(logo.width()) / scaled.0,
        f64::from(logo.height()) / scaled.1,
    );
    // RGBA is premultiplied by the resizer (`mul_div_alpha`, on by default).
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
        .crop(
            f64::from(skip.0) * fx,
            f64::from(skip.1) * fy,
            f64::from(visible.0) * fx,
            f64::from(visible.1) * fy,
        );
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|err| format!("watermark: {err}"))?;
    Bitmap::new(visible.0, visible.1, logo.has_alpha(), dst.into_vec())
        .ok_or_else(|| "watermark: logo buffer has the wrong size".to_string())
}

/// `colour` at `alpha` (0..=255) "over" `pixel` (RGB or RGBA, straight alpha), rounded.
fn blend(pixel: &mut [u8], colour: &[u8], alpha: u32) {
    if pixel.len() == 3 {
        for (value, &c) in pixel.iter_mut().zip(colour) {
            *value = ((u32::from(c) * alpha + u32::from(*value) * (255 - alpha) + 127) / 255) as u8;
        }
        return;
    }
    let below = u32::from(pixel[3]) * (255 - alpha);
    // The result's alpha, times 255.
    let total = alpha * 255 + below;
    if total == 0 {
        return;
    }
    for (value, &c) in pixel[..3].iter_mut().zip(colour) {
        let sum = u32::from(c) * alpha * 255 + u32::from(*value) * below;
        *value = ((sum + total / 2) / total) as u8;
    }
    pixel[3] = ((total + 127) / 255) as u8;
}

fn padding_error(value: i64) -> String {
    format!("padding must be between 0 and {MAX_PADDING}, got {value}")
}

impl Operator for Watermark {
    const SPEC: Spec = Spec::new(
        NAME,
        "Watermark",
        "Overlay a logo image.",
        &[
            Field::blob("logo", "Logo image").required(),
            Field::choice("gravity", "Position", Gravity::NAMES).with_default("north_east"),
            Field::float("scale", "Width (% of image)", (1.0, 100.0, 1.0))
                .above_min()
                .with_default("20"),
            Field::float("opacity", "Opacity", (0.05, 1.0, 0.05))
                .above_min()
                .with_default("1"),
            Field::int("padding", "Padding (px)", 0, MAX_PADDING as i64).with_default("10"),
        ],
    );

    type Proto = v1::Watermark;

    fn from_fields(fields: &Fields<'_>) -> Result<Watermark, String> {
        let logo = fields.string("logo")?.ok_or("logo is required")?;
        let gravity = fields
            .string("gravity")?
            .map(Gravity::from_name)
            .transpose()?
            .unwrap_or(DEFAULT_GRAVITY);
        // Out-of-range f64s become infinite f32s, which validation rejects.
        let scale = fields.number("scale")?.map_or(DEFAULT_SCALE, |v| v as f32);
        let opacity = fields
            .number("opacity")?
            .map_or(DEFAULT_OPACITY, |v| v as f32);
        let padding = match fields.integer("padding")? {
            None => DEFAULT_PADDING,
            Some(n) => u32::try_from(n).map_err(|_| padding_error(n))?,
        };
        Watermark::new(logo, gravity, scale, opacity, padding)
    }

    fn from_proto(p: &v1::Watermark) -> Result<Watermark, String> {
        if p.logo.is_empty() {
            return Err("logo is required".into());
        }
        // Zeros are unset, like every zero in the protos; padding says so explicitly.
        let or_default = |value: f32, default: f32| if value == 0.0 { default } else { value };
        Watermark::new(
            &p.logo,
            Gravity::from_proto(p.gravity)?.unwrap_or(DEFAULT_GRAVITY),
            or_default(p.scale, DEFAULT_SCALE),
            or_default(p.opacity, DEFAULT_OPACITY),
            p.padding.unwrap_or(DEFAULT_PADDING),
        )
    }

    fn to_proto(&self) -> v1::Watermark {
        v1::Watermark {
            logo: self.logo.clone(),
            gravity: self.gravity.to_proto() as i32,
            scale: self.scale,
            opacity: self.opacity,
            padding: Some(self.padding),
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        let mut params = vec![("logo", Value::from(self.logo.as_str()))];
        if self.gravity != DEFAULT_GRAVITY {
            params.push(("gravity", Value::from(self.gravity.name())));
        }
        if self.scale != DEFAULT_SCALE {
            params.push(("scale", super::json::number(self.scale)));
        }
        if self.opacity != DEFAULT_OPACITY {
            params.push(("opacity", super::json::number(self.opacity)));
        }
        if self.padding != DEFAULT_PADDING {
            params.push(("padding", Value::from(self.padding)));
        }
        params
    }

    /// What the op costs on `image` with a logo of `logo_pixels` (see `crate::budget`), whose
    /// shape is not known before it is loaded, so bounds: the logo's visible part is `scale`
    /// percent of the image's width and at most its height, resampled (RGBA, 4 bytes a pixel)
    /// from a premultiplied copy of the logo through a buffer no bigger than the larger of
    /// the two. The logo itself is counted once per pipeline (see `crate::budget`).
    fn cost(&self, image: Shape, _output: Shape, context: &Context) -> Cost {
        let logo_pixels = context.logo_pixels;
        let visible_width = ((image.width as f64 * f64::from(self.scale) / 100.0).ceil() as u64)
            .clamp(1, image.width.max(1));
        let visible = visible_width.saturating_mul(image.height);
        let largest = visible.max(logo_pixels);
        let part = visible.saturating_mul(4);
        let temp = largest.saturating_mul(4);
        let premultiplied = logo_pixels.saturating_mul(4);
        // Catmull-Rom reaches 2 pixels each side: 4 taps per line of each pass, over the
        // larger of the logo and its visible part.
        let taps = 2 * 4 * largest;
        Cost {
            peak_bytes: image
                .bytes()
                .saturating_add(part)
                .saturating_add(temp)
                .saturating_add(premultiplied),
            cpu_ns: ns(taps, NS_PER_TAP) + ns(visible, BLEND_NS_PER_PIXEL),
        }
    }

    fn tile_halo(&self) -> Option<u32> {
        None
    }

    fn run(&self, image: Bitmap, assets: &Assets) -> Result<Bitmap, String> {
        match assets.get(self.logo()) {
            Some(logo) => self.apply_with_logo(image, logo),
            None => Err(format!("logo {} was not loaded", self.logo())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGO: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn flat(width: u32, height: u32, pixel: &[u8]) -> Bitmap {
        Bitmap::new(
            width,
            height,
            pixel.len() == 4,
            pixel.repeat((width * height) as usize),
        )
        .unwrap()
    }

    fn at(image: &Bitmap, x: u32, y: u32) -> &[u8] {
        let c = image.channels();
        let i = (y * image.width() + x) as usize * c;
        &image.data()[i..i + c]
    }

    fn mark(gravity: Gravity, scale: f32, opacity: f32, padding: u32) -> Watermark {
        Watermark::new(LOGO, gravity, scale, opacity, padding).unwrap()
    }

    #[test]
    fn parameters_are_validated() {
        let err = |logo: &str, scale, opacity, padding| {
            Watermark::new(logo, DEFAULT_GRAVITY, scale, opacity, padding).unwrap_err()
        };
        assert_eq!(
            err("ABC", 20.0, 1.0, 0),
            r#"logo must be a blob id of 64 lowercase hex characters, got "ABC""#
        );
        // Long values are cut short in the message.
        assert!(err(&LOGO.to_uppercase(), 20.0, 1.0, 0).starts_with(
            r#"logo must be a blob id of 64 lowercase hex characters, got "0123456789ABCDEF"#
        ));
        assert_eq!(
            err(LOGO, 0.0, 1.0, 0),
            "scale must be > 0 and <= 100, got 0"
        );
        assert_eq!(
            err(LOGO, 101.0, 1.0, 0),
            "scale must be > 0 and <= 100, got 101"
        );
        assert_eq!(
            err(LOGO, 20.0, 1.5, 0),
            "opacity must be > 0 and <= 1, got 1.5"
        );
        assert_eq!(
            err(LOGO, 20.0, f32::NAN, 0),
            "opacity must be > 0 and <= 1, got NaN"
        );
        assert_eq!(
            err(LOGO, 20.0, 1.0, 16385),
            "padding must be between 0 and 16384, got 16385"
        );
        assert_eq!(
            Watermark::from_proto(&v1::Watermark::default()).unwrap_err(),
            "logo is required"
        );
        let defaults = Watermark::from_proto(&v1::Watermark {
            logo: LOGO.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(defaults, mark(DEFAULT_GRAVITY, 20.0, 1.0, 10));
        assert_eq!(defaults.params(), vec![("logo", Value::from(LOGO))]);
        assert_eq!(defaults.logo(), LOGO);
    }

    #[test]
    fn places_at_the_gravity_inside_the_padding() {
        // A 10x10 white logo at 20 % of a 100x50 black image is 20x20; north-east with
        // padding 10 puts it at x 70..90, y 10..30.
        let image = flat(100, 50, &[0, 0, 0]);
        let logo = flat(10, 10, &[255, 255, 255]);
        let out = mark(Gravity::NorthEast, 20.0, 1.0, 10)
            .apply_with_logo(image.clone(), &logo)
            .unwrap();
        assert_eq!(
            (out.width(), out.height(), out.has_alpha()),
            (100, 50, false)
        );
        let white = |x, y| at(&out, x, y) == [255, 255, 255];
        assert!(white(70, 10) && white(89, 29) && white(80, 20));
        assert!(!white(69, 10) && !white(90, 10) && !white(70, 9) && !white(70, 30));
        let count = out.data().chunks_exact(3).filter(|p| p[0] == 255).count();
        assert_eq!(count, 400);
        let sw = mark(Gravity::SouthWest, 20.0, 1.0, 0)
            .apply_with_logo(image, &logo)
            .unwrap();
        assert_eq!(at(&sw, 0, 49), [255, 255, 255]);
        assert_eq!(at(&sw, 19, 30), [255, 255, 255]);
        assert_eq!(at(&sw, 20, 30), [0, 0, 0]);
        assert_eq!(at(&sw, 0, 29), [0, 0, 0]);
    }

    #[test]
    fn opacity_and_logo_alpha_blend() {
        let image = flat(20, 20, &[0, 0, 200]);
        let logo = flat(4, 4, &[255, 255, 255, 255]);
        let out = mark(Gravity::Centre, 50.0, 0.5, 0)
            .apply_with_logo(image.clone(), &logo)
            .unwrap();
        // Opacity 0.5 is 128/255: 255 x 128/255 + 200 x 127/255.
        assert_eq!(at(&out, 10, 10), [128, 128, 228]);
        assert_eq!(at(&out, 0, 0), [0, 0, 200]);
        // A transparent logo leaves the image alone.
        let clear = flat(4, 4, &[255, 255, 255, 0]);
        let out = mark(Gravity::Centre, 50.0, 1.0, 0)
            .apply_with_logo(image.clone(), &clear)
            .unwrap();
        assert_eq!(out, image);
    }

    #[test]
    fn a_transparent_image_takes_the_logo_and_keeps_alpha() {
        let image = flat(20, 20, &[0, 0, 0, 0]);
        let logo = flat(4, 4, &[10, 20, 30]);
        let out = mark(Gravity::NorthWest, 50.0, 1.0, 0)
            .apply_with_logo(image, &logo)
            .unwrap();
        assert!(out.has_alpha());
        assert_eq!(at(&out, 0, 0), [10, 20, 30, 255]);
        assert_eq!(at(&out, 9, 9), [10, 20, 30, 255]);
        assert_eq!(at(&out, 10, 10), [0, 0, 0, 0]);
        // Half-covered: the logo at opacity 0.5 over transparency keeps its colour.
        let half = mark(Gravity::NorthWest, 50.0, 0.5, 0)
            .apply_with_logo(flat(20, 20, &[0, 0, 0, 0]), &logo)
            .unwrap();
        assert_eq!(at(&half, 0, 0), [10, 20, 30, 128]);
    }

    #[test]
    fn logos_too_big_are_clipped_and_padding_can_leave_no_room() {
        // A tall logo at 100 %: 30 wide, 300 high, in a 30x20 image: the top shows for north,
        // the bottom for south, never an error.
        let mut tall = flat(3, 30, &[255, 0, 0]);
        tall.data_mut()[29 * 9..].copy_from_slice(&[0, 255, 0].repeat(3));
        let image = flat(30, 20, &[0, 0, 0]);
        let north = mark(Gravity::North, 100.0, 1.0, 0)
            .apply_with_logo(image.clone(), &tall)
            .unwrap();
        assert!(north.data().chunks_exact(3).all(|p| p == [255, 0, 0]));
        let south = mark(Gravity::South, 100.0, 1.0, 0)
            .apply_with_logo(image.clone(), &tall)
            .unwrap();
        assert_eq!(at(&south, 15, 19), [0, 255, 0]);
        assert_eq!(at(&south, 15, 0), [255, 0, 0]);
        // Padding 10 on a 15x15 image leaves nothing to draw on.
        let small = flat(15, 15, &[9, 9, 9]);
        let out = mark(Gravity::Centre, 50.0, 1.0, 10)
            .apply_with_logo(small.clone(), &tall)
            .unwrap();
        assert_eq!(out, small);
        // A 1-pixel-wide image still gets a 1-pixel logo.
        let line = mark(Gravity::Centre, 1.0, 1.0, 0)
            .apply_with_logo(flat(1, 5, &[0, 0, 0]), &flat(2, 2, &[7, 7, 7]))
            .unwrap();
        assert_eq!(at(&line, 0, 2), [7, 7, 7]);
    }
}
