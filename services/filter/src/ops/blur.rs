//! `blur`: a true gaussian blur (separable, in f32), not a box or stack approximation.
//!
//! The kernel reaches 3 sigma each side, which holds 99.7 % of the gaussian's weight; the edge
//! pixels are repeated outside the image (clamp), so borders do not darken. [`Blur::radius`] is
//! also the halo a tile needs for its blurred pixels to match the whole image's.

use pixelmesh_proto::v1;

use super::bitmap::Bitmap;
use super::json::Fields;

pub(crate) const NAME: &str = "blur";
pub(crate) const FIELDS: &[&str] = &["sigma"];

/// Beyond this the kernel (6 sigma + 1 wide) costs more than any sensible blur needs.
pub const MAX_SIGMA: f32 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blur {
    sigma: f32,
}

impl Blur {
    pub fn new(sigma: f32) -> Result<Blur, String> {
        // Written so NaN fails too.
        if !(sigma.is_finite() && sigma > 0.0 && sigma <= MAX_SIGMA) {
            return Err(format!("sigma must be > 0 and <= {MAX_SIGMA}, got {sigma}"));
        }
        Ok(Blur { sigma })
    }

    pub fn sigma(&self) -> f32 {
        self.sigma
    }

    /// How far a pixel's value reaches: `ceil(3 sigma)`.
    pub fn radius(&self) -> u32 {
        // sigma is at most 100, so the cast cannot truncate.
        (3.0 * self.sigma).ceil() as u32
    }

    pub(crate) fn from_proto(p: &v1::Blur) -> Result<Blur, String> {
        Blur::new(p.sigma)
    }

    pub(crate) fn from_json(fields: &Fields<'_>) -> Result<Blur, String> {
        let sigma = fields.number("sigma")?.ok_or("sigma is required")?;
        // Out-of-range f64s become infinite f32s, which validation rejects.
        Blur::new(sigma as f32)
    }

    pub(crate) fn to_proto(self) -> v1::Blur {
        v1::Blur { sigma: self.sigma }
    }

    pub(crate) fn params(&self) -> Vec<(&'static str, serde_json::Value)> {
        vec![("sigma", super::json::number(self.sigma))]
    }

    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        Ok(gaussian(image, self.sigma, self.radius()))
    }
}

