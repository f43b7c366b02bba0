//! `edge`: Sobel edge detection. The gradient magnitude `sqrt(gx² + gy²)` of the luma, from
//! the 3x3 Sobel kernels, becomes R = G = B; alpha is kept. Border pixels are repeated outside
//! the image, so a flat image stays black to its edges.
//!
//! The magnitude is not normalised (a step of 0 to 255 gives 1020): it is clamped at 255, so
//! an edge of 64 levels is already white. Normalising by the kernel's weight would leave photo
//! edges, often a few dozen levels, too dim to see.
//!
//! The radius is 1, which is also the halo a tile needs.

use pixelmesh_proto::v1;

use super::json::Fields;
use super::{Assets, Context, Operator, Spec};
use crate::bitmap::{Bitmap, luma};
use crate::budget::{self, Cost, Shape, ns};

pub(crate) const NAME: &str = "edge";

/// How far a pixel's value reaches.
pub const RADIUS: u32 = 1;

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`).
const NS_PER_PIXEL: f64 = 20.0;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Edge;

impl Edge {
    /// Errs only when the task's deadline passes (see [`budget::expired`]).
    pub fn apply(self, mut image: Bitmap) -> Result<Bitmap, String> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let channels = image.channels();
        // Luma rows with the border pixel repeated on each side, so every output pixel reads a
        // full 3x3 window without bounds checks.
        let padded = width + 2;
        let mut plane = vec![0u8; padded * height];
        for (row, pixels) in plane
            .chunks_exact_mut(padded)
            .zip(image.data().chunks_exact(width * channels))
        {
            for (value, pixel) in row[1..=width].iter_mut().zip(pixels.chunks_exact(channels)) {
                *value = luma(pixel[0], pixel[1], pixel[2]);
            }
            row[0] = row[1];
            row[width + 1] = row[width];
        }
        let stride = width * channels;
        for (y, out) in image.data_mut().chunks_exact_mut(stride).enumerate() {
            if y % budget::ROWS_PER_CHECK == 0 && budget::expired() {
                return Err(budget::stopped());
            }
            let above = &plane[y.saturating_sub(1) * padded..][..padded];
            let here = &plane[y * padded..][..padded];
            let below = &plane[(y + 1).min(height - 1) * padded..][..padded];
            for (((a, h), b), pixel) in above
                .windows(3)
                .zip(here.windows(3))
                .zip(below.windows(3))
                .zip(out.chunks_exact_mut(channels))
            {
                let [a0, a1, a2] = [a[0], a[1], a[2]].map(i32::from);
                let [h0, h2] = [h[0], h[2]].map(i32::from);
                let [b0, b1, b2] = [b[0], b[1], b[2]].map(i32::from);
                let gx = (a2 + 2 * h2 + b2) - (a0 + 2 * h0 + b0);
                let gy = (b0 + 2 * b1 + b2) - (a0 + 2 * a1 + a2);
                let value = magnitude((gx * gx + gy * gy) as u32);
                pixel[..3].fill(value);
            }
        }
        Ok(image)
    }
}

/// `sqrt(squared)` rounded to nearest and clamped to 255, in integers.
fn magnitude(squared: u32) -> u8 {
    // 254.5² rounds up to 255.
    if squared >= 64_770 {
        return 255;
    }
    let root = squared.isqrt();
    // Round: root + 0.5 < sqrt(squared) exactly when (root + 0.5)² < squared, i.e.
    // root² + root < squared (both sides whole numbers, the .25 never ties).
    (root + u32::from(root * root + root < squared)) as u8
}

impl Operator for Edge {
    const SPEC: Spec = Spec::new(NAME, "Edges", "Edge detection.", &[]);

    type Proto = v1::Edge;

    fn from_fields(_: &Fields<'_>) -> Result<Edge, String> {
        Ok(Edge)
    }

    fn from_proto(_: &v1::Edge) -> Result<Edge, String> {
        Ok(Edge)
    }

    fn to_proto(&self) -> v1::Edge {
        v1::Edge {}
    }

    /// What the op costs (see `crate::budget`): a luma plane, one byte a pixel plus two a row,
    /// beside the image it writes into.
    fn cost(&self, image: Shape, _output: Shape, _context: &Context) -> Cost {
        let plane = image.width.saturating_add(2).saturating_mul(image.height);
        Cost {
            peak_bytes: image.bytes().saturating_add(plane),
            cpu_ns: ns(image.pixels(), NS_PER_PIXEL),
        }
    }

    fn tile_halo(&self) -> Option<u32> {
        Some(RADIUS)
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        self.apply(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(width: u32, height: u32, alpha: bool, value: impl Fn(u32, u32) -> u8) -> Bitmap {
        let channels = if alpha { 4 } else { 3 };
        let data = (0..width * height)
            .flat_map(|i| {
                let v = value(i % width, i / width);
                [v, v, v, 200][..channels].to_vec()
            })
            .collect();
        Bitmap::new(width, height, alpha, data).unwrap()
    }

    fn red(image: &Bitmap) -> Vec<Vec<u8>> {
        let w = image.width() as usize;
        image
            .data()
            .chunks_exact(w * image.channels())
            .map(|row| row.chunks_exact(image.channels()).map(|p| p[0]).collect())
            .collect()
    }

    #[test]
    fn magnitude_rounds_and_clamps() {
        assert_eq!(magnitude(0), 0);
        assert_eq!(magnitude(2), 1); // 1.41
        assert_eq!(magnitude(3), 2); // 1.73
        assert_eq!(magnitude(6), 2); // 2.45
        assert_eq!(magnitude(7), 3); // 2.65
        assert_eq!(magnitude(254 * 254), 254);
        assert_eq!(magnitude(64_769), 254); // 254.498
        assert_eq!(magnitude(64_770), 255);
        assert_eq!(magnitude(1020 * 1020 * 2), 255);
        for n in 0..64_770u32 {
            assert_eq!(magnitude(n), f64::from(n).sqrt().round() as u8, "{n}");
        }
    }

    #[test]
    fn flat_images_have_no_edges_even_at_the_border() {
        let out = Edge.apply(grey(5, 4, false, |_, _| 77)).unwrap();
        assert!(out.data().iter().all(|&v| v == 0));
    }

    #[test]
    fn a_vertical_step_lights_the_two_columns_beside_it() {
        // Columns 0..3 are 10, columns 3..6 are 30: a step of 20, gx = 4 x 20 = 80.
        let out = Edge
            .apply(grey(6, 3, true, |x, _| if x < 3 { 10 } else { 30 }))
            .unwrap();
        for row in red(&out) {
            assert_eq!(row, [0, 0, 80, 80, 0, 0]);
        }
        // Grey, alpha kept.
        for pixel in out.data().chunks_exact(4) {
            assert_eq!(
                (pixel[0], pixel[1], pixel[2], pixel[3]),
                (pixel[0], pixel[0], pixel[0], 200)
            );
        }
    }

    #[test]
    fn a_single_dot_gives_the_sobel_ring() {
        // A dot of 10 at (2, 2): each neighbour sees the kernel weight times 10.
        let out = Edge
            .apply(grey(
                5,
                5,
                false,
                |x, y| if (x, y) == (2, 2) { 10 } else { 0 },
            ))
            .unwrap();
        let rows = red(&out);
        assert_eq!(rows[2][2], 0);
        assert_eq!(rows[2][1], 20); // gx = 2 x 10
        assert_eq!(rows[1][2], 20); // gy = 2 x 10
        assert_eq!(rows[1][1], 14); // gx = gy = 10: sqrt(200)
        assert_eq!(rows[0][0], 0);
    }

    #[test]
    fn thin_images_repeat_their_border() {
        for (w, h) in [(1, 1), (1, 4), (4, 1)] {
            let out = Edge
                .apply(grey(w, h, false, |x, y| (x * 50 + y * 90) as u8))
                .unwrap();
            assert_eq!((out.width(), out.height()), (w, h));
        }
        // A 1-pixel-high ramp: the row is its own neighbour above and below, so gy is 0 and gx
        // is 4 x (right - left), the ends repeating themselves.
        let out = Edge
            .apply(grey(3, 1, false, |x, _| (x * 10) as u8))
            .unwrap();
        // x=0: (10 + 2x10 + 10) - 0 x 4 = 40; x=1: 4 x (20 - 0) = 80; x=2: 4 x (20 - 10) = 40.
        assert_eq!(red(&out)[0], [40, 80, 40]);
    }
}
