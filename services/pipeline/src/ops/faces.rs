//! Frontal face detection, for `gravity=face`, `blur_faces` and `analyze`'s `faces`.
//!
//! The detector is SeetaFace's funnel-structured cascade through `rustface` (pure Rust), with
//! its model vendored in `models/` (BSD 2-clause, `models/SEETAFACE-LICENSE`) and compiled
//! into the binary, so nothing is downloaded at run time. It looks at a grey copy of the
//! image at most [`DETECT_SIDE`] pixels on its longer side: enough for faces of 40 pixels and
//! more in a 1920-wide photo (the model's smallest window is 20), and it bounds the time
//! whatever the input's size. Boxes are reported in the image's own pixels.

use std::sync::OnceLock;

use rustface::{ImageData, Model};
use serde::Serialize;

use super::interest;
use crate::bitmap::{Bitmap, luma};
use crate::budget::{Shape, ns};

/// SeetaFace's frontal model, as `rustface` 0.1.7 ships it.
const MODEL: &[u8] = include_bytes!("../../models/seeta_fd_frontal_v1.0.bin");

/// The grey copy's longer side.
pub const DETECT_SIDE: u32 = 960;

/// Detections scoring below this are dropped: SeetaFace's suggested 2.0 let through a few
/// textures in the corpus' landscapes, 4.0 none, and every face in the test photos scores
/// above 10.
const MIN_SCORE: f64 = 4.0;

/// Faces reported at most; a crowd beyond this is still a crowd.
pub const MAX_FACES: usize = 100;

/// Single-core nanoseconds for the budget (calibration in `crate::budget`): per input pixel
/// for the grey downscale, and per pixel of the grey copy for the cascade over its pyramid
/// (criterion, `benches/smart_crop.rs` in the filter: 60 ms on a 1920x1080 photo without a
/// face, 116 ns a copy pixel; 92 ms on 1920x737 with three faces, 260 ns; 55 ms on a 512x512
/// portrait, 210 ns).
const NS_PER_INPUT_PIXEL: f64 = 2.0;
const NS_PER_DETECTED_PIXEL: f64 = 300.0;

/// One detected face: its box in the image's pixels and the detector's confidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Face {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub score: f64,
}

fn model() -> Result<Model, String> {
    static MODEL_PARSED: OnceLock<Result<Model, String>> = OnceLock::new();
    MODEL_PARSED
        .get_or_init(|| {
            rustface::read_model(MODEL).map_err(|err| format!("face model does not load: {err}"))
        })
        .clone()
}

/// The detector's time on `image`.
pub(crate) fn cpu_ns(image: Shape) -> f64 {
    let (w, h) = detect_size(image.width, image.height);
    ns(image.pixels(), NS_PER_INPUT_PIXEL) + ns(w.saturating_mul(h), NS_PER_DETECTED_PIXEL)
}

/// The memory detection holds beside the image: the grey copy and the detector's pyramid
/// and feature maps, a few times the copy (see `crate::budget`).
pub(crate) fn scratch_bytes(image: Shape) -> u64 {
    let (w, h) = detect_size(image.width, image.height);
    // The pyramid (1/(1-0.8^2) of the copy), SURF feature maps (about 8 floats a pixel) and
    // the model's clone.
    w * h * 40 + MODEL.len() as u64
}

/// The grey copy's size for a `width` x `height` image: at most [`DETECT_SIDE`] on the
/// longer side, never enlarged.
fn detect_size(width: u64, height: u64) -> (u64, u64) {
    let longer = width.max(height).max(1);
    let side = u64::from(DETECT_SIDE);
    if longer <= side {
        (width, height)
    } else {
        (
            (width * side / longer).max(1),
            (height * side / longer).max(1),
        )
    }
}

/// The faces in `image`, largest first (ties by position), at most [`MAX_FACES`].
pub fn detect(image: &Bitmap) -> Result<Vec<Face>, String> {
    let (width, height) = (image.width(), image.height());
    let (gw, gh) = detect_size(u64::from(width), u64::from(height));
    let (gw, gh) = (gw as u32, gh as u32);
    // Too small for the model's 20-pixel window: no face can be found.
    if gw < 20 || gh < 20 {
        return Ok(Vec::new());
    }
    let grey = grey_copy(image, gw, gh)?;
    let mut detector = rustface::create_detector_with_model(model()?);
    detector.set_min_face_size(20);
    detector.set_score_thresh(MIN_SCORE);
    detector.set_pyramid_scale_factor(0.8);
    detector.set_slide_window_step(4, 4);
    let found = detector.detect(&ImageData::new(&grey, gw, gh));
    let (sx, sy) = (
        f64::from(width) / f64::from(gw),
        f64::from(height) / f64::from(gh),
    );
    let mut faces: Vec<Face> = found
        .iter()
        .map(|face| {
            let b = face.bbox();
            // Boxes may reach past the copy's edges; clip them to the image.
            let x0 = (f64::from(b.x()) * sx).round().clamp(0.0, f64::from(width));
            let y0 = (f64::from(b.y()) * sy)
                .round()
                .clamp(0.0, f64::from(height));
            let x1 = (f64::from(b.x() + b.width() as i32) * sx)
                .round()
                .clamp(0.0, f64::from(width));
            let y1 = (f64::from(b.y() + b.height() as i32) * sy)
                .round()
                .clamp(0.0, f64::from(height));
            Face {
                x: x0 as u32,
                y: y0 as u32,
                w: (x1 - x0) as u32,
                h: (y1 - y0) as u32,
                score: (face.score() * 100.0).round() / 100.0,
            }
        })
        .filter(|face| face.w > 0 && face.h > 0)
        .collect();
    faces.sort_by(|a, b| {
        (u64::from(b.w) * u64::from(b.h))
            .cmp(&(u64::from(a.w) * u64::from(a.h)))
            .then((a.y, a.x).cmp(&(b.y, b.x)))
    });
    faces.truncate(MAX_FACES);
    Ok(faces)
}

