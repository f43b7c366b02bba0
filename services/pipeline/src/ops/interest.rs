//! Where the interesting part of an image is, for `crop` and `resize:fit=cover` with
//! `gravity=smart` or `gravity=entropy`: the window of the requested size that scores highest.
//!
//! Both strategies work on a small copy of the image, its longer side [`WORKING_SIDE`]
//! pixels (a box-filtered downscale by `fast_image_resize`, the one pass over every input
//! pixel), so a 1920x1080 input costs about a millisecond whatever the crop:
//!
//! * **smart** (attention, after libvips' `smartcrop` attention strategy and smartcrop.js):
//!   each working pixel scores its edges (the Laplacian of its lightness), how close it is to
//!   a skin tone and how saturated it is; skin and saturation count more where there is
//!   detail, so a flat blue sky scores little. The window with the largest sum wins.
//! * **entropy**: the window whose lightness histogram (32 bins) has the largest Shannon
//!   entropy: the most varied part, as libvips' entropy strategy keeps.
//!
//! Every window position on the working grid is scored through summed-area tables, so the
//! search is exact on that grid (a working pixel is 1/128 of the longer side). Ties go to
//! the position nearest the centre, then the first, so every worker picks the same window.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::bitmap::Bitmap;

/// The working copy's longer side: enough to tell a face from the sky, small enough that
/// scoring every window costs well under a millisecond.
pub const WORKING_SIDE: u32 = 128;

/// Single-core nanoseconds per input pixel, for the budget's estimate (calibration in
/// `crate::budget`): the downscale reads every pixel once; scoring the small copy is
/// independent of the input's size.
pub(crate) const NS_PER_PIXEL: f64 = 2.0;

/// Lightness levels per entropy histogram bin (256 / 32 bins).
const ENTROPY_BIN_SHIFT: u32 = 3;
const ENTROPY_BINS: usize = 32;

/// The skin tone as normalised RGB and how close a colour must be to count (smartcrop.js').
const SKIN_COLOUR: [f32; 3] = [0.78, 0.57, 0.44];
const SKIN_THRESHOLD: f32 = 0.8;
const SATURATION_THRESHOLD: f32 = 0.4;
/// Each term's weight. Saturation counts only where there is detail too: a saturated subject
/// has edges, a blue sky or a coloured wall has none. Tuned on the corpus' kite, where
/// smartcrop.js' weights (saturation a tenth of this, skin dependent on detail) pick the
/// clouds' edges instead, and on the astronaut's portrait, where a lower skin weight picks
/// the orange suit's patches over her face.
const DETAIL_WEIGHT: f32 = 0.2;
const SKIN_WEIGHT: f32 = 1.0;
const SATURATION_WEIGHT: f32 = 1.0;
/// Lightness steps below this (of 255, in the Laplacian) are noise and JPEG ringing, not
/// detail that makes saturation count.
const DETAIL_FLOOR: f32 = 0.04;

/// How the interesting window is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Attention,
    Entropy,
}

/// A small copy of an image, RGB, and how many source pixels one of its pixels stands for.
pub(crate) struct Working {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
    /// Source pixels per working pixel, across and down.
    scale: (f64, f64),
}

impl Working {
    /// Box-filters `image` down to at most [`WORKING_SIDE`] on its longer side (never up).
    /// Transparent pixels count as black, which scores as nothing.
    pub(crate) fn new(image: &Bitmap) -> Result<Working, String> {
        let (w, h) = (image.width(), image.height());
        let longer = w.max(h);
        let (ww, wh) = if longer <= WORKING_SIDE {
            (w, h)
        } else {
            let shrink = |side: u32| {
                ((u64::from(side) * u64::from(WORKING_SIDE) + u64::from(longer) / 2)
                    / u64::from(longer))
                .max(1) as u32
            };
            (shrink(w), shrink(h))
        };
        let data = box_shrink(image, ww, wh)?;
        let rgb = if image.has_alpha() {
            // Premultiplied by the resizer's alpha handling would be cleaner, but the
            // resizer divides it back out; multiply here so clear areas weigh nothing.
            data.chunks_exact(4)
                .flat_map(|p| {
                    let a = u16::from(p[3]);
                    [0, 1, 2].map(|c| ((u16::from(p[c]) * a + 127) / 255) as u8)
                })
                .collect()
        } else {
            data
        };
        Ok(Working {
            width: ww as usize,
            height: wh as usize,
            rgb,
            scale: (f64::from(w) / f64::from(ww), f64::from(h) / f64::from(wh)),
        })
    }

    /// Lightness of each pixel, 0..=255 (BT.601 luma).
    fn lightness(&self) -> Vec<u8> {
        self.rgb
            .chunks_exact(3)
            .map(|p| crate::bitmap::luma(p[0], p[1], p[2]))
            .collect()
    }

