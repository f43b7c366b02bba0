//! `flip` mirrors top to bottom and `flop` left to right: pure pixel moves, no resampling.

use pixelmesh_proto::v1;

use super::json::Fields;
use super::{Assets, Context, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape};

pub(crate) const FLIP: &str = "flip";
pub(crate) const FLOP: &str = "flop";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Both work in place: flip swaps whole rows, flop reverses each row's bytes
/// and then each pixel's.
pub(crate) const FLIP_NS_PER_PIXEL: f64 = 1.0;
pub(crate) const FLOP_NS_PER_PIXEL: f64 = 3.5;

/// Mirror top to bottom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flip;

/// Mirror left to right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flop;

impl Flip {
    pub fn apply(self, mut image: Bitmap) -> Bitmap {
        let stride = image.width() as usize * image.channels();
        let height = image.height() as usize;
        let data = image.data_mut();
        for y in 0..height / 2 {
            let (top, bottom) = data.split_at_mut((height - 1 - y) * stride);
            top[y * stride..(y + 1) * stride].swap_with_slice(&mut bottom[..stride]);
        }
        image
    }
}

impl Flop {
    pub fn apply(self, mut image: Bitmap) -> Bitmap {
        let channels = image.channels();
        let stride = image.width() as usize * channels;
        for row in image.data_mut().chunks_exact_mut(stride) {
            // Reversing the bytes reverses the pixels and each pixel's channels; reversing
            // each pixel back restores the channel order.
            row.reverse();
            for pixel in row.chunks_exact_mut(channels) {
                pixel.reverse();
            }
        }
        image
    }
}

impl Operator for Flip {
    const SPEC: Spec = Spec::new(FLIP, "Flip", "Mirror top to bottom.", &[]);

    type Proto = v1::Flip;

    fn from_fields(_: &Fields<'_>) -> Result<Flip, String> {
        Ok(Flip)
    }

    fn from_proto(_: &v1::Flip) -> Result<Flip, String> {
        Ok(Flip)
    }

    fn to_proto(&self) -> v1::Flip {
        v1::Flip {}
    }

    fn cost(&self, input: Shape, _output: Shape, _context: &Context) -> Cost {
        Cost::in_place(input, FLIP_NS_PER_PIXEL)
    }

    fn tile_halo(&self) -> Option<u32> {
        None
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        Ok(self.apply(image))
    }
}

impl Operator for Flop {
    const SPEC: Spec = Spec::new(FLOP, "Flop", "Mirror left to right.", &[]);

    type Proto = v1::Flop;

    fn from_fields(_: &Fields<'_>) -> Result<Flop, String> {
        Ok(Flop)
    }

    fn from_proto(_: &v1::Flop) -> Result<Flop, String> {
        Ok(Flop)
    }

    fn to_proto(&self) -> v1::Flop {
        v1::Flop {}
    }

    fn cost(&self, input: Shape, _output: Shape, _context: &Context) -> Cost {
        Cost::in_place(input, FLOP_NS_PER_PIXEL)
    }

    fn tile_halo(&self) -> Option<u32> {
        None
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        Ok(self.apply(image))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3x2 RGB: pixel (x, y) is [x, y, 10 x + y].
    fn numbered(width: u32, height: u32) -> Bitmap {
        let data = (0..height)
            .flat_map(|y| (0..width).flat_map(move |x| [x as u8, y as u8, (10 * x + y) as u8]))
            .collect();
        Bitmap::new(width, height, false, data).unwrap()
    }

    #[test]
    fn flip_moves_rows_and_flop_moves_columns() {
        let image = numbered(3, 3);
        let flipped = Flip.apply(image.clone());
        let flopped = Flop.apply(image.clone());
        let at = |b: &Bitmap, x: usize, y: usize| {
            b.data()[(y * 3 + x) * 3..(y * 3 + x) * 3 + 3].to_vec()
        };
        for y in 0..3 {
            for x in 0..3 {
                assert_eq!(at(&flipped, x, y), at(&image, x, 2 - y));
                assert_eq!(at(&flopped, x, y), at(&image, 2 - x, y));
            }
        }
    }

    #[test]
    fn twice_is_identity_for_any_size() {
        for (w, h) in [(1, 1), (2, 5), (7, 4)] {
            let image = numbered(w, h);
            assert_eq!(Flip.apply(Flip.apply(image.clone())), image);
            assert_eq!(Flop.apply(Flop.apply(image.clone())), image);
        }
    }
}
