//! `rotate`: turn the image clockwise by `angle` degrees (-360..=360, read modulo 360).
//!
//! * 90, 180 and 270 are exact pixel moves; 90 and 270 swap width and height.
//! * Any other angle enlarges the canvas to the smallest one holding the whole rotated image
//!   and samples it bilinearly. Points outside the source read as `background`, so the
//!   image's edges blend into it over one pixel (antialiased) rather than stair-stepping.
//!   Sampling is premultiplied, so a transparent background or transparent pixels never
//!   darken their neighbours.
//!
//! `background` is a hex colour, `#rrggbb` or `#rrggbbaa`; the `#` may be left out, since it
//! cannot be written in a URL's query. The default is transparent, which makes the output
//! RGBA (formats without alpha show white); an opaque background keeps an RGB image RGB.
//!
//! Determinism: sine and cosine are rounded to 24 fractional bits once, and everything after
//! is integer arithmetic, so every worker writes the same bytes (a platform's last-bit
//! difference in `sin` would have to straddle a rounding boundary 2^-25 wide to matter).

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::{Fields, quoted};
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{self, Cost, Shape};

pub(crate) const NAME: &str = "rotate";

/// RGBA; the default background.
pub const TRANSPARENT: [u8; 4] = [0, 0, 0, 0];

/// Fractional bits of the fixed-point sine and cosine.
const TRIG_BITS: u32 = 24;
/// Fractional bits of a bilinear weight: 1/256 of a pixel is finer than 8-bit output shows.
const WEIGHT_BITS: u32 = 8;

/// Single-core nanoseconds per output pixel, for the budget's estimate (calibration in
/// `crate::budget`): a quarter turn moves pixels, any other angle samples four.
const QUARTER_NS_PER_PIXEL: f64 = 20.0;
const SAMPLED_NS_PER_PIXEL: f64 = 36.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rotate {
    /// Clockwise degrees, normalised to `0..360`.
    angle: f64,
    /// RGBA, straight (not premultiplied).
    background: [u8; 4],
}

impl Rotate {
    pub fn new(angle: f64, background: [u8; 4]) -> Result<Rotate, String> {
        // Written so NaN fails too.
        if !(angle.is_finite() && (-360.0..=360.0).contains(&angle)) {
            return Err(format!("angle must be between -360 and 360, got {angle}"));
        }
        // rem_euclid can round a tiny negative angle up to 360 itself; adding 0.0 turns -0.0
        // into 0.0 so equal turns compare equal.
        let angle = match angle.rem_euclid(360.0) + 0.0 {
            a if a >= 360.0 => 0.0,
            a => a,
        };
        Ok(Rotate { angle, background })
    }

    /// Clockwise degrees in `0..360`.
    pub fn angle(&self) -> f64 {
        self.angle
    }

    pub fn background(&self) -> [u8; 4] {
        self.background
    }

    /// Quarter turns when the angle is a multiple of 90.
    fn quarter_turns(&self) -> Option<u32> {
        match self.angle {
            0.0 => Some(0),
            90.0 => Some(1),
            180.0 => Some(2),
            270.0 => Some(3),
            _ => None,
        }
    }

    /// Cosine and sine of the angle in fixed point with [`TRIG_BITS`] fractional bits.
    fn trig(&self) -> (i64, i64) {
        let radians = self.angle.to_radians();
        let one = f64::from(1u32 << TRIG_BITS);
        (
            (radians.cos() * one).round() as i64,
            (radians.sin() * one).round() as i64,
        )
    }

    /// The output's bytes per pixel: a sampled turn onto a background that is not opaque
    /// adds alpha.
    pub(crate) fn channels_for(&self, channels: u64) -> u64 {
        if self.quarter_turns().is_none() && self.background[3] < 255 {
            4
        } else {
            channels
        }
    }

