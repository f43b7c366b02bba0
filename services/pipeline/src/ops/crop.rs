//! `crop`: cut out a rectangle, at (x, y) or placed by a gravity: a fixed place, or where the
//! content is (`smart`, `entropy`, `face`; see [`Anchor`]). A rectangle reaching past the
//! image is clipped to it; one entirely outside fails the image with a message saying so.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::gravity::Anchor;
use super::json::Fields;
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape};

pub(crate) const NAME: &str = "crop";

/// Largest offset or side accepted; far beyond any image the pixel limit lets in.
pub const MAX_COORDINATE: u32 = 1 << 20;

/// Single-core nanoseconds per output pixel, for the budget's estimate (calibration in
/// `crate::budget`): a copy of each row's part.
const NS_PER_PIXEL: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
    /// When set, x and y are ignored.
    gravity: Option<Anchor>,
}

impl Crop {
    pub fn new(
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        gravity: Option<Anchor>,
    ) -> Result<Crop, String> {
        for (name, value, min) in [
            ("x", x, 0),
            ("y", y, 0),
            ("width", width, 1),
            ("height", height, 1),
        ] {
            if !(min..=MAX_COORDINATE).contains(&value) {
                return Err(range_error(name, i64::from(value), min));
            }
        }
        if gravity.is_some() && (x != 0 || y != 0) {
            return Err("give either x and y or gravity, not both".into());
        }
        Ok(Crop {
            x,
            y,
            width,
            height,
            gravity,
        })
    }

    /// Whether the window is placed by what the image shows.
    pub fn reads_content(&self) -> bool {
        self.gravity.is_some_and(Anchor::reads_content)
    }

    /// The size cut from a `width` x `height` image. Width or height 0 when nothing of it
    /// lies inside.
    fn size(&self, width: u32, height: u32) -> (u32, u32) {
        let (w, h) = (self.width.min(width), self.height.min(height));
        match self.gravity {
            Some(_) => (w, h),
            None => (
                w.min(width - self.x.min(width)),
                h.min(height - self.y.min(height)),
            ),
        }
    }

    /// The rectangle cut from `image`: left, top, width, height.
    fn rect(&self, image: &Bitmap) -> Result<(u32, u32, u32, u32), String> {
        let (w, h) = self.size(image.width(), image.height());
        let (left, top) = match self.gravity {
            Some(_) if w == 0 || h == 0 => (0, 0),
            Some(anchor) => anchor.place(image, (w, h))?,
            None => (self.x, self.y),
        };
        Ok((left, top, w, h))
    }

    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        let (left, top, w, h) = self.rect(&image)?;
        if w == 0 || h == 0 {
            return Err(format!(
                "the rectangle at {},{} is outside the {}x{} image",
                self.x,
                self.y,
                image.width(),
                image.height()
            ));
        }
        if (w, h) == (image.width(), image.height()) {
            return Ok(image);
        }
        image
            .region(left, top, w, h)
            .ok_or_else(|| "crop: the rectangle is not inside the image".to_string())
    }
}

fn range_error(name: &str, value: i64, min: u32) -> String {
    format!("{name} must be between {min} and {MAX_COORDINATE}, got {value}")
}

impl Operator for Crop {
    const SPEC: Spec = Spec::new(
        NAME,
        "Crop",
        "Cut out a rectangle, at x/y or by gravity.",
        &[
            Field::int("x", "X (px)", 0, MAX_COORDINATE as i64).with_default("0"),
            Field::int("y", "Y (px)", 0, MAX_COORDINATE as i64).with_default("0"),
            Field::int("width", "Width (px)", 1, MAX_COORDINATE as i64)
                .with_default("1000")
                .required(),
            Field::int("height", "Height (px)", 1, MAX_COORDINATE as i64)
                .with_default("1000")
                .required(),
            Field::choice("gravity", "Gravity", Anchor::NAMES),
        ],
    );

    type Proto = v1::Crop;

    fn from_fields(fields: &Fields<'_>) -> Result<Crop, String> {
        let value = |name: &str, min: u32, required: bool| -> Result<u32, String> {
            match fields.integer(name)? {
                None if required => Err("width and height are required".into()),
                None => Ok(0),
                Some(n) => u32::try_from(n)
                    .ok()
                    .filter(|v| (min..=MAX_COORDINATE).contains(v))
                    .ok_or_else(|| range_error(name, n, min)),
            }
        };
        let gravity = fields
            .string("gravity")?
            .map(Anchor::from_name)
            .transpose()?;
        Crop::new(
            value("x", 0, false)?,
            value("y", 0, false)?,
            value("width", 1, true)?,
            value("height", 1, true)?,
            gravity,
        )
    }

