//! `analyze`: measure the image. The pixels pass through unchanged; the engine calls
//! [`report`] on the image as it is at this point of the pipeline, with the [`InputFacts`] it
//! learned while decoding, and stores the JSON beside the outputs.
//!
//! The report holds:
//!
//! * `width`, `height` — of the image at this point; `input` — the original's format, size,
//!   colour type and EXIF fields;
//! * `has_alpha` (an alpha channel) and `transparent` (some pixel is not fully opaque);
//! * `brightness` — mean BT.601 luma, 0..=255;
//! * `histogram` — 256 luma bins. Luma only: per-channel histograms would triple the JSON
//!   for what most clients plot as one curve;
//! * `dominant_colours` — up to 5, from a 4-bit-per-channel quantisation (4096 bins), each the
//!   mean colour of its bin as `#rrggbb` with its share of the (not fully transparent) pixels;
//! * `sharpness` — the variance of the 3x3 Laplacian of luma (borders repeated): 0 for a flat
//!   image, larger for crisper detail; compare images of similar content and size;
//! * `phash` — a 64-bit perceptual hash as 16 hex digits: luma box-averaged to 32x32, 2D DCT,
//!   the 8x8 coefficients next to DC (rows and columns 1..=8, as the original pHash library
//!   takes them) each compared with their median. Similar images differ in few bits;
//! * `faces` — each detected frontal face as `{x, y, w, h, score}`, its box in this image's
//!   pixels, largest first (see [`super::faces`]).
//!
//! Everything but the faces is integer arithmetic (the DCT's cosines are rounded to 14 bits once), so every
//! worker writes the same report.

use pixelmesh_proto::v1;
use serde_json::{Map, Value, json};

use super::faces;
use super::json::Fields;
use super::{Assets, Context, Operator, Spec};
use crate::bitmap::{Bitmap, luma};
use crate::budget::{Cost, Shape, ns};
use crate::formats::FileFormat;

pub(crate) const NAME: &str = "analyze";

/// How many dominant colours the report lists.
pub const DOMINANT_COLOURS: usize = 5;

/// Single-core nanoseconds per pixel, for the budget's estimate (calibration in
/// `crate::budget`): a luma plane (one byte a pixel, beside the image), a histogram, colour
/// bins, a Laplacian and a perceptual hash.
const NS_PER_PIXEL: f64 = 14.0;

/// The EXIF fields the report lists, when present: what identifies the camera and the shot.
/// Maker notes and thumbnails are left out; they are large and mean little outside the maker's
/// own tools.
const EXIF_SUMMARY: &[exif::Tag] = &[
    exif::Tag::Make,
    exif::Tag::Model,
    exif::Tag::LensModel,
    exif::Tag::Software,
    exif::Tag::DateTimeOriginal,
    exif::Tag::DateTime,
    exif::Tag::ExposureTime,
    exif::Tag::FNumber,
    exif::Tag::PhotographicSensitivity,
    exif::Tag::FocalLength,
    exif::Tag::Flash,
    exif::Tag::Orientation,
    exif::Tag::Artist,
    exif::Tag::Copyright,
    exif::Tag::GPSLatitudeRef,
    exif::Tag::GPSLatitude,
    exif::Tag::GPSLongitudeRef,
    exif::Tag::GPSLongitude,
    exif::Tag::GPSAltitude,
];

/// Longer EXIF values are cut (at a character boundary) and end in `…`.
pub const MAX_EXIF_VALUE_CHARS: usize = 200;

/// What the engine knows about the input as stored, before any op ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFacts {
    pub format: FileFormat,
    /// Upright size of the stored image.
    pub width: u32,
    pub height: u32,
    /// As the decoder named it, e.g. `rgb8`, `rgba16`, `l8`, `cmyk`.
    pub colour_type: String,
    /// EXIF fields as (tag name, displayed value), in file order.
    pub exif: Vec<(String, String)>,
    /// The embedded ICC profile and what decoding did with it (converted to sRGB, kept, or
    /// ignored and why); `None` without one.
    pub colour_profile: Option<String>,
}

impl InputFacts {
    /// The facts of a decoded image; `exif` is the raw EXIF block, summarised by
    /// [`exif_summary`].
    pub fn new(
        format: FileFormat,
        (width, height): (u32, u32),
        colour_type: &str,
        exif: &[u8],
        colour_profile: Option<String>,
    ) -> InputFacts {
        InputFacts {
            format,
            width,
            height,
            colour_type: colour_type.to_string(),
            exif: exif_summary(exif),
            colour_profile,
        }
    }
}

