//! `pixelate`: cover the image with `size` x `size` blocks, each the mean colour of the pixels
//! under it (alpha included). Blocks start at the top-left corner; those on the right and
//! bottom edges are cut short by the image.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::Fields;
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{self, Cost, Shape};

pub(crate) const NAME: &str = "pixelate";

pub const DEFAULT_SIZE: u32 = 10;
pub const MAX_SIZE: u32 = 4096;

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`): every pixel is read once and written once, in place.
pub(crate) const NS_PER_PIXEL: f64 = 9.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pixelate {
    size: u32,
}

impl Pixelate {
    pub fn new(size: u32) -> Result<Pixelate, String> {
        if !(1..=MAX_SIZE).contains(&size) {
            return Err(size_error(i64::from(size)));
        }
        Ok(Pixelate { size })
    }

    /// Errs only when the task's deadline passes (see [`budget::expired`]), which is looked at
    /// once per row of blocks.
    pub fn apply(&self, mut image: Bitmap) -> Result<Bitmap, String> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let channels = image.channels();
        let size = self.size as usize;
        let stride = width * channels;
        let data = image.data_mut();
        for top in (0..height).step_by(size) {
            if budget::expired() {
                return Err(budget::stopped());
            }
            let bottom = (top + size).min(height);
            for left in (0..width).step_by(size) {
                let right = (left + size).min(width);
                let mut sums = [0u64; 4];
                for row in data[top * stride..bottom * stride].chunks_exact(stride) {
                    for pixel in row[left * channels..right * channels].chunks_exact(channels) {
                        for (sum, &value) in sums.iter_mut().zip(pixel) {
                            *sum += u64::from(value);
                        }
                    }
                }
                let count = ((bottom - top) * (right - left)) as u64;
                // Rounded to nearest, so a flat block keeps its exact colour.
                let mean: Vec<u8> = sums[..channels]
                    .iter()
                    .map(|&sum| ((sum + count / 2) / count) as u8)
                    .collect();
                for row in data[top * stride..bottom * stride].chunks_exact_mut(stride) {
                    for pixel in row[left * channels..right * channels].chunks_exact_mut(channels) {
                        pixel.copy_from_slice(&mean);
                    }
                }
            }
        }
        Ok(image)
    }
}

fn size_error(value: i64) -> String {
    format!("size must be between 1 and {MAX_SIZE}, got {value}")
}

impl Operator for Pixelate {
    const SPEC: Spec = Spec::new(
        NAME,
        "Pixelate",
        "Blocks of one colour.",
        &[Field::int("size", "Block size (px)", 1, MAX_SIZE as i64).with_default("10")],
    );

    type Proto = v1::Pixelate;

    fn from_fields(fields: &Fields<'_>) -> Result<Pixelate, String> {
        match fields.integer("size")? {
            None => Pixelate::new(DEFAULT_SIZE),
            Some(n) => u32::try_from(n)
                .map_err(|_| size_error(n))
                .and_then(Pixelate::new),
        }
    }

    fn from_proto(p: &v1::Pixelate) -> Result<Pixelate, String> {
        Pixelate::new(if p.size == 0 { DEFAULT_SIZE } else { p.size })
    }

    fn to_proto(&self) -> v1::Pixelate {
        v1::Pixelate { size: self.size }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        if self.size == DEFAULT_SIZE {
            Vec::new()
        } else {
            vec![("size", Value::from(self.size))]
        }
    }

    /// What the op costs (see `crate::budget`).
    fn cost(&self, image: Shape, _output: Shape, _context: &Context) -> Cost {
        Cost::in_place(image, NS_PER_PIXEL)
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

    #[test]
    fn blocks_take_their_mean_and_edges_are_cut_short() {
        // 3x1 RGB with size 2: pixels 0 and 1 average, pixel 2 is its own block.
        let image = Bitmap::new(3, 1, false, vec![0, 10, 100, 10, 20, 201, 7, 7, 7]).unwrap();
        let out = Pixelate::new(2).unwrap().apply(image).unwrap();
        assert_eq!(out.data(), &[5, 15, 151, 5, 15, 151, 7, 7, 7]);
    }

    #[test]
    fn size_one_is_identity_and_flat_images_stay_flat() {
        let image = Bitmap::new(2, 2, true, (0..16).collect()).unwrap();
        assert_eq!(
            Pixelate::new(1).unwrap().apply(image.clone()).unwrap(),
            image
        );
        let flat = Bitmap::new(5, 4, false, vec![42; 60]).unwrap();
        assert_eq!(Pixelate::new(3).unwrap().apply(flat.clone()).unwrap(), flat);
    }

    #[test]
    fn size_is_validated() {
        assert_eq!(
            Pixelate::new(0).unwrap_err(),
            "size must be between 1 and 4096, got 0"
        );
        assert_eq!(
            Pixelate::from_proto(&v1::Pixelate { size: 0 }),
            Pixelate::new(DEFAULT_SIZE)
        );
    }
}
