//! `gamma`: `out = 255 * (in / 255) ^ (1 / gamma)` per channel: gamma above 1 brightens the
//! mid-tones, below 1 darkens them; black and white stay put. Alpha is left alone.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::{Fields, number};
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "gamma";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Works in place: no memory beside the image.
pub(crate) const NS_PER_PIXEL: f64 = 1.6;

pub const MIN_GAMMA: f32 = 0.1;
pub const MAX_GAMMA: f32 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gamma {
    gamma: f32,
}

impl Gamma {
    pub fn new(gamma: f32) -> Result<Gamma, String> {
        Ok(Gamma {
            gamma: super::range::between("gamma", gamma, MIN_GAMMA, MAX_GAMMA)?,
        })
    }

    pub fn table(&self) -> [u8; 256] {
        let exponent = 1.0 / f64::from(self.gamma);
        std::array::from_fn(|v| {
            (255.0 * (v as f64 / 255.0).powf(exponent))
                .round()
                .clamp(0.0, 255.0) as u8
        })
    }

    pub fn apply(&self, mut image: Bitmap) -> Bitmap {
        image.map_channels(&self.table());
        image
    }
}

impl Operator for Gamma {
    const SPEC: Spec = Spec::new(
        NAME,
        "Gamma",
        "Gamma correction: 1 keeps it.",
        &[
            Field::float("gamma", "Gamma", (MIN_GAMMA as f64, MAX_GAMMA as f64, 0.05))
                .with_default("1.2")
                .required(),
        ],
    );

    type Proto = v1::Gamma;

    fn from_fields(fields: &Fields<'_>) -> Result<Gamma, String> {
        let gamma = fields.number("gamma")?.ok_or("gamma is required")?;
        Gamma::new(gamma as f32)
    }

    fn from_proto(p: &v1::Gamma) -> Result<Gamma, String> {
        Gamma::new(p.gamma)
    }

    fn to_proto(&self) -> v1::Gamma {
        v1::Gamma { gamma: self.gamma }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        vec![("gamma", number(self.gamma))]
    }

    pointwise!(NS_PER_PIXEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_validated() {
        assert!(Gamma::new(0.1).is_ok() && Gamma::new(10.0).is_ok());
        for bad in [0.0, 0.05, 10.5, f32::NAN, -1.0] {
            assert!(Gamma::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_fixed_mid_tones_move() {
        let identity = Gamma::new(1.0).unwrap().table();
        assert!(
            identity
                .iter()
                .enumerate()
                .all(|(i, &v)| usize::from(v) == i)
        );
        let bright = Gamma::new(2.2).unwrap().table();
        let dark = Gamma::new(0.5).unwrap().table();
        for t in [bright, dark] {
            assert_eq!((t[0], t[255]), (0, 255));
            assert!(t.windows(2).all(|w| w[0] <= w[1]));
        }
        // 255 * 0.5^(1/2.2) = 186.1; 255 * 0.5^2 = 63.75.
        assert_eq!(bright[128], 186);
        assert_eq!(dark[128], 64);
    }
}