    /// The attention score of each pixel (see the module's comment).
    fn attention(&self) -> Vec<f32> {
        let light = self.lightness();
        let (w, h) = (self.width, self.height);
        let at = |x: usize, y: usize| f32::from(light[y * w + x]);
        let mut scores = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let centre = at(x, y);
                // Edges repeat the border pixel, so the frame itself is no edge.
                let sum = at(x.saturating_sub(1), y)
                    + at((x + 1).min(w - 1), y)
                    + at(x, y.saturating_sub(1))
                    + at(x, (y + 1).min(h - 1));
                let detail = ((4.0 * centre - sum).abs() / 255.0).min(1.0);
                let i = (y * w + x) * 3;
                let [r, g, b] = [0, 1, 2].map(|c| f32::from(self.rgb[i + c]) / 255.0);
                let lightness = centre / 255.0;
                let skin = skin(r, g, b, lightness);
                let saturation = saturation(r, g, b, lightness);
                let edge = (detail - DETAIL_FLOOR).max(0.0) / (1.0 - DETAIL_FLOOR);
                let score = detail * DETAIL_WEIGHT
                    + skin * SKIN_WEIGHT
                    + saturation * edge * SATURATION_WEIGHT;
                // Squared, so one striking subject outweighs a wide spread of faint texture
                // (the kite against the clouds' soft edges).
                scores.push(score * score);
            }
        }
        scores
    }
}

/// `image`'s pixels box-filtered to `width` x `height` (fast_image_resize), in its own layout
/// (RGB or RGBA): the one pass over the input that smart crops and face detection make.
pub(crate) fn box_shrink(image: &Bitmap, width: u32, height: u32) -> Result<Vec<u8>, String> {
    if (width, height) == (image.width(), image.height()) {
        return Ok(image.data().to_vec());
    }
    let pixel_type = if image.has_alpha() {
        PixelType::U8x4
    } else {
        PixelType::U8x3
    };
    let src = ImageRef::new(image.width(), image.height(), image.data(), pixel_type)
        .map_err(|err| format!("box shrink: {err}"))?;
    let mut dst = Image::new(width, height, pixel_type);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|err| format!("box shrink: {err}"))?;
    Ok(dst.into_vec())
}

/// How close a colour is to a skin tone, 0..=1 (0 below [`SKIN_THRESHOLD`]), for pixels
/// neither nearly black nor blown out.
fn skin(r: f32, g: f32, b: f32, lightness: f32) -> f32 {
    let magnitude = (r * r + g * g + b * b).sqrt();
    if magnitude == 0.0 || !(0.2..=1.0).contains(&lightness) {
        return 0.0;
    }
    let distance = [r, g, b]
        .iter()
        .zip(SKIN_COLOUR)
        .map(|(c, skin)| (c / magnitude - skin).powi(2))
        .sum::<f32>()
        .sqrt();
    let closeness = 1.0 - distance;
    if closeness > SKIN_THRESHOLD {
        (closeness - SKIN_THRESHOLD) / (1.0 - SKIN_THRESHOLD)
    } else {
        0.0
    }
}

/// HSL saturation above [`SATURATION_THRESHOLD`], rescaled to 0..=1, for mid-tones.
fn saturation(r: f32, g: f32, b: f32, lightness: f32) -> f32 {
    if !(0.05..=0.9).contains(&lightness) {
        return 0.0;
    }
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    if max == min {
        return 0.0;
    }
    let l = (max + min) / 2.0;
    let d = max - min;
    let s = if l > 0.5 {
        d / (2.0 - max - min)
    } else {
        d / (max + min)
    };
    if s > SATURATION_THRESHOLD {
        (s - SATURATION_THRESHOLD) / (1.0 - SATURATION_THRESHOLD)
    } else {
        0.0
    }
}

/// The top-left corner of the most interesting `crop.0` x `crop.1` window of `image` (the
/// crop no larger than the image).
pub fn focus(image: &Bitmap, crop: (u32, u32), strategy: Strategy) -> Result<(u32, u32), String> {
    let (width, height) = (image.width(), image.height());
    let crop = (crop.0.min(width), crop.1.min(height));
    if crop == (width, height) {
        return Ok((0, 0));
    }
    let working = Working::new(image)?;
    // The window in working pixels, at least one, at most the whole.
    let window = (
        ((f64::from(crop.0) / working.scale.0).round() as usize).clamp(1, working.width),
        ((f64::from(crop.1) / working.scale.1).round() as usize).clamp(1, working.height),
    );
    let (x, y) = match strategy {
        Strategy::Attention => {
            let sums = SummedArea::new(&working.attention(), working.width, working.height);
            best_window(&working, window, |rect| {
                sums.sum(rect) + sums.sum(inner(rect))
            })
        }
        Strategy::Entropy => {
            let tables = entropy_tables(&working);
            best_window(&working, window, |rect| tables.entropy(rect))
        }
    };
    // Back to source pixels, centred on the same point, kept inside the image.
    let place = |start: usize, size: usize, scale: f64, crop: u32, side: u32| -> u32 {
        let centre = (start as f64 + size as f64 / 2.0) * scale;
        let left = (centre - f64::from(crop) / 2.0).round();
        left.clamp(0.0, f64::from(side - crop)) as u32
    };
    Ok((
        place(x, window.0, working.scale.0, crop.0, width),
        place(y, window.1, working.scale.1, crop.1, height),
    ))
}

