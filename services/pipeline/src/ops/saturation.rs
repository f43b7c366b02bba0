//! `saturation`: scale each channel's distance from the pixel's luma: 0 is grey, 1 leaves
//! the image alone, 2 doubles the saturation. Alpha is left alone.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::{Fields, number};
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::{Bitmap, fixed_matrix};
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "saturation";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Works in place: no memory beside the image.
pub(crate) const NS_PER_PIXEL: f64 = 8.0;

pub const MAX_FACTOR: f32 = 10.0;

/// BT.601 luma weights, the same as `grayscale`'s.
pub(crate) const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saturation {
    factor: f32,
}

impl Saturation {
    pub fn new(factor: f32) -> Result<Saturation, String> {
        Ok(Saturation {
            factor: super::range::factor(factor, MAX_FACTOR)?,
        })
    }

    /// `out = luma + factor * (in - luma)` as one colour matrix.
    fn matrix(&self) -> [[f64; 3]; 3] {
        let s = f64::from(self.factor);
        std::array::from_fn(|row| {
            std::array::from_fn(|col| {
                let identity = if row == col { 1.0 } else { 0.0 };
                (1.0 - s) * LUMA[col] + s * identity
            })
        })
    }

    pub fn apply(&self, mut image: Bitmap) -> Bitmap {
        image.map_colours(&fixed_matrix(self.matrix()));
        image
    }
}

impl Operator for Saturation {
    const SPEC: Spec = Spec::new(
        NAME,
        "Saturation",
        "Scale saturation: 0 is grey, 1 keeps it.",
        &[
            Field::float("factor", "Factor", (0.0, MAX_FACTOR as f64, 0.05))
                .with_default("1.2")
                .required(),
        ],
    );

    type Proto = v1::Saturation;

    fn from_fields(fields: &Fields<'_>) -> Result<Saturation, String> {
        let factor = fields.number("factor")?.ok_or("factor is required")?;
        Saturation::new(factor as f32)
    }

    fn from_proto(p: &v1::Saturation) -> Result<Saturation, String> {
        Saturation::new(p.factor)
    }

    fn to_proto(&self) -> v1::Saturation {
        v1::Saturation {
            factor: self.factor,
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        vec![("factor", number(self.factor))]
    }

    pointwise!(NS_PER_PIXEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(factor: f32, rgb: [u8; 3]) -> [u8; 3] {
        let out = Saturation::new(factor)
            .unwrap()
            .apply(Bitmap::new(1, 1, false, rgb.to_vec()).unwrap());
        [out.data()[0], out.data()[1], out.data()[2]]
    }

    #[test]
    fn one_is_identity_zero_is_grey() {
        for rgb in [[0, 0, 0], [255, 255, 255], [200, 30, 90], [1, 254, 128]] {
            assert_eq!(pixel(1.0, rgb), rgb);
            let [r, g, b] = pixel(0.0, rgb);
            assert!(r == g && g == b, "{rgb:?} -> {r} {g} {b}");
        }
        // Greys have nothing to saturate.
        assert_eq!(pixel(3.0, [90, 90, 90]), [90, 90, 90]);
    }

    #[test]
    fn more_saturation_spreads_the_channels() {
        let spread = |[r, g, b]: [u8; 3]| r.max(g).max(b) - r.min(g).min(b);
        let base = [150, 100, 80];
        assert!(spread(pixel(2.0, base)) > spread(base));
        assert!(spread(pixel(0.5, base)) < spread(base));
    }
}
