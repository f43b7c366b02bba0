//! `sharpen`: an unsharp mask. Each colour channel moves away from its gaussian-blurred value:
//! `out = in + amount x (in - blurred)`, rounded and clamped, but only where `|in - blurred|`
//! exceeds `threshold`, so flat areas and fine noise can be left alone.
//!
//! Per channel rather than on luma: it is the same blur as [`Blur`] (one kernel, one code
//! path, so the two match), and at the amounts people use the colour fringes per-channel
//! sharpening can add are not visible. With alpha, the blurred colour is the alpha-weighted
//! one (`Blur` blurs premultiplied), so transparent pixels do not count as dark neighbours;
//! alpha itself is left alone.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::blur::Blur;
use super::json::Fields;
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{self, Cost, Shape, ns};

pub(crate) const NAME: &str = "sharpen";

pub const DEFAULT_SIGMA: f32 = 1.0;
pub const DEFAULT_AMOUNT: f32 = 1.0;
/// Past 10x every edge clips to black and white; a larger amount is a mistake.
pub const MAX_AMOUNT: f32 = 10.0;

/// Single-core nanoseconds per pixel beside the blur, for the budget's estimate (calibration
/// in `crate::budget`): copying the image for the blur, and the table lookups per channel.
const NS_PER_PIXEL: f64 = 12.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sharpen {
    blur: Blur,
    amount: f32,
    threshold: u8,
}

impl Sharpen {
    /// `sigma` has the blur's range (> 0, <= 100); `amount` is > 0 (0 would be a no-op, and
    /// the protobuf form reads 0 as "default") and <= 10.
    pub fn new(sigma: f32, amount: f32, threshold: u8) -> Result<Sharpen, String> {
        let blur = Blur::new(sigma)?;
        // Written so NaN fails too.
        if !(amount.is_finite() && amount > 0.0 && amount <= MAX_AMOUNT) {
            return Err(format!(
                "amount must be > 0 and <= {MAX_AMOUNT}, got {amount}"
            ));
        }
        Ok(Sharpen {
            blur,
            amount,
            threshold,
        })
    }

    pub fn sigma(&self) -> f32 {
        self.blur.sigma()
    }

    pub fn amount(&self) -> f32 {
        self.amount
    }

    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// The blur's radius: how far a pixel's value reaches, and the halo a tile needs.
    pub fn radius(&self) -> u32 {
        self.blur.radius()
    }

    /// `table[d + 255]` is what a pixel whose difference from its blurred value is `d` gains:
    /// `amount x d` rounded, or 0 within the threshold. One table per image keeps the pixel loop
    /// to integer adds, so every worker computes the same bytes.
    fn table(&self) -> [i16; 511] {
        let amount = f64::from(self.amount);
        std::array::from_fn(|i| {
            let d = i as i32 - 255;
            if d.unsigned_abs() <= u32::from(self.threshold) {
                0
            } else {
                // |amount x d| <= 2550, well inside i16.
                (amount * f64::from(d)).round() as i16
            }
        })
    }

    /// Errs only when the task's deadline passes (see [`budget::expired`]).
    pub fn apply(&self, mut image: Bitmap) -> Result<Bitmap, String> {
        let blurred = self
            .blur
            .apply(image.clone())
            .map_err(|err| err.replacen("blur", NAME, 1))?;
        let table = self.table();
        let channels = image.channels();
        let stride = image.width() as usize * channels;
        for (y, (row, soft_row)) in image
            .data_mut()
            .chunks_exact_mut(stride)
            .zip(blurred.data().chunks_exact(stride))
            .enumerate()
        {
            if y % budget::ROWS_PER_CHECK == 0 && budget::expired() {
                return Err(budget::stopped());
            }
            for (pixel, soft) in row
                .chunks_exact_mut(channels)
                .zip(soft_row.chunks_exact(channels))
            {
                for (value, &soft) in pixel[..3].iter_mut().zip(&soft[..3]) {
                    let d = i32::from(*value) - i32::from(soft);
                    let gain = i32::from(table[(d + 255) as usize]);
                    *value = (i32::from(*value) + gain).clamp(0, 255) as u8;
                }
            }
        }
        Ok(image)
    }
}

fn threshold(value: i64) -> Result<u8, String> {
    u8::try_from(value).map_err(|_| format!("threshold must be between 0 and 255, got {value}"))
}

impl Operator for Sharpen {
    const SPEC: Spec = Spec::new(
        NAME,
        "Sharpen",
        "Unsharp mask.",
        &[
            Field::float("sigma", "Sigma", (0.1, 100.0, 0.1))
                .above_min()
                .with_default("1"),
            Field::float("amount", "Amount", (0.1, MAX_AMOUNT as f64, 0.1))
                .above_min()
                .with_default("1"),
            Field::int("threshold", "Threshold", 0, 255).with_default("0"),
        ],
    );

    type Proto = v1::Sharpen;

    fn from_fields(fields: &Fields<'_>) -> Result<Sharpen, String> {
        // Out-of-range f64s become infinite f32s, which validation rejects.
        let sigma = fields.number("sigma")?.map_or(DEFAULT_SIGMA, |v| v as f32);
        let amount = fields
            .number("amount")?
            .map_or(DEFAULT_AMOUNT, |v| v as f32);
        let threshold = fields.integer("threshold")?.map_or(Ok(0), threshold)?;
        Sharpen::new(sigma, amount, threshold)
    }

