//! `thumbnail`: shrink to fit within `width` x `height` (either may be left out), keeping the
//! aspect ratio and never enlarging. It is a fit-`inside` [`Resize`] with a fixed filter, so
//! its sizes are resize's to the pixel; what makes it the fast path is that the engine may
//! decode a JPEG already shrunk by its DCT (see [`super::Pipeline::shrink_on_load`]).
//!
//! The filter is Catmull-Rom rather than resize's Lanczos3: its support is 2 pixels against 3
//! (a third fewer taps per output pixel) and it rings less on hard edges, while staying sharp
//! enough that a thumbnail does not look soft next to a Lanczos one.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::Fields;
use super::resize::{Filter, Fit, MAX_DIMENSION, Resize};
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "thumbnail";

/// The resampling filter every thumbnail uses.
pub const FILTER: Filter = Filter::CatmullRom;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thumbnail {
    resize: Resize,
}

impl Thumbnail {
    /// `0` leaves a side unconstrained; at least one is required, each at most 16384.
    pub fn new(width: u32, height: u32) -> Result<Thumbnail, String> {
        Ok(Thumbnail {
            resize: Resize::with_options(width, height, Fit::Inside, FILTER, false)?,
        })
    }

    pub fn width(&self) -> Option<u32> {
        self.resize.width()
    }

    pub fn height(&self) -> Option<u32> {
        self.resize.height()
    }

    /// The resize this thumbnail is.
    pub fn resize(&self) -> Resize {
        self.resize
    }

    /// The size a `width` x `height` image becomes: never larger than it, so it fits `u32`.
    pub fn target(&self, width: u32, height: u32) -> (u32, u32) {
        let (w, h) = self.resize.output_size(width, height);
        // Without upscaling each side is at most the input's (and at least 1).
        (
            u32::try_from(w).unwrap_or(width),
            u32::try_from(h).unwrap_or(height),
        )
    }

    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        self.resize
            .apply(image)
            .map_err(|err| err.replacen("resize", NAME, 1))
    }
}

impl Operator for Thumbnail {
    const SPEC: Spec = Spec::new(
        NAME,
        "Thumbnail",
        "Fit inside a box, fast.",
        &[
            Field::int("width", "Width (px)", 1, MAX_DIMENSION as i64).with_default("256"),
            Field::int("height", "Height (px)", 1, MAX_DIMENSION as i64).with_default("256"),
        ],
    );

    type Proto = v1::Thumbnail;

    fn from_fields(fields: &Fields<'_>) -> Result<Thumbnail, String> {
        let side = |name: &str| -> Result<u32, String> {
            match fields.integer(name)? {
                None => Ok(0),
                Some(n) => u32::try_from(n)
                    .map_err(|_| format!("{name} must be between 1 and {MAX_DIMENSION}, got {n}")),
            }
        };
        Thumbnail::new(side("width")?, side("height")?)
    }

    fn from_proto(p: &v1::Thumbnail) -> Result<Thumbnail, String> {
        Thumbnail::new(p.width, p.height)
    }

    fn to_proto(&self) -> v1::Thumbnail {
        v1::Thumbnail {
            width: self.resize.width().unwrap_or(0),
            height: self.resize.height().unwrap_or(0),
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        let mut params = Vec::new();
        if let Some(width) = self.resize.width() {
            params.push(("width", Value::from(width)));
        }
        if let Some(height) = self.resize.height() {
            params.push(("height", Value::from(height)));
        }
        params
    }

    fn output_size(&self, width: u32, height: u32) -> (u64, u64) {
        self.resize.output_size(width, height)
    }

    fn output_channels(&self, input: Shape) -> u64 {
        self.resize()
            .channels_for(input.width, input.height, input.channels)
    }

    /// A resize's cost (see `crate::budget`).
    fn cost(&self, input: Shape, output: Shape, context: &Context) -> Cost {
        self.resize.cost(input, output, context)
    }

    fn tile_halo(&self) -> Option<u32> {
        None
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        self.apply(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::gradient;

    #[test]
    fn fits_inside_keeps_aspect_and_never_enlarges() {
        let t = |w, h| Thumbnail::new(w, h).unwrap();
        assert_eq!(t(100, 100).target(4000, 3000), (100, 75));
        assert_eq!(t(100, 100).target(3000, 4000), (75, 100));
        assert_eq!(t(0, 50).target(4000, 3000), (67, 50));
        assert_eq!(t(160, 0).target(4000, 3000), (160, 120));
        assert_eq!(t(500, 500).target(300, 200), (300, 200));
        assert_eq!(t(10, 0).target(10_000, 3), (10, 1));
        assert_eq!(t(100, 100).output_size(4000, 3000), (100, 75));
    }

    #[test]
    fn apply_makes_the_target_size() {
        for alpha in [false, true] {
            let out = Thumbnail::new(20, 20)
                .unwrap()
                .apply(gradient(80, 50, alpha))
                .unwrap();
            assert_eq!(
                (out.width(), out.height(), out.has_alpha()),
                (20, 13, alpha)
            );
        }
        let small = gradient(8, 6, false);
        assert_eq!(
            Thumbnail::new(20, 20)
                .unwrap()
                .apply(small.clone())
                .unwrap(),
            small
        );
    }

    #[test]
    fn sides_are_validated_like_resize() {
        assert_eq!(
            Thumbnail::new(0, 0).unwrap_err(),
            "width or height is required"
        );
        assert_eq!(
            Thumbnail::new(16385, 0).unwrap_err(),
            "width must be between 1 and 16384, got 16385"
        );
        assert_eq!(
            Thumbnail::from_proto(&v1::Thumbnail {
                width: 0,
                height: 40
            })
            .unwrap()
            .params(),
            vec![("height", Value::from(40))]
        );
    }
}