/// A grey `width` x `height` copy of `image` (box-filtered, BT.601 luma).
fn grey_copy(image: &Bitmap, width: u32, height: u32) -> Result<Vec<u8>, String> {
    let rgb = interest::box_shrink(image, width, height)?;
    Ok(rgb
        .chunks_exact(image.channels())
        .map(|p| luma(p[0], p[1], p[2]))
        .collect())
}

/// The point to centre a crop on: the faces' centres weighted by their areas. `None` without
/// faces.
pub fn centre(faces: &[Face]) -> Option<(f64, f64)> {
    let total: f64 = faces.iter().map(|f| f64::from(f.w) * f64::from(f.h)).sum();
    (total > 0.0).then(|| {
        faces.iter().fold((0.0, 0.0), |(x, y), f| {
            let area = f64::from(f.w) * f64::from(f.h) / total;
            (
                x + (f64::from(f.x) + f64::from(f.w) / 2.0) * area,
                y + (f64::from(f.y) + f64::from(f.h) / 2.0) * area,
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{corpus_photo, fixture_photo};

    /// Each face's centre, by eye, in the photo's pixels.
    fn found_at(name: &str, centres: &[(u32, u32)]) {
        let faces = detect(&fixture_photo(name)).unwrap();
        assert_eq!(faces.len(), centres.len(), "{name}: {faces:?}");
        for &(cx, cy) in centres {
            assert!(
                faces
                    .iter()
                    .any(|f| (f.x..f.x + f.w).contains(&cx) && (f.y..f.y + f.h).contains(&cy)),
                "{name}: no face around ({cx}, {cy}) in {faces:?}"
            );
        }
        assert!(faces.iter().all(|f| f.score >= MIN_SCORE), "{faces:?}");
    }

    #[test]
    fn finds_one_face_in_each_portrait() {
        found_at("grace-hopper-512x600.jpg", &[(270, 215)]);
        found_at("astronaut-512x512.jpg", &[(225, 115)]);
    }

    #[test]
    fn finds_every_face_of_several_largest_first() {
        found_at(
            "three-portraits-1125x432.jpg",
            &[(200, 165), (548, 105), (965, 105)],
        );
        let faces = detect(&fixture_photo("three-portraits-1125x432.jpg")).unwrap();
        let areas: Vec<u32> = faces.iter().map(|f| f.w * f.h).collect();
        assert!(areas.windows(2).all(|pair| pair[0] >= pair[1]), "{areas:?}");
    }

    #[test]
    fn finds_no_face_where_there_is_none() {
        found_at("rocket-640x427.jpg", &[]);
        for name in ["kite-2560x1600.jpg", "colorful-cups-2560x1600.jpg"] {
            assert_eq!(detect(&corpus_photo(name)).unwrap(), vec![], "{name}");
        }
    }

    #[test]
    fn boxes_are_in_the_images_pixels_whatever_its_size() {
        // The same portrait at twice the size: the box doubles (the detector sees it at most
        // DETECT_SIDE wide, so both run on similar copies).
        let photo = fixture_photo("astronaut-512x512.jpg");
        let big = image::imageops::resize(
            &image::RgbImage::from_raw(512, 512, photo.data().to_vec()).unwrap(),
            2048,
            2048,
            image::imageops::FilterType::Triangle,
        );
        let big = Bitmap::new(2048, 2048, false, big.into_raw()).unwrap();
        let (small, large) = (detect(&photo).unwrap()[0], detect(&big).unwrap()[0]);
        let near = |a: u32, b: u32| a.abs_diff(b) <= b / 10 + 8;
        assert!(
            near(large.x, small.x * 4) && near(large.w, small.w * 4),
            "{small:?} {large:?}"
        );
    }

    #[test]
    fn the_centre_weighs_faces_by_area() {
        let face = |x, w| Face {
            x,
            y: 0,
            w,
            h: w,
            score: 5.0,
        };
        assert_eq!(centre(&[]), None);
        // A 30-wide face at 0 and a 10-wide one at 100: areas 900 and 100.
        let (x, _) = centre(&[face(0, 30), face(100, 10)]).unwrap();
        assert!((x - (15.0 * 0.9 + 105.0 * 0.1)).abs() < 1e-9, "{x}");
    }
}
