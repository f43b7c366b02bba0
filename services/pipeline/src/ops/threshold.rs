//! `threshold`: pixels whose luma is at or above `level` become white, the rest black; alpha
//! is left alone.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::Fields;
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::{Bitmap, luma};
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "threshold";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Works in place: no memory beside the image.
pub(crate) const NS_PER_PIXEL: f64 = 3.0;

pub const DEFAULT_LEVEL: u8 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    level: u8,
}

impl Threshold {
    pub fn new(level: u8) -> Threshold {
        Threshold { level }
    }

    pub fn apply(&self, mut image: Bitmap) -> Bitmap {
        let channels = image.channels();
        for pixel in image.data_mut().chunks_exact_mut(channels) {
            let value = if luma(pixel[0], pixel[1], pixel[2]) >= self.level {
                255
            } else {
                0
            };
            pixel[..3].fill(value);
        }
        image
    }
}

fn level_error(value: i64) -> String {
    format!("level must be between 0 and 255, got {value}")
}

impl Operator for Threshold {
    const SPEC: Spec = Spec::new(
        NAME,
        "Threshold",
        "Black and white at a level.",
        &[Field::int("level", "Level", 0, 255).with_default("128")],
    );

    type Proto = v1::Threshold;

    fn from_fields(fields: &Fields<'_>) -> Result<Threshold, String> {
        match fields.integer("level")? {
            None => Ok(Threshold::new(DEFAULT_LEVEL)),
            Some(level) => u8::try_from(level)
                .map(Threshold::new)
                .map_err(|_| level_error(level)),
        }
    }

    fn from_proto(p: &v1::Threshold) -> Result<Threshold, String> {
        match p.level {
            None => Ok(Threshold::new(DEFAULT_LEVEL)),
            Some(level) => u8::try_from(level)
                .map(Threshold::new)
                .map_err(|_| level_error(i64::from(level))),
        }
    }

    fn to_proto(&self) -> v1::Threshold {
        v1::Threshold {
            level: Some(u32::from(self.level)),
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        if self.level == DEFAULT_LEVEL {
            Vec::new()
        } else {
            vec![("level", Value::from(self.level))]
        }
    }

    pointwise!(NS_PER_PIXEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_level_by_luma() {
        let image =
            Bitmap::new(3, 1, false, vec![127, 127, 127, 128, 128, 128, 255, 0, 0]).unwrap();
        let out = Threshold::new(128).apply(image);
        // Pure red has luma 77: below 128.
        assert_eq!(out.data(), &[0, 0, 0, 255, 255, 255, 0, 0, 0]);
    }

    #[test]
    fn level_is_validated() {
        let p = |level| Threshold::from_proto(&v1::Threshold { level });
        assert_eq!(p(None), Ok(Threshold::new(DEFAULT_LEVEL)));
        assert_eq!(p(Some(0)), Ok(Threshold::new(0)), "0 is a level, not unset");
        assert_eq!(p(Some(255)), Ok(Threshold::new(255)));
        assert_eq!(
            p(Some(256)),
            Err("level must be between 0 and 255, got 256".into())
        );
    }
}
