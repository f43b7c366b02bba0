//! `invert`: the negative, `255 - v` on R, G and B; alpha is left alone.

use pixelmesh_proto::v1;

use super::json::Fields;
use super::{Assets, Context, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "invert";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Works in place: no memory beside the image.
pub(crate) const NS_PER_PIXEL: f64 = 1.6;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Invert;

impl Invert {
    pub fn apply(self, mut image: Bitmap) -> Bitmap {
        image.map_channels(&std::array::from_fn(|v| 255 - v as u8));
        image
    }
}

impl Operator for Invert {
    const SPEC: Spec = Spec::new(NAME, "Invert", "Negative.", &[]);

    type Proto = v1::Invert;

    fn from_fields(_: &Fields<'_>) -> Result<Invert, String> {
        Ok(Invert)
    }

    fn from_proto(_: &v1::Invert) -> Result<Invert, String> {
        Ok(Invert)
    }

    fn to_proto(&self) -> v1::Invert {
        v1::Invert {}
    }

    pointwise!(NS_PER_PIXEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverts_colour_keeps_alpha_and_twice_is_identity() {
        let image = Bitmap::new(2, 1, true, vec![0, 100, 255, 9, 1, 2, 3, 200]).unwrap();
        let once = Invert.apply(image.clone());
        assert_eq!(once.data(), &[255, 155, 0, 9, 254, 253, 252, 200]);
        assert_eq!(Invert.apply(once), image);
    }
}
