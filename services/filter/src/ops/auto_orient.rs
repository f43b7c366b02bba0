//! `auto_orient`: apply the EXIF orientation. The codec already does so for every image at
//! decode (an output carries no EXIF to say how to turn it, so it must be upright), so by the
//! time ops run there is nothing left to do: this op is an accepted, explicit marker that
//! changes no pixels. It exists so pipelines written for services where orientation is
//! opt-in run unchanged.

use pixelmesh_proto::v1;

use super::bitmap::Bitmap;

pub(crate) const NAME: &str = "auto_orient";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AutoOrient;

impl AutoOrient {
    pub(crate) fn to_proto(self) -> v1::AutoOrient {
        v1::AutoOrient {}
    }

    /// The image as it is: decoding made it upright already.
    pub fn apply(self, image: Bitmap) -> Bitmap {
        image
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
