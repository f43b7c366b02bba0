//! `posterize`: each of R, G and B reduced to `levels` evenly spaced values (2 = pure
//! primaries, 256 = unchanged), for a flat, printed look; alpha is left alone.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::Fields;
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "posterize";

/// Single-core nanoseconds per pixel, for the budget's estimate: one table lookup per
/// channel in place, as brightness.
const NS_PER_PIXEL: f64 = 1.6;

pub const DEFAULT_LEVELS: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posterize {
    levels: u8,
}

impl Posterize {
    pub fn new(levels: i64) -> Result<Posterize, String> {
        match u8::try_from(levels) {
            Ok(levels) if levels >= 2 => Ok(Posterize { levels }),
            // 256 levels is every value: the op would do nothing, which is a mistake.
            _ => Err(format!("levels must be between 2 and 255, got {levels}")),
        }
    }

    /// `table[v]` is `v` rounded to the nearest of `levels` values spread over 0..=255.
    pub fn table(&self) -> [u8; 256] {
        let steps = u32::from(self.levels) - 1;
        std::array::from_fn(|v| {
            let step = (v as u32 * steps + 127) / 255;
            ((step * 255 + steps / 2) / steps) as u8
        })
    }

    pub fn apply(&self, mut image: Bitmap) -> Bitmap {
        image.map_channels(&self.table());
        image
    }
}

impl Operator for Posterize {
    const SPEC: Spec = Spec::new(
        NAME,
        "Posterize",
        "Fewer tones per channel, for a flat look.",
        &[Field::int("levels", "Levels", 2, 255).with_default("4")],
    );

    type Proto = v1::Posterize;

    fn from_fields(fields: &Fields<'_>) -> Result<Posterize, String> {
        Posterize::new(fields.integer("levels")?.unwrap_or(DEFAULT_LEVELS.into()))
    }

    fn from_proto(p: &v1::Posterize) -> Result<Posterize, String> {
        Posterize::new(p.levels.map_or(DEFAULT_LEVELS.into(), i64::from))
    }

    fn to_proto(&self) -> v1::Posterize {
        v1::Posterize {
            levels: Some(u32::from(self.levels)),
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        vec![("levels", Value::from(self.levels))]
    }

    pointwise!(NS_PER_PIXEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_levels_are_black_and_white_per_channel() {
        let image = Bitmap::new(2, 1, true, vec![10, 127, 128, 77, 250, 0, 200, 255]).unwrap();
        let out = Posterize::new(2).unwrap().apply(image);
        // Alpha (77, 255) untouched.
        assert_eq!(out.data(), &[0, 0, 255, 77, 255, 0, 255, 255]);
    }

    #[test]
    fn levels_are_evenly_spaced_and_validated() {
        let table = Posterize::new(4).unwrap().table();
        let mut values = table.to_vec();
        values.dedup();
        assert_eq!(values, [0, 85, 170, 255]);
        assert_eq!(Posterize::new(255).unwrap().table()[200], 200);
        for bad in [-1, 0, 1, 256] {
            assert_eq!(
                Posterize::new(bad).unwrap_err(),
                format!("levels must be between 2 and 255, got {bad}")
            );
        }
    }
}