/// The gaussian's weights for offsets 0..=radius (one side; the kernel is symmetric),
/// summing to 1 over both sides.
fn weights(sigma: f32, radius: u32) -> Vec<f32> {
    let sigma = f64::from(sigma);
    let raw: Vec<f64> = (0..=radius)
        .map(|k| (-(f64::from(k) * f64::from(k)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total = raw[0] + 2.0 * raw[1..].iter().sum::<f64>();
    raw.iter().map(|w| (w / total) as f32).collect()
}

/// A separable gaussian in f32, written so that every output value is the same sequence of
/// IEEE operations on the same neighbours wherever it sits in the image and whatever SIMD
/// width the compiler picks (no fused multiply-add, a fixed order per element). That is what
/// makes a tile with a `radius`-wide halo come out bit-identical to the whole image, on any
/// worker's CPU; libblur's vector and scalar paths round differently near row ends.
///
/// Edges are clamped (the border pixel repeats). Alpha images are blurred premultiplied, so
/// transparent pixels (often black) do not bleed into their visible neighbours.
fn gaussian(image: Bitmap, sigma: f32, radius: u32) -> Bitmap {
    let (width, height, alpha) = (image.width(), image.height(), image.has_alpha());
    let channels = image.channels();
    let w = weights(sigma, radius);
    let r = radius as usize;
    let row_len = width as usize * channels;
    let src = image.into_data();

    // Horizontal pass of one source row into `out`, via an edge-padded float copy.
    let mut padded = vec![0f32; (width as usize + 2 * r) * channels];
    let mut horizontal = |row: &[u8], out: &mut [f32]| {
        let (left, rest) = padded.split_at_mut(r * channels);
        let (middle, right) = rest.split_at_mut(row_len);
        if alpha {
            for (dst, pixel) in middle.chunks_exact_mut(4).zip(row.chunks_exact(4)) {
                let a = f32::from(pixel[3]);
                let scale = a / 255.0;
                dst[0] = f32::from(pixel[0]) * scale;
                dst[1] = f32::from(pixel[1]) * scale;
                dst[2] = f32::from(pixel[2]) * scale;
                dst[3] = a;
            }
        } else {
            for (dst, &value) in middle.iter_mut().zip(row) {
                *dst = f32::from(value);
            }
        }
        let first: Vec<f32> = middle[..channels].to_vec();
        let last: Vec<f32> = middle[row_len - channels..].to_vec();
        for pixel in left.chunks_exact_mut(channels) {
            pixel.copy_from_slice(&first);
        }
        for pixel in right.chunks_exact_mut(channels) {
            pixel.copy_from_slice(&last);
        }
        let centre = &padded[r * channels..][..row_len];
        for (o, &c) in out.iter_mut().zip(centre) {
            *o = w[0] * c;
        }
        for (k, &weight) in w.iter().enumerate().skip(1) {
            let before = &padded[(r - k) * channels..][..row_len];
            let after = &padded[(r + k) * channels..][..row_len];
            for ((o, &b), &a) in out.iter_mut().zip(before).zip(after) {
                *o += weight * (b + a);
            }
        }
    };

    // Vertical pass over a ring of horizontally blurred rows: each source row is blurred
    // once, and only 2 radius + 1 of them are held.
    let ring_len = (2 * r + 1).min(height as usize);
    let mut ring = vec![0f32; ring_len * row_len];
    let mut computed = 0usize;
    let mut sum = vec![0f32; row_len];
    let mut dst = vec![0u8; src.len()];
    let last_row = height as usize - 1;
    for y in 0..height as usize {
        while computed <= (y + r).min(last_row) {
            let slot = computed % ring_len;
            horizontal(
                &src[computed * row_len..][..row_len],
                &mut ring[slot * row_len..][..row_len],
            );
            computed += 1;
        }
        let row = |source: usize| &ring[(source % ring_len) * row_len..][..row_len];
        for (s, &c) in sum.iter_mut().zip(row(y)) {
            *s = w[0] * c;
        }
        for (k, &weight) in w.iter().enumerate().skip(1) {
            let above = row(y.saturating_sub(k));
            let below = row((y + k).min(last_row));
            for ((s, &a), &b) in sum.iter_mut().zip(above).zip(below) {
                *s += weight * (a + b);
            }
        }
        let out = &mut dst[y * row_len..][..row_len];
        if alpha {
            for (pixel, value) in out.chunks_exact_mut(4).zip(sum.chunks_exact(4)) {
                let a = value[3];
                let unscale = if a > 0.0 { 255.0 / a } else { 0.0 };
                pixel[0] = to_u8(value[0] * unscale);
                pixel[1] = to_u8(value[1] * unscale);
                pixel[2] = to_u8(value[2] * unscale);
                pixel[3] = to_u8(a);
            }
        } else {
            for (o, &value) in out.iter_mut().zip(&sum) {
                *o = to_u8(value);
            }
        }
    }
    Bitmap::new(width, height, alpha, dst).expect("same size as the input")
}

/// Rounds half up; `as` saturates, so overshoot clamps to 255.
fn to_u8(value: f32) -> u8 {
    (value + 0.5) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_is_validated() {
        assert!(Blur::new(0.01).is_ok());
        assert!(Blur::new(100.0).is_ok());
        for bad in [0.0, -1.0, 100.5, f32::NAN, f32::INFINITY] {
            let err = Blur::new(bad).unwrap_err();
            assert!(
                err.starts_with("sigma must be > 0 and <= 100, got "),
                "{err}"
            );
        }
    }

    #[test]
    fn flat_image_stays_flat_and_edges_do_not_darken() {
        let image = Bitmap::new(40, 30, false, vec![180; 40 * 30 * 3]).unwrap();
        let out = Blur::new(3.0).unwrap().apply(image.clone()).unwrap();
        assert_eq!(out, image);
    }

    #[test]
    fn blur_spreads_a_dot_symmetrically() {
        let (w, h) = (21u32, 21u32);
        let mut data = vec![0u8; (w * h * 3) as usize];
        let centre = ((10 * w + 10) * 3) as usize;
        data[centre..centre + 3].copy_from_slice(&[255, 255, 255]);
        let out = Blur::new(1.5)
            .unwrap()
            .apply(Bitmap::new(w, h, false, data).unwrap())
            .unwrap();
        let at = |x: u32, y: u32| out.data()[((y * w + x) * 3) as usize];
        assert!(at(10, 10) < 255 && at(10, 10) > at(11, 10));
        assert!(at(11, 10) > 0);
        assert_eq!(at(9, 10), at(11, 10));
        assert_eq!(at(10, 9), at(10, 11));
        assert_eq!(at(0, 0), 0);
    }

    #[test]
    fn kernels_wider_than_the_image_are_fine() {
        for (w, h) in [(1, 1), (1, 7), (5, 1), (3, 2)] {
            for alpha in [false, true] {
                let channels = if alpha { 4 } else { 3 };
                let data = (0..w * h * channels)
                    .map(|i| (i * 37 % 256) as u8)
                    .collect();
                let image = Bitmap::new(w, h, alpha, data).unwrap();
                let out = Blur::new(100.0).unwrap().apply(image).unwrap();
                assert_eq!((out.width(), out.height()), (w, h));
            }
        }
    }

    #[test]
    fn transparent_pixels_do_not_bleed_colour() {
        // Opaque white next to transparent black: premultiplied blurring keeps the visible
        // colour white, only alpha fades.
        let data = (0..16 * 4)
            .flat_map(|i| {
                if i % 16 < 8 {
                    [255, 255, 255, 255]
                } else {
                    [0, 0, 0, 0]
                }
            })
            .collect();
        let out = Blur::new(2.0)
            .unwrap()
            .apply(Bitmap::new(16, 4, true, data).unwrap())
            .unwrap();
        let edge = &out.data()[8 * 4..8 * 4 + 4];
        assert!(edge[3] > 0 && edge[3] < 255, "{edge:?}");
        assert!(edge[0] > 240, "{edge:?}");
    }
}
