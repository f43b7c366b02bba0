//! `auto_orient`: apply the EXIF orientation. The codec already does so for every image at
//! decode (an output carries no EXIF to say how to turn it, so it must be upright), so by the
//! time ops run there is nothing left to do: this op is an accepted, explicit marker that
//! changes no pixels. It exists so pipelines written for services where orientation is
//! opt-in run unchanged.

use pixelmesh_proto::v1;

use super::json::Fields;
use super::{Assets, Context, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "auto_orient";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AutoOrient;

impl AutoOrient {
    /// The image as it is: decoding made it upright already.
    pub fn apply(self, image: Bitmap) -> Bitmap {
        image
    }
}

impl Operator for AutoOrient {
    const SPEC: Spec = Spec::new(NAME, "Auto-orient", "Apply the EXIF orientation.", &[]);

    type Proto = v1::AutoOrient;

    fn from_fields(_: &Fields<'_>) -> Result<AutoOrient, String> {
        Ok(AutoOrient)
    }

    fn from_proto(_: &v1::AutoOrient) -> Result<AutoOrient, String> {
        Ok(AutoOrient)
    }

    fn to_proto(&self) -> v1::AutoOrient {
        v1::AutoOrient {}
    }

    fn cost(&self, input: Shape, _output: Shape, _context: &Context) -> Cost {
        // Nothing to do: decoding made the image upright.
        Cost::in_place(input, 0.0)
    }

    fn tile_halo(&self) -> Option<u32> {
        Some(0)
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        Ok(self.apply(image))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_nothing() {
        let image = Bitmap::new(2, 1, true, (0..8).collect()).unwrap();
        assert_eq!(AutoOrient.apply(image.clone()), image);
    }
}
