//! `brightness`: multiply R, G and B by a factor (1.1 = +10 %), clamped to 0..=255; alpha is
//! left alone.
//!
//! Every output value depends only on the input value, so a 256-entry table computed once per
//! image replaces a float multiply per channel.

use pixelmesh_proto::v1;

use super::json::Fields;
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "brightness";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Works in place: no memory beside the image.
pub(crate) const NS_PER_PIXEL: f64 = 1.6;

/// Past 10x nearly every pixel is white; a larger factor is a mistake.
pub const MAX_FACTOR: f32 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Brightness {
    factor: f32,
}

impl Brightness {
    pub fn new(factor: f32) -> Result<Brightness, String> {
        Ok(Brightness {
            factor: super::range::factor(factor, MAX_FACTOR)?,
        })
    }

    pub fn factor(&self) -> f32 {
        self.factor
    }

    /// `table[v]` is `v * factor`, rounded and clamped to 0..=255.
    pub fn table(&self) -> [u8; 256] {
        let factor = f64::from(self.factor);
        std::array::from_fn(|v| (v as f64 * factor).round().clamp(0.0, 255.0) as u8)
    }

    pub fn apply(&self, mut image: Bitmap) -> Bitmap {
        image.map_channels(&self.table());
        image
    }
}

impl Operator for Brightness {
    const SPEC: Spec = Spec::new(
        NAME,
        "Brightness",
        "Multiply brightness: 1 keeps it.",
        &[
            Field::float("factor", "Factor", (0.0, MAX_FACTOR as f64, 0.05))
                .with_default("1.2")
                .required(),
        ],
    );

    type Proto = v1::Brightness;

    fn from_fields(fields: &Fields<'_>) -> Result<Brightness, String> {
        // Required in JSON: an absent factor would otherwise mean 0, a black image.
        let factor = fields.number("factor")?.ok_or("factor is required")?;
        Brightness::new(factor as f32)
    }

    fn from_proto(p: &v1::Brightness) -> Result<Brightness, String> {
        Brightness::new(p.factor)
    }

    fn to_proto(&self) -> v1::Brightness {
        v1::Brightness {
            factor: self.factor,
        }
    }

    fn params(&self) -> Vec<(&'static str, serde_json::Value)> {
        vec![("factor", super::json::number(self.factor))]
    }

    pointwise!(NS_PER_PIXEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_is_validated() {
        assert!(Brightness::new(0.0).is_ok());
        assert!(Brightness::new(10.0).is_ok());
        for bad in [-0.1, 10.01, f32::NAN, f32::INFINITY] {
            let err = Brightness::new(bad).unwrap_err();
            assert!(
                err.starts_with("factor must be >= 0 and <= 10, got "),
                "{err}"
            );
        }
    }

    #[test]
    fn table_scales_rounds_and_clamps() {
        let table = Brightness::new(1.1).unwrap().table();
        assert_eq!(table[0], 0);
        assert_eq!(table[100], 110);
        assert_eq!(table[231], 254); // 254.1
        assert_eq!(table[232], 255); // 255.2, clamped
        assert_eq!(table[255], 255);
        let identity = Brightness::new(1.0).unwrap().table();
        assert!(
            identity
                .iter()
                .enumerate()
                .all(|(i, &v)| usize::from(v) == i)
        );
        assert!(
            Brightness::new(0.0)
                .unwrap()
                .table()
                .iter()
                .all(|&v| v == 0)
        );
        assert_eq!(Brightness::new(10.0).unwrap().table()[26], 255);
        assert_eq!(Brightness::new(0.5).unwrap().table()[255], 128); // 127.5 rounds up
    }

    #[test]
    fn alpha_is_untouched() {
        let image = Bitmap::new(2, 1, true, vec![100, 200, 250, 100, 10, 20, 30, 0]).unwrap();
        let out = Brightness::new(1.5).unwrap().apply(image);
        assert_eq!(out.data(), &[150, 255, 255, 100, 15, 30, 45, 0]);
    }

    #[test]
    fn rgb_every_channel_scales() {
        let image = Bitmap::new(1, 1, false, vec![10, 100, 200]).unwrap();
        let out = Brightness::new(0.5).unwrap().apply(image);
        assert_eq!(out.data(), &[5, 50, 100]);
    }
}
