//! `grayscale`: replace R, G and B by the pixel's luma, keeping alpha.
//!
//! The image stays RGB(A) with R = G = B so later ops and every encoder see one layout.

use pixelmesh_proto::v1;

use super::json::Fields;
use super::{Assets, Context, Operator, Spec};
use crate::bitmap::{Bitmap, luma};
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "grayscale";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Works in place: no memory beside the image.
pub(crate) const NS_PER_PIXEL: f64 = 2.5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grayscale;

impl Grayscale {
    pub fn apply(self, mut image: Bitmap) -> Bitmap {
        let channels = image.channels();
        for pixel in image.data_mut().chunks_exact_mut(channels) {
            let y = luma(pixel[0], pixel[1], pixel[2]);
            pixel[..3].fill(y);
        }
        image
    }
}

impl Operator for Grayscale {
    const SPEC: Spec = Spec::new(NAME, "Grayscale", "Shades of grey.", &[]);

    type Proto = v1::Grayscale;

    fn from_fields(_: &Fields<'_>) -> Result<Grayscale, String> {
        Ok(Grayscale)
    }

    fn from_proto(_: &v1::Grayscale) -> Result<Grayscale, String> {
        Ok(Grayscale)
    }

    fn to_proto(&self) -> v1::Grayscale {
        v1::Grayscale {}
    }

    pointwise!(NS_PER_PIXEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_become_equal_and_alpha_stays() {
        let image = Bitmap::new(
            3,
            1,
            true,
            vec![255, 0, 0, 10, 0, 255, 0, 20, 12, 200, 99, 30],
        )
        .unwrap();
        let out = Grayscale.apply(image);
        for pixel in out.data().chunks_exact(4) {
            assert_eq!(pixel[0], pixel[1]);
            assert_eq!(pixel[1], pixel[2]);
        }
        let alphas: Vec<u8> = out.data().chunks_exact(4).map(|p| p[3]).collect();
        assert_eq!(alphas, [10, 20, 30]);
        // Green weighs most, red next.
        assert!(out.data()[4] > out.data()[0]);
    }

    #[test]
    fn rgb_extremes() {
        let image = Bitmap::new(2, 1, false, vec![255, 255, 255, 0, 0, 0]).unwrap();
        assert_eq!(Grayscale.apply(image).data(), &[255, 255, 255, 0, 0, 0]);
    }
}