/// A window on the working grid: left, top, width, height.
type Rect = (usize, usize, usize, usize);

/// The window position with the highest `score`, ties to the one nearest the centre.
fn best_window(
    working: &Working,
    (ww, wh): (usize, usize),
    score: impl Fn(Rect) -> f32,
) -> (usize, usize) {
    let (free_x, free_y) = (working.width - ww, working.height - wh);
    let mut best = (f32::MIN, usize::MAX, (free_x / 2, free_y / 2));
    for y in 0..=free_y {
        for x in 0..=free_x {
            let value = score((x, y, ww, wh));
            let off_centre = (2 * x).abs_diff(free_x) + (2 * y).abs_diff(free_y);
            if value > best.0 || (value == best.0 && off_centre < best.1) {
                best = (value, off_centre, (x, y));
            }
        }
    }
    best.2
}

/// The middle half of a window (half its width and height, centred): attention counts what
/// lies there twice, so the subject sits inside the crop rather than at its edge, as
/// smartcrop.js' importance and libvips' centring on the peak both do.
fn inner((x, y, w, h): Rect) -> Rect {
    (x + w / 4, y + h / 4, w.div_ceil(2), h.div_ceil(2))
}

/// Sums over any rectangle in four lookups.
struct SummedArea {
    stride: usize,
    table: Vec<f64>,
}

impl SummedArea {
    fn new(values: &[f32], width: usize, height: usize) -> SummedArea {
        let stride = width + 1;
        let mut table = vec![0.0f64; stride * (height + 1)];
        for y in 0..height {
            let mut row = 0.0f64;
            for x in 0..width {
                row += f64::from(values[y * width + x]);
                table[(y + 1) * stride + x + 1] = table[y * stride + x + 1] + row;
            }
        }
        SummedArea { stride, table }
    }

    fn sum(&self, (x, y, w, h): Rect) -> f32 {
        let at = |x: usize, y: usize| self.table[y * self.stride + x];
        (at(x + w, y + h) - at(x, y + h) - at(x + w, y) + at(x, y)) as f32
    }
}

/// One summed-area table of pixel counts per lightness bin.
struct EntropyTables {
    stride: usize,
    rows: usize,
    /// Bin-major: bin b's table starts at `b * stride * rows`.
    counts: Vec<u32>,
    /// `n * ln(n)` for every count a window can hold, so scoring takes no logarithms.
    n_ln_n: Vec<f32>,
}

fn entropy_tables(working: &Working) -> EntropyTables {
    let (w, h) = (working.width, working.height);
    let (stride, rows) = (w + 1, h + 1);
    let mut counts = vec![0u32; ENTROPY_BINS * stride * rows];
    let light = working.lightness();
    for (bin, table) in counts.chunks_exact_mut(stride * rows).enumerate() {
        for y in 0..h {
            let mut row = 0;
            for x in 0..w {
                row += u32::from(usize::from(light[y * w + x] >> ENTROPY_BIN_SHIFT) == bin);
                table[(y + 1) * stride + x + 1] = table[y * stride + x + 1] + row;
            }
        }
    }
    let n_ln_n = (0..=w * h)
        .map(|n| {
            if n == 0 {
                0.0
            } else {
                n as f32 * (n as f32).ln()
            }
        })
        .collect();
    EntropyTables {
        stride,
        rows,
        counts,
        n_ln_n,
    }
}