    /// Errs when the canvas would not fit `u32`, or when the task's deadline passes (see
    /// [`budget::expired`]).
    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        match self.quarter_turns() {
            Some(0) => Ok(image),
            Some(turns) => quarter_turn(&image, turns),
            None => self.resample(&image),
        }
    }

    fn resample(&self, image: &Bitmap) -> Result<Bitmap, String> {
        let (w, h) = self.output_size(image.width(), image.height());
        let (out_w, out_h) = match (u32::try_from(w), u32::try_from(h)) {
            (Ok(w), Ok(h)) => (w, h),
            _ => return Err(format!("rotate to {w}x{h} is too large")),
        };
        let (w, h) = (i64::from(image.width()), i64::from(image.height()));
        let channels = image.channels();
        let out_alpha = image.has_alpha() || self.background[3] < 255;
        let out_channels = if out_alpha { 4 } else { 3 };
        let background = self.background.map(u64::from);
        let source = image.data();
        let stride = image.width() as usize * channels;
        let fetch = |x: i64, y: i64| -> [u64; 4] {
            if (0..w).contains(&x) && (0..h).contains(&y) {
                let at = y as usize * stride + x as usize * channels;
                let p = &source[at..at + channels];
                let a = if channels == 4 { u64::from(p[3]) } else { 255 };
                [u64::from(p[0]), u64::from(p[1]), u64::from(p[2]), a]
            } else {
                background
            }
        };
        let (cos, sin) = self.trig();
        let one = 1i64 << TRIG_BITS;
        // Positions in 1/2^(TRIG_BITS + 1) of a pixel, measured from the centres: destination
        // pixel X's centre is (2X + 1 - out_w) half pixels from the canvas centre, and maps
        // back to source index u = (cos dx2 + sin dy2 + w - 1) / 2 (and likewise v), where
        // index i is pixel i's centre.
        let to_weight = TRIG_BITS + 1 - WEIGHT_BITS;
        let full = 1u64 << WEIGHT_BITS;
        let mut data = Vec::with_capacity(out_w as usize * out_h as usize * out_channels);
        for y in 0..i64::from(out_h) {
            if y % budget::ROWS_PER_CHECK as i64 == 0 && budget::expired() {
                return Err(budget::stopped());
            }
            let dy2 = 2 * y + 1 - i64::from(out_h);
            let dx2 = 1 - i64::from(out_w);
            let mut u = cos * dx2 + sin * dy2 + (w - 1) * one;
            let mut v = -sin * dx2 + cos * dy2 + (h - 1) * one;
            for _ in 0..out_w {
                // Rounded to 1/256 of a pixel: integer part and bilinear weight.
                let pu = (u + (1 << (to_weight - 1))) >> to_weight;
                let pv = (v + (1 << (to_weight - 1))) >> to_weight;
                u += 2 * cos;
                v -= 2 * sin;
                let (ix, iy) = (pu >> WEIGHT_BITS, pv >> WEIGHT_BITS);
                if ix < -1 || iy < -1 || ix >= w || iy >= h {
                    data.extend_from_slice(&self.background[..out_channels]);
                    continue;
                }
                let fx = (pu & (full as i64 - 1)) as u64;
                let fy = (pv & (full as i64 - 1)) as u64;
                let taps = [
                    (fetch(ix, iy), (full - fx) * (full - fy)),
                    (fetch(ix + 1, iy), fx * (full - fy)),
                    (fetch(ix, iy + 1), (full - fx) * fy),
                    (fetch(ix + 1, iy + 1), fx * fy),
                ];
                // Weights sum to 2^16. Colour is weighted by alpha too (premultiplied).
                let mut sums = [0u64; 4];
                for ([r, g, b, a], weight) in taps {
                    let wa = weight * a;
                    sums[0] += wa * r;
                    sums[1] += wa * g;
                    sums[2] += wa * b;
                    sums[3] += wa;
                }
                let alpha = sums[3];
                for sum in &sums[..3] {
                    // Un-premultiply, rounded to nearest.
                    let value = if alpha == 0 {
                        0
                    } else {
                        (2 * sum + alpha) / (2 * alpha)
                    };
                    data.push(value as u8);
                }
                if out_alpha {
                    data.push(((alpha + (1 << 15)) >> 16) as u8);
                }
            }
        }
        Bitmap::new(out_w, out_h, out_alpha, data)
            .ok_or_else(|| "rotate: output buffer has the wrong size".to_string())
    }
}

