//! `sepia`: the classic sepia tone matrix (as in the CSS `sepia()` filter at 100 %); alpha is
//! left alone.

use pixelmesh_proto::v1;

use super::json::Fields;
use super::{Assets, Context, Operator, Spec};
use crate::bitmap::{Bitmap, fixed_matrix};
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "sepia";

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`). Works in place: no memory beside the image.
pub(crate) const NS_PER_PIXEL: f64 = 5.0;

const MATRIX: [[f64; 3]; 3] = [
    [0.393, 0.769, 0.189],
    [0.349, 0.686, 0.168],
    [0.272, 0.534, 0.131],
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sepia;

impl Sepia {
    pub fn apply(self, mut image: Bitmap) -> Bitmap {
        image.map_colours(&fixed_matrix(MATRIX));
        image
    }
}

impl Operator for Sepia {
    const SPEC: Spec = Spec::new(NAME, "Sepia", "Warm brown tones.", &[]);

    type Proto = v1::Sepia;

    fn from_fields(_: &Fields<'_>) -> Result<Sepia, String> {
        Ok(Sepia)
    }

    fn from_proto(_: &v1::Sepia) -> Result<Sepia, String> {
        Ok(Sepia)
    }

    fn to_proto(&self) -> v1::Sepia {
        v1::Sepia {}
    }

    pointwise!(NS_PER_PIXEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tones_warm_and_keeps_black_and_alpha() {
        let image = Bitmap::new(2, 1, true, vec![0, 0, 0, 10, 100, 100, 100, 20]).unwrap();
        let out = Sepia.apply(image);
        assert_eq!(&out.data()[..4], &[0, 0, 0, 10]);
        let (r, g, b) = (out.data()[4], out.data()[5], out.data()[6]);
        // 100 x (0.393 + 0.769 + 0.189) = 135.1, and so on.
        assert_eq!((r, g, b, out.data()[7]), (135, 120, 94, 20));
        assert!(r > g && g > b, "sepia is warm");
    }
}
