//! `blur_faces`: anonymise every face the detector finds (see [`super::faces`]). Each face's
//! box, widened by a fifth of its size on every side to take in hair and ears, is blurred
//! (a gaussian of sigma a sixth of the face's width, at most the blur's limit) or pixelated
//! (blocks an eighth of its width, at least 4 pixels). An image without faces passes through
//! unchanged.

use pixelmesh_proto::v1;
use serde_json::Value;

use super::blur::{self, Blur};
use super::faces::{self, Face};
use super::json::{Fields, quoted};
use super::pixelate::Pixelate;
use super::{Assets, Context, Field, Operator, Spec};
use crate::bitmap::Bitmap;
use crate::budget::{Cost, Shape, ns};

pub(crate) const NAME: &str = "blur_faces";

/// How a face is covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cover {
    #[default]
    Blur,
    Pixelate,
}

impl Cover {
    pub const NAMES: &[&str] = &["blur", "pixelate"];

    pub fn name(self) -> &'static str {
        match self {
            Cover::Blur => "blur",
            Cover::Pixelate => "pixelate",
        }
    }

    fn from_name(name: &str) -> Result<Cover, String> {
        match name {
            "blur" => Ok(Cover::Blur),
            "pixelate" => Ok(Cover::Pixelate),
            other => Err(format!(
                "cover must be one of {}, got {}",
                Cover::NAMES.join(", "),
                quoted(other)
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlurFaces {
    cover: Cover,
}

impl BlurFaces {
    pub fn new(cover: Cover) -> BlurFaces {
        BlurFaces { cover }
    }

    /// Errs when the task's deadline passes during a blur, or when the detector's buffers are
    /// refused.
    pub fn apply(&self, image: Bitmap) -> Result<Bitmap, String> {
        let found = faces::detect(&image)?;
        found
            .iter()
            .try_fold(image, |image, face| self.cover_face(image, face))
    }

    fn cover_face(&self, mut image: Bitmap, face: &Face) -> Result<Bitmap, String> {
        let (width, height) = (image.width(), image.height());
        let grow = |side: u32| side.div_ceil(5);
        let left = face.x.saturating_sub(grow(face.w));
        let top = face.y.saturating_sub(grow(face.h));
        let right = (face.x + face.w + grow(face.w)).min(width);
        let bottom = (face.y + face.h + grow(face.h)).min(height);
        let area = (left, top, right - left, bottom - top);
        match self.cover {
            Cover::Blur => {
                let sigma = (face.w as f32 / 6.0).clamp(1.0, blur::MAX_SIGMA);
                let op = Blur::new(sigma)?;
                // The blur reads a halo beyond the area, so the covered edge blends in.
                let halo = op.radius();
                let outer = (
                    left.saturating_sub(halo),
                    top.saturating_sub(halo),
                    (right + halo).min(width),
                    (bottom + halo).min(height),
                );
                let patch = cut(
                    &image,
                    (outer.0, outer.1, outer.2 - outer.0, outer.3 - outer.1),
                );
                let blurred = op.apply(patch)?;
                paste(&mut image, &blurred, (left - outer.0, top - outer.1), area);
            }
            Cover::Pixelate => {
                let op = Pixelate::new((face.w / 8).max(4))?;
                let patch = op.apply(cut(&image, area))?;
                paste(&mut image, &patch, (0, 0), area);
            }
        }
        Ok(image)
    }
}

/// A copy of `image`'s `(left, top, width, height)` rectangle.
fn cut(image: &Bitmap, (left, top, w, h): (u32, u32, u32, u32)) -> Bitmap {
    image
        .region(left, top, w, h)
        .expect("the rectangle lies inside the image")
}

/// Writes `patch`'s pixels from `from` onwards over `image`'s `(left, top, width, height)`.
fn paste(image: &mut Bitmap, patch: &Bitmap, from: (u32, u32), area: (u32, u32, u32, u32)) {
    let channels = image.channels();
    let stride = image.width() as usize * channels;
    let patch_stride = patch.width() as usize * channels;
    let (left, top, w, h) = area;
    let row_bytes = w as usize * channels;
    for y in 0..h as usize {
        let src = (from.1 as usize + y) * patch_stride + from.0 as usize * channels;
        let dst = (top as usize + y) * stride + left as usize * channels;
        image.data_mut()[dst..dst + row_bytes].copy_from_slice(&patch.data()[src..src + row_bytes]);
    }
}

impl Operator for BlurFaces {
    const SPEC: Spec = Spec::new(
        NAME,
        "Blur faces",
        "Find faces and blur or pixelate them.",
        &[Field::choice("cover", "Cover", Cover::NAMES).with_default("blur")],
    );

    type Proto = v1::BlurFaces;

    fn from_fields(fields: &Fields<'_>) -> Result<BlurFaces, String> {
        let cover = fields
            .string("cover")?
            .map(Cover::from_name)
            .transpose()?
            .unwrap_or_default();
        Ok(BlurFaces::new(cover))
    }

    fn from_proto(p: &v1::BlurFaces) -> Result<BlurFaces, String> {
        let cover = match v1::FaceCover::try_from(p.cover) {
            Ok(v1::FaceCover::Unspecified | v1::FaceCover::Blur) => Cover::Blur,
            Ok(v1::FaceCover::Pixelate) => Cover::Pixelate,
            Err(_) => {
                return Err(format!(
                    "cover must be one of {}, got {}",
                    Cover::NAMES.join(", "),
                    p.cover
                ));
            }
        };
        Ok(BlurFaces::new(cover))
    }

    fn to_proto(&self) -> v1::BlurFaces {
        let cover = match self.cover {
            Cover::Blur => v1::FaceCover::Blur,
            Cover::Pixelate => v1::FaceCover::Pixelate,
        };
        v1::BlurFaces {
            cover: cover as i32,
        }
    }

    fn params(&self) -> Vec<(&'static str, Value)> {
        match self.cover {
            Cover::Blur => Vec::new(),
            other => vec![("cover", Value::from(other.name()))],
        }
    }

    /// What the op costs (see `crate::budget`): detection, then, at worst, faces covering the
    /// whole image blurred at the largest sigma, with a copy of each patch.
    fn cost(&self, image: Shape, _output: Shape, _context: &Context) -> Cost {
        let mut cost = Cost::in_place(image, 0.0);
        cost.cpu_ns = faces::cpu_ns(image)
            + match self.cover {
                Cover::Blur => blur::cpu_ns(image, (3.0 * blur::MAX_SIGMA) as u32),
                Cover::Pixelate => ns(image.pixels(), super::pixelate::NS_PER_PIXEL),
            };
        cost.peak_bytes = image
            .bytes()
            .saturating_mul(2)
            .saturating_add(faces::scratch_bytes(image));
        cost
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
    use crate::testdata::fixture_photo;

    /// The mean absolute difference of two same-sized images over a rectangle.
    fn difference(a: &Bitmap, b: &Bitmap, (x, y, w, h): (u32, u32, u32, u32)) -> f64 {
        let (ca, cb) = (cut(a, (x, y, w, h)), cut(b, (x, y, w, h)));
        let sum: u64 = ca
            .data()
            .iter()
            .zip(cb.data())
            .map(|(&p, &q)| u64::from(p.abs_diff(q)))
            .sum();
        sum as f64 / ca.data().len() as f64
    }

    #[test]
    fn every_face_is_covered_and_the_rest_is_left_alone() {
        let photo = fixture_photo("three-portraits-1125x432.jpg");
        let found = faces::detect(&photo).unwrap();
        assert_eq!(found.len(), 3);
        for cover in [Cover::Blur, Cover::Pixelate] {
            let out = BlurFaces::new(cover).apply(photo.clone()).unwrap();
            for face in &found {
                let changed = difference(&photo, &out, (face.x, face.y, face.w, face.h));
                assert!(changed > 4.0, "{cover:?} {face:?}: {changed}");
                // The covered face is no longer found.
            }
            assert_eq!(faces::detect(&out).unwrap(), vec![], "{cover:?}");
            // The grey margin between tiles, far from any face, is untouched.
            assert_eq!(difference(&photo, &out, (0, 0, 1125, 10)), 0.0);
        }
    }

    #[test]
    fn an_image_without_faces_passes_unchanged() {
        let photo = fixture_photo("rocket-640x427.jpg");
        assert_eq!(BlurFaces::default().apply(photo.clone()).unwrap(), photo);
    }
}