/// The [`EXIF_SUMMARY`] fields of the main image in a raw EXIF block (TIFF structure), in that
/// order. A block that does not parse gives what could be read, or nothing: a broken EXIF
/// block never fails an image.
pub fn exif_summary(raw: &[u8]) -> Vec<(String, String)> {
    if raw.is_empty() {
        return Vec::new();
    }
    let mut reader = exif::Reader::new();
    reader.continue_on_error(true);
    let parsed = match reader.read_raw(raw.to_vec()) {
        Ok(parsed) => parsed,
        Err(exif::Error::PartialResult(partial)) => partial.into_inner().0,
        Err(_) => return Vec::new(),
    };
    EXIF_SUMMARY
        .iter()
        .filter_map(|&tag| {
            let field = parsed.get_field(tag, exif::In::PRIMARY)?;
            let value = match &field.value {
                exif::Value::Ascii(parts) => parts
                    .iter()
                    .map(|part| {
                        String::from_utf8_lossy(part)
                            .trim_matches(['\0', ' '])
                            .to_string()
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                // The number (1-8) is what clients act on; the library's text for it is long.
                value => match (tag, value.get_uint(0)) {
                    (exif::Tag::Orientation, Some(n)) => n.to_string(),
                    _ => field.display_value().with_unit(&parsed).to_string(),
                },
            };
            let value: String = value.chars().filter(|c| !c.is_control()).collect();
            (!value.is_empty()).then(|| (tag.to_string(), cut(value)))
        })
        .collect()
}

fn cut(value: String) -> String {
    match value.char_indices().nth(MAX_EXIF_VALUE_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Analyze;

impl Analyze {
    /// The image as it is: the engine takes the [`report`].
    pub fn apply(self, image: Bitmap) -> Bitmap {
        image
    }
}

/// The measurements of `image` (see the module's documentation), as JSON.
pub fn report(image: &Bitmap, input: &InputFacts) -> Value {
    let plane = luma_plane(image);
    let mut histogram = vec![0u64; 256];
    for &value in &plane {
        histogram[usize::from(value)] += 1;
    }
    let total: u64 = plane.iter().map(|&v| u64::from(v)).sum();
    let brightness = total as f64 / plane.len() as f64;
    let exif: Map<String, Value> = input
        .exif
        .iter()
        .map(|(tag, value)| (tag.clone(), Value::from(value.as_str())))
        .collect();
    json!({
        "width": image.width(),
        "height": image.height(),
        "input": {
            "format": input.format.name(),
            "width": input.width,
            "height": input.height,
            "colour_type": input.colour_type,
            "colour_profile": input.colour_profile,
            "exif": exif,
        },
        "has_alpha": image.has_alpha(),
        "transparent": image.has_alpha() && image.data().chunks_exact(4).any(|p| p[3] < 255),
        "brightness": rounded(brightness, 100.0),
        "histogram": histogram,
        "dominant_colours": dominant_colours(image),
        "sharpness": rounded(sharpness(&plane, image.width() as usize), 100.0),
        "phash": format!("{:016x}", phash(&plane, image.width() as usize)),
        // The detector fails only if the resizer refuses buffers it was given whole.
        "faces": faces::detect(image).unwrap_or_default(),
    })
}

fn rounded(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}

fn luma_plane(image: &Bitmap) -> Vec<u8> {
    image
        .data()
        .chunks_exact(image.channels())
        .map(|p| luma(p[0], p[1], p[2]))
        .collect()
}

/// The most common colours at 4 bits per channel, most common first (ties: lower bin first).
fn dominant_colours(image: &Bitmap) -> Vec<Value> {
    // Per bin: pixel count and the sums of R, G and B.
    let mut bins = vec![[0u64; 4]; 4096];
    for p in image.data().chunks_exact(image.channels()) {
        if image.has_alpha() && p[3] == 0 {
            continue;
        }
        let bin =
            (usize::from(p[0] >> 4) << 8) | (usize::from(p[1] >> 4) << 4) | usize::from(p[2] >> 4);
        let sums = &mut bins[bin];
        sums[0] += 1;
        for (sum, &value) in sums[1..].iter_mut().zip(&p[..3]) {
            *sum += u64::from(value);
        }
    }
    let counted: u64 = bins.iter().map(|b| b[0]).sum();
    let mut order: Vec<usize> = (0..bins.len()).filter(|&i| bins[i][0] > 0).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(bins[i][0]), i));
    order
        .into_iter()
        .take(DOMINANT_COLOURS)
        .map(|i| {
            let [count, r, g, b] = bins[i];
            let mean = |sum: u64| (sum + count / 2) / count;
            json!({
                "colour": format!("#{:02x}{:02x}{:02x}", mean(r), mean(g), mean(b)),
                "share": rounded(count as f64 / counted as f64, 10_000.0),
            })
        })
        .collect()
}

/// Variance of the 4-neighbour Laplacian of `plane`, borders repeated.
fn sharpness(plane: &[u8], width: usize) -> f64 {
    let height = plane.len() / width;
    let (mut sum, mut squares) = (0i64, 0i128);
    for y in 0..height {
        let row = &plane[y * width..][..width];
        let above = &plane[y.saturating_sub(1) * width..][..width];
        let below = &plane[(y + 1).min(height - 1) * width..][..width];
        for x in 0..width {
            let left = row[x.saturating_sub(1)];
            let right = row[(x + 1).min(width - 1)];
            let laplacian =
                i64::from(above[x]) + i64::from(below[x]) + i64::from(left) + i64::from(right)
                    - 4 * i64::from(row[x]);
            sum += laplacian;
            squares += i128::from(laplacian * laplacian);
        }
    }
    let n = plane.len() as i128;
    // n² variance, exactly, then one division.
    let scaled = n * squares - i128::from(sum) * i128::from(sum);
    scaled as f64 / (n * n) as f64
}

/// Side of the downscaled luma the hash transforms.
const HASH_SIDE: usize = 32;
/// Fractional bits of the DCT's cosines.
const COS_BITS: u32 = 14;

/// The 64-bit perceptual hash of `plane`.
fn phash(plane: &[u8], width: usize) -> u64 {
    let small = box_average(plane, width);
    // cosines[u][x] = cos((2x + 1) u pi / 64), in fixed point; rows 0..=8 are all we need.
    let one = f64::from(1u32 << COS_BITS);
    let cosines: Vec<[i64; HASH_SIDE]> = (0..=8)
        .map(|u| {
            std::array::from_fn(|x| {
                let angle =
                    (2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / (2 * HASH_SIDE) as f64;
                (angle.cos() * one).round() as i64
            })
        })
        .collect();
    // Rows first: rows[y][u] for u in 1..=8, then columns: coefficients[v][u].
    let rows: Vec<[i64; 8]> = small
        .chunks_exact(HASH_SIDE)
        .map(|row| {
            std::array::from_fn(|u| {
                row.iter()
                    .zip(&cosines[u + 1])
                    .map(|(&value, &c)| value * c)
                    .sum()
            })
        })
        .collect();
    let mut coefficients = Vec::with_capacity(64);
    for cos in &cosines[1..=8] {
        for u in 0..8 {
            let sum: i64 = rows.iter().zip(cos).map(|(row, &c)| row[u] * c).sum();
            coefficients.push(sum);
        }
    }
    let mut sorted = coefficients.clone();
    sorted.sort_unstable();
    // Twice the median, so the comparison stays in integers.
    let twice_median = sorted[31] + sorted[32];
    coefficients.iter().fold(0u64, |bits, &c| {
        (bits << 1) | u64::from(2 * c > twice_median)
    })
}

/// `plane` box-averaged to 32x32, each value 16 x the mean luma, rounded. Every cell covers at
/// least one source pixel, so images smaller than 32 repeat pixels.
fn box_average(plane: &[u8], width: usize) -> Vec<i64> {
    let height = plane.len() / width;
    let span = |i: usize, size: usize| {
        let start = i * size / HASH_SIDE;
        let end = ((i + 1) * size / HASH_SIDE).max(start + 1);
        start..end
    };
    let mut small = Vec::with_capacity(HASH_SIDE * HASH_SIDE);
    for cy in 0..HASH_SIDE {
        let ys = span(cy, height);
        for cx in 0..HASH_SIDE {
            let xs = span(cx, width);
            let count = (ys.len() * xs.len()) as i64;
            let sum: i64 = ys
                .clone()
                .flat_map(|y| &plane[y * width + xs.start..y * width + xs.end])
                .map(|&v| i64::from(v))
                .sum();
            small.push((sum * 16 + count / 2) / count);
        }
    }
    small
}

impl Operator for Analyze {
    const SPEC: Spec = Spec::new(
        NAME,
        "Analyze",
        "Report size, colours, sharpness, EXIF.",
        &[],
    );

    type Proto = v1::Analyze;

    fn from_fields(_: &Fields<'_>) -> Result<Analyze, String> {
        Ok(Analyze)
    }

    fn from_proto(_: &v1::Analyze) -> Result<Analyze, String> {
        Ok(Analyze)
    }

    fn to_proto(&self) -> v1::Analyze {
        v1::Analyze {}
    }

    /// What the report costs (see `crate::budget`).
    fn cost(&self, image: Shape, _output: Shape, _context: &Context) -> Cost {
        Cost {
            peak_bytes: image
                .bytes()
                .saturating_add(image.pixels())
                .max(image.bytes().saturating_add(faces::scratch_bytes(image))),
            cpu_ns: ns(image.pixels(), NS_PER_PIXEL) + faces::cpu_ns(image),
        }
    }

    fn tile_halo(&self) -> Option<u32> {
        None
    }

    fn run(&self, image: Bitmap, _assets: &Assets) -> Result<Bitmap, String> {
        // The engine takes the report (`report`); pixels are unchanged.
        Ok(self.apply(image))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Blur, Brightness};

    fn facts() -> InputFacts {
        InputFacts {
            format: FileFormat::Png,
            width: 640,
            height: 480,
            colour_type: "rgba8".into(),
            exif: vec![("Make".into(), "Acme".into())],
            colour_profile: None,
        }
    }

    fn grey(width: u32, height: u32, value: impl Fn(u32, u32) -> f64) -> Bitmap {
        let data = (0..width * height)
            .flat_map(|i| {
                let v = value(i % width, i / width).round().clamp(0.0, 255.0) as u8;
                [v, v, v]
            })
            .collect();
        Bitmap::new(width, height, false, data).unwrap()
    }

    fn photo(x: u32, y: u32) -> f64 {
        let (x, y) = (f64::from(x), f64::from(y));
        120.0 + 50.0 * (x / 17.0).sin() + 40.0 * (y / 11.0).cos() + 20.0 * ((x + y) / 7.0).sin()
    }

    fn hash(image: &Bitmap) -> u64 {
        let report = report(image, &facts());
        u64::from_str_radix(report["phash"].as_str().unwrap(), 16).unwrap()
    }

    #[test]
    fn a_flat_image_reports_flat_facts() {
        let image = Bitmap::new(40, 30, false, [30, 60, 90].repeat(1200)).unwrap();
        let report = report(&image, &facts());
        let y = usize::from(luma(30, 60, 90));
        assert_eq!(report["width"], 40);
        assert_eq!(report["height"], 30);
        assert_eq!(report["sharpness"], 0.0);
        assert_eq!(report["brightness"], y as f64);
        let histogram = report["histogram"].as_array().unwrap();
        assert_eq!(histogram.len(), 256);
        assert_eq!(histogram[y], 1200);
        assert_eq!(histogram.iter().filter(|v| *v != 0).count(), 1);
        assert_eq!(
            report["dominant_colours"],
            json!([{"colour": "#1e3c5a", "share": 1.0}])
        );
        assert_eq!(report["phash"], "0000000000000000");
        assert_eq!(report["has_alpha"], false);
        assert_eq!(report["transparent"], false);
        assert_eq!(
            report["input"],
            json!({"format": "png", "width": 640, "height": 480, "colour_type": "rgba8",
                   "colour_profile": null, "exif": {"Make": "Acme"}})
        );
        // Same report every time, tiny images included.
        assert_eq!(report, super::report(&image, &facts()));
        let dot = Bitmap::new(1, 1, true, vec![1, 2, 3, 0]).unwrap();
        let tiny = super::report(&dot, &facts());
        assert_eq!(tiny["transparent"], true);
        assert_eq!(tiny["dominant_colours"], json!([]));
    }

    #[test]
    fn dominant_colours_rank_by_share() {
        // 3/4 red, 1/4 blue.
        let data = (0..16)
            .flat_map(|i| if i % 4 == 3 { [0, 0, 250] } else { [250, 0, 0] })
            .collect();
        let image = Bitmap::new(4, 4, false, data).unwrap();
        assert_eq!(
            report(&image, &facts())["dominant_colours"],
            json!([{"colour": "#fa0000", "share": 0.75}, {"colour": "#0000fa", "share": 0.25}])
        );
    }

    #[test]
    fn sharp_detail_scores_higher_than_blurred() {
        let checks = grey(64, 64, |x, y| {
            if (x / 4 + y / 4) % 2 == 0 {
                30.0
            } else {
                220.0
            }
        });
        let soft = Blur::new(2.0).unwrap().apply(checks.clone()).unwrap();
        let sharp = report(&checks, &facts())["sharpness"].as_f64().unwrap();
        let blurred = report(&soft, &facts())["sharpness"].as_f64().unwrap();
        assert!(sharp > 4.0 * blurred, "{sharp} vs {blurred}");
        assert!(blurred > 0.0);
    }

    #[test]
    fn similar_images_hash_close_and_different_ones_far() {
        let image = grey(160, 120, photo);
        let brighter = Brightness::new(1.05).unwrap().apply(image.clone());
        let other = grey(160, 120, |x, y| photo(159 - x, y));
        let distance = |a: &Bitmap, b: &Bitmap| (hash(a) ^ hash(b)).count_ones();
        assert!(
            distance(&image, &brighter) <= 4,
            "{}",
            distance(&image, &brighter)
        );
        assert!(
            distance(&image, &other) >= 20,
            "{}",
            distance(&image, &other)
        );
        // Scale-invariant enough: the same scene at half size stays close.
        let half = grey(80, 60, |x, y| photo(2 * x, 2 * y));
        assert!(distance(&image, &half) <= 8, "{}", distance(&image, &half));
    }
}