/// `image` turned clockwise by `turns` (1..=3) quarter turns: pure pixel moves. Errs only at
/// the task's deadline.
fn quarter_turn(image: &Bitmap, turns: u32) -> Result<Bitmap, String> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let channels = image.channels();
    let source = image.data();
    let (out_w, out_h) = if turns == 2 { (w, h) } else { (h, w) };
    let mut data = Vec::with_capacity(source.len());
    for y in 0..out_h {
        if y % budget::ROWS_PER_CHECK == 0 && budget::expired() {
            return Err(budget::stopped());
        }
        for x in 0..out_w {
            // Where destination (x, y) comes from.
            let (sx, sy) = match turns {
                1 => (y, h - 1 - x),
                2 => (w - 1 - x, h - 1 - y),
                _ => (w - 1 - y, x),
            };
            let at = (sy * w + sx) * channels;
            data.extend_from_slice(&source[at..at + channels]);
        }
    }
    Ok(
        Bitmap::new(out_w as u32, out_h as u32, image.has_alpha(), data)
            .expect("a turned image has as many pixels as the source"),
    )
}

/// `#rrggbb` or `#rrggbbaa`, the `#` optional, either case.
pub(crate) fn parse_colour(text: &str) -> Result<[u8; 4], String> {
    let hex = text.strip_prefix('#').unwrap_or(text);
    let byte = |i: usize| {
        hex.get(i..i + 2)
            .filter(|pair| pair.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
    };
    let colour = match hex.len() {
        6 => (0..3)
            .map(|i| byte(2 * i))
            .collect::<Option<Vec<u8>>>()
            .map(|rgb| [rgb[0], rgb[1], rgb[2], 255]),
        8 => (0..4)
            .map(|i| byte(2 * i))
            .collect::<Option<Vec<u8>>>()
            .map(|rgba| [rgba[0], rgba[1], rgba[2], rgba[3]]),
        _ => None,
    };
    colour.ok_or_else(|| {
        format!(
            "background must be a hex colour #rrggbb or #rrggbbaa, got {}",
            quoted(text)
        )
    })
}

/// `#rrggbb` when opaque, else `#rrggbbaa`; lowercase.
pub(crate) fn colour_hex([r, g, b, a]: [u8; 4]) -> String {
    if a == 255 {
        format!("#{r:02x}{g:02x}{b:02x}")
    } else {
        format!("#{r:02x}{g:02x}{b:02x}{a:02x}")
    }
}

impl Operator for Rotate {
    const SPEC: Spec = Spec::new(
        NAME,
        "Rotate",
        "Turn by an angle in degrees.",
        &[
            Field::float("angle", "Angle (°)", (-360.0, 360.0, 1.0))
                .with_default("90")
                .required(),
            Field::colour("background", "Background"),
        ],
    );

    type Proto = v1::Rotate;

    fn from_fields(fields: &Fields<'_>) -> Result<Rotate, String> {
        // Required: an absent angle would silently do nothing.
        let angle = fields.number("angle")?.ok_or("angle is required")?;
        let background = fields
            .string("background")?
            .map(parse_colour)
            .transpose()?
            .unwrap_or(TRANSPARENT);
        Rotate::new(angle, background)
    }

    fn from_proto(p: &v1::Rotate) -> Result<Rotate, String> {
        let background = if p.background.is_empty() {
            TRANSPARENT
        } else {
            parse_colour(&p.background)?
        };
        Rotate::new(p.angle, background)
    }

    fn to_proto(&self) -> v1::Rotate {
        v1::Rotate {
            angle: self.angle,
            background: if self.background == TRANSPARENT {
                String::new()
            } else {
                colour_hex(self.background)
            },
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        // Whole angles print as 90, not 90.0.
        let angle = if self.angle.fract() == 0.0 {
            Value::from(self.angle as i64)
        } else {
            Value::from(self.angle)
        };
        let mut params = vec![("angle", angle)];
        if self.background != TRANSPARENT {
            params.push(("background", Value::from(colour_hex(self.background))));
        }
        params
    }

    fn output_size(&self, width: u32, height: u32) -> (u64, u64) {
        let (w, h) = (u64::from(width), u64::from(height));
        match self.quarter_turns() {
            Some(0 | 2) => (w, h),
            Some(_) => (h, w),
            None => {
                let (cos, sin) = self.trig();
                let (cos, sin) = (cos.unsigned_abs(), sin.unsigned_abs());
                // Round up, but forgive 1/256 of a pixel: the rounding of sine and cosine must
                // not add a column of background when the true extent is whole.
                let side = |a: u64, b: u64| {
                    let fixed = a * cos + b * sin;
                    ((fixed + (1 << TRIG_BITS) - 1 - (1 << (TRIG_BITS - 8))) >> TRIG_BITS).max(1)
                };
                (side(w, h), side(h, w))
            }
        }
    }

    fn output_channels(&self, input: Shape) -> u64 {
        self.channels_for(input.channels)
    }

    /// What the op costs (see `crate::budget`): the turned image is written while the source
    /// lives; a turn by 0 is free.
    fn cost(&self, input: Shape, output: Shape, _context: &Context) -> Cost {
        match self.quarter_turns() {
            Some(0) => Cost::in_place(input, 0.0),
            Some(_) => Cost::copying(input, output, QUARTER_NS_PER_PIXEL),
            None => Cost::copying(input, output, SAMPLED_NS_PER_PIXEL),
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

    /// Pixel (x, y) is [x, y, 10 x + y] (and alpha 100 + x + y): every pixel distinct.
    fn numbered(width: u32, height: u32, alpha: bool) -> Bitmap {
        let channels = if alpha { 4 } else { 3 };
        let data = (0..height)
            .flat_map(|y| {
                (0..width).flat_map(move |x| {
                    [x as u8, y as u8, (10 * x + y) as u8, (100 + x + y) as u8][..channels].to_vec()
                })
            })
            .collect();
        Bitmap::new(width, height, alpha, data).unwrap()
    }

    fn pixel(image: &Bitmap, x: u32, y: u32) -> &[u8] {
        let c = image.channels();
        let at = (y * image.width() + x) as usize * c;
        &image.data()[at..at + c]
    }

    fn turn(image: Bitmap, angle: f64) -> Bitmap {
        Rotate::new(angle, TRANSPARENT)
            .unwrap()
            .apply(image)
            .unwrap()
    }

    #[test]
    fn angles_are_validated_and_normalised() {
        let angle = |a: f64| Rotate::new(a, TRANSPARENT).unwrap().angle();
        assert_eq!(angle(-90.0), 270.0);
        assert_eq!(angle(360.0), 0.0);
        assert_eq!(angle(-360.0), 0.0);
        assert_eq!(angle(-0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(angle(-1e-20), 0.0);
        assert_eq!(angle(30.5), 30.5);
        for bad in [360.5, -361.0, f64::NAN, f64::INFINITY] {
            let err = Rotate::new(bad, TRANSPARENT).unwrap_err();
            assert!(
                err.starts_with("angle must be between -360 and 360, got "),
                "{err}"
            );
        }
    }

    #[test]
    fn colours_parse_with_or_without_hash() {
        assert_eq!(parse_colour("#ff8000"), Ok([255, 128, 0, 255]));
        assert_eq!(parse_colour("FF800080"), Ok([255, 128, 0, 128]));
        assert_eq!(colour_hex([255, 128, 0, 255]), "#ff8000");
        assert_eq!(colour_hex([255, 128, 0, 128]), "#ff800080");
        for bad in [
            "red",
            "#ff80",
            "#ff800",
            "#gg8000",
            "#+f8000",
            "ff8000ff00",
            "#ééé",
        ] {
            assert_eq!(
                parse_colour(bad).unwrap_err(),
                format!(
                    "background must be a hex colour #rrggbb or #rrggbbaa, got {}",
                    quoted(bad)
                )
            );
        }
    }

    #[test]
    fn a_quarter_turn_moves_known_pixels() {
        // 3x2 turned clockwise becomes 2x3: the top-left goes to the top-right, the
        // bottom-left to the top-left.
        let out = turn(numbered(3, 2, false), 90.0);
        assert_eq!((out.width(), out.height()), (2, 3));
        assert_eq!(pixel(&out, 1, 0), &[0, 0, 0]);
        assert_eq!(pixel(&out, 0, 0), &[0, 1, 1]);
        assert_eq!(pixel(&out, 1, 2), &[2, 0, 20]);
        assert_eq!(pixel(&out, 0, 2), &[2, 1, 21]);
        let back = turn(numbered(3, 2, false), 270.0);
        assert_eq!(pixel(&back, 0, 2), &[0, 0, 0]);
        let half = turn(numbered(3, 2, false), 180.0);
        assert_eq!(pixel(&half, 2, 1), &[0, 0, 0]);
        assert_eq!(pixel(&half, 0, 0), &[2, 1, 21]);
    }

    #[test]
    fn quarter_turns_compose_to_identity() {
        for alpha in [false, true] {
            let image = numbered(5, 3, alpha);
            let four = (0..4).fold(image.clone(), |img, _| turn(img, 90.0));
            assert_eq!(four, image);
            assert_eq!(turn(turn(image.clone(), 180.0), 180.0), image);
            assert_eq!(turn(turn(image.clone(), 90.0), 270.0), image);
            assert_eq!(turn(turn(image.clone(), -90.0), 90.0), image);
            assert_eq!(turn(image.clone(), 360.0), image);
            assert_eq!(turn(image.clone(), 90.0).has_alpha(), alpha);
        }
    }

    #[test]
    fn other_angles_enlarge_the_canvas_and_fill_the_corners() {
        let rotate = Rotate::new(45.0, TRANSPARENT).unwrap();
        // 10 x cos 45 + 10 x sin 45 = 14.14.
        assert_eq!(rotate.output_size(10, 10), (15, 15));
        assert_eq!(rotate.output_size(20, 10), (22, 22));
        let flat = Bitmap::new(10, 10, false, [200, 100, 50].repeat(100)).unwrap();
        let out = rotate.apply(flat.clone()).unwrap();
        assert_eq!((out.width(), out.height(), out.has_alpha()), (15, 15, true));
        assert_eq!(pixel(&out, 7, 7), &[200, 100, 50, 255]);
        assert_eq!(pixel(&out, 0, 0), &[0, 0, 0, 0]);
        assert_eq!(pixel(&out, 14, 14), &[0, 0, 0, 0]);
        // The edge blends into the background: partly transparent, colour not darkened.
        let edge = (0..15)
            .map(|x| pixel(&out, x, 7))
            .find(|p| p[3] > 0)
            .unwrap();
        assert!(edge[3] < 255, "{edge:?}");
        assert_eq!(&edge[..3], &[200, 100, 50]);
        // An opaque background keeps RGB and shows in the corners.
        let white = Rotate::new(-30.0, [255, 255, 255, 255]).unwrap();
        let out = white.apply(flat.clone()).unwrap();
        let size = white.output_size(10, 10);
        assert_eq!((u64::from(out.width()), u64::from(out.height())), size);
        assert_eq!(size, (14, 14)); // 10 x (cos 30 + sin 30) = 13.66
        assert!(!out.has_alpha());
        assert_eq!(pixel(&out, 0, 0), &[255, 255, 255]);
        assert_eq!(pixel(&out, 7, 7), &[200, 100, 50]);
        // Same bytes every time.
        assert_eq!(white.apply(flat).unwrap(), out);
    }

    #[test]
    fn resampling_turns_the_same_way_as_the_exact_path() {
        // Just off a quarter turn the sampled path lands on pixel centres, so it must agree
        // with the pixel moves: same direction, same size, same bytes.
        for alpha in [false, true] {
            let image = numbered(5, 3, alpha);
            for (near, exact) in [(89.9999, 90.0), (180.0001, 180.0), (-90.0001, 270.0)] {
                let sampled = Rotate::new(near, [0, 0, 0, 255]).unwrap();
                assert_eq!(sampled.quarter_turns(), None);
                assert_eq!(
                    sampled.apply(image.clone()).unwrap(),
                    turn(image.clone(), exact),
                    "{near}"
                );
            }
        }
    }

    #[test]
    fn a_tiny_turn_keeps_the_size_and_nearly_every_pixel() {
        let image = numbered(20, 10, false);
        let rotate = Rotate::new(0.01, [0, 0, 0, 255]).unwrap();
        // 20.0017 x 10.0035: the slivers under 1/256 of a pixel do not add a column or row.
        assert_eq!(rotate.output_size(20, 10), (20, 10));
        let out = rotate.apply(image.clone()).unwrap();
        assert_eq!((out.width(), out.height()), (20, 10));
        let same = image
            .data()
            .iter()
            .zip(out.data())
            .filter(|(a, b)| a == b)
            .count();
        assert!(same * 10 > image.data().len() * 9, "{same}");
    }
}