impl EntropyTables {
    /// Shannon entropy (nats) of the window's lightness histogram:
    /// `ln N - sum(n ln n) / N`.
    fn entropy(&self, (x, y, w, h): Rect) -> f32 {
        let total = w * h;
        let mut sum = 0.0f32;
        for table in self.counts.chunks_exact(self.stride * self.rows) {
            let at = |x: usize, y: usize| table[y * self.stride + x];
            let n = at(x + w, y + h) + at(x, y) - at(x, y + h) - at(x + w, y);
            sum += self.n_ln_n[n as usize];
        }
        (total as f32).ln() - sum / total as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{corpus_photo, fixture_photo, gradient};

    /// The kite in `kite-2560x1600.jpg`, found by eye on a 640-wide copy and widened by a
    /// few pixels: left, top, right, bottom.
    const KITE: (u32, u32, u32, u32) = (1630, 470, 1840, 670);

    fn contains(at: (u32, u32), size: (u32, u32), subject: (u32, u32, u32, u32)) -> bool {
        at.0 <= subject.0
            && at.1 <= subject.1
            && at.0 + size.0 >= subject.2
            && at.1 + size.1 >= subject.3
    }

    #[test]
    fn smart_crops_keep_the_off_centre_kite() {
        let photo = corpus_photo("kite-2560x1600.jpg");
        // A centred window of each size misses the kite: the test can fail.
        for size in [
            (800, 800),
            (600, 1600),
            (2560, 400),
            (1000, 600),
            (400, 400),
        ] {
            let centred = ((2560 - size.0) / 2, (1600 - size.1) / 2);
            assert!(!contains(centred, size, KITE), "{size:?} centred");
            let at = focus(&photo, size, Strategy::Attention).unwrap();
            assert!(contains(at, size, KITE), "{size:?} at {at:?}");
        }
    }

    #[test]
    fn smart_crops_keep_the_astronauts_face() {
        // The face, by eye (the detector's box agrees, see faces.rs).
        const FACE: (u32, u32, u32, u32) = (180, 70, 270, 160);
        let photo = fixture_photo("astronaut-512x512.jpg");
        for size in [(200, 200), (512, 200), (300, 300)] {
            let centred = ((512 - size.0) / 2, (512 - size.1) / 2);
            assert!(!contains(centred, size, FACE), "{size:?} centred");
            let at = focus(&photo, size, Strategy::Attention).unwrap();
            assert!(contains(at, size, FACE), "{size:?} at {at:?}");
        }
    }

    #[test]
    fn entropy_crops_leave_the_featureless_part() {
        // The kite photo with its left 60 % painted one flat colour: the varied part is on
        // the right, and the entropy window must not reach into the flat part.
        let mut photo = corpus_photo("kite-2560x1600.jpg");
        let flat_to = 1536usize;
        for row in photo.data_mut().chunks_exact_mut(2560 * 3) {
            for pixel in row[..flat_to * 3].chunks_exact_mut(3) {
                pixel.copy_from_slice(&[40, 80, 160]);
            }
        }
        for size in [(1000, 1000), (800, 1600), (600, 400)] {
            let at = focus(&photo, size, Strategy::Entropy).unwrap();
            // Within one working pixel (20 source pixels) of the edge of the flat part.
            assert!(at.0 + 20 >= flat_to as u32, "{size:?} at {at:?}");
        }
    }

    #[test]
    fn the_window_stays_inside_and_is_deterministic() {
        let image = gradient(300, 200, true);
        for size in [
            (1, 1),
            (299, 1),
            (1, 199),
            (150, 150),
            (300, 200),
            (500, 500),
        ] {
            for strategy in [Strategy::Attention, Strategy::Entropy] {
                let at = focus(&image, size, strategy).unwrap();
                let (w, h) = (size.0.min(300), size.1.min(200));
                assert!(at.0 + w <= 300 && at.1 + h <= 200, "{size:?} at {at:?}");
                assert_eq!(focus(&image, size, strategy).unwrap(), at);
            }
        }
    }

    #[test]
    fn a_flat_image_crops_at_the_centre() {
        let flat = Bitmap::new(400, 300, false, vec![90; 400 * 300 * 3]).unwrap();
        for strategy in [Strategy::Attention, Strategy::Entropy] {
            let at = focus(&flat, (100, 100), strategy).unwrap();
            // The working grid's centre, within one working pixel (400/128 source pixels).
            assert!(at.0.abs_diff(150) <= 4 && at.1.abs_diff(100) <= 4, "{at:?}");
        }
    }

    #[test]
    fn a_transparent_subject_weighs_nothing() {
        // A saturated, edgy square on the left, transparent; an opaque one on the right.
        let (w, h) = (200u32, 100u32);
        let mut data = vec![0u8; (w * h * 4) as usize];
        for y in 0..h {
            for x in 0..w {
                let i = ((y * w + x) * 4) as usize;
                let checker = ((x / 4 + y / 4) % 2) as u8 * 255;
                data[i..i + 4].copy_from_slice(&[255, checker, 0, if x < 100 { 0 } else { 255 }]);
            }
        }
        let image = Bitmap::new(w, h, true, data).unwrap();
        let at = focus(&image, (100, 100), Strategy::Attention).unwrap();
        assert_eq!(at, (100, 0));
    }
}