    fn from_proto(p: &v1::Crop) -> Result<Crop, String> {
        if p.width == 0 || p.height == 0 {
            return Err("width and height are required".into());
        }
        Crop::new(p.x, p.y, p.width, p.height, Anchor::from_proto(p.gravity)?)
    }

    fn to_proto(&self) -> v1::Crop {
        v1::Crop {
            x: self.x,
            y: self.y,
            width: self.width,
            height: self.height,
            gravity: self
                .gravity
                .map_or(v1::Gravity::Unspecified, Anchor::to_proto) as i32,
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        let mut params = Vec::new();
        if self.x != 0 {
            params.push(("x", Value::from(self.x)));
        }
        if self.y != 0 {
            params.push(("y", Value::from(self.y)));
        }
        params.push(("width", Value::from(self.width)));
        params.push(("height", Value::from(self.height)));
        if let Some(gravity) = self.gravity {
            params.push(("gravity", Value::from(gravity.name())));
        }
        params
    }

    fn output_size(&self, width: u32, height: u32) -> (u64, u64) {
        let (w, h) = self.size(width, height);
        (u64::from(w), u64::from(h))
    }

    /// What the op costs (see `crate::budget`): the rectangle is copied out while the image
    /// lives, unless it is the whole image; placing by content first reads the image.
    fn cost(&self, input: Shape, output: Shape, _context: &Context) -> Cost {
        if (input.width, input.height) == (output.width, output.height) {
            return Cost::in_place(input, 0.0);
        }
        let cost = Cost::copying(input, output, NS_PER_PIXEL);
        match self.gravity {
            Some(anchor) => anchor.add_cost(cost, input),
            None => cost,
        }
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
    use crate::ops::Gravity;

    /// Pixel (x, y) is [x, y, 0].
    fn numbered(width: u32, height: u32) -> Bitmap {
        let data = (0..height)
            .flat_map(|y| (0..width).flat_map(move |x| [x as u8, y as u8, 0]))
            .collect();
        Bitmap::new(width, height, false, data).unwrap()
    }

    fn corner(image: &Bitmap) -> (u8, u8) {
        (image.data()[0], image.data()[1])
    }

    #[test]
    fn cuts_at_an_offset_and_keeps_the_pixels() {
        let out = Crop::new(3, 2, 4, 5, None)
            .unwrap()
            .apply(numbered(10, 8))
            .unwrap();
        assert_eq!((out.width(), out.height()), (4, 5));
        assert_eq!(corner(&out), (3, 2));
        let last = out.data().len() - 3;
        assert_eq!(&out.data()[last..last + 2], &[6, 6]);
    }

    #[test]
    fn clips_at_the_edges_and_refuses_outside() {
        let crop = Crop::new(8, 6, 10, 10, None).unwrap();
        assert_eq!(crop.output_size(10, 8), (2, 2));
        assert_eq!(corner(&crop.apply(numbered(10, 8)).unwrap()), (8, 6));
        let outside = Crop::new(20, 0, 5, 5, None).unwrap();
        assert_eq!(outside.output_size(10, 8), (0, 5));
        assert_eq!(
            outside.apply(numbered(10, 8)).unwrap_err(),
            "the rectangle at 20,0 is outside the 10x8 image"
        );
    }

    #[test]
    fn gravity_places_the_rectangle() {
        let image = numbered(10, 8);
        let at = |g| {
            corner(
                &Crop::new(0, 0, 4, 4, Some(Anchor::Fixed(g)))
                    .unwrap()
                    .apply(image.clone())
                    .unwrap(),
            )
        };
        assert_eq!(at(Gravity::Centre), (3, 2));
        assert_eq!(at(Gravity::SouthEast), (6, 4));
        assert_eq!(at(Gravity::North), (3, 0));
        // Larger than the image: the whole image.
        let whole = Crop::new(0, 0, 50, 50, Some(Anchor::Fixed(Gravity::Centre)))
            .unwrap()
            .apply(image.clone())
            .unwrap();
        assert_eq!(whole, image);
    }

    #[test]
    fn parameters_are_validated() {
        assert_eq!(
            Crop::new(0, 0, 0, 5, None).unwrap_err(),
            "width must be between 1 and 1048576, got 0"
        );
        assert_eq!(
            Crop::new(1, 0, 5, 5, Some(Anchor::Fixed(Gravity::Centre))).unwrap_err(),
            "give either x and y or gravity, not both"
        );
        assert_eq!(
            Crop::from_proto(&v1::Crop::default()).unwrap_err(),
            "width and height are required"
        );
    }
}
