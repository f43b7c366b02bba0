//! `resize`: scale to a width and/or a height with Lanczos3 (fast_image_resize, SIMD).
//!
//! * `inside` (default) — fit within the box, aspect ratio kept; with one side given the other
//!   follows the aspect ratio;
//! * `cover` — cover the box with the aspect ratio kept, then centre-crop to exactly the box;
//! * `fill` — stretch to exactly the box.
//!
//! Sizes are computed in integers with round-half-up and never reach zero, so the same input
//! always gives the same size on every worker.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use pixelmesh_proto::v1;

use super::bitmap::Bitmap;
use super::json::{Fields, quoted};

pub(crate) const NAME: &str = "resize";
pub(crate) const FIELDS: &[&str] = &["width", "height", "fit"];

/// The largest width or height a resize may ask for.
pub const MAX_DIMENSION: u32 = 16384;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fit {
    #[default]
    Inside,
    Cover,
    Fill,
}

impl Fit {
    const NAMES: &str = "inside, cover, fill";

    pub fn name(self) -> &'static str {
        match self {
            Fit::Inside => "inside",
            Fit::Cover => "cover",
            Fit::Fill => "fill",
        }
    }

    fn from_name(name: &str) -> Result<Fit, String> {
        match name {
            "inside" => Ok(Fit::Inside),
            "cover" => Ok(Fit::Cover),
            "fill" => Ok(Fit::Fill),
            other => Err(format!(
                "fit must be one of {}, got {}",
                Fit::NAMES,
                quoted(other)
            )),
        }
    }

    fn from_proto(value: i32) -> Result<Fit, String> {
        match v1::Fit::try_from(value) {
            Ok(v1::Fit::Unspecified | v1::Fit::Inside) => Ok(Fit::Inside),
            Ok(v1::Fit::Cover) => Ok(Fit::Cover),
            Ok(v1::Fit::Fill) => Ok(Fit::Fill),
            Err(_) => Err(format!("fit must be one of {}, got {value}", Fit::NAMES)),
        }
    }

    fn to_proto(self) -> v1::Fit {
        match self {
            Fit::Inside => v1::Fit::Inside,
            Fit::Cover => v1::Fit::Cover,
            Fit::Fill => v1::Fit::Fill,
        }
    }
}

/// Resize parameters; a side of 0 means "not given".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    width: u32,
    height: u32,
    fit: Fit,
}

impl Resize {
    /// Validated parameters; `0` leaves a side unset.
    pub fn new(width: u32, height: u32, fit: Fit) -> Result<Resize, String> {
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
        Ok(Resize { width, height, fit })
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

    pub(crate) fn from_proto(p: &v1::Resize) -> Result<Resize, String> {
        Resize::new(p.width, p.height, Fit::from_proto(p.fit)?)
    }

    pub(crate) fn from_json(fields: &Fields<'_>) -> Result<Resize, String> {
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
        Resize::new(side("width")?, side("height")?, fit)
    }

    pub(crate) fn to_proto(self) -> v1::Resize {
        v1::Resize {
            width: self.width,
            height: self.height,
            fit: self.fit.to_proto() as i32,
        }
    }

    /// The output size for a `width` x `height` input. `u64`: with one side given, a very
    /// thin input can ask for more than `u32` holds, and the engine must be able to say so.
    pub fn output_size(&self, width: u32, height: u32) -> (u64, u64) {
        let (src_w, src_h) = (u64::from(width.max(1)), u64::from(height.max(1)));
        let (box_w, box_h) = (u64::from(self.width), u64::from(self.height));
        match (self.fit, box_w, box_h) {
            (_, w, 0) => (w, scale(src_h, w, src_w)),
            (_, 0, h) => (scale(src_w, h, src_h), h),
            (Fit::Cover | Fit::Fill, w, h) => (w, h),
            // Compare aspect ratios by cross-multiplying: the wider one is bound by width.
            (Fit::Inside, w, h) if src_w * h >= src_h * w => (w, scale(src_h, w, src_w)),
            (Fit::Inside, _, h) => (scale(src_w, h, src_h), h),
        }
    }

    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        let (src_w, src_h) = (image.width(), image.height());
        let (w, h) = self.output_size(src_w, src_h);
        let (Ok(w), Ok(h)) = (u32::try_from(w), u32::try_from(h)) else {
            return Err(format!("resize to {w}x{h} is too large"));
        };
        if (w, h) == (src_w, src_h) {
            // Same size: cover crops nothing and a same-size convolution only costs time.
            return Ok(image);
        }
        let alpha = image.has_alpha();
        let pixel_type = if alpha {
            PixelType::U8x4
        } else {
            PixelType::U8x3
        };
        let src = ImageRef::new(src_w, src_h, image.data(), pixel_type)
            .map_err(|err| format!("resize: {err}"))?;
        let mut dst = Image::new(w, h, pixel_type);
        // Lanczos3 keeps downscaled photos sharp; RGBA is premultiplied by the resizer
        // (`mul_div_alpha`, on by default) so transparent pixels do not bleed their colour.
        let mut options =
            ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
        if self.fit == Fit::Cover {
            // Resample only the centred part of the source with the box's aspect ratio:
            // scaling and cropping in one pass.
            options = options.fit_into_destination(Some((0.5, 0.5)));
        }
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|err| format!("resize: {err}"))?;
        Bitmap::new(w, h, alpha, dst.into_vec())
            .ok_or_else(|| "resize: output buffer has the wrong size".to_string())
    }
}

/// `value * num / den`, rounded half up, at least 1 so no side ever becomes zero.
fn scale(value: u64, num: u64, den: u64) -> u64 {
    ((value * num * 2 + den) / (2 * den)).max(1)
}

fn range_error(name: &str, value: i64) -> String {
    format!("{name} must be between 1 and {MAX_DIMENSION}, got {value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(width: u32, height: u32, fit: Fit, src: (u32, u32)) -> (u64, u64) {
        Resize::new(width, height, fit)
            .unwrap()
            .output_size(src.0, src.1)
    }

    fn gradient(width: u32, height: u32, alpha: bool) -> Bitmap {
        let channels = if alpha { 4 } else { 3 };
        let data = (0..width * height)
            .flat_map(|i| {
                let (x, y) = (i % width, i / width);
                [(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8, 200][..channels].to_vec()
            })
            .collect();
        Bitmap::new(width, height, alpha, data).unwrap()
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
        // Upscaling is allowed.
        assert_eq!(size(300, 300, Fit::Inside, (3, 2)), (300, 200));
    }

    #[test]
    fn cover_and_fill_give_exactly_the_box() {
        assert_eq!(size(101, 57, Fit::Cover, (999, 1001)), (101, 57));
        assert_eq!(size(101, 57, Fit::Fill, (999, 1001)), (101, 57));
    }

    #[test]
    fn thin_inputs_can_ask_for_more_than_u32() {
        let (w, h) = size(16384, 0, Fit::Inside, (1, u32::MAX));
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
