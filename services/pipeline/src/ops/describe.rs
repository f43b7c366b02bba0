//! `describe`: ask an AI vision model what the image shows. The pixels pass through unchanged;
//! the engine makes a JPEG copy at most [`Describe::size`] pixels on its longer side, and the
//! filter sends it with [`Describe::prompt`] to its OpenAI-compatible endpoint. The caption and
//! tags that come back become a report among the job's analysis reports (see the filter's
//! `describe` module).

use pixelmesh_proto::v1;
use serde_json::Value;

use super::json::Fields;
use super::thumbnail::Thumbnail;
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape, ns};

pub(crate) const NAME: &str = "describe";

pub const DEFAULT_SIZE: u32 = 512;
pub const MIN_SIZE: u32 = 128;
pub const MAX_SIZE: u32 = 2048;
pub const DEFAULT_TAGS: u32 = 10;
pub const MAX_TAGS: u32 = 30;
/// The JPEG quality of the copy sent: small on the wire, and plenty for a model that sees
/// the image at a few hundred pixels.
pub const QUALITY: u8 = 85;

/// Single-core nanoseconds per pixel of the copy for its JPEG encode (the budget's estimate).
const ENCODE_NS_PER_PIXEL: f64 = 25.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Describe {
    size: u32,
    tags: u32,
}

impl Default for Describe {
    fn default() -> Self {
        Describe {
            size: DEFAULT_SIZE,
            tags: DEFAULT_TAGS,
        }
    }
}

impl Describe {
    pub fn new(size: u32, tags: u32) -> Result<Describe, String> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
            return Err(format!(
                "size must be {MIN_SIZE} to {MAX_SIZE} pixels, got {size}"
            ));
        }
        if !(1..=MAX_TAGS).contains(&tags) {
            return Err(format!("tags must be 1 to {MAX_TAGS}, got {tags}"));
        }
        Ok(Describe { size, tags })
    }

    /// Longest side of the copy sent.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Most tags asked for.
    pub fn tags(&self) -> u32 {
        self.tags
    }

    /// What the model is asked. Part of the answer cache's key, so a change here asks again.
    pub fn prompt(&self) -> String {
        format!(
            "Describe this image for a photo library. Answer with one JSON object and nothing \
             else: {{\"caption\": \"one sentence saying what the image shows\", \"tags\": \
             [\"at most {} short lowercase keywords, most relevant first\"]}}.",
            self.tags
        )
    }

    /// The copy sent, at most [`Describe::size`] on its longer side (never enlarged).
    pub fn copy(&self, image: &Bitmap) -> Result<Bitmap, String> {
        if image.width().max(image.height()) <= self.size {
            return Ok(image.clone());
        }
        Thumbnail::new(self.size, self.size)?
            .apply(image.clone())
            .map_err(|err| err.replacen("thumbnail", NAME, 1))
    }

    /// The copy's shape for a `width` x `height` image.
    fn copy_shape(&self, image: Shape) -> Shape {
        let longer = image.width.max(image.height).max(1);
        let scale = (f64::from(self.size) / longer as f64).min(1.0);
        Shape {
            width: ((image.width as f64 * scale).ceil() as u64).max(1),
            height: ((image.height as f64 * scale).ceil() as u64).max(1),
            ..image
        }
    }
}

impl Operator for Describe {
    const SPEC: Spec = Spec::new(
        NAME,
        "Describe (AI)",
        "Caption and tags from the filters' AI vision model, into the analysis.",
        &[
            Field::int("size", "Size sent (px)", MIN_SIZE as i64, MAX_SIZE as i64)
                .with_default("512"),
            Field::int("tags", "Most tags", 1, MAX_TAGS as i64).with_default("10"),
        ],
    );

    type Proto = v1::Describe;

    fn from_fields(fields: &Fields<'_>) -> Result<Describe, String> {
        let number = |name: &str, default: u32| -> Result<u32, String> {
            match fields.integer(name)? {
                None => Ok(default),
                Some(n) => u32::try_from(n).map_err(|_| format!("{name} out of range: {n}")),
            }
        };
        Describe::new(number("size", DEFAULT_SIZE)?, number("tags", DEFAULT_TAGS)?)
    }

    fn from_proto(p: &v1::Describe) -> Result<Describe, String> {
        let or = |value: u32, default: u32| if value == 0 { default } else { value };
        Describe::new(or(p.size, DEFAULT_SIZE), or(p.tags, DEFAULT_TAGS))
    }

    fn to_proto(&self) -> v1::Describe {
        v1::Describe {
            size: self.size,
            tags: self.tags,
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        let mut params = Vec::new();
        if self.size != DEFAULT_SIZE {
            params.push(("size", Value::from(self.size)));
        }
        if self.tags != DEFAULT_TAGS {
            params.push(("tags", Value::from(self.tags)));
        }
        params
    }

    /// The downscaled copy and its JPEG encode; the request itself waits on the network, not
    /// a core, and is bounded by the filter's AI timeout instead.
    fn cost(&self, image: Shape, _output: Shape, context: &Context) -> Cost {
        let copy = self.copy_shape(image);
        let resize = Operator::cost(
            &Thumbnail::new(self.size, self.size).expect("a valid size"),
            image,
            copy,
            context,
        );
        Cost {
            peak_bytes: resize
                .peak_bytes
                .max(image.bytes().saturating_add(copy.bytes())),
            cpu_ns: resize.cpu_ns + ns(copy.pixels(), ENCODE_NS_PER_PIXEL),
        }
    }

    fn tile_halo(&self) -> Option<u32> {
        None
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        // The engine takes the copy ([`Describe::copy`]); pixels are unchanged.
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_fits_the_size_and_is_never_enlarged() {
        let image = Bitmap::new(1000, 500, false, vec![90; 1000 * 500 * 3]).unwrap();
        let copy = Describe::new(200, 5).unwrap().copy(&image).unwrap();
        assert_eq!((copy.width(), copy.height()), (200, 100));
        let small = Bitmap::new(100, 50, false, vec![90; 100 * 50 * 3]).unwrap();
        let same = Describe::default().copy(&small).unwrap();
        assert_eq!(same, small);
    }

    #[test]
    fn the_prompt_names_the_tag_count_and_asks_for_json() {
        let prompt = Describe::new(512, 7).unwrap().prompt();
        assert!(prompt.contains("at most 7"), "{prompt}");
        assert!(prompt.contains("\"caption\"") && prompt.contains("\"tags\""));
        assert_ne!(prompt, Describe::default().prompt());
    }

    #[test]
    fn bounds_are_refused_with_their_range() {
        assert_eq!(
            Describe::new(64, 10).unwrap_err(),
            "size must be 128 to 2048 pixels, got 64"
        );
        assert_eq!(
            Describe::new(512, 31).unwrap_err(),
            "tags must be 1 to 30, got 31"
        );
    }
}
