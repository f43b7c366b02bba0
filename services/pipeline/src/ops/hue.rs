//! `hue`: rotate every colour's hue by `degrees` around the grey axis, keeping its luma
//! approximately: the matrix of the CSS `hue-rotate()` filter. Alpha is left alone.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::{Fields, number};
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::{Bitmap, fixed_matrix};
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "hue";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Works in place: no memory beside the image.
pub(crate) const NS_PER_PIXEL: f64 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hue {
    degrees: f32,
}

impl Hue {
    pub fn new(degrees: f32) -> Result<Hue, String> {
        Ok(Hue {
            degrees: super::range::between("degrees", degrees, -360.0, 360.0)?,
        })
    }

    /// The Filter Effects spec's hue-rotate matrix.
    fn matrix(&self) -> [[f64; 3]; 3] {
        let (sin, cos) = f64::from(self.degrees).to_radians().sin_cos();
        [
            [
                0.213 + cos * 0.787 - sin * 0.213,
                0.715 - cos * 0.715 - sin * 0.715,
                0.072 - cos * 0.072 + sin * 0.928,
            ],
            [
                0.213 - cos * 0.213 + sin * 0.143,
                0.715 + cos * 0.285 + sin * 0.140,
                0.072 - cos * 0.072 - sin * 0.283,
            ],
            [
                0.213 - cos * 0.213 - sin * 0.787,
                0.715 - cos * 0.715 + sin * 0.715,
                0.072 + cos * 0.928 + sin * 0.072,
            ],
        ]
    }

    pub fn apply(&self, mut image: Bitmap) -> Bitmap {
        image.map_colours(&fixed_matrix(self.matrix()));
        image
    }
}

impl Operator for Hue {
    const SPEC: Spec = Spec::new(
        NAME,
        "Hue",
        "Rotate hues by degrees.",
        &[Field::float("degrees", "Degrees", (-360.0, 360.0, 1.0))
            .with_default("30")
            .required()],
    );

    type Proto = v1::Hue;

    fn from_fields(fields: &Fields<'_>) -> Result<Hue, String> {
        let degrees = fields.number("degrees")?.ok_or("degrees is required")?;
        Hue::new(degrees as f32)
    }

    fn from_proto(p: &v1::Hue) -> Result<Hue, String> {
        Hue::new(p.degrees)
    }

    fn to_proto(&self) -> v1::Hue {
        v1::Hue {
            degrees: self.degrees,
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        vec![("degrees", number(self.degrees))]
    }

    pointwise!(NS_PER_PIXEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(degrees: f32, rgb: [u8; 3]) -> [u8; 3] {
        let out = Hue::new(degrees)
            .unwrap()
            .apply(Bitmap::new(1, 1, false, rgb.to_vec()).unwrap());
        [out.data()[0], out.data()[1], out.data()[2]]
    }

    #[test]
    fn zero_and_full_turns_are_identity_greys_stay_grey() {
        for rgb in [[200, 30, 90], [0, 0, 0], [255, 255, 255], [12, 200, 199]] {
            assert_eq!(pixel(0.0, rgb), rgb);
            assert_eq!(pixel(360.0, rgb), rgb);
            assert_eq!(pixel(-360.0, rgb), rgb);
        }
        assert_eq!(pixel(123.0, [77, 77, 77]), [77, 77, 77]);
    }

    #[test]
    fn a_third_turn_moves_red_towards_green() {
        let [r, g, b] = pixel(120.0, [200, 20, 20]);
        assert!(g > r && g > b, "{r} {g} {b}");
        assert!(Hue::new(361.0).is_err() && Hue::new(f32::NAN).is_err());
    }
}
