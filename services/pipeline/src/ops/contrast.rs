//! `contrast`: scale each channel's distance from mid-grey (128) by a factor: 1 leaves the
//! image alone, 0 makes it flat grey, 2 doubles the contrast. Alpha is left alone.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::{Fields, number};
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "contrast";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Works in place: no memory beside the image.
pub(crate) const NS_PER_PIXEL: f64 = 1.8;

/// Past 10x every channel is 0 or 255.
pub const MAX_FACTOR: f32 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contrast {
    factor: f32,
}

impl Contrast {
    pub fn new(factor: f32) -> Result<Contrast, String> {
        Ok(Contrast {
            factor: super::range::factor(factor, MAX_FACTOR)?,
        })
    }

    /// `table[v]` is `128 + (v - 128) * factor`, rounded and clamped.
    pub fn table(&self) -> [u8; 256] {
        let factor = f64::from(self.factor);
        std::array::from_fn(|v| {
            (128.0 + (v as f64 - 128.0) * factor)
                .round()
                .clamp(0.0, 255.0) as u8
        })
    }

    pub fn apply(&self, mut image: Bitmap) -> Bitmap {
        image.map_channels(&self.table());
        image
    }
}

impl Operator for Contrast {
    const SPEC: Spec = Spec::new(
        NAME,
        "Contrast",
        "Scale contrast: 1 keeps it.",
        &[
            Field::float("factor", "Factor", (0.0, MAX_FACTOR as f64, 0.05))
                .with_default("1.2")
                .required(),
        ],
    );

    type Proto = v1::Contrast;

    fn from_fields(fields: &Fields<'_>) -> Result<Contrast, String> {
        // Required: an absent factor would otherwise mean 0, a flat grey image.
        let factor = fields.number("factor")?.ok_or("factor is required")?;
        Contrast::new(factor as f32)
    }

    fn from_proto(p: &v1::Contrast) -> Result<Contrast, String> {
        Contrast::new(p.factor)
    }

    fn to_proto(&self) -> v1::Contrast {
        v1::Contrast {
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

    #[test]
    fn factor_is_validated() {
        assert!(Contrast::new(0.0).is_ok());
        for bad in [-1.0, 10.5, f32::NAN] {
            assert!(Contrast::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_is_identity_zero_is_grey_and_more_spreads() {
        let identity = Contrast::new(1.0).unwrap().table();
        assert!(
            identity
                .iter()
                .enumerate()
                .all(|(i, &v)| usize::from(v) == i)
        );
        assert!(
            Contrast::new(0.0)
                .unwrap()
                .table()
                .iter()
                .all(|&v| v == 128)
        );
        let table = Contrast::new(2.0).unwrap().table();
        assert_eq!((table[100], table[128], table[150]), (72, 128, 172));
        assert_eq!((table[0], table[255]), (0, 255));
        // Monotonic for every factor: contrast never reorders tones.
        for factor in [0.25, 0.5, 1.5, 3.0, 10.0] {
            let t = Contrast::new(factor).unwrap().table();
            assert!(t.windows(2).all(|w| w[0] <= w[1]), "{factor}");
        }
    }

    #[test]
    fn alpha_is_untouched() {
        let image = Bitmap::new(1, 1, true, vec![0, 128, 255, 77]).unwrap();
        let out = Contrast::new(0.0).unwrap().apply(image);
        assert_eq!(out.data(), &[128, 128, 128, 77]);
    }
}