    fn from_proto(p: &v1::Sharpen) -> Result<Sharpen, String> {
        // Zeros are unset, like every zero in the protos.
        let or_default = |value: f32, default: f32| if value == 0.0 { default } else { value };
        Sharpen::new(
            or_default(p.sigma, DEFAULT_SIGMA),
            or_default(p.amount, DEFAULT_AMOUNT),
            threshold(i64::from(p.threshold))?,
        )
    }

    fn to_proto(&self) -> v1::Sharpen {
        v1::Sharpen {
            sigma: self.sigma(),
            amount: self.amount,
            threshold: u32::from(self.threshold),
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        let mut params = Vec::new();
        if self.sigma() != DEFAULT_SIGMA {
            params.push(("sigma", super::json::number(self.sigma())));
        }
        if self.amount != DEFAULT_AMOUNT {
            params.push(("amount", super::json::number(self.amount)));
        }
        if self.threshold != 0 {
            params.push(("threshold", Value::from(self.threshold)));
        }
        params
    }

    /// What the op costs (see `crate::budget`): a blurred copy of the image lives beside it,
    /// with the blur's rows.
    fn cost(&self, image: Shape, _output: Shape, _context: &Context) -> Cost {
        Cost {
            peak_bytes: image
                .bytes()
                .saturating_mul(2)
                .saturating_add(super::blur::scratch_bytes(image, self.radius())),
            cpu_ns: super::blur::cpu_ns(image, self.radius())
                + ns(image.pixels(), NS_PER_PIXEL * image.channels as f64 / 3.0),
        }
    }

    fn tile_halo(&self) -> Option<u32> {
        Some(self.radius())
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        self.apply(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vertical step: columns left of `at` are `low`, the rest `high`.
    fn step(width: u32, height: u32, at: u32, low: u8, high: u8, alpha: bool) -> Bitmap {
        let channels = if alpha { 4 } else { 3 };
        let data = (0..width * height)
            .flat_map(|i| {
                let v = if i % width < at { low } else { high };
                [v, v, v, 255][..channels].to_vec()
            })
            .collect();
        Bitmap::new(width, height, alpha, data).unwrap()
    }

    #[test]
    fn parameters_are_validated_with_defaults() {
        let d = Sharpen::from_proto(&v1::Sharpen::default()).unwrap();
        assert_eq!(
            (d.sigma(), d.amount(), d.threshold(), d.radius()),
            (1.0, 1.0, 0, 3)
        );
        assert!(d.params().is_empty());
        assert_eq!(
            Sharpen::new(0.0, 1.0, 0).unwrap_err(),
            "sigma must be > 0 and <= 100, got 0"
        );
        for bad in [-1.0, 0.0, 10.5, f32::NAN] {
            let err = Sharpen::new(1.0, bad, 0).unwrap_err();
            assert!(
                err.starts_with("amount must be > 0 and <= 10, got "),
                "{err}"
            );
        }
        assert_eq!(
            Sharpen::from_proto(&v1::Sharpen {
                threshold: 256,
                ..Default::default()
            })
            .unwrap_err(),
            "threshold must be between 0 and 255, got 256"
        );
    }

    #[test]
    fn table_applies_amount_and_threshold() {
        let table = Sharpen::new(1.0, 1.5, 10).unwrap().table();
        assert_eq!(table[255], 0);
        assert_eq!(table[255 + 10], 0);
        assert_eq!(table[255 - 10], 0);
        assert_eq!(table[255 + 11], 17); // 16.5 rounds away from zero
        assert_eq!(table[255 - 11], -17);
        assert_eq!(table[510], 383);
    }

    #[test]
    fn flat_images_are_unchanged() {
        for alpha in [false, true] {
            let flat = step(12, 7, 0, 0, 140, alpha);
            assert_eq!(
                Sharpen::new(2.0, 3.0, 0)
                    .unwrap()
                    .apply(flat.clone())
                    .unwrap(),
                flat
            );
        }
    }

    #[test]
    fn an_edge_gains_overshoot_on_both_sides() {
        let image = step(16, 3, 8, 100, 150, false);
        let out = Sharpen::new(1.0, 1.0, 0).unwrap().apply(image).unwrap();
        let at = |x: usize| out.data()[(16 + x) * 3];
        // Darker just left of the step, brighter just right, untouched far away.
        assert!(at(7) < 100, "{}", at(7));
        assert!(at(8) > 150, "{}", at(8));
        assert_eq!(at(0), 100);
        assert_eq!(at(15), 150);
        // Symmetric around the step.
        assert_eq!(100 - at(7), at(8) - 150);
    }

    #[test]
    fn the_threshold_keeps_small_differences() {
        let image = step(16, 3, 8, 100, 110, false);
        let sharp = Sharpen::new(1.0, 1.0, 0).unwrap();
        assert_ne!(sharp.apply(image.clone()).unwrap(), image);
        let gated = Sharpen::new(1.0, 1.0, 10).unwrap();
        assert_eq!(gated.apply(image.clone()).unwrap(), image);
    }

    #[test]
    fn results_clamp_and_alpha_stays() {
        let mut image = step(10, 2, 5, 0, 255, true);
        for (i, pixel) in image.data_mut().chunks_exact_mut(4).enumerate() {
            pixel[3] = (i * 13) as u8;
        }
        let out = Sharpen::new(1.0, 10.0, 0)
            .unwrap()
            .apply(image.clone())
            .unwrap();
        let alphas = |b: &Bitmap| b.data().chunks_exact(4).map(|p| p[3]).collect::<Vec<_>>();
        assert_eq!(alphas(&out), alphas(&image));
    }
}
